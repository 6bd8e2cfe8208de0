"""Smooth alternatives to the sigmoid step, fitted to every trajectory at once, and their BIC.

Is a token's trajectory a step at all? Beside the sigmoid of :mod:`spectrum.fit.model` (4
parameters), each trajectory ``y(x)``, ``x = ln T``, is fitted by two smooth forms:

- a power law in T, ``e + b * T^-beta`` written ``e + b * exp(-beta * (x - x0))`` with ``x0`` the
  first point of the grid (so the basis stays in (0, 1]); ``beta`` in ``[0, BETA_MAX]``, ``b`` of
  either sign (3 parameters);
- a line in ln T, ``a + c * x`` (2 parameters).

For a fixed ``beta`` the power law is linear in ``(e, b)``, so it is fitted exactly by profiling:
the residual sum of squares is computed in closed form on a grid of ``beta`` for all rows at once,
then on finer grids centred on each row's best point (:data:`ZOOMS`), and the last grid's best
point is refined by the vertex of the parabola through it and its neighbours. Each grid is a few
matrix products: with ``a`` a row's lowest grid value, ``exp(-(a + u) dx) = exp(-a dx) exp(-u dx)``,
so the masked moments at the grid's offsets ``u`` are the row's ``exp(-a dx)``-scaled data times
one (K x J) basis shared by every row; for rows without missing points, whose finer grids start
at few distinct values (points of the grid before), ``exp(-a dx)`` and the moments that do not
involve the data are computed once per value.
Missing points (NaN) are masked.

The criterion is the Bayesian information criterion with the noise variance profiled out,
``BIC = n ln(rss / n) + p ln n`` over the ``n`` finite points of the row (the noise level is thus
estimated per token and per model). Which form the data prefer is decided downstream
(:mod:`spectrum.analysis.runs.stepwise`); the fit stage stores the three BICs and the smooth fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from spectrum.fit.model import token_curves

BETA_MAX = 4.0
GRID = 48
ZOOMS = (17,)  # points of the finer grids, each spanning two steps of the one before
# n sum(f^2) - sum(f)^2 below this share of n sum(f^2): f is constant on the row's points to
# rounding (beta near 0); such a beta is not taken
DEGENERATE = 1e-12
ZERO_STEPS, ZERO_RATIO = 24, 1.5  # values of beta tried towards 0 below the grids' smallest
PARAM_COUNTS = {"step": 4, "power": 3, "line": 2}  # free parameters of each form, for the BIC
SMOOTH_COLUMNS = ("rss_power", "rss_line", "power_e", "power_b", "power_beta", "power_x0",
                  "bic_step", "bic_power", "bic_line")
_ROWS = 1 << 15  # rows per batch (bounds the (rows x K) temporaries)


def bic(rss: torch.Tensor, n: torch.Tensor, n_params: int) -> torch.Tensor:
    """``n ln(rss / n) + p ln n``; NaN where there are no more points than parameters."""
    n = n.to(rss.dtype)
    tiny = torch.finfo(rss.dtype).tiny
    value = n * torch.log(torch.clamp(rss, min=tiny) / n) + n_params * torch.log(n)
    return torch.where(n > n_params, value, torch.full_like(value, float("nan")))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products (one batched product, no (rows, K) temporary)."""
    return torch.einsum("ik,ik->i", a, b)


