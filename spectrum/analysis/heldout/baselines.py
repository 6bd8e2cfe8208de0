"""The baselines a sceptic would pick, each fitted on the fit runs only and predicting a held-out
run's mean-loss curve at its own checkpoints (so it is scored on the same targets, through the
same operator, as the spectrum's prediction):

- ``chinchilla``: ``E + A M^-alpha + B D^-beta`` fitted to the fit runs' end-of-run losses (the loss
  of a run annealed to its own D); along a run it is read at ``D = T`` (the loss a run annealed at
  T tokens would reach). Its parameters are bounded (E in [0, the largest end loss], A, B > 0,
  alpha, beta in [0, 2]); intervals: refits under the bootstrap over sequences (the starting
  point of each refit is the estimate's exponents); a parameter at a bound or an interval
  spanning orders of magnitude is reported as not identifiable
  (:func:`chinchilla_identifiability`);
- ``power_law_T_interp``: per fit run, ``E + B T^-beta`` fitted to its mean loss over the scored
  checkpoints; ``E``, ``ln B`` and ``beta`` interpolated linearly in (ln M, ln D);
- ``schedule_law``: the learning-rate-annealing law, which knows each run's schedule
  (:mod:`spectrum.analysis.heldout.schedule_law`);
- ``aggregate_curve``: at each T, the fit runs' measured mean losses (interpolated in ln T, within
  each run's scored range) fitted by a plane in (ln M, ln D) and read at the held-out run: no
  tokens at all;
- ``token_power_law``: per token, the power law in T of the fit stage (:mod:`spectrum.fit.smooth`),
  read at three anchor times (:func:`power_law_anchors`, :func:`power_law_observations`) and
  put through the same per-token parameter model as the sigmoids: the per-token smooth null;
- ``zero``: no change (derivative targets only).

The cheap ones (``power_law_T_interp``, ``schedule_law``, ``aggregate_curve``) are refitted on
every bootstrap replicate of the fit runs' curves, so their intervals carry their fitting
uncertainty. A baseline that reads the fit runs along ln M or ln D follows the prediction's rule:
where the fit runs have one value on an axis and a held-out run another, it does not predict that
run (:func:`refusal`).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from spectrum.analysis.heldout.scaling import (POWER_LAW_PARAMS, PowerLaw, fit_power_law,
                                               power_law_in_T)
from spectrum.analysis.runs.curves import SeqCurve
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.stats import percentile_interval
from spectrum.errors import SpectrumError
from spectrum.fit.smooth import BETA_MAX, power_curve

RunCurve = Callable[[RunData], np.ndarray]  # a held-out run -> predicted mean loss at its x (K,)


def end_losses(runs: list[RunData], weights: np.ndarray) -> np.ndarray:
    """(R, runs): each run's mean loss at its last checkpoint, per bootstrap replicate."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(weights @ r.seq_sums[:, -1]) / (weights @ r.seq_counts[:, -1])
                         for r in runs], 1)


