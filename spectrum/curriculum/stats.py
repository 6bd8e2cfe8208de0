"""Statistics of the controlled curriculum test that cannot flatter: paired differences and a
compute multiplier, each with a 95% interval across seeds; no statistic drops a seed.

Every (arm, seed) run is scored by its **final validation loss**. Two statistics per arm:

- ``final_minus_uniform``: per seed, the arm's final loss minus the final loss of the ``uniform``
  run with the same seed (same initialisation, same sampler random numbers); the mean over seeds
  with a Student-t 95% interval and a paired test (t-test; the Wilcoxon signed-rank test beside
  it). Negative = the arm ends lower. Nothing is censored: a worse arm gives a positive number.
- ``compute_multiplier``: uniform runs trained at several budgets (fractions of the arm's steps,
  each a full warmup + cosine schedule) give the uniform final loss as a function of
  ``c = ln compute``: ``L_sb = a_s + beta * c_b`` (a line with one intercept per seed, least
  squares). The compute a uniform run would need to reach the arm's final loss, over the arm's
  compute, is ``m = exp(mean(d) / beta)`` with ``d`` the paired differences above (``beta < 0``:
  lower loss = a multiplier above 1; a worse arm gets one below 1). Its 95% interval is the
  t-interval of ``mean(d)`` carried through ``ln m = mean(d) / beta``, widened for the uncertainty
  of ``beta`` by the delta method: ``var(ln m) = var(mean d) / beta^2 + mean(d)^2 var(beta) / beta^4``.

A run whose final loss is not finite makes its arm's statistics undefined (``mean`` None) rather
than being left out. One seed gives a mean but no interval (``ci`` = [None, None]).

``compare`` scores the curriculum against each control in the same way (curriculum minus
control, per seed) and states a verdict in words either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
#: the published claim: "11% faster validation-loss reduction", read as reaching a loss with
#: 1/1.11 of the compute, i.e. a compute multiplier of 1.11
PAPER_MULTIPLIER = 1.11


def _t(n: int, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean with a Student-t interval, the standard deviation, n, and paired-test p-values
    (t-test and Wilcoxon signed-rank against 0). Non-finite values make the statistic undefined."""
    from scipy.stats import ttest_1samp, wilcoxon

    v = np.asarray(list(values), dtype=np.float64)
    n = int(len(v))
    out: dict[str, Any] = {"mean": None, "ci": [None, None], "sd": None, "n": n,
                           "p": None, "p_wilcoxon": None}
    if n == 0 or not np.isfinite(v).all():
        out["nonfinite"] = int((~np.isfinite(v)).sum())
        return out
    out["mean"] = float(v.mean())
    if n < 2:
        return out
    sd = float(v.std(ddof=1))
    half = _t(n, level) * sd / math.sqrt(n)
    out.update(sd=sd, ci=[out["mean"] - half, out["mean"] + half])
    if sd > 0:
        out["p"] = float(ttest_1samp(v, 0.0).pvalue)
        if (v != 0).any():
            out["p_wilcoxon"] = float(wilcoxon(v).pvalue)
    else:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    return out


@dataclass(frozen=True)
class ComputeCurve:
    """Uniform final loss against ln compute: ``L = a_seed + slope * ln C`` (see the module doc)."""

    slope: float  # nats per unit of ln compute (negative when more compute helps)
    slope_se: float
    residual_sd: float
    r2_within: float  # share of the within-seed variance of the loss the line explains
    n_runs: int
    n_seeds: int
    budgets: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_curve(seeds: Sequence[int], ln_compute: Sequence[float],
                  losses: Sequence[float]) -> ComputeCurve | None:
    """Least-squares slope of loss on ln compute with one intercept per seed; None if it cannot be
    estimated (fewer than two budgets, or non-finite losses)."""
    s = np.asarray(seeds)
    x = np.asarray(ln_compute, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if len(y) == 0 or not np.isfinite(y).all() or len(np.unique(np.round(x, 9))) < 2:
        return None
    xc, yc = x.copy(), y.copy()
    for seed in np.unique(s):
        m = s == seed
        xc[m] -= x[m].mean()
        yc[m] -= y[m].mean()
    sxx = float((xc ** 2).sum())
    if sxx <= 0:
        return None
    slope = float((xc * yc).sum() / sxx)
    resid = yc - slope * xc
    dof = len(y) - len(np.unique(s)) - 1
    rss = float((resid ** 2).sum())
    var = rss / dof if dof > 0 else float("nan")
    syy = float((yc ** 2).sum())
    return ComputeCurve(slope=slope, slope_se=math.sqrt(var / sxx) if dof > 0 else float("nan"),
                        residual_sd=math.sqrt(var) if dof > 0 else float("nan"),
                        r2_within=1.0 - rss / syy if syy > 0 else float("nan"),
                        n_runs=int(len(y)), n_seeds=int(len(np.unique(s))),
                        budgets=tuple(sorted(set(np.round(np.exp(x - x.max()), 6).tolist()))))


def multiplier_interval(diffs: Sequence[float], curve: ComputeCurve | None,
                        level: float = LEVEL) -> dict[str, Any]:
    """``exp(mean(d) / slope)`` with its delta-method t-interval (see the module doc)."""
    d = mean_interval(diffs, level)
    out: dict[str, Any] = {"mean": None, "ci": [None, None], "n": d["n"]}
    if d["mean"] is None or curve is None or not curve.slope < 0:
        if curve is not None and not curve.slope < 0:
            out["undefined"] = "the uniform runs' loss does not fall with compute"
        return out
    beta, dbar = curve.slope, d["mean"]
    log_m = dbar / beta
    out.update(mean=math.exp(log_m), log_mean=log_m)
    if d["n"] < 2:
        return out
    var_beta = curve.slope_se ** 2 if math.isfinite(curve.slope_se) else 0.0
    se = math.sqrt((d["sd"] ** 2 / d["n"]) / beta ** 2 + dbar ** 2 * var_beta / beta ** 4)
    half = _t(d["n"], level) * se
    out.update(ci=[math.exp(log_m - half), math.exp(log_m + half)], log_se=se)
    return out


def verdict(name: str, other: str, diff: dict[str, Any], mult: dict[str, Any]) -> str:
    """One sentence, whichever way the interval falls."""
    n = diff["n"]
    if diff["mean"] is None:
        why = "a run's final loss is not finite" if diff.get("nonfinite") else "no paired runs"
        return f"{name} vs {other}: undefined ({why})."
    m = mult.get("mean")
    mtxt = ""
    if m is not None and mult["ci"][0] is not None:
        mtxt = f"; compute multiplier {m:.3f} [{mult['ci'][0]:.3f}, {mult['ci'][1]:.3f}]"
    elif m is not None:
        mtxt = f"; compute multiplier {m:.3f}"
    lo, hi = diff["ci"]
    if lo is None:
        return (f"{name} vs {other}: final loss {diff['mean']:+.4f} nats from {n} seed; one seed "
                f"gives no interval, so no verdict{mtxt}.")
    core = f"final loss {diff['mean']:+.4f} nats [{lo:+.4f}, {hi:+.4f}] over {n} seeds"
    p = f", paired t-test p = {diff['p']:.3g}" if diff.get("p") is not None else ""
    if hi < 0:
        return f"{name} beats {other} beyond the 95% interval: {core}{p}{mtxt}."
    if lo > 0:
        return f"{name} is worse than {other} beyond the 95% interval: {core}{p}{mtxt}."
    return (f"{name} does not differ from {other} beyond the 95% interval (it covers 0): "
            f"{core}{p}{mtxt}.")