@dataclass(frozen=True)
class _Sums:
    """Masked moments of one batch of rows, centred on each row's mean. ``w`` is the mask of
    finite points, None when the batch has no missing point (the usual case: no mask to apply,
    and every row has the same count ``n``)."""

    w: torch.Tensor | None
    n: torch.Tensor
    mean: torch.Tensor
    yc: torch.Tensor
    syy: torch.Tensor
    x: torch.Tensor

    @classmethod
    def of(cls, y: torch.Tensor, x: torch.Tensor, *, complete: bool | None = None) -> "_Sums":
        """The moments of the rows ``y``; ``complete``: whether every value is finite, if known."""
        finite = None if complete else torch.isfinite(y)
        if complete or bool(finite.all()):
            w = None
            n = torch.full((y.shape[0],), float(y.shape[1]), dtype=y.dtype, device=y.device)
            mean = y.mean(1)
            yc = y - mean[:, None]
        else:
            w = finite.to(y.dtype)
            n = w.sum(1)
            y0 = torch.where(finite, y, torch.zeros_like(y))
            mean = y0.sum(1) / n.clamp(min=1)
            yc = (y0 - mean[:, None]) * w
        return cls(w, n, mean, yc, _dot(yc, yc), x)

    def rows(self, idx: torch.Tensor) -> "_Sums":
        return _Sums(None if self.w is None else self.w[idx], self.n[idx], self.mean[idx],
                     self.yc[idx], self.syy[idx], self.x)

    def _masked(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.w is None else self.w * t

    def _count(self, basis: torch.Tensor) -> torch.Tensor:
        """(rows, J) masked sums of the rows of a shared (J, K) basis ((1, J) when complete)."""
        return basis.sum(1)[None, :] if self.w is None else self.w @ basis.T

    def _per_row(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-row quantity shaped to broadcast against ``like`` (rows, ...)."""
        return t.reshape(-1, *(1,) * (like.dim() - 1))

    def _n(self, like: torch.Tensor) -> torch.Tensor:
        """The count of points, to broadcast against ``like``: one number when the batch is
        complete (so moments shared by every row stay shared), else per row."""
        return self.n[0] if self.w is None and len(self.n) else self._per_row(self.n, like)

    def line_rss(self) -> torch.Tensor:
        if self.w is None:
            xc = self.x - self.x.mean()
            sxx, sxy = (xc * xc).sum().expand_as(self.n), self.yc @ xc
        else:
            xbar = (self.w @ self.x) / self.n.clamp(min=1)
            xc = (self.x[None, :] - xbar[:, None]) * self.w
            sxx, sxy = _dot(xc, xc), _dot(xc, self.yc)
        return torch.where(sxx > 0, self.syy - sxy ** 2 / sxx.clamp(min=1e-300), self.syy)

    def moments(self, base: torch.Tensor | None,
                basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sf, sff, sfy) of ``f = base * basis[j]``: ``base`` (rows, K) per row (None: ones),
        ``basis`` (J, K) shared by every row; three matrix products. ``sfy`` is (rows, J);
        ``sf`` and ``sff`` are (1, J) when they are the same for every row."""
        if base is None:
            return self._count(basis), self._count(basis * basis), self.yc @ basis.T
        wb = self._masked(base)
        return wb @ basis.T, (wb * base) @ (basis * basis).T, (self.yc * base) @ basis.T

    def gain(self, sf: torch.Tensor, sff: torch.Tensor) -> torch.Tensor:
        """``n / det`` with ``det = n sff - sf^2``, shaped as ``sf``; NaN where ``f`` is
        (nearly) constant on the row's points."""
        n = self._n(sf)
        nsff = n * sff
        det = nsff - sf * sf
        ok = det > DEGENERATE * nsff.clamp(min=1e-300)
        return torch.where(ok, n / det, torch.full_like(det, float("nan")))

    def rss(self, gain: torch.Tensor, sfy: torch.Tensor) -> torch.Tensor:
        """The least residual sum of squares of ``e + b f``, ``syy - sfy^2 n / det``, from
        :meth:`gain` and ``sfy`` (rows, ...); ``inf`` where ``f`` is (nearly) constant."""
        out = sfy * sfy
        out.mul_(gain).neg_().add_(self._per_row(self.syy, out)).clamp_(min=0)
        return out.nan_to_num_(nan=math.inf)

    def solve(self, sf: torch.Tensor, sff: torch.Tensor,
              sfy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rss, e, b) of ``e + b f`` from the moments of ``f``, each (rows,)."""
        gain = self.gain(sf, sff)
        b = sfy * gain
        return self.rss(gain, sfy), self.mean - sf * b / self._n(sf), b

    def power_fit(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rss, e, b) of ``e + b f`` with ``f`` (rows, K) per row."""
        wf = self._masked(f)
        return self.solve(wf.sum(1), _dot(wf, f), _dot(self.yc, f))


def _basis(offsets: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    return torch.outer(offsets, -dx).exp_()


class _Grid:
    """The moments and RSS at ``beta = low + offsets`` for every row (``low`` per row; None: 0).

    ``sf`` and ``sff`` are (1, J) when every row shares them, (G, J) per distinct ``low`` with
    ``group`` the row's, or (rows, J)."""

    def __init__(self, s: _Sums, dx: torch.Tensor, low: torch.Tensor | None,
                 offsets: torch.Tensor) -> None:
        self.low = torch.zeros_like(s.n) if low is None else low
        self.offsets = offsets
        self.group: torch.Tensor | None = None
        if low is not None and s.w is None:  # complete rows: one basis per distinct low
            self.group, *self.moments = _grouped_moments(s, dx, low, offsets)
        else:
            self.moments = s.moments(None if low is None else _basis(low, dx), _basis(offsets, dx))
        gain = s.gain(*self.moments[:2])
        self.rss = s.rss(gain if self.group is None else gain[self.group], self.moments[2])
        self.j = self.rss.argmin(1)

    def at(self, j: torch.Tensor) -> torch.Tensor:
        return self.rss.gather(1, j[:, None])[:, 0]

    def _pick(self, m: torch.Tensor, per_group: bool) -> torch.Tensor:
        """Each row's value of a moment at its best point (``per_group``: ``sf`` or ``sff``,
        which are per distinct ``low`` when ``group`` is set)."""
        if per_group and self.group is not None:
            return m[self.group, self.j]
        if len(m) == 1:
            return m[0, self.j]
        return m.gather(1, self.j[:, None])[:, 0]

    def best(self, s: _Sums) -> tuple[torch.Tensor, ...]:
        """(rss, e, b, beta) at each row's best point."""
        rss, e, b = s.solve(*(self._pick(m, i < 2) for i, m in enumerate(self.moments)))
        return rss, e, b, self.low + self.offsets[self.j]


def _grouped_moments(s: _Sums, dx: torch.Tensor, low: torch.Tensor,
                     offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(group, sf, sff, sfy) of complete rows whose ``low`` takes few distinct values (a grid's
    points): ``exp(-low dx)`` and the moments that do not involve the data (``sf``, ``sff``:
    (G, J)) are computed once per value, ``group`` (rows,) is each row's value."""
    values, group = torch.unique(low, return_inverse=True)
    lows, basis = _basis(values, dx), _basis(offsets, dx)
    sf = lows @ basis.T
    sff = (lows * lows) @ (basis * basis).T
    return group, sf, sff, (s.yc * lows[group]) @ basis.T


def _zoom(s: _Sums, dx: torch.Tensor, beta: torch.Tensor, step: float, points: int) -> _Grid:
    """The grid of ``points`` spanning ``beta +- step`` within ``[0, BETA_MAX]``."""
    offsets = torch.linspace(0.0, 2 * step, points, dtype=dx.dtype, device=dx.device)
    return _Grid(s, dx, (beta - step).clamp(0.0, BETA_MAX - 2 * step), offsets)


def _vertex(grid: _Grid, step: float) -> torch.Tensor:
    """Per row, the vertex of the parabola through the grid's best point and its neighbours
    (within one step of that point)."""
    last = grid.offsets.numel() - 2
    inner = grid.j.clamp(1, last)
    # beta = 0 itself has no power law (a constant basis): then the parabola through the next three
    inner = torch.where(torch.isinf(grid.at(inner - 1)), (inner + 1).clamp(max=last), inner)
    f0, f1, f2 = (grid.at(inner + d) for d in (-1, 0, 1))
    curv = f0 - 2 * f1 + f2
    convex = torch.isfinite(curv) & (curv > 0)
    shift = torch.where(convex, 0.5 * (f0 - f2) / torch.where(convex, curv, torch.ones_like(curv)),
                        torch.zeros_like(curv)).clamp(-1.0, 1.0)
    return (grid.low + grid.offsets[inner] + shift * step).clamp(0.0, BETA_MAX)


def _power_law(s: _Sums, dx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The power law of least RSS per row, (rss, e, b, beta): the grid, finer grids around each
    row's best point, then the vertex of the parabola through the last grid's best point and its
    neighbours (kept where it lowers the RSS); rows whose best point is the smallest positive
    ``beta`` tried then try smaller ones (:func:`_towards_zero`)."""
    grid = _Grid(s, dx, None, torch.linspace(0.0, BETA_MAX, GRID, dtype=dx.dtype, device=dx.device))
    step = BETA_MAX / (GRID - 1)
    for points in ZOOMS:
        grid = _zoom(s, dx, grid.low + grid.offsets[grid.j], step, points)
        step = 2 * step / (points - 1)
    rss, e, b, beta = grid.best(s)
    vertex = _vertex(grid, step)
    at_vertex = s.power_fit(_basis(vertex, dx))
    better = at_vertex[0] < rss
    rss, e, b = (torch.where(better, v, w) for v, w in zip(at_vertex, (rss, e, b)))
    beta = torch.where(better, vertex, beta)
    return _towards_zero(s, dx, (rss, e, b, beta), step)


def _towards_zero(s: _Sums, dx: torch.Tensor, fit: tuple[torch.Tensor, ...],
                  step: float) -> tuple[torch.Tensor, ...]:
    """``fit`` (rss, e, b, beta), where rows whose best ``beta`` is the last grid's smallest
    positive value try ``beta = step / r, step / r^2, ...`` (:data:`ZERO_STEPS` values, ratio
    :data:`ZERO_RATIO`, one matrix product) and keep the one of least RSS if it is lower: the power
    law tends to a line in ln T as ``beta -> 0``."""
    rows = torch.nonzero(fit[3] <= step * (1 + 1e-9)).flatten()
    if rows.numel() == 0:
        return fit
    sub = s.rows(rows)
    offsets = step * ZERO_RATIO ** -torch.arange(1, ZERO_STEPS + 1, dtype=dx.dtype, device=dx.device)
    tried = _Grid(sub, dx, None, offsets).best(sub)
    better = tried[0] < fit[0][rows]
    out = tuple(v.clone() for v in fit)
    for v, t in zip(out, tried):
        v[rows[better]] = t[better]
    return out


def _sigmoid_rss(s: _Sums, y: torch.Tensor, x: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """The residual sum of squares of the fitted sigmoids ``params`` (rows, 4) on the rows
    ``y``, in ``y``'s dtype (float64), over the finite points."""
    p = torch.as_tensor(np.asarray(params, np.float64), device=y.device)
    r = y - token_curves(*p.unbind(1), x)
    r = r if s.w is None else torch.where(s.w > 0, r, torch.zeros_like(r))
    return _dot(r, r)


def smooth_fits(losses: np.ndarray, x: np.ndarray, sigmoid_rss: np.ndarray, *,
                sigmoid_params: np.ndarray | None = None,
                device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The smooth fits and the BICs of every row of ``losses`` (N, K) on the grid ``x`` (K,),
    given the sigmoid's residual sum of squares per row. Returns the :data:`SMOOTH_COLUMNS` as
    arrays (float64; NaN where a row has too few finite points). Computed in float64 on
    ``device``.

    ``sigmoid_params`` (N, 4: lo, hi, tau, k), where given, replace ``sigmoid_rss``: the
    sigmoid's RSS is recomputed from them in float64, so that both sides of the comparison are
    measured at the same precision (a float32 fit's own RSS carries float32 rounding, which
    the float64 profile of the power law does not)."""
    dev = torch.device(device)
    xt = torch.as_tensor(np.asarray(x, np.float64), device=dev)
    dx = xt - xt.min()
    out: dict[str, list[np.ndarray]] = {c: [] for c in SMOOTH_COLUMNS}
    for a in range(0, len(losses), _ROWS):
        # a copy in float64 (torch converts on every core; the caller's array is not written)
        y = torch.as_tensor(np.asarray(losses[a:a + _ROWS])).to(dev, torch.float64, copy=True)
        s = _Sums.of(y, xt)
        rss_line = s.line_rss()
        rss_power, e, b, beta = _power_law(s, dx)
        if sigmoid_params is None:
            rss_step = torch.as_tensor(np.asarray(sigmoid_rss[a:a + _ROWS], np.float64),
                                       device=dev)
        else:
            rss_step = _sigmoid_rss(s, y, xt, sigmoid_params[a:a + _ROWS])
        cols = {"rss_power": rss_power, "rss_line": rss_line, "power_e": e, "power_b": b,
                "power_beta": beta, "power_x0": torch.full_like(e, float(xt.min())),
                "bic_step": bic(rss_step, s.n, PARAM_COUNTS["step"]),
                "bic_power": bic(rss_power, s.n, PARAM_COUNTS["power"]),
                "bic_line": bic(rss_line, s.n, PARAM_COUNTS["line"])}
        few = s.n <= PARAM_COUNTS["step"]
        for name, v in cols.items():
            v = torch.where(few, torch.full_like(v, float("nan")), v)
            out[name].append(v.cpu().numpy())
    return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in out.items()}


def power_curve(e, b, beta, x0, x) -> np.ndarray:
    """(N, K) values of the stored power laws ``e + b exp(-beta (x - x0))`` at ``x``."""
    e, b, beta, x0 = (np.asarray(v, float)[:, None] for v in (e, b, beta, x0))
    return e + b * np.exp(-beta * (np.asarray(x, float)[None, :] - x0))


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The columns of several batches of :func:`smooth_fits`, in order."""
    return {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0)
            for c in SMOOTH_COLUMNS}


def with_columns(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    """``table`` (one row per trajectory) with the smooth fits' columns appended (float32)."""
    for name in SMOOTH_COLUMNS:
        table = table.append_column(name, pa.array(np.asarray(columns[name], np.float32)))
    return table


def settings() -> dict:
    """What the fit stage records in its provenance about the comparison."""
    return {"beta_max": BETA_MAX, "grid": GRID, "zooms": list(ZOOMS), "params": PARAM_COUNTS,
            "criterion": "BIC = n ln(rss/n) + p ln n"}
