"""Statistics of the controlled curriculum test that cannot flatter: paired differences and a
compute multiplier, each with a 95% interval across seeds, Holm's correction over the claims the
results state, and the smallest effect the test detects; no statistic drops a seed.

Every (arm, seed) run is scored by its **final validation loss**. Two statistics per arm:

- ``final_minus_uniform``: per seed, the arm's final loss minus the final loss of the ``uniform``
  run with the same seed (same initialisation, same sampler random numbers); the mean over seeds
  with a Student-t 95% interval and a paired test (t-test; the Wilcoxon signed-rank test beside
  it). Negative = the arm ends lower. Nothing is censored: a worse arm gives a positive number.
- ``compute_multiplier``: uniform runs trained at several budgets (fractions of the arm's steps,
  each a full warmup + cosine schedule) give the uniform final loss as a function of
  ``c = ln(C / C_1x)``, the log compute relative to the arms' compute:
  ``L_sb = a_s + b c_b + q c_b^2`` (a quadratic with one intercept per seed, least squares; with
  two budgets only a line, ``q = 0``). The loss against ln compute bends, so a line through
  budgets on both sides of 1x misstates the slope there; the quadratic's ``b`` is the local slope
  at the arms' compute. The compute a uniform run needs to reach the arm's final loss, over the
  arm's compute, is ``m = exp(c*)`` with ``c*`` the root nearest 0 of ``q c^2 + b c = mean(d)``
  (``d`` the paired differences above; ``b < 0``: lower loss = a multiplier above 1, a worse arm
  gets one below 1). Its 95% interval is the t-interval of ``ln m`` with the delta-method standard
  error over ``(mean d, b, q)``: with ``D = b + 2 q c*``, the derivatives of ``c*`` are ``1/D``,
  ``-c*/D`` and ``-c*^2/D``; ``var(mean d) = sd^2 / n`` and ``(b, q)`` carry their covariance from
  the fit.

A run whose final loss is not finite makes its arm's statistics undefined (``mean`` None) rather
than being left out. One seed gives a mean but no interval (``ci`` = [None, None]).

The results state several comparisons in words (each arm against uniform, the curriculum
against each control); :func:`holm` adjusts their p-values for being read together (Holm's
step-down method controls the chance of any false claim among them at 5%), and :func:`verdict`
states a difference only where it survives that correction. :func:`min_detectable_difference`
is the effect the paired t-test detects with 80% power, the honest "smallest resolvable" effect
(an interval's half-width is detected only about half the time).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

LEVEL = 0.95
#: the significance level of every claim, after Holm's correction over the claims
ALPHA = 0.05
#: the published claim: "11% faster validation-loss reduction", read as reaching a loss with
#: 1/1.11 of the compute, i.e. a compute multiplier of 1.11
PAPER_MULTIPLIER = 1.11
QUADRATIC = "quadratic in ln compute"
LINE = "line"


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


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values, in the order given.

    With the ``m`` p-values that are not None sorted ascending, ``p_(1) <= ... <= p_(m)``, the
    adjusted ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``: the smallest is Bonferroni's,
    each later one at least the one before. Rejecting where the adjusted p is below alpha keeps the
    chance of any false rejection among the m at most alpha. None entries stay None and do not
    count in ``m``.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[Optional[float]] = [None] * len(pvalues)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


@dataclass(frozen=True)
class ComputeCurve:
    """Uniform final loss against ``c = ln(C / C_1x)``: ``L = a_seed + slope c + curvature c^2``
    (see the module doc). ``slope`` is the local slope at the arms' compute (``c = 0``);
    ``line_residual_by_budget`` holds, per budget (in the order of ``budgets``), the mean residual
    of a straight line with the same seed intercepts: the misfit the curvature takes up."""

    slope: float  # nats per unit of ln compute at 1x (negative when more compute helps)
    slope_se: float
    residual_sd: float
    r2_within: float  # share of the within-seed variance of the loss the curve explains
    n_runs: int
    n_seeds: int
    budgets: tuple[float, ...]
    curvature: float = 0.0  # nats per (unit of ln compute)^2
    curvature_se: float = 0.0
    cov_slope_curvature: float = 0.0
    line_residual_by_budget: tuple[float, ...] = ()
    model: str = LINE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loss_change(self, c: float) -> float:
        """The uniform loss at ``c = ln(C / C_1x)`` minus its loss at 1x."""
        return self.slope * c + self.curvature * c * c


def _seed_design(seeds: np.ndarray, powers: Sequence[np.ndarray]) -> np.ndarray:
    """One indicator column per seed (the intercepts), then the given columns."""
    dummies = (seeds[:, None] == np.unique(seeds)[None, :]).astype(np.float64)
    return np.column_stack([dummies, *powers])


def _within_ss(seeds: np.ndarray, y: np.ndarray) -> float:
    yc = y.copy()
    for seed in np.unique(seeds):
        yc[seeds == seed] -= y[seeds == seed].mean()
    return float((yc ** 2).sum())


def _line_residual_by_budget(s: np.ndarray, c: np.ndarray, y: np.ndarray,
                             keys: np.ndarray) -> tuple[float, ...]:
    X = _seed_design(s, [c])
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    resid = y - X @ coef
    return tuple(float(resid[keys == k].mean()) for k in np.unique(keys))


def compute_curve(seeds: Sequence[int], ln_compute: Sequence[float], losses: Sequence[float],
                  ln_center: float | None = None) -> ComputeCurve | None:
    """Least-squares curve of loss on ``c = ln_compute - ln_center`` with one intercept per seed:
    a quadratic with three or more budgets, a line with two; None if it cannot be estimated (one
    budget, or non-finite losses). ``ln_center`` is the ln compute of the arms (the multiplier's
    reference); without it the largest compute. ``budgets`` are compute over ``exp(ln_center)``."""
    s = np.asarray(seeds)
    x = np.asarray(ln_compute, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if len(y) == 0 or not np.isfinite(y).all() or len(np.unique(np.round(x, 9))) < 2:
        return None
    center = float(x.max()) if ln_center is None else float(ln_center)
    c = x - center
    keys = np.round(c, 9)
    quadratic = len(np.unique(keys)) >= 3
    X = _seed_design(s, [c, c * c] if quadratic else [c])
    coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    if rank < X.shape[1]:
        return None
    resid = y - X @ coef
    rss = float((resid ** 2).sum())
    dof = len(y) - X.shape[1]
    var = rss / dof if dof > 0 else float("nan")
    k = len(np.unique(s))
    cov = var * np.linalg.inv(X.T @ X)[k:, k:]
    syy = _within_ss(s, y)
    return ComputeCurve(
        slope=float(coef[k]), slope_se=math.sqrt(cov[0, 0]) if dof > 0 else float("nan"),
        residual_sd=math.sqrt(var) if dof > 0 else float("nan"),
        r2_within=1.0 - rss / syy if syy > 0 else float("nan"),
        n_runs=int(len(y)), n_seeds=k,
        budgets=tuple(sorted(set(np.round(np.exp(c), 6).tolist()))),
        curvature=float(coef[k + 1]) if quadratic else 0.0,
        curvature_se=(math.sqrt(cov[1, 1]) if dof > 0 else float("nan")) if quadratic else 0.0,
        cov_slope_curvature=(float(cov[0, 1]) if dof > 0 else float("nan")) if quadratic else 0.0,
        line_residual_by_budget=_line_residual_by_budget(s, c, y, keys),
        model=QUADRATIC if quadratic else LINE)


def ln_multiplier(d: float, curve: ComputeCurve) -> tuple[float | None, str | None]:
    """``c*``, the root nearest 0 of ``curvature c^2 + slope c = d``: the ln of the compute (over
    the arms') at which uniform's loss is ``d`` from its loss at 1x. Returns ``(c*, None)`` or
    ``(None, reason)`` when the curve does not fall at 1x or never reaches ``d``."""
    b, q = curve.slope, curve.curvature
    if not b < 0:
        return None, "the uniform runs' loss does not fall with compute at the arms' compute"
    disc = b * b + 4.0 * q * d
    if disc < 0:
        return None, ("the difference lies beyond the reach of the compute curve (past its "
                      "extremum)")
    # the smaller-magnitude root of q c^2 + b c - d = 0, stable also as q -> 0 (then d / b)
    return 2.0 * d / (b - math.sqrt(disc)), None


def multiplier_interval(diffs: Sequence[float], curve: ComputeCurve | None,
                        level: float = LEVEL) -> dict[str, Any]:
    """``exp(c*)`` of the mean paired difference with its delta-method t-interval over
    ``(mean d, slope, curvature)`` (see the module doc)."""
    d = mean_interval(diffs, level)
    out: dict[str, Any] = {"mean": None, "ci": [None, None], "n": d["n"]}
    if d["mean"] is None or curve is None:
        return out
    dbar = d["mean"]
    log_m, why = ln_multiplier(dbar, curve)
    if log_m is None:
        out["undefined"] = why
        return out
    out.update(mean=math.exp(log_m), log_mean=log_m)
    slope_at = curve.slope + 2.0 * curve.curvature * log_m  # dL/dc at c*
    if d["n"] < 2 or slope_at == 0:
        return out
    grad = np.array([-log_m, -log_m * log_m]) / slope_at
    cov = np.array([[curve.slope_se ** 2, curve.cov_slope_curvature],
                    [curve.cov_slope_curvature, curve.curvature_se ** 2]])
    cov = np.where(np.isfinite(cov), cov, 0.0)
    se = math.sqrt((d["sd"] ** 2 / d["n"]) / slope_at ** 2 + float(grad @ cov @ grad))
    half = _t(d["n"], level) * se
    out.update(ci=[math.exp(log_m - half), math.exp(log_m + half)], log_se=se)
    return out


def paired_test_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at ``alpha`` with ``n`` pairs of spread ``sd``
    against a true mean difference ``effect`` (noncentral t with ``n - 1`` degrees of freedom)."""
    from scipy.stats import nct, t

    df = n - 1
    crit = float(t.ppf(1 - alpha / 2, df))
    nc = effect * math.sqrt(n) / sd
    # P(T > crit) + P(T < -crit); the lower tail as the upper tail of -T, which scipy evaluates
    # without the NaNs its cdf gives far in the tail
    return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc))


