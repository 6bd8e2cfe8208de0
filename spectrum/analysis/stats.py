"""The statistics every analysis shares: the bootstrap over sequences, percentile intervals, R^2.

Tokens of one sequence share a context, so every interval of the analyses resamples whole
sequences: a replicate is a vector of multiplicities, one per sequence (:func:`bootstrap_weights`),
and a statistic is recomputed from per-sequence sums weighted by it. An interval is the two-sided
percentile interval of the replicates at :data:`LEVEL`.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def bootstrap_weights(n_groups: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_groups) multiplicities of a resampling of groups with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(float)


def percentile_interval(values: np.ndarray, level: float = LEVEL,
                        axis: int | None = None) -> np.ndarray:
    """The lower and upper percentiles of ``values`` (along ``axis``) that hold ``level`` of them
    between: shape (2, ...)."""
    return np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=axis)


def finite_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """:func:`percentile_interval` of the finite values, None with fewer than two."""
    v = values[np.isfinite(values)]
    if v.size < 2:
        return None
    lo, hi = percentile_interval(v, level)
    return [float(lo), float(hi)]


def r2(predicted: np.ndarray, measured: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``1 - SS_res / SS_tot`` per replicate (rows of (R, n) arrays) over the columns ``ok``;
    NaN where the measured values are constant."""
    p, m = predicted[:, ok], measured[:, ok]
    ss_tot = ((m - m.mean(1, keepdims=True)) ** 2).sum(1)
    ss_res = ((p - m) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
