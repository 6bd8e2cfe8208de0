"""Batched Levenberg-Marquardt fits of the sigmoid step to millions of loss trajectories.

:func:`fit_sigmoids` fits ``l(x) = lo + (hi - lo) * sigmoid(-k * (x - tau))``
(:mod:`spectrum.fit.model`) to every row of an (N, K) matrix of losses at the K points ``x = ln T``.

The solver, per batch of trajectories (all tensors, CPU or GPU, float32 or float64):

- Levenberg-Marquardt with per-trajectory damping ``lambda`` (Nielsen's update) and Marquardt's
  diagonal scaling (the running maximum of ``diag(J^T J)``). Where the actual decrease keeps
  exceeding the predicted one by 25% (large residuals, where Gauss-Newton steps fall short),
  steps are lengthened (doubled, up to 64x) until that stops. ``J^T J`` and ``J^T r`` come from
  :func:`spectrum.fit.model.normal_equations` without materialising J, and each step solves the
  damped 4x4 system by a scaled Cholesky factorisation written out entry by entry
  (:func:`_solve_spd4`). So an iteration (damped system and its solution; trial point,
  acceptance, damping, convergence) is elementwise over trajectories, and is compiled into fused
  loops with ``torch.compile`` on large problems (``FitOptions.compile``). On CUDA the whole
  iteration loop runs in one Triton kernel instead (:mod:`spectrum.fit.triton_kernel`).
- Bounds ``tau in [x_first - m * span, x_last + m * span]`` and ``k in [k_min_span / span, k_max]``
  (``span = x_last - x_first``; ``lo`` and ``hi`` are free) by a projected step with an active
  set: a parameter on a bound whose gradient points outwards is held there and removed from the
  4x4 system, so fits that end on a bound converge like interior ones.
- Convergence (MINPACK's tests): relative RSS decrease and predicted decrease below ``ftol``,
  a step below ``xtol`` relative to the parameters, or every free gradient component below
  ``gtol`` in cosine. Finished fits are frozen and leave the batch once a fifth of it has
  finished (compaction).
- Each fit starts from :func:`spectrum.fit.model.guess`. Fits that end without converging, on a
  bound of ``tau`` or ``k``, with a singular ``J^T J``, or whose residual variance
  ``rss / (n - 4)`` exceeds ``restart_noise`` times the noise variance estimated from successive
  differences (``sum((y[j+1] - y[j])^2) / (2 (n - 1))``, which a smooth curve barely inflates),
  are refitted from the best point of a scan over ``tau``
  (across the data, with three sharpnesses ``k``, and before the first and after the last point,
  within the bounds, with two) and ``lo`` and ``hi`` solved linearly at each point; the better of
  the two fits is kept. The scan reaches midpoints outside the data as the smooth alternatives'
  profile (:mod:`spectrum.fit.smooth`) reaches its optimum, so the two sides of the stepwise
  comparison are fitted alike.

Standard errors are ``sqrt(diag((J^T J)^-1) * rss / (n - 4))`` in the natural parameters.
Bad rows never raise: ``too_few_points`` (fewer than ``min_points`` finite values: parameters NaN),
``constant`` (``lo = hi`` = the value, ``tau`` mid-grid, ``k = k_min``, infinite standard errors
for ``tau`` and ``k``), ``singular`` (converged, but ``J^T J`` is not invertible: infinite standard
errors), ``max_iter``. Infinite losses count as missing points. ``kind`` follows
:mod:`spectrum.fit.kinds`.

Rows are fitted in batches (``FitOptions.batch_size``) moved to the device one at a time, so N is
bounded by host memory only; :mod:`spectrum.losses.trajectories` streams larger sets from disk.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from spectrum.fit import triton_kernel as fit_triton
from spectrum.fit.kinds import CENSORED, KINDS, KindThresholds, censoring, classify
from spectrum.devices import resolve_device
from spectrum.fit.model import PARAMS, _forward_fill, guess, linear_lohi, normal_equations

STATUSES = ("converged", "max_iter", "singular", "too_few_points", "constant")
CONVERGED, MAX_ITER, SINGULAR, TOO_FEW, CONSTANT = range(len(STATUSES))

@dataclass(frozen=True)
class FitOptions:
    """Solver settings. Tolerances of None take the defaults of the dtype (see ``tolerances``)."""

    max_iter: int = 100
    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    min_points: int = 5
    tau_margin: float = 0.5  # tau may lie this fraction of the x span beyond either end
    k_min_span: float = 1.0  # k_min = k_min_span / span
    k_max: float = 20.0  # a 10%-90% step no narrower than ln(81)/20 = 0.22 in ln T
    restart_noise: float = 2.0  # refit from a grid where rss/(n-4) > this x the noise variance
    restarts: bool = True
    restart_starts: int = 8  # tau positions of the restart scan inside the data (three k each)
    lambda0: float = 1e-3
    batch_size: int | None = None  # rows per solver batch; None: see _default_batch
    compile: bool | None = None  # torch.compile the iteration; None: N >= COMPILE_MIN_ROWS
    kernel: str = "auto"  # "triton": fused kernel (spectrum.fit.triton_kernel); "torch"; "auto": triton
    #                       on CUDA where Triton is installed, else torch

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float, float]:
        """(ftol, xtol, gtol): defaults 1e-10 for float64 and 1e-6 for float32."""
        default = 1e-10 if dtype == torch.float64 else 1e-6
        return (self.ftol if self.ftol is not None else default,
                self.xtol if self.xtol is not None else default,
                self.gtol if self.gtol is not None else default)

    def bounds(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of (lo, hi, tau, k) for the grid ``x``."""
        x0, x1 = float(np.min(x)), float(np.max(x))
        span = max(x1 - x0, 1e-12)
        lb = np.array([-np.inf, -np.inf, x0 - self.tau_margin * span, self.k_min_span / span])
        ub = np.array([np.inf, np.inf, x1 + self.tau_margin * span, self.k_max])
        return lb, ub

    def to_dict(self) -> dict:
        """The settings that change results (for provenance)."""
        d = asdict(self)
        for key in ("batch_size", "compile", "kernel"):
            d.pop(key)
        return d


