"""Scores with intervals, and verdicts in words.

A score compares predicted and measured targets drawn under the same bootstrap replicates
(:mod:`spectrum.analysis.runs.curves`; row 0 is the estimate): ``r2 = 1 - SS_res / SS_tot`` pooled
over the targets, ``rmse_nats`` (root-mean-square error, in nats for L and in nats per unit ln T,
ln M or ln D for derivatives), the median relative error, and ``r2_ci``: the 2.5 and 97.5
percentiles of R^2 over the replicates (:mod:`spectrum.analysis.stats`). Two models on the same
targets are compared by the paired difference of their R^2 in each replicate; "beats" means its 95%
interval excludes 0. Its bootstrap p-value (:func:`bootstrap_p`) enters Holm's correction over the
family of comparisons a test states (:func:`holm_family`): a claim survives when its Holm-adjusted
p-value is at most :data:`FAMILY_ALPHA`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from spectrum.analysis import stats
from spectrum.analysis.heldout.noise import holm

PREDICTS_R2 = 0.5  # below this lower bound, a prediction is said not to predict its targets
FAMILY_ALPHA = 1 - stats.LEVEL  # family-wise error rate of the Holm-corrected claims


def null_score(reason: str) -> dict:
    return {"r2": None, "r2_ci": None, "rmse_nats": None, "median_rel_err": None,
            "n_targets": 0, "reason": reason}


def score(predicted: np.ndarray, measured: np.ndarray) -> dict:
    """The score of (R, n) predictions against (R, n) measurements (row 0: the estimate)."""
    p, m = np.atleast_2d(np.asarray(predicted, float)), np.atleast_2d(np.asarray(measured, float))
    ok = np.isfinite(p[0]) & np.isfinite(m[0])
    n = int(ok.sum())
    if n < 2:
        return null_score(f"only {n} finite target(s)")
    r2 = stats.r2(p, m, ok)
    err = p[0, ok] - m[0, ok]
    nz = m[0, ok] != 0
    out = {"r2": None if not np.isfinite(r2[0]) else float(r2[0]),
           "r2_ci": stats.finite_interval(r2[1:]), "rmse_nats": float(np.sqrt(np.mean(err ** 2))),
           "median_rel_err": float(np.median(np.abs(err[nz]) / np.abs(m[0, ok][nz])))
           if nz.any() else None, "n_targets": n, "reason": None}
    if out["r2"] is None:
        out["reason"] = "targets are constant: R^2 undefined"
    return out


def paired_difference(p1: np.ndarray, p2: np.ndarray, measured: np.ndarray) -> dict | None:
    """R^2 of prediction 1 minus R^2 of prediction 2 on their common finite targets, per
    replicate: the estimate and its 95% interval; None when not computable."""
    p1, p2, m = (np.atleast_2d(np.asarray(a, float)) for a in (p1, p2, measured))
    ok = np.isfinite(p1[0]) & np.isfinite(p2[0]) & np.isfinite(m[0])
    if ok.sum() < 2:
        return None
    d = stats.r2(p1, m, ok) - stats.r2(p2, m, ok)
    if not np.isfinite(d[0]):
        return None
    return {"diff": float(d[0]), "ci": stats.finite_interval(d[1:]),
            "p": bootstrap_p(d[1:], float(d[0]))}


def bootstrap_p(d: np.ndarray, estimate: float) -> float | None:
    """Two-sided p-value of "the difference is 0": ``estimate`` over the standard deviation of
    its bootstrap replicates ``d``, on the normal scale (a share of replicates beyond 0 cannot
    go below ``1 / R``, too coarse for a family of many claims); None with fewer than two finite
    replicates or no spread."""
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.std(d, ddof=1) > 0:
        return None
    return float(2 * norm.sf(abs(estimate) / np.std(d, ddof=1)))


def claim(diff: dict | None) -> str:
    """``beats``, ``beaten`` or ``indistinguishable``: what the comparison's interval says."""
    ci = diff and diff.get("ci")
    return "beats" if ci and ci[0] > 0 else "beaten" if ci and ci[1] < 0 else "indistinguishable"


def holm_family(comparisons: list[dict]) -> None:
    """Holm's correction over a family of comparisons (:func:`paired_difference` dicts), in
    place: ``p_holm`` and ``survives_holm`` (a claim of beating or being beaten whose adjusted
    p-value is at most :data:`FAMILY_ALPHA`)."""
    p = np.array([np.nan if c.get("p") is None else c["p"] for c in comparisons], float)
    adjusted = holm(p)
    for c, a in zip(comparisons, adjusted):
        c["claim"] = claim(c)
        c["p_holm"] = None if np.isnan(a) else float(a)
        c["survives_holm"] = bool(c["claim"] != "indistinguishable" and c["p_holm"] is not None
                                  and c["p_holm"] <= FAMILY_ALPHA)


def holm_words(comparisons: dict[str, dict]) -> str | None:
    """One sentence on a target's comparisons after Holm's correction over the test's family."""
    made = {b: c for b, c in comparisons.items() if c and c["claim"] != "indistinguishable"}
    if not made:
        return None
    kept = [b for b, c in made.items() if c["survives_holm"]]
    lost = [b for b in made if b not in kept]
    return (f"After Holm's correction over the test's comparisons (family-wise error "
            f"{FAMILY_ALPHA:g}): {len(kept)} of {len(made)} claims survive"
            + (f" (against {', '.join(kept)})" if kept else "")
            + (f"; not surviving: against {', '.join(lost)}" if lost else "") + ".")


def r2_words(v: float) -> str:
    """R^2 in words: four decimals near 1 (so 0.99995 does not read as a perfect 1)."""
    return f"{v:.4f}" if -10 < v < 10 else f"{v:.3g}"


def comparison_words(model: str, other: str, diff: dict | None) -> str:
    """A verdict in words, whichever way it goes."""
    if diff is None:
        return f"{model} and {other} cannot be compared on common targets"
    ci = diff["ci"]
    tail = f"(difference in R^2 {diff['diff']:+.4g}" + \
        (f", 95% interval [{ci[0]:+.4g}, {ci[1]:+.4g}])" if ci else ", no interval)")
    if ci and ci[0] > 0:
        return f"{model} beats {other} {tail}"
    if ci and ci[1] < 0:
        return f"{model} is beaten by {other} {tail}"
    return f"{model} is not distinguishable from {other} {tail}"


def predicts(s: dict) -> bool | None:
    """Whether a score says the targets are predicted: the lower end of the R^2 interval (the
    estimate, without one) at least :data:`PREDICTS_R2`. None: not scored."""
    if s.get("r2") is None:
        return None
    low = s["r2_ci"][0] if s.get("r2_ci") else s["r2"]
    return bool(low >= PREDICTS_R2)