def _design(lnM: np.ndarray, lnD: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Columns 1, ln M, ln D (only the axes that vary, centred)."""
    cols = [np.ones_like(lnM)]
    for v in (lnM, lnD):
        if np.ptp(v) > 1e-9:
            cols.append(v)
    return np.stack(cols, 1), len(cols)


def _plane_rows(lnM: np.ndarray, lnD: np.ndarray, y: np.ndarray,
                at: tuple[float, float]) -> np.ndarray:
    """Least-squares planes in (ln M, ln D) through each column of ``y`` (n, R), read at ``at``:
    (R,); NaN if underdetermined."""
    lnM, lnD = np.asarray(lnM, float), np.asarray(lnD, float)
    y = np.asarray(y, float)
    X, p = _design(lnM, lnD)
    if len(y) < p or np.linalg.matrix_rank(X) < p:
        return np.full(y.shape[1:], np.nan)
    row = [1.0] + [a for a, v in zip(at, (lnM, lnD)) if np.ptp(v) > 1e-9]
    return (np.asarray(row) @ np.linalg.pinv(X)) @ y  # the plane's weights on the points


def _plane(lnM: np.ndarray, lnD: np.ndarray, y: np.ndarray, at: tuple[float, float]) -> float:
    """Least-squares plane in (ln M, ln D) through ``y`` read at ``at``; NaN if underdetermined."""
    return float(_plane_rows(lnM, lnD, np.asarray(y, float)[:, None], at)[0])


def refusal(fit: list[RunData], h: RunData) -> str | None:
    """Why a baseline that reads the fit runs along ln M or ln D cannot predict ``h``: the fit
    runs have one value on an axis and ``h`` another (the rule of the per-token parameter model,
    :mod:`spectrum.analysis.heldout.param_model`); None where it can."""
    for sym, what, of in (("M", "model size", lambda r: r.M), ("D", "data scale", lambda r: r.D)):
        vals = np.log([of(r) for r in fit])
        if np.ptp(vals) <= 1e-9 and abs(np.log(of(h)) - vals[0]) > 1e-9:
            return (f"run {h.name}: the fit runs have one {what} only ({sym} = "
                    f"{np.exp(vals[0]):.4g}), so the dependence on {sym} is unknown and a run at "
                    f"{sym} = {of(h):.4g} cannot be predicted")
    return None


CHINCHILLA_EXPONENT_MAX = 2.0  # alpha, beta in [0, 2]; E in [0, largest end loss]; A, B > 0
SPAN_DECADES = 2.0  # an interval of A or B wider than this many factors of 10 is not identified


def chinchilla_identifiability(law: PowerLaw, intervals: dict[str, list[float]],
                               largest: float) -> tuple[bool, str]:
    """Whether the law's parameters are pinned down by the end-of-run losses, in words: a
    parameter at a bound of the fit, or an interval spanning orders of magnitude, is not."""
    found = []
    if law.E <= 1e-6 * largest:
        found.append("E is at its lower bound 0")
    elif law.E >= largest * (1 - 1e-6):
        found.append("E is at its upper bound (the largest end-of-run loss)")
    for p in ("alpha", "beta"):
        v = getattr(law, p)
        if v <= 1e-6 or v >= CHINCHILLA_EXPONENT_MAX - 1e-6:
            found.append(f"{p} is at a bound ({v:.3g}; bounds 0 and {CHINCHILLA_EXPONENT_MAX:g})")
    for p in ("A", "B", "E"):
        lo_hi = intervals.get(p)
        if not lo_hi or lo_hi[1] <= 0:
            continue
        if lo_hi[0] <= 0 or np.log10(lo_hi[1] / lo_hi[0]) > SPAN_DECADES:
            found.append(f"the 95% interval of {p} [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}] spans more "
                         f"than {SPAN_DECADES:g} orders of magnitude")
    if not found:
        return True, ("The Chinchilla law's parameters are identified by the fit runs' end-of-run "
                      "losses (none at a bound, no interval spanning orders of magnitude).")
    return False, ("The Chinchilla law is not identifiable from the fit runs' end-of-run losses: "
                   + "; ".join(found) + ". Its curve is a description of these losses, and its "
                   "parameters are not findings.")


def fit_chinchilla(fit: list[RunData], weights: np.ndarray,
                   n_refits: int = 100) -> tuple[PowerLaw | None, dict]:
    """The law on end-of-run losses, fitted with bounded parameters
    (:data:`CHINCHILLA_EXPONENT_MAX`), and a summary with 95% intervals of its parameters and
    whether they are identifiable (:func:`chinchilla_identifiability`)."""
    ends = end_losses(fit, weights)
    M = np.array([r.M for r in fit])
    D = np.array([r.D for r in fit])
    bounded = {"x_name": "D", "exponent_max": CHINCHILLA_EXPONENT_MAX}
    try:
        law = fit_power_law(M, D, ends[0], **bounded)
    except SpectrumError as e:
        return None, {"reason": str(e)}
    refits = []
    for row in ends[1:n_refits + 1]:
        try:  # one start, from the estimate's exponents
            refits.append(fit_power_law(M, D, row, starts=(max(law.alpha, 0.05),), **bounded))
        except SpectrumError:
            continue
    info = {**law.as_dict(), "n_end_losses": len(fit), "intervals": {},
            "bounds": {"E": [0.0, "largest end-of-run loss"], "A": "> 0", "B": "> 0",
                       "alpha": [0.0, CHINCHILLA_EXPONENT_MAX],
                       "beta": [0.0, CHINCHILLA_EXPONENT_MAX]}}
    for p in POWER_LAW_PARAMS:
        v = np.array([getattr(f, p) for f in refits])
        if v.size >= 2:
            info["intervals"][p] = [float(x) for x in percentile_interval(v)]
    info["interval_method"] = f"refits on {len(refits)} bootstrap replicates over sequences"
    info["identifiable"], info["identifiability"] = chinchilla_identifiability(
        law, info["intervals"], float(np.nanmax(ends[0])))
    return law, info


def chinchilla_curve(law: PowerLaw) -> RunCurve:
    return lambda r: law(r.M, np.exp(r.x))


def run_power_laws(runs: list[RunData]) -> dict[str, tuple[float, ...]]:
    """Per run: (ln M, ln D, E, ln B, beta) of ``E + B T^-beta`` fitted to its mean loss over the
    scored checkpoints (runs where the fit fails are left out)."""
    out = {}
    for r in runs:
        law = power_law_in_T(r.x[r.scored], r.mean_loss_all[r.scored])
        if law is None:
            continue
        out[r.name] = (np.log(r.M), np.log(r.D), law.E, np.log(max(law.B, 1e-300)), law.beta)
    return out


BETAS = np.linspace(0.01, 5.0, 250)  # the grid of a replicate's refit of E + B T^-beta


def _solve(K: int, su, suu, sy, syy, suy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of y on (1, u) from its sums, with ``E >= 0``: (E, B, sse). Where the free
    solution has E < 0 the constrained one has E = 0 (one free parameter, B)."""
    det = K * suu - su ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        B = (K * suy - su * sy) / det
        E = (sy - B * su) / K
        sse = syy - E * sy - B * suy
        at_zero = ~(E >= 0)
        B = np.where(at_zero, suy / suu, B)
        sse = np.where(at_zero, syy - B * suy, sse)
    return np.where(at_zero, 0.0, E), B, np.maximum(sse, 0.0)


def _linear_fit(u_b: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, least squares of ``Y`` (R, K) on (1, ``u_b``) (R, K) with E >= 0: (E, B, sse)."""
    return _solve(Y.shape[1], u_b.sum(1), (u_b ** 2).sum(1), Y.sum(1), (Y ** 2).sum(1),
                  (u_b * Y).sum(1))


def _grid_sse(u: np.ndarray, Y: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(R, G) residual sum of squares of every row of ``Y`` on (1, ``u^beta``) for each ``beta``
    of :data:`BETAS` (from the normal equations, all at once); inf where a bound is broken."""
    U = u[:, None] ** BETAS[None, :]  # (K, G)
    E, B, sse = _solve(len(u), U.sum(0), (U ** 2).sum(0), Y.sum(1)[:, None],
                       (Y ** 2).sum(1)[:, None], Y @ U)
    return np.where((B > 0) & (E <= top[:, None]) & np.isfinite(sse), sse, np.inf)


def power_law_draws(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(R, 3) ``(E, ln B, beta)`` of ``E + B T^-beta`` refitted to each row of ``Y`` (R, K) at
    ``x = ln T``: for a given ``beta`` the law is linear in ``E`` and ``B``, so every row is
    solved at once on the grid :data:`BETAS`, its best ``beta`` refined by a golden-section
    search between the grid's neighbours, subject to ``B > 0`` and ``0 <= E <= max L`` (the bounds of
    :func:`power_law_in_T`); NaN where no ``beta`` satisfies them."""
    x, Y = np.asarray(x, float), np.atleast_2d(np.asarray(Y, float))
    u = np.exp(-(x - x.min()))  # T / T_first, to the power -1: keeps the columns well scaled
    top = np.nanmax(Y, 1)

    def solve(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        E, B, sse = _linear_fit(u[None, :] ** beta[:, None], Y)
        return E, B, np.where((B > 0) & (E >= 0) & (E <= top) & np.isfinite(sse), sse, np.inf)

    sse = _grid_sse(u, Y, top)  # (R, G)
    i = np.clip(np.argmin(sse, 1), 1, len(BETAS) - 2)
    lo, hi = BETAS[i - 1], BETAS[i + 1]
    g = (np.sqrt(5) - 1) / 2  # golden-section search between the grid's neighbours, every row
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = solve(a)[2], solve(b)[2]
    for _ in range(40):
        left = fa <= fb
        hi, lo = np.where(left, b, hi), np.where(left, lo, a)
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = solve(a)[2], solve(b)[2]
    beta = 0.5 * (lo + hi)
    grid = np.argmin(sse, 1)
    worse = ~(solve(beta)[2] <= sse[np.arange(len(Y)), grid])
    beta = np.where(worse, BETAS[grid], beta)
    E, B, final = solve(beta)
    out = np.stack([E, np.log(np.where(B > 0, B, np.nan)) + beta * x.min(), beta], 1)
    out[~np.isfinite(final)] = np.nan
    return out


def power_law_T_interp(fit: list[RunData], laws: dict[str, tuple[float, ...]],
                       weights: np.ndarray | None = None) -> tuple[RunCurve | None, dict]:
    """Per-run power laws in T (:func:`run_power_laws`), parameters interpolated in (ln M, ln D).
    Row 0 is the estimate; each further replicate of ``weights`` refits every fit run's law to
    its curve drawn under that replicate (:func:`power_law_draws`), then interpolates."""
    used = [r for r in fit if r.name in laws]
    if len(used) < 2:
        return None, {"reason": "fewer than two fit runs with a power law in T"}
    lnM = np.log([r.M for r in used])
    lnD = np.log([r.D for r in used])
    draws = np.stack([_law_rows(r, laws[r.name], weights) for r in used])  # (runs, R, 3)

    def curve(h: RunData) -> np.ndarray:
        at = (np.log(h.M), np.log(h.D))
        e, lb, b = (_plane_rows(lnM, lnD, draws[:, :, i], at)[:, None] for i in range(3))
        with np.errstate(over="ignore", invalid="ignore"):
            return e + np.exp(lb) * np.exp(h.x)[None, :] ** -b

    return curve, {"form": "E + B T^-beta per fit run; E, ln B, beta planes in (ln M, ln D)",
                   "fit_runs": len(used),
                   "interval_method": f"refitted on each of {draws.shape[1] - 1} bootstrap "
                                      "replicates (profile over a grid of beta)"}


_DRAWS: dict[bytes, np.ndarray] = {}  # refits already made (leave-one-run-out repeats them)


def _law_rows(r: RunData, law: tuple[float, ...], weights: np.ndarray | None) -> np.ndarray:
    """(R, 3) ``(E, ln B, beta)``: row 0 the run's law, then its refits per replicate (kept for
    the same run data and replicates, which every leave-one-run-out job shares)."""
    est = np.array(law[2:], float)[None, :]
    if weights is None or len(weights) < 2:
        return est
    sc = r.scored
    key = hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in
                                (r.x[sc], r.seq_sums[:, sc], r.seq_counts[:, sc], weights))
                       ).digest()
    if key not in _DRAWS:
        if len(_DRAWS) > 256:
            _DRAWS.clear()
        drawn = SeqCurve(r.seq_sums[:, sc], r.seq_counts[:, sc]).draw(weights[1:])
        _DRAWS[key] = power_law_draws(r.x[sc], drawn)
    return np.concatenate([est, _DRAWS[key]])


def _interp_rows(x: float, xs: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Each row of ``Y`` (R, K) at ``xs`` linearly interpolated at ``x`` (within the range)."""
    k = int(np.clip(np.searchsorted(xs, x), 1, len(xs) - 1))
    t = float(np.clip((x - xs[k - 1]) / (xs[k] - xs[k - 1]), 0.0, 1.0))
    return (1 - t) * Y[:, k - 1] + t * Y[:, k]


def aggregate_curve(fit: list[RunData], weights: np.ndarray | None = None) -> RunCurve:
    """The fit runs' mean-loss curves, interpolated in ln T and then in (ln M, ln D); with
    ``weights``, on the curves drawn under each replicate (a refit per replicate: (R, K))."""
    W = np.ones((1, len(fit[0].seq_ids) if fit else 0)) if weights is None else weights
    usable = [r for r in fit if r.scored.sum() >= 2]
    drawn = {r.name: SeqCurve(r.seq_sums[:, r.scored], r.seq_counts[:, r.scored]).draw(W)
             for r in usable}

    def curve(h: RunData) -> np.ndarray:
        out = np.full((len(W), len(h.x)), np.nan)
        for j, x in enumerate(h.x):
            runs = [r for r in usable
                    if r.x[r.scored].min() - 1e-9 <= x <= r.x[r.scored].max() + 1e-9]
            if runs:
                y = np.stack([_interp_rows(x, r.x[r.scored], drawn[r.name]) for r in runs])
                out[:, j] = _plane_rows(np.log([r.M for r in runs]), np.log([r.D for r in runs]),
                                        y, (np.log(h.M), np.log(h.D)))
        return out

    return curve


POWER_COLUMNS = ("power_e", "power_b", "power_beta", "power_x0")


def power_law_anchors(fit: list[RunData]) -> np.ndarray:
    """Three anchor times equally spaced in ln T: the fit runs' mean first checkpoint, mean last
    checkpoint and their midpoint."""
    first = float(np.mean([r.x.min() for r in fit]))
    return np.linspace(first, max(float(np.mean([r.x.max() for r in fit])), first + 1.0), 3)


def power_law_observations(cols: dict[str, np.ndarray], anchors: np.ndarray
                           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per anchor ``v<j>``: each token's power law read there (0 where not finite) and its weight
    (1 where the law is finite at every anchor, else 0)."""
    e, b, beta, x0 = (np.asarray(cols[c], float) for c in POWER_COLUMNS)
    values = power_curve(e, b, beta, x0, anchors)
    ok = np.isfinite(values).all(1)
    return {f"v{j}": (np.where(ok, values[:, j], 0.0), ok.astype(float)) for j in range(3)}


def token_power_law_values(q: dict[str, np.ndarray], anchors: np.ndarray,
                           x: np.ndarray) -> np.ndarray:
    """(N, K) per-token power laws ``e + b exp(-beta (x - anchor_0))`` through the predicted
    anchor values (ratio of successive drops ``exp(-beta * spacing)`` kept in (0, 1): a
    decelerating curve; a token whose values do not change stays level)."""
    v0, v1, v2 = q["v0"][:, None], q["v1"][:, None], q["v2"][:, None]
    d1, d2 = v1 - v0, v2 - v1
    flat = np.abs(d1) < 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip(np.where(flat, 0.5, d2 / np.where(flat, 1.0, d1)), 1e-6, 1 - 1e-6)
    beta = np.minimum(-np.log(ratio) / (anchors[1] - anchors[0]), BETA_MAX)
    b = np.where(flat, 0.0, d1 / (np.exp(-beta * (anchors[1] - anchors[0])) - 1))
    return v0 - b + b * np.exp(-beta * (np.asarray(x, float)[None, :] - anchors[0]))