@dataclass
class SigmoidFit:
    """Fitted sigmoids of N trajectories (numpy arrays of length N) on the grid ``x``."""

    lo: np.ndarray
    hi: np.ndarray
    tau: np.ndarray
    k: np.ndarray
    lo_se: np.ndarray
    hi_se: np.ndarray
    tau_se: np.ndarray
    k_se: np.ndarray
    rss: np.ndarray
    r2: np.ndarray
    n_iter: np.ndarray  # int32
    status_code: np.ndarray  # int8, indices into STATUSES
    kind_code: np.ndarray  # int8, indices into fit_kinds.KINDS
    x: np.ndarray
    options: FitOptions
    thresholds: KindThresholds

    _COLUMNS = ("lo", "hi", "tau", "k", "lo_se", "hi_se", "tau_se", "k_se", "rss", "r2", "n_iter")

    def __len__(self) -> int:
        return len(self.lo)

    @property
    def status(self) -> np.ndarray:
        return np.asarray(STATUSES, dtype=object)[self.status_code]

    @property
    def kind(self) -> np.ndarray:
        return np.asarray(KINDS, dtype=object)[self.kind_code]

    @property
    def delta(self) -> np.ndarray:
        """``hi - lo``: the loss each token sheds (negative when it rises)."""
        return self.hi - self.lo

    @property
    def params(self) -> np.ndarray:
        """(N, 4) in the order lo, hi, tau, k."""
        return np.stack([self.lo, self.hi, self.tau, self.k], axis=1)

    def reclassify(self, thresholds: KindThresholds) -> SigmoidFit:
        """The same fits with kinds under other thresholds."""
        kinds = _kinds(self.lo, self.hi, self.tau, self.k, self.r2, self.status_code, self.x,
                       thresholds)
        return replace(self, kind_code=kinds, thresholds=thresholds)

    @staticmethod
    def concat(parts: Iterable[SigmoidFit]) -> SigmoidFit:
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in fields(SigmoidFit) if f.name not in ("x", "options", "thresholds")}
        return SigmoidFit(**arrays, x=first.x, options=first.options, thresholds=first.thresholds)

    def to_arrow(self, token_idx: np.ndarray | None = None) -> pa.Table:
        """Columns ``token_idx`` (if given), lo ... k_se, rss, r2, n_iter, status, kind, and
        ``censored`` (:func:`spectrum.fit.kinds.censoring`: which side of the step lies outside
        the fitted checkpoints)."""
        cols: dict[str, pa.Array] = {}
        if token_idx is not None:
            cols["token_idx"] = pa.array(np.asarray(token_idx, dtype=np.int64))
        for name in self._COLUMNS:
            cols[name] = pa.array(getattr(self, name))
        cols["status"] = pc.take(pa.array(STATUSES, pa.string()), pa.array(self.status_code))
        cols["kind"] = pc.take(pa.array(KINDS, pa.string()), pa.array(self.kind_code))
        x = np.asarray(self.x, dtype=np.float64)
        code = censoring(self.tau, float(x.min()), float(x.max())) if len(x) else \
            np.zeros(len(self), np.int8)
        cols["censored"] = pc.take(pa.array(CENSORED, pa.string()), pa.array(code))
        return pa.table(cols)

    def to_polars(self, token_idx: np.ndarray | None = None):
        import polars as pl

        return pl.from_arrow(self.to_arrow(token_idx))


def _kinds(lo, hi, tau, k, r2, status_code, x, thresholds) -> np.ndarray:
    return classify(lo, hi, tau, r2, fitted=status_code != TOO_FEW,
                    constant=status_code == CONSTANT, x_last=float(np.max(x)),
                    thresholds=thresholds, k=k, x_first=float(np.min(x)))


# --------------------------------------------------------------------------------------------
# the solver: one iteration is _propose (damped 4x4 systems), a batched solve, and _advance (the
# trial point's normal equations, acceptance, damping update, convergence tests); both are
# elementwise over trajectories and are compiled into fused loops on large problems.

