"""Smooth alternatives to the sigmoid step, fitted to every trajectory at once, and their BIC.

Is a token's trajectory a step at all? Beside the sigmoid of :mod:`spectrum.fit.model` (4
parameters), each trajectory ``y(x)``, ``x = ln T``, is fitted by two smooth forms:

- a power law in T, ``e + b * T^-beta`` written ``e + b * exp(-beta * (x - x0))`` with ``x0`` the
  first point of the grid (so the basis stays in (0, 1]); ``beta`` in ``[0, BETA_MAX]``, ``b`` of
  either sign (3 parameters);
- a line in ln T, ``a + c * x`` (2 parameters).

For a fixed ``beta`` the power law is linear in ``(e, b)``, so it is fitted exactly by profiling:
the residual sum of squares is computed in closed form on a grid of ``beta`` for all rows at once
(one matrix product), and the best grid point is refined by golden-section search in its bracket.
Missing points (NaN) are masked.

The criterion is the Bayesian information criterion with the noise variance profiled out,
``BIC = n ln(rss / n) + p ln n`` over the ``n`` finite points of the row (the noise level is thus
estimated per token and per model). Which form the data prefer is decided downstream
(:mod:`spectrum.analysis.stepwise`); the fit stage stores the three BICs and the smooth fits.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

BETA_MAX = 4.0
GRID = 48
GOLDEN_STEPS = 24
PARAMS = {"step": 4, "power": 3, "line": 2}
COLUMNS = ("rss_power", "rss_line", "power_e", "power_b", "power_beta", "power_x0",
           "bic_step", "bic_power", "bic_line")
_ROWS = 4096  # rows per batch (bounds the (rows x grid x K) tensor of the grid search)


def bic(rss: torch.Tensor, n: torch.Tensor, n_params: int) -> torch.Tensor:
    """``n ln(rss / n) + p ln n``; NaN where there are no more points than parameters."""
    n = n.to(rss.dtype)
    tiny = torch.finfo(rss.dtype).tiny
    value = n * torch.log(torch.clamp(rss, min=tiny) / n) + n_params * torch.log(n)
    return torch.where(n > n_params, value, torch.full_like(value, float("nan")))


class _Sums:
    """Masked moments of one batch of rows, centred on each row's mean."""

    def __init__(self, y: torch.Tensor, x: torch.Tensor) -> None:
        self.w = torch.isfinite(y).to(y.dtype)
        self.n = self.w.sum(1)
        y0 = torch.where(self.w > 0, y, torch.zeros_like(y))
        self.mean = y0.sum(1) / self.n.clamp(min=1)
        self.yc = (y0 - self.mean[:, None]) * self.w
        self.syy = (self.yc ** 2).sum(1)
        self.x = x

    def line_rss(self) -> torch.Tensor:
        xbar = (self.w * self.x).sum(1) / self.n.clamp(min=1)
        xc = (self.x[None, :] - xbar[:, None]) * self.w
        sxx, sxy = (xc ** 2).sum(1), (xc * self.yc).sum(1)
        return torch.where(sxx > 0, self.syy - sxy ** 2 / sxx.clamp(min=1e-300), self.syy)

    def power_fit(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rss, e, b) of ``e + b f`` where ``f`` is (rows, K) or, for a grid, (rows, G, K)."""
        w = self.w if f.dim() == 2 else self.w[:, None, :]
        yc = self.yc if f.dim() == 2 else self.yc[:, None, :]
        n = self.n if f.dim() == 2 else self.n[:, None]
        sf, sff, sfy = (w * f).sum(-1), (w * f * f).sum(-1), (yc * f).sum(-1)
        det = n * sff - sf ** 2
        ok = det > 1e-12 * (n * sff).clamp(min=1e-300)
        safe = torch.where(ok, det, torch.ones_like(det))
        syy = self.syy if f.dim() == 2 else self.syy[:, None]
        rss = torch.where(ok, syy - sfy ** 2 * n / safe, syy)
        b = torch.where(ok, n * sfy / safe, torch.zeros_like(det))
        mean = self.mean if f.dim() == 2 else self.mean[:, None]
        e = mean + torch.where(ok, -sf * sfy / safe, torch.zeros_like(det))
        return rss.clamp(min=0), e, b


def _power_law(s: _Sums, dx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Profile over beta: a grid, then golden-section search in the best point's bracket."""
    grid = torch.linspace(0.0, BETA_MAX, GRID, dtype=dx.dtype, device=dx.device)
    rss_grid, _, _ = s.power_fit(torch.exp(-grid[None, :, None] * dx[None, None, :])
                                 .expand(s.yc.shape[0], -1, -1))
    best = torch.nan_to_num(rss_grid, nan=math.inf).argmin(1)
    step = grid[1] - grid[0]
    lo = (grid[best] - step).clamp(min=0.0)
    hi = (grid[best] + step).clamp(max=BETA_MAX)
    ratio = (math.sqrt(5) - 1) / 2

    def rss_at(beta: torch.Tensor) -> torch.Tensor:
        return s.power_fit(torch.exp(-beta[:, None] * dx[None, :]))[0]

    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = rss_at(c), rss_at(d)
    for _ in range(GOLDEN_STEPS):
        left = fc < fd
        hi = torch.where(left, d, hi)
        lo = torch.where(left, lo, c)
        c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fc, fd = rss_at(c), rss_at(d)
    beta = 0.5 * (lo + hi)
    rss, e, b = s.power_fit(torch.exp(-beta[:, None] * dx[None, :]))
    return rss, e, b, beta


def smooth_fits(losses: np.ndarray, x: np.ndarray, sigmoid_rss: np.ndarray, *,
                device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The smooth fits and the BICs of every row of ``losses`` (N, K) on the grid ``x`` (K,),
    given the sigmoid's residual sum of squares per row. Returns the :data:`COLUMNS` as arrays
    (float64; NaN where a row has too few finite points). Computed in float64 on ``device``."""
    dev = torch.device(device)
    xt = torch.as_tensor(np.asarray(x, np.float64), device=dev)
    dx = xt - xt.min()
    out: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    for a in range(0, len(losses), _ROWS):
        y = torch.as_tensor(np.asarray(losses[a:a + _ROWS], np.float64), device=dev)
        y = torch.where(torch.isfinite(y), y, torch.full_like(y, float("nan")))
        s = _Sums(y, xt)
        rss_line = s.line_rss()
        rss_power, e, b, beta = _power_law(s, dx)
        rss_step = torch.as_tensor(np.asarray(sigmoid_rss[a:a + _ROWS], np.float64), device=dev)
        cols = {"rss_power": rss_power, "rss_line": rss_line, "power_e": e, "power_b": b,
                "power_beta": beta, "power_x0": torch.full_like(e, float(xt.min())),
                "bic_step": bic(rss_step, s.n, PARAMS["step"]),
                "bic_power": bic(rss_power, s.n, PARAMS["power"]),
                "bic_line": bic(rss_line, s.n, PARAMS["line"])}
        few = s.n <= PARAMS["step"]
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
    return {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in COLUMNS}


def with_columns(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    """``table`` (one row per trajectory) with the smooth fits' columns appended (float32)."""
    for name in COLUMNS:
        table = table.append_column(name, pa.array(np.asarray(columns[name], np.float32)))
    return table


def settings() -> dict:
    """What the fit stage records in its provenance about the comparison."""
    return {"beta_max": BETA_MAX, "grid": GRID, "golden_steps": GOLDEN_STEPS, "params": PARAMS,
            "criterion": "BIC = n ln(rss/n) + p ln n"}
