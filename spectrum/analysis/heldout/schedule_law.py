"""The schedule-aware baseline ``schedule_law``: the learning-rate-annealing law of Tissue et al.
(2024, "Scaling law with learning rate annealing"), fitted on the fit runs' mean-loss curves with
their schedules (:mod:`spectrum.analysis.runs.schedule`) and read at a held-out run's checkpoints
with the held-out run's own schedule.

Per run, at step ``s``::

    L(s) = L0 + A * S1(s)^-alpha - C * S2(s)
    S1(s) = sum_{i <= s} eta_i                      (forward area)
    S2(s) = sum_{i <= s} m_i,  m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i)   (annealing area)

with ``eta_i`` the learning rate of the update ending at step ``i`` and ``lambda`` the paper's
decay factor 0.999. The annealing momentum starts at the peak (the warmup's end): the rise of the
warmup is not annealing, so ``S2`` counts only the steps after it; ``S1`` counts every step.

How M and D enter: the law is per run, so across the fit runs ``L0``, ``A`` and ``C`` are each
linear in the centred (ln M, ln D) (only the axes along which the fit runs vary) and ``alpha`` is
one exponent shared by all runs; D also enters through each run's schedule (a run annealed to its
own D has its own S1 and S2). For a fixed ``alpha`` the law is linear in the other coefficients,
so it is fitted by least squares profiled over a grid of ``alpha`` in (0, 2]: exact up to the
grid, and cheap enough to refit on every bootstrap replicate of the fit runs' curves.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spectrum.analysis.runs.curves import SeqCurve
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.schedule import Schedule

SCHEDULE_LAW = "schedule_law"
LAMBDA = 0.999
ALPHAS = np.linspace(0.01, 2.0, 200)
FORM = "L0 + A*S1^-alpha - C*S2 (Tissue et al. 2024), lambda = 0.999"
RunCurve = Callable[[RunData], np.ndarray]


def decayed_sums(d: np.ndarray, lam: float, block: int = 512) -> np.ndarray:
    """``m_i = lam * m_{i-1} + d_i`` (``m_{-1} = 0``) for every i, in blocks short enough that
    ``lam^-k`` stays finite."""
    m = np.empty(len(d))
    carry = 0.0
    for start in range(0, len(d), block):
        seg = d[start:start + block]
        p = lam ** np.arange(len(seg))
        m[start:start + len(seg)] = p * (lam * carry + np.cumsum(seg / p))
        carry = m[start + len(seg) - 1]
    return m


def areas(schedule: Schedule, steps: np.ndarray, lam: float = LAMBDA
          ) -> tuple[np.ndarray, np.ndarray]:
    """``S1`` and ``S2`` (module docstring) at ``steps`` (held at the schedule's last step)."""
    lr = np.asarray(schedule.lr, float)
    drop = np.zeros_like(lr)
    drop[1:] = lr[:-1] - lr[1:]
    drop[: schedule.warmup_steps + 2] = 0.0  # the update after the peak is the first annealed
    momentum = decayed_sums(drop, lam)
    idx = np.clip(np.asarray(steps, int), 0, len(lr) - 1)
    return np.cumsum(lr)[idx], np.cumsum(momentum)[idx]


def _axes(fit: list[RunData]) -> tuple[list[str], dict[str, float]]:
    vals = {"lnM": np.log([r.M for r in fit]), "lnD": np.log([r.D for r in fit])}
    axes = [a for a, v in vals.items() if np.ptp(v) > 1e-9]
    return axes, {a: float(vals[a].mean()) for a in axes}


def _design(S1: np.ndarray, S2: np.ndarray, z: np.ndarray, alpha: float) -> np.ndarray:
    """(n, 3 (1 + axes)): columns of L0, A and C, each times (1, z)."""
    base = [np.ones_like(S1), S1 ** -alpha, -S2]
    zz = np.concatenate([np.ones((len(S1), 1)), z], 1)
    return np.concatenate([b[:, None] * zz for b in base], 1)


class ScheduleLaw:
    """The law fitted on every replicate: ``alpha`` index (R,) and coefficients (R, p)."""

    def __init__(self, axes: list[str], center: dict[str, float], alpha_idx: np.ndarray,
                 coef: np.ndarray) -> None:
        self.axes, self.center, self.alpha_idx, self.coef = axes, center, alpha_idx, coef

    def z(self, r: RunData, n: int) -> np.ndarray:
        at = {"lnM": np.log(r.M), "lnD": np.log(r.D)}
        return np.tile([at[a] - self.center[a] for a in self.axes], (n, 1)).reshape(n, -1)

    def __call__(self, h: RunData) -> np.ndarray:
        """(R, K) the held-out run's curve at its checkpoints (NaN without a schedule)."""
        out = np.full((len(self.alpha_idx), len(h.steps)), np.nan)
        if not isinstance(h.schedule, Schedule):
            return out
        S1, S2 = areas(h.schedule, h.steps)
        z = self.z(h, len(S1))
        for a in np.unique(self.alpha_idx):
            rows = self.alpha_idx == a
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                out[rows] = self.coef[rows] @ _design(S1, S2, z, ALPHAS[a]).T
        return out


def fit_schedule_law(fit: list[RunData], weights: np.ndarray) -> tuple[ScheduleLaw | None, dict]:
    """The law on the fit runs' scored checkpoints, refitted on each replicate of ``weights``
    (row 0: the estimate); None with the reason where it cannot be fitted."""
    known = [r for r in fit if isinstance(r.schedule, Schedule) and r.scored.any()]
    missing = [r.name for r in fit if not isinstance(r.schedule, Schedule)]
    if not known:
        why = next((r.schedule for r in fit if isinstance(r.schedule, str)), None)
        return None, {"reason": "no fit run has a known learning-rate schedule"
                      + (f" ({why})" if why else "")}
    axes, center = _axes(known)
    S1, S2, Z, Y = [], [], [], []
    for r in known:
        sc = r.scored
        a1, a2 = areas(r.schedule, r.steps[sc])
        at = {"lnM": np.log(r.M), "lnD": np.log(r.D)}
        S1.append(a1), S2.append(a2)
        Z.append(np.tile([at[a] - center[a] for a in axes], (len(a1), 1)).reshape(len(a1), -1))
        Y.append(SeqCurve(r.seq_sums[:, sc], r.seq_counts[:, sc]).draw(weights))
    S1, S2, Z, Y = np.concatenate(S1), np.concatenate(S2), np.concatenate(Z), np.concatenate(Y, 1)
    ok = np.isfinite(Y).all(0) & (S1 > 0)
    S1, S2, Z, Y = S1[ok], S2[ok], Z[ok], Y[:, ok]
    p = 3 * (1 + len(axes))
    if len(S1) < p + 2:
        return None, {"reason": f"{len(S1)} scored checkpoints of fit runs with a schedule, the "
                                f"law has {p + 1} parameters"}
    best = np.full(Y.shape[0], np.inf)
    alpha_idx = np.zeros(Y.shape[0], int)
    coef = np.zeros((Y.shape[0], p))
    for a, alpha in enumerate(ALPHAS):
        X = _design(S1, S2, Z, alpha)
        c = Y @ np.linalg.pinv(X).T
        sse = ((Y - c @ X.T) ** 2).sum(1)
        better = sse < best
        best[better], alpha_idx[better], coef[better] = sse[better], a, c[better]
    law = ScheduleLaw(axes, center, alpha_idx, coef)
    alphas = ALPHAS[alpha_idx]
    info = {"form": FORM, "how_M_and_D_enter": "L0, A and C linear in the centred "
            f"({', '.join(axes) or 'no axis: one fit point'}); alpha shared by the fit runs",
            "alpha": float(alphas[0]), "coefficients": [float(v) for v in coef[0]],
            "axes": axes, "center": center, "rmse": float(np.sqrt(best[0] / len(S1))),
            "n_points": int(len(S1)), "fit_runs": [r.name for r in known],
            "schedules": {r.name: r.schedule.source for r in known},
            "without_schedule": missing,
            "alpha_interval": [float(v) for v in np.percentile(alphas[1:], [2.5, 97.5])]
            if len(alphas) > 2 else None,
            "interval_method": f"refitted on each of {Y.shape[0] - 1} bootstrap replicates"}
    return law, info