def _solve_spd4(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a^-1 b`` for a batch of symmetric positive definite 4x4 systems (``b``: (N, 4) or
    (N, 4, m)), and where it exists.

    A Cholesky factorisation of ``a`` scaled to unit diagonal (so the pivots measure how
    correlated the parameters are, not their units), written out entry by entry: elementwise
    over the batch, it compiles into the same fused loop as the rest of the step, where a
    batched LAPACK call costs more than the step itself on a CPU. ``ok`` is False where ``a``
    is not positive definite.
    """
    tiny = torch.finfo(a.dtype).tiny
    diag = torch.diagonal(a, dim1=1, dim2=2)
    ok = (diag > 0).all(1)
    d = diag.clamp_min(tiny).rsqrt()
    c = a * d[:, :, None] * d[:, None, :]
    many = b.dim() == 3  # several right-hand sides, (N, 4, m)
    if many:
        d = d[:, :, None]
    e = b * d
    low: list[list[torch.Tensor]] = [[] for _ in range(4)]  # low[i][j]: L[i, j], j <= i
    for i in range(4):
        for j in range(i + 1):
            v = c[:, i, j]
            for m in range(j):
                v = v - low[i][m] * low[j][m]
            if i == j:
                ok = ok & (v > 0)
                low[i].append(v.clamp_min(tiny).sqrt())
            else:
                low[i].append(v / low[j][j])
    if many:
        low = [[v[:, None] for v in row] for row in low]
    z: list[torch.Tensor] = []
    for i in range(4):
        v = e[:, i]
        for m in range(i):
            v = v - low[i][m] * z[m]
        z.append(v / low[i][i])
    sol: list[torch.Tensor] = [z[3]] * 4
    for i in range(3, -1, -1):
        v = z[i]
        for m in range(i + 1, 4):
            v = v - low[m][i] * sol[m]
        sol[i] = v / low[i][i]
    return torch.stack(sol, dim=1) * d, ok


def _propose(p, rss, jtj, jtr, lam, dscale, lb, ub, gtol: float, floor):
    """The damped step with bound-active parameters held, whether it exists, the updated
    scaling, and the gradient test."""
    tiny = torch.finfo(p.dtype).tiny
    diag = torch.diagonal(jtj, dim1=1, dim2=2)
    dscale = torch.maximum(dscale, diag)
    # active set: on a bound with the descent direction (J^T r) pointing outwards
    active = ((p <= lb) & (jtr < 0)) | ((p >= ub) & (jtr > 0))
    free = (~active).to(p.dtype)
    cosine = (jtr * free).abs() / torch.sqrt(diag * rss[:, None]).clamp_min(tiny)
    small_g = (cosine.amax(1) <= gtol) | (rss <= floor)
    damped = jtj + torch.diag_embed(lam[:, None] * dscale)
    damped = damped * free[:, :, None] * free[:, None, :] + torch.diag_embed(1 - free)
    step, ok = _solve_spd4(damped, jtr * free)
    return step * free, ok, dscale, small_g


def _advance(y, mask, x, p, rss, jtj, jtr, lam, nu, boost, step, ok, small_g, live, lb, ub,
             ftol: float, xtol: float):
    """Try ``p + boost * step``; returns the updated state, rows that finished, and converged."""
    tiny = torch.finfo(p.dtype).tiny
    ok = ok & torch.isfinite(step).all(1)
    step = torch.where(ok[:, None], step * boost[:, None], 0)
    p_new = torch.minimum(torch.maximum(p + step, lb), ub)
    step = p_new - p
    pred = 2 * (step * jtr).sum(1) - ((step[:, :, None] * jtj).sum(1) * step).sum(1)
    rss_new, jtj_new, jtr_new = normal_equations(y, mask, x, p_new)
    actual = rss - rss_new
    accept = live & ok & torch.isfinite(rss_new) & (actual > 0) & ~small_g
    rho = actual / torch.where(pred > 0, pred, tiny)

    small_f = accept & (actual <= ftol * rss) & (pred <= ftol * rss)
    small_x = (step.abs() <= xtol * (p.abs() + xtol)).all(1)
    converged = small_g | small_f | small_x | (lam > 1e16)  # the last: no decrease possible
    done = live & converged

    a = accept[:, None]
    p = torch.where(a, p_new, p)
    rss = torch.where(accept, rss_new, rss)
    jtj = torch.where(a[:, :, None], jtj_new, jtj)
    jtr = torch.where(a, jtr_new, jtr)
    # a boosted step that fails only resets the boost; otherwise Nielsen's damping update
    plain = boost == 1
    lam = torch.where(accept, lam * torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3),
                      torch.where(plain, lam * nu, lam))
    nu = torch.where(accept | ~plain, torch.full_like(nu, 2.0), nu * 2)
    # the quadratic model underestimates the decrease (large residuals): lengthen the steps
    boost = torch.where(accept & (rho > 1.25), (boost * 2).clamp(max=64),
                        torch.where(accept & (rho > 0.75), boost, torch.ones_like(boost)))
    return p, rss, jtj, jtr, lam, nu, boost, done


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process, shape-generic (``dynamic=True``): one graph serves
    every batch size (rows >= 2; one-row batches are padded, see :func:`_at_least_two`), so a
    new size costs no compilation. Inductor's on-disk caches (FX graphs and AOT autograd, on by
    default, under ``TORCHINDUCTOR_CACHE_DIR``) let a new process skip code generation."""
    return torch.compile(fn, dynamic=True)


def _steps(compiled: bool) -> tuple[Callable, Callable, Callable]:
    """(normal_equations, _propose, _advance), compiled with torch.compile or not."""
    if not compiled:
        return normal_equations, _propose, _advance
    return _compiled(normal_equations), _compiled(_propose), _compiled(_advance)


def _two_rows(*args):
    """Per-row tensors of one row as two identical rows (others unchanged).

    Compiled graphs specialise on sizes 0 and 1 however dynamic they are, so a single row (a
    restart of one poor fit, a batch of one token) would compile second graphs; it is fitted
    as two identical rows instead, and the first row of the results kept (:func:`_first_row`)."""
    return [a.expand(2, *a.shape[1:]).contiguous() if isinstance(a, torch.Tensor)
            and a.dim() >= 1 and a.shape[0] == 1 else a for a in args]


def _first_row(out):
    if isinstance(out, torch.Tensor):
        return out[:1].clone()
    if isinstance(out, dict):
        return {k: _first_row(v) for k, v in out.items()}
    return type(out)(_first_row(v) for v in out)


def _rss_floor(y: torch.Tensor) -> torch.Tensor:
    """An RSS that is zero to within rounding of ``y``'s values."""
    eps = torch.finfo(y.dtype).eps
    return (4 * eps * (y.abs().amax(1) + 1.0)) ** 2 * y.shape[1]


def _prepare_complete(y: torch.Tensor, x: torch.Tensor):
    """For rows without missing points: mean, total sum of squares, difference noise variance,
    RSS floor and the starting guess, in one pass (fused when compiled)."""
    mean = y.mean(1)
    tss = (y - mean[:, None]).square().sum(1)
    noise = (y[:, 1:] - y[:, :-1]).square().sum(1) / (2 * (y.shape[1] - 1))
    return mean, tss, noise, _rss_floor(y), guess(y, x, complete=True)


def _levenberg_marquardt(y: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor,
                         p: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor,
                         opts: FitOptions, compiled: bool, floor: torch.Tensor | None = None,
                         fused: bool = False):
    """Fit every row of ``y`` from ``p``; returns p, rss, J^T J, n_iter, status (all per row).

    ``floor``: an RSS at which a fit is exact to rounding (default: from ``y``'s magnitude).
    ``fused``: run the iterations in the Triton kernel of :mod:`spectrum.fit.triton_kernel`.
    """
    dt, dev = y.dtype, y.device
    if floor is None:
        floor = _rss_floor(y)
    if fused:
        return fit_triton.levenberg_marquardt(y, mask, x, p, lb, ub, opts.tolerances(dt),
                                              opts.lambda0, opts.max_iter, floor)
    ne, propose, advance = _steps(compiled)
    n = y.shape[0]
    ftol, xtol, gtol = opts.tolerances(dt)

    out_p = torch.empty_like(p)
    out_rss = torch.zeros(n, dtype=dt, device=dev)
    out_jtj = torch.zeros(n, 4, 4, dtype=dt, device=dev)
    out_iter = torch.full((n,), opts.max_iter, dtype=torch.int32, device=dev)
    out_status = torch.full((n,), MAX_ITER, dtype=torch.int8, device=dev)

    idx = torch.arange(n, device=dev)
    p = torch.minimum(torch.maximum(p, lb), ub)
    rss, jtj, jtr = ne(y, mask, x, p)
    rss = rss.contiguous()  # a view of the sums: one stride for every call of the steps
    lam = torch.full((n,), opts.lambda0, dtype=dt, device=dev)
    nu = torch.full((n,), 2.0, dtype=dt, device=dev)
    boost = torch.ones(n, dtype=dt, device=dev)
    dscale = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(torch.finfo(dt).tiny)
    live = torch.ones(n, dtype=torch.bool, device=dev)
    n_iter = torch.full((n,), opts.max_iter, dtype=torch.int32, device=dev)
    conv = torch.zeros(n, dtype=torch.bool, device=dev)

    def flush(rows: torch.Tensor) -> None:
        at = idx[rows]
        out_p[at], out_rss[at], out_jtj[at] = p[rows], rss[rows], jtj[rows]
        out_iter[at] = n_iter[rows]
        out_status[at] = torch.where(conv[rows], CONVERGED, MAX_ITER).to(torch.int8)

    for it in range(1, opts.max_iter + 1):
        if idx.numel() == 0:
            break
        step, ok, dscale, small_g = propose(p, rss, jtj, jtr, lam, dscale, lb, ub, gtol, floor)
        p, rss, jtj, jtr, lam, nu, boost, done = advance(
            y, mask, x, p, rss, jtj, jtr, lam, nu, boost, step, ok, small_g, live, lb, ub,
            ftol, xtol)
        n_iter = torch.where(done, it, n_iter)
        conv = conv | done
        live = live & ~done
        n_live = int(live.sum())
        if n_live < 0.8 * live.numel():  # compaction: finished fits leave the batch
            flush(~live)
            keep = live
            if compiled and n_live == 1:  # one finished (frozen) row stays beside the last live
                keep = live.clone()  # one: a batch of one row would compile graphs of its own
                keep[(~live).nonzero()[0, 0]] = True
            idx, y, p, rss, jtj, jtr = idx[keep], y[keep], p[keep], rss[keep], jtj[keep], jtr[keep]
            lam, nu, boost, dscale = lam[keep], nu[keep], boost[keep], dscale[keep]
            floor, live, n_iter, conv = floor[keep], live[keep], n_iter[keep], conv[keep]
            mask = mask[keep] if mask is not None else None
    if idx.numel():
        flush(torch.ones_like(live))
    return out_p, out_rss, out_jtj, out_iter, out_status


OUTSIDE = (0.5, 1.0)  # restart taus beyond each end of the data, as fractions of the tau margin


def _outside_taus(x: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor) -> list[float]:
    """Taus before the first and after the last point of the data, within the bounds (at the
    fractions :data:`OUTSIDE` of the way to each bound): a token learned before the first
    checkpoint, or learning after the last, is a sigmoid whose midpoint lies there."""
    x0, x1 = float(x.min()), float(x.max())
    before = [x0 + f * (float(lb[2]) - x0) for f in OUTSIDE]
    after = [x1 + f * (float(ub[2]) - x1) for f in OUTSIDE]
    return [t for t in before + after if math.isfinite(t)]


def _scan_grid(x: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor, n_tau: int) -> torch.Tensor:
    """(tau, k) pairs scanned by a restart: ``tau`` evenly inside the data with ``k`` broad
    (4 / span), medium (16 / span) and the sharpest allowed; and ``tau`` outside the data
    (:func:`_outside_taus`) with the broad and medium ``k`` (a sharper step outside the data
    is flat on them). So the scan, like the smooth alternatives' profile, covers steps whose
    midpoint the checkpoints do not see."""
    x0, x1 = float(x.min()), float(x.max())
    span = max(x1 - x0, 1e-12)
    taus = [x0 + (i + 0.5) / n_tau * span for i in range(n_tau)]
    broad = [4.0 / span, 16.0 / span]
    pairs = [[t, k] for k in (*broad, float(ub[3])) for t in taus]
    pairs += [[t, k] for k in broad for t in _outside_taus(x, lb, ub)]
    grid = torch.tensor(pairs, dtype=x.dtype, device=x.device)
    return torch.minimum(torch.maximum(grid, lb[2:]), ub[2:])


def _scan(y: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor, lb: torch.Tensor,
          ub: torch.Tensor, opts: FitOptions, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The best point of the (tau, k) grid of :func:`_scan_grid` per row, (profile RSS,
    parameters): each point is scored by its profile RSS (``lo`` and ``hi`` solved linearly),
    so the scan costs one model evaluation per point."""
    n = y.shape[0]
    if compiled and n == 1:
        return _first_row(_scan(*_two_rows(y, mask), x, lb, ub, opts, compiled))
    m = mask if mask is not None else torch.ones_like(y)
    best_rss = torch.full((n,), torch.inf, dtype=y.dtype, device=y.device)
    best = torch.zeros(n, 4, dtype=y.dtype, device=y.device)
    profile = _compiled(linear_lohi) if compiled else linear_lohi
    for tau_k in _scan_grid(x, lb, ub, opts.restart_starts):
        tau = tau_k[0].expand(n)
        k = tau_k[1].expand(n)
        lo, hi, r = profile(y, m, x, tau, k)
        cand = torch.stack([lo, hi, tau, k], dim=1)
        better = r < best_rss
        best_rss = torch.where(better, r, best_rss)
        best = torch.where(better[:, None], cand, best)
    return best_rss, best


def _restart(y, mask, x, lb, ub, opts, compiled, fused, start, p, rss, jtj, n_iter, status,
             floor=None):
    """Refit rows from ``start`` (the best points of :func:`_scan`); keep whichever fit has the
    lower RSS."""
    n = y.shape[0]
    if compiled and n == 1:
        y, mask, start, p, rss, jtj, n_iter, status, floor = _two_rows(
            y, mask, start, p, rss, jtj, n_iter, status, floor)
        return _first_row(_restart(y, mask, x, lb, ub, opts, compiled, fused, start, p, rss,
                                   jtj, n_iter, status, floor))
    rp, rr, rj, ri, rs = _levenberg_marquardt(y, mask, x, start, lb, ub, opts, compiled, floor,
                                              fused)
    b = torch.isfinite(rr) & (rr < rss)
    p = torch.where(b[:, None], rp, p)
    rss = torch.where(b, rr, rss)
    jtj = torch.where(b[:, None, None], rj, jtj)
    status = torch.where(b, rs, status)
    return p, rss, jtj, n_iter + ri, status


@dataclass
class _Batch:
    """A batch's rows prepared for fitting: ``y`` with missing points as 0 and their ``mask``
    (None when every point is present), the points per row, each row's mean and total sum of
    squares, and, for complete rows, the noise variance, RSS floor and starting guess of every
    row (computed in the same pass as the mean)."""

    y: torch.Tensor
    finite: torch.Tensor
    mask: torch.Tensor | None
    count: torch.Tensor
    mean: torch.Tensor
    tss: torch.Tensor
    prepared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # noise, floor, p0

    @property
    def complete(self) -> bool:
        return self.mask is None


def _batch(losses: torch.Tensor, x: torch.Tensor, compiled: bool) -> _Batch:
    n, kk = losses.shape
    finite = torch.isfinite(losses)  # infinite losses count as missing points
    complete = bool(finite.all())
    count = torch.full((n,), kk, device=losses.device) if complete else finite.sum(1)
    if complete and n:
        prepare = _compiled(_prepare_complete) if compiled else _prepare_complete
        mean, tss, noise, floor, p0 = prepare(losses, x)
        return _Batch(losses, finite, None, count, mean, tss, (noise, floor, p0))
    y = torch.where(finite, losses, 0)
    mask = finite.to(losses.dtype)
    mean = y.sum(1) / count.clamp_min(1)
    tss = ((y - mean[:, None]).square() * mask).sum(1)
    return _Batch(y, finite, None if complete else mask, count, mean, tss)


def _no_fits(n: int, dt: torch.dtype, dev: torch.device) -> dict[str, torch.Tensor]:
    """The results of ``n`` rows before any is fitted: NaN, no iteration, too few points."""
    nan = torch.full((n,), math.nan, dtype=dt, device=dev)
    res = {name: nan.clone() for name in ("lo", "hi", "tau", "k", "lo_se", "hi_se", "tau_se",
                                           "k_se", "rss", "r2")}
    res["n_iter"] = torch.zeros(n, dtype=torch.int32, device=dev)
    res["status"] = torch.full((n,), TOO_FEW, dtype=torch.int8, device=dev)
    return res


def _set_constant(res: dict[str, torch.Tensor], constant: torch.Tensor, mean: torch.Tensor,
                  x: torch.Tensor, lb: torch.Tensor) -> None:
    """Constant rows: the value, a step nowhere in particular."""
    res["lo"] = torch.where(constant, mean, res["lo"])
    res["hi"] = torch.where(constant, mean, res["hi"])
    res["tau"] = torch.where(constant, 0.5 * (x.min() + x.max()), res["tau"])
    res["k"] = torch.where(constant, lb[3], res["k"])
    for name in ("lo_se", "hi_se"):
        res[name] = torch.where(constant, 0.0, res[name])
    for name in ("tau_se", "k_se"):
        res[name] = torch.where(constant, math.inf, res[name])
    res["rss"] = torch.where(constant, 0.0, res["rss"])
    res["status"] = torch.where(constant, CONSTANT, res["status"]).to(torch.int8)


def _starts(batch: _Batch, rows: torch.Tensor, x: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows to fit: (y, mask, starting guess, noise variance, RSS floor)."""
    every = rows.numel() == len(batch.y)
    yr = batch.y if every else batch.y[rows]
    if batch.prepared is not None:
        noise, floor, p0 = (batch.prepared if every else
                            tuple(t[rows] for t in batch.prepared))
        return yr, None, p0, noise, floor
    finite = batch.finite[rows]
    p0 = guess(torch.where(finite, yr, math.nan), x)
    return yr, batch.mask[rows], p0, _difference_variance(yr, finite), _rss_floor(yr)


def _fit_rows(batch: _Batch, rows: torch.Tensor, x: torch.Tensor, lb: torch.Tensor,
              ub: torch.Tensor, opts: FitOptions, compiled: bool, fused: bool) -> tuple:
    """Fit the rows (restarting poor fits): (params, rss, n_iter, status, standard errors,
    singular)."""
    yr, mask, p0, noise, floor = _starts(batch, rows, x)
    p0 = torch.minimum(torch.maximum(p0, lb), ub)
    p, rss, jtj, n_iter, st = _levenberg_marquardt(yr, mask, x, p0, lb, ub, opts, compiled,
                                                   floor, fused)
    errors = _compiled(_standard_errors) if compiled else _standard_errors
    count = batch.count[rows]
    se, singular = errors(jtj, rss, count)
    if opts.restarts:
        resid = rss / (count - 4).clamp_min(1)
        on_bound = ((p[:, 2:] <= lb[2:]) | (p[:, 2:] >= ub[2:])).any(1)
        poor = (resid > opts.restart_noise * noise) | (st != CONVERGED) | on_bound | singular
        poor = poor.nonzero()[:, 0]
        if poor.numel():
            mask_poor = mask[poor] if mask is not None else None
            _, start = _scan(yr[poor], mask_poor, x, lb, ub, opts, compiled)
            sub = _restart(yr[poor], mask_poor, x, lb, ub, opts, compiled, fused, start,
                           p[poor], rss[poor], jtj[poor], n_iter[poor], st[poor], floor[poor])
            p[poor], rss[poor], jtj[poor], n_iter[poor], st[poor] = sub
            se[poor], singular[poor] = errors(jtj[poor], rss[poor], count[poor])
    return p, rss, n_iter, st, se, singular


def _fit_batch(losses: torch.Tensor, x: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor,
               opts: FitOptions, compiled: bool, fused: bool) -> dict[str, torch.Tensor]:
    """Fit one batch of rows (already on the device, in the fitting dtype)."""
    if compiled and len(losses) == 1:
        return _first_row(_fit_batch(*_two_rows(losses), x, lb, ub, opts, compiled, fused))
    dt = losses.dtype
    batch = _batch(losses, x, compiled)
    enough = batch.count >= opts.min_points
    eps = torch.finfo(dt).eps
    constant = enough & (batch.tss <= batch.count * (8 * eps * (batch.mean.abs() + eps)) ** 2)
    res = _no_fits(len(losses), dt, losses.device)
    _set_constant(res, constant, batch.mean, x, lb)
    rows = (enough & ~constant).nonzero()[:, 0]
    if rows.numel():
        p, rss, n_iter, st, se, singular = _fit_rows(batch, rows, x, lb, ub, opts, compiled,
                                                     fused)
        st = torch.where(singular & (st == CONVERGED), SINGULAR, st).to(torch.int8)
        for i, name in enumerate(PARAMS):
            res[name][rows] = p[:, i]
            res[name + "_se"][rows] = se[:, i].to(dt)
        res["rss"][rows] = rss
        res["r2"][rows] = 1 - rss / batch.tss[rows]
        res["n_iter"][rows] = n_iter
        res["status"][rows] = st
    return res


def _difference_variance(y: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Noise variance from differences of successive finite points (von Neumann's estimator)."""
    if bool(finite.all()):
        return (y[:, 1:] - y[:, :-1]).square().sum(1) / (2 * (y.shape[1] - 1))
    filled = _forward_fill(y, finite)
    diff = filled[:, 1:] - filled[:, :-1]
    # one difference ends at each finite point after the first finite one
    pairs = (finite & (finite.cumsum(1) > 1))[:, 1:].to(y.dtype)
    return (diff**2 * pairs).sum(1) / (2 * pairs.sum(1).clamp_min(1))


def _standard_errors(jtj: torch.Tensor, rss: torch.Tensor, count: torch.Tensor):
    """sqrt(diag((J^T J)^-1) * rss / (n - 4)) in float64; inf where J^T J is singular."""
    a = jtj.to(torch.float64)
    # scale to unit diagonal so that the conditioning test is about the parameters' correlation
    d = torch.sqrt(torch.diagonal(a, dim1=1, dim2=2)).clamp_min(1e-300)
    corr = a / d[:, :, None] / d[:, None, :]
    eye = torch.eye(4, dtype=torch.float64, device=a.device).expand_as(corr)
    inv, ok = _solve_spd4(corr, eye)
    ok = ok & torch.isfinite(inv).all((1, 2))
    ok = ok & (inv.abs().sum(1).amax(1) < 1e14)  # the 1-norm of the inverse correlation
    var = torch.diagonal(inv, dim1=1, dim2=2) / d**2
    sigma2 = rss.to(torch.float64) / (count.to(torch.float64) - 4).clamp_min(1)
    se = torch.sqrt(var * sigma2[:, None])
    se = torch.where(ok[:, None], se, math.inf)
    return se, ~ok


COMPILE_MIN_ROWS = 100_000  # fit_sigmoids compiles its iteration from this many rows (by default)


_WARM: set[tuple] = set()  # (device type, dtype, options) warmed up in this process


def _warm_key(device: str | torch.device, dtype: torch.dtype, options: FitOptions) -> tuple:
    return (resolve_device(str(device)).type, dtype, repr(options))


def is_warm(device: str | torch.device, dtype: torch.dtype = torch.float32,
            options: FitOptions | None = None) -> bool:
    """Whether :func:`warm_up` already built these graphs in this process."""
    return _warm_key(device, dtype, options or FitOptions()) in _WARM


def warm_up(x: np.ndarray, *, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, options: FitOptions | None = None) -> None:
    """Compile what :func:`fit_sigmoids` compiles for ``COMPILE_MIN_ROWS`` rows or more on the
    grid ``x``, by fitting a few complete synthetic trajectories (steps and flat noise), so
    that the compilation can overlap other work, e.g. reading the first rows to fit. The graphs
    are shape-generic: the real batches reuse them."""
    opts = options or FitOptions()
    if opts.compile is False:
        return
    key = _warm_key(device, dtype, opts)
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(0)
    n = 64
    tau = rng.uniform(x.min(), x.max(), n)
    y = 1.0 + 2.0 / (1.0 + np.exp(3.0 * (x[None, :] - tau[:, None])))
    y[n // 2:] = 2.0  # flat rows: restarts
    y = y + rng.normal(0.0, 0.1, y.shape)
    fit_sigmoids(y.astype(np.float32), x, device=device, dtype=dtype,
                 options=replace(opts, compile=True))
    _WARM.add(key)


_COMPILER_OK: dict[str, bool] = {}




def _compiler_works(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here (it needs a C++ compiler on CPU)."""
    if device.type not in _COMPILER_OK:
        try:
            torch.compile(lambda v: v * 2 + 1, dynamic=False)(torch.ones(3, device=device))
            _COMPILER_OK[device.type] = True
        except Exception as e:  # noqa: BLE001 - any compiler failure: evaluate eagerly
            warnings.warn(f"torch.compile is unavailable ({type(e).__name__}: {e}); fitting "
                          "without it", RuntimeWarning, stacklevel=3)
            _COMPILER_OK[device.type] = False
    return _COMPILER_OK[device.type]


def _use_kernel(kernel: str, device: torch.device) -> bool:
    """Whether to run the iterations in the fused Triton kernel."""
    if kernel == "torch":
        return False
    if kernel == "auto":
        return device.type == "cuda" and fit_triton.available(device)
    if kernel != "triton":
        raise ValueError(f"kernel must be 'auto', 'triton' or 'torch', not {kernel!r}")
    if not fit_triton.available(device):
        raise ValueError(f"the Triton fit kernel cannot run on {device} (it needs CUDA and "
                         "Triton, or TRITON_INTERPRET=1 on a CPU)")
    return True


def solver_name(options: FitOptions, device: torch.device) -> str:
    """What runs the iterations on ``device``: "fused Triton kernel" or "torch"; ValueError
    where ``options.kernel`` asks for a kernel that cannot run there."""
    return "fused Triton kernel" if _use_kernel(options.kernel, device) else "torch"


def _default_batch(device: torch.device, compiled: bool, fused: bool) -> int:
    """Rows per batch: 2**21 on CUDA with the Triton kernel (2**20 without); on a CPU 2**18 when
    compiled (the fused loops stream rows) and 8192 eager (its (rows x K) intermediates should
    stay near the cache)."""
    if device.type == "cuda":
        return 1 << 21 if fused else 1 << 20
    return 1 << 18 if compiled else 8192


def fit_sigmoids(losses: np.ndarray | torch.Tensor, x: np.ndarray | torch.Tensor, *,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 options: FitOptions | None = None,
                 thresholds: KindThresholds | None = None,
                 progress: bool = False) -> SigmoidFit:
    """Fit the sigmoid step to every row of ``losses`` (N, K; NaN = missing) at ``x`` (K,).

    ``device`` None or "auto" means CUDA when available, else CPU. Rows are fitted in batches of
    ``options.batch_size`` and results are returned on the host, so N may exceed device memory.
    """
    opts = options or FitOptions()
    thresholds = thresholds or KindThresholds()
    dev = resolve_device("auto" if device is None else str(device))
    x_np = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[1] != x_np.shape[0]:
        raise ValueError(f"losses must be (N, {x_np.shape[0]}), got {tuple(losses.shape)}")
    if x_np.shape[0] > 1 and not np.all(np.diff(x_np) > 0):
        raise ValueError("x must be strictly increasing")
    n = losses.shape[0]
    lb_np, ub_np = opts.bounds(x_np)
    xt = torch.as_tensor(x_np, dtype=dtype, device=dev)
    lb = torch.as_tensor(lb_np, dtype=dtype, device=dev)
    ub = torch.as_tensor(ub_np, dtype=dtype, device=dev)
    compiled = opts.compile if opts.compile is not None else n >= COMPILE_MIN_ROWS
    if compiled and not _compiler_works(dev):
        compiled = False
    fused = _use_kernel(opts.kernel, dev)
    batch = opts.batch_size or _default_batch(dev, compiled, fused)

    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    out = {name: np.empty(n, dtype=np_dtype) for name in SigmoidFit._COLUMNS if name != "n_iter"}
    out.update(n_iter=np.empty(n, np.int32), status_code=np.empty(n, np.int8),
               kind_code=np.empty(n, np.int8))
    bar = None
    if progress:
        from spectrum.console import progress as progress_bar

        bar = progress_bar(total=n, unit="fit", desc="fit", smoothing=0.1)
    x_first = float(np.min(x_np)) if len(x_np) else math.nan
    x_last = float(np.max(x_np)) if len(x_np) else math.nan
    for start in range(0, n, batch):
        chunk = losses[start:start + batch]
        t = torch.as_tensor(chunk).to(device=dev, dtype=dtype)
        res = _fit_batch(t, xt, lb, ub, opts, compiled, fused)
        status = res.pop("status")
        # classified where fitted (on the GPU for GPU fits), then copied straight into `out`
        res["kind_code"] = classify(res["lo"], res["hi"], res["tau"], res["r2"],
                                    fitted=status != TOO_FEW, constant=status == CONSTANT,
                                    x_last=x_last, thresholds=thresholds, k=res["k"],
                                    x_first=x_first)
        res["status_code"] = status
        for name, values in res.items():
            torch.from_numpy(out[name][start:start + len(t)]).copy_(values)
        if bar is not None:
            bar.update(t.shape[0])
    if bar is not None:
        bar.close()
    return SigmoidFit(**out, x=x_np, options=opts, thresholds=thresholds)


__all__ = ["FitOptions", "SigmoidFit", "STATUSES", "fit_sigmoids", "is_warm", "solver_name",
           "warm_up"]