def min_detectable_difference(sd: float, n: int, power: float = 0.8,
                              alpha: float = ALPHA) -> float | None:
    """The mean paired difference (nats, positive) the two-sided paired t-test at ``alpha`` with
    ``n`` pairs of spread ``sd`` detects with probability ``power``; None without a spread."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return None
    hi = sd
    while paired_test_power(hi, sd, n, alpha) < power:
        hi *= 2.0
    return float(brentq(lambda e: paired_test_power(e, sd, n, alpha) - power, 0.0, hi,
                        xtol=1e-12 * sd))


def _mult_text(mult: dict[str, Any]) -> str:
    m = mult.get("mean")
    if m is not None and mult["ci"][0] is not None:
        return f"; compute multiplier {m:.3f} [{mult['ci'][0]:.3f}, {mult['ci'][1]:.3f}]"
    if m is not None:
        return f"; compute multiplier {m:.3f}"
    return ""


def outcome(diff: dict[str, Any]) -> str:
    """How a paired difference reads: ``undefined`` (no mean), ``one_seed`` (no interval),
    ``lower`` or ``higher`` (a difference claimed: the 95% interval excludes 0 and the
    Holm-adjusted p, where there is one, is below :data:`ALPHA`), ``not_after_holm`` (the interval
    excludes 0 but the claim does not survive Holm's correction) or ``covers`` (it covers 0)."""
    if diff["mean"] is None:
        return "undefined"
    lo, hi = diff["ci"]
    if lo is None:
        return "one_seed"
    ph = diff.get("p_holm")
    if hi < 0 or lo > 0:
        if ph is None or ph < ALPHA:
            return "lower" if hi < 0 else "higher"
        return "not_after_holm"
    return "covers"


def verdict(name: str, other: str, diff: dict[str, Any], mult: dict[str, Any],
            family_size: int | None = None) -> str:
    """One sentence, whichever way the result falls. A difference is claimed only where the
    Holm-adjusted paired t-test p (``diff["p_holm"]``) is below :data:`ALPHA`; the unadjusted 95%
    interval and p are quoted beside it. Without ``p_holm`` the interval decides."""
    n = diff["n"]
    if diff["mean"] is None:
        why = "a run's final loss is not finite" if diff.get("nonfinite") else "no paired runs"
        return f"{name} vs {other}: undefined ({why})."
    mtxt = _mult_text(mult)
    lo, hi = diff["ci"]
    if lo is None:
        return (f"{name} vs {other}: final loss {diff['mean']:+.4f} nats from {n} seed; one seed "
                f"gives no interval, so no verdict{mtxt}.")
    core = f"final loss {diff['mean']:+.4f} nats [{lo:+.4f}, {hi:+.4f}] over {n} seeds"
    p = f", paired t-test p = {diff['p']:.3g}" if diff.get("p") is not None else ""
    ph = diff.get("p_holm")
    over = f" over {family_size} claims" if family_size else ""
    holm_p = f" (Holm-adjusted p = {ph:.3g})" if ph is not None else ""
    read = outcome(diff)
    if read in ("lower", "higher"):
        side = "beats" if read == "lower" else "is worse than"
        kept = f", and the claim survives Holm's correction{over}" if ph is not None else ""
        return f"{name} {side} {other} beyond the 95% interval{kept}: {core}{p}{holm_p}{mtxt}."
    if read == "not_after_holm":
        return (f"{name} does not differ from {other} after Holm's correction{over}: the 95% "
                f"interval excludes 0 ({core}{p}) but the claim does not survive the correction"
                f"{holm_p}{mtxt}.")
    return (f"{name} does not differ from {other} beyond the 95% interval (it covers 0): "
            f"{core}{p}{holm_p}{mtxt}.")
