"""The baselines a sceptic would pick, each fitted on the fit runs only and predicting a held-out
run's mean-loss curve at its own checkpoints (so it is scored on the same targets, through the
same operator, as the spectrum's prediction):

- ``chinchilla``: ``E + A M^-alpha + B D^-beta`` fitted to the fit runs' end-of-run losses (the loss
  of a run annealed to its own D); along a run it is read at ``D = T`` (the loss a run annealed at
  T tokens would reach). Parameter intervals: refits under the bootstrap over sequences (the
  starting point of each refit is the estimate's exponents);
- ``power_law_T_interp``: per fit run, ``E + B T^-beta`` fitted to its mean loss over the scored
  checkpoints; ``E``, ``ln B`` and ``beta`` interpolated linearly in (ln M, ln D);
- ``aggregate_curve``: at each T, the fit runs' measured mean losses (interpolated in ln T, within
  each run's scored range) fitted by a plane in (ln M, ln D) and read at the held-out run: no
  tokens at all;
- ``token_power_law``: per token, the power law in T of the fit stage (:mod:`spectrum.fit.smooth`),
  read at three anchor times (:func:`power_law_anchors`, :func:`power_law_observations`) and
  put through the same per-token parameter model as the sigmoids: the per-token smooth null;
- ``zero``: no change (derivative targets only).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spectrum.analysis.heldout.scaling import (POWER_LAW_PARAMS, PowerLaw, fit_power_law,
                                               power_law_in_T)
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


def _plane(lnM: np.ndarray, lnD: np.ndarray, y: np.ndarray, at: tuple[float, float]) -> float:
    """Least-squares plane in (ln M, ln D) through ``y`` read at ``at``; NaN if underdetermined."""
    lnM, lnD = np.asarray(lnM, float), np.asarray(lnD, float)
    X, p = _design(lnM, lnD)
    if len(y) < p or np.linalg.matrix_rank(X) < p:
        return float("nan")
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    row = [1.0] + [a for a, v in zip(at, (lnM, lnD)) if np.ptp(v) > 1e-9]
    return float(np.dot(coef, row))


def fit_chinchilla(fit: list[RunData], weights: np.ndarray,
                   n_refits: int = 100) -> tuple[PowerLaw | None, dict]:
    """The law on end-of-run losses, and a summary with 95% intervals of its parameters."""
    ends = end_losses(fit, weights)
    M = np.array([r.M for r in fit])
    D = np.array([r.D for r in fit])
    try:
        law = fit_power_law(M, D, ends[0], x_name="D")
    except SpectrumError as e:
        return None, {"reason": str(e)}
    refits = []
    for row in ends[1:n_refits + 1]:
        try:  # one start, from the estimate's exponents
            refits.append(fit_power_law(M, D, row, x_name="D",
                                        starts=(max(law.alpha, 0.05),)))
        except SpectrumError:
            continue
    info = {**law.as_dict(), "n_end_losses": len(fit), "intervals": {}}
    for p in POWER_LAW_PARAMS:
        v = np.array([getattr(f, p) for f in refits])
        if v.size >= 2:
            info["intervals"][p] = [float(x) for x in percentile_interval(v)]
    info["interval_method"] = f"refits on {len(refits)} bootstrap replicates over sequences"
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


def power_law_T_interp(fit: list[RunData],
                       laws: dict[str, tuple[float, ...]]) -> tuple[RunCurve | None, dict]:
    """Per-run power laws in T (:func:`run_power_laws`), parameters interpolated in (ln M, ln D)."""
    rows = [laws[r.name] for r in fit if r.name in laws]
    if len(rows) < 2:
        return None, {"reason": "fewer than two fit runs with a power law in T"}
    lnM, lnD, E, lnB, beta = (np.array(v) for v in zip(*rows))

    def curve(h: RunData) -> np.ndarray:
        at = (np.log(h.M), np.log(h.D))
        e, lb, b = (_plane(lnM, lnD, v, at) for v in (E, lnB, beta))
        return e + np.exp(lb) * np.exp(h.x) ** -b

    return curve, {"form": "E + B T^-beta per fit run; E, ln B, beta planes in (ln M, ln D)",
                   "fit_runs": len(rows)}


def aggregate_curve(fit: list[RunData]) -> RunCurve:
    """The fit runs' mean-loss curves, interpolated in ln T and then in (ln M, ln D)."""
    def curve(h: RunData) -> np.ndarray:
        out = np.full(len(h.x), np.nan)
        for j, x in enumerate(h.x):
            pts = [(np.log(r.M), np.log(r.D), np.interp(x, r.x[r.scored], r.mean_loss_all[r.scored]))
                   for r in fit if r.scored.sum() >= 2
                   and r.x[r.scored].min() - 1e-9 <= x <= r.x[r.scored].max() + 1e-9]
            if pts:
                lnM, lnD, y = (np.array(v) for v in zip(*pts))
                out[j] = _plane(lnM, lnD, y, (np.log(h.M), np.log(h.D)))
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
