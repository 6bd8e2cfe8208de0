"""Is learning stepwise? Per run, the share of tokens whose trajectory prefers the sigmoid step.

The fit stage stores, per token, the BIC of the sigmoid (4 parameters) and of two smooth
alternatives, a power law in T (3) and a line in ln T (2) (:mod:`spectrum.fit.smooth`). The step is
*preferred* when its BIC is lower than that of every smooth alternative by more than
:data:`MARGIN`; the smooth forms are preferred when one of them is lower than the step's;
otherwise the data do not decide. Shares are over the tokens that change: those with a fit whose
kind is not ``flat`` (nothing to describe) or ``unfit``. ``share_step_shed`` weights each token by
the loss it sheds between its first and last checkpoint (taken from the fitted sigmoid,
``|hi - lo|``).

The margin is calibrated on null data, not taken from the textbook scale (2): the BIC assumes
independent residuals, while the residuals of real runs are autocorrelated in checkpoint order
and share a run-level curve with every token of the run, so a sigmoid fits a smooth decline's
shared wiggles. :data:`CALIBRATION` records how (``benchmarks/calibrate_stepwise.py``): runs of
smooth tokens with that noise, on the built-in suite's checkpoint grids and the planted test
worlds', fitted by the fit stage's own code; the margin is the smallest for which at most one
null run in a thousand calls more than 5% of its tokens steps. It is calibrated once, for those
grids and that noise, not per run.

Where the checkpoints limit what a step call means, the shares say so (each run's fit grid,
``x = ln T`` of its fitted checkpoints, is read from its fits' provenance):

- ``share_outside_window``: tokens whose tau lies before the first or after the last fitted
  checkpoint; the checkpoints see one side of their step only. They are counted apart.
- ``share_step_in_window``: of the tokens whose tau lies inside the checkpoints, those whose step
  is preferred and resolved.
- ``share_unresolved``: of the same tokens, those whose step is preferred but is narrower than the
  checkpoints can resolve: its 10%-90% width ``ln(81) / k`` is below the spacing of the
  checkpoints around tau, or ``k`` sits on its upper bound (the data ask for a step at least that
  sharp, whose width is then known only to lie below ``ln(81) / k_max``). Such a jump between two
  checkpoints is not called a step.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from spectrum import layout
from spectrum.fit.model import WIDTH_10_90

MARGIN = 18.0  # benchmarks/calibrate_stepwise.py; its result: benchmarks/stepwise_calibration.json
CALIBRATION = {
    "margin": MARGIN,
    "false_step_rate": 0.0013,  # null tokens called steps at MARGIN, pooled over the grids
    "runs_above_5pct": 0.001,  # null runs calling more than 5% of their tokens steps (worst grid)
    "false_step_rate_margin_2": 0.121,  # the same null at the textbook margin 2
    "how": ("null runs of smooth tokens (a power-law decline in T per token, no step) with an "
            "AR(1) run-level curve shared by every token of a run (sd 0.04 nats, lag-1 "
            "autocorrelation 0.4) and AR(1) residuals per token (sd 0.05 nats, 0.3), fitted by "
            "the fit stage's code on the built-in suite's checkpoint grids (4 per doubling from "
            "the warmup's end to 128, 256 and 512 steps) and the planted test worlds' (14 "
            "log-spaced checkpoints); the margin is the smallest for which at most one null run "
            "in a thousand calls more than 5% of its tokens steps; false_step_rate is the share "
            "of null tokens called steps at that margin (benchmarks/calibrate_stepwise.py)"),
}
CRITERION = (f"BIC = n ln(rss/n) + p ln n per token (p = 4 sigmoid, 3 power law in T, 2 line in "
             f"ln T; noise variance estimated per token and model); step preferred when its BIC "
             f"is below both smooth alternatives' by more than {MARGIN:g}; shares over tokens "
             f"that change (kind not flat or unfit)")
COLUMNS = ("bic_step", "bic_power", "bic_line")
WINDOW_COLUMNS = ("tau", "k")  # for the window and resolution counts


def step_preferred() -> pl.Expr:
    """Per token, the rule of :func:`run_shares`: the step's BIC below both smooth alternatives'
    by more than :data:`MARGIN` (null where a BIC is not finite)."""
    step, power, line = (pl.col(c) for c in COLUMNS)
    finite = step.is_finite() & power.is_finite() & line.is_finite()
    return (pl.when(finite).then(step < pl.min_horizontal(power, line) - MARGIN)
            .otherwise(None).alias(layout.STEP_PREFERRED))


NO_COLUMNS = "the fits lack the smooth alternatives; refit with `spectrum fit --force`"


class Window:
    """A run's fit grid (``x = ln T`` of its fitted checkpoints, ascending) and the fit's upper
    bound of ``k``: what decides whether a step lies inside the checkpoints and is resolved."""

    def __init__(self, x, k_max: float | None = None) -> None:
        self.x = np.sort(np.asarray(x, float))
        self.k_max = k_max

    def inside(self, tau: np.ndarray) -> np.ndarray:
        return (tau >= self.x[0]) & (tau <= self.x[-1])

    def spacing(self, tau: np.ndarray) -> np.ndarray:
        """The spacing of the checkpoints around each tau (of the interval that holds it)."""
        j = np.searchsorted(self.x, tau).clip(1, len(self.x) - 1)
        return self.x[j] - self.x[j - 1]

    def unresolved(self, tau: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Steps narrower than the checkpoints around them, or on the bound of ``k``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            narrow = WIDTH_10_90 / k < self.spacing(tau)
        on_bound = k >= self.k_max * (1 - 1e-4) if self.k_max else np.zeros_like(narrow)
        return narrow | on_bound

    def describe(self) -> dict:
        gaps = np.diff(self.x)
        return {"checkpoints": int(len(self.x)), "span_lnT": float(self.x[-1] - self.x[0]),
                "spacing_lnT": float(np.median(gaps)) if gaps.size else None,
                "k_max": self.k_max}


class ShareCounts:
    """The counts and sums behind :func:`run_shares`, accumulated over token chunks.
    ``window``: the run's fit grid (None: the window and resolution counts are left out)."""

    def __init__(self, window: Window | None = None) -> None:
        self.window = window if window is not None and len(window.x) >= 2 else None
        self.n = self.n_step = self.n_smooth = self.n_flat = 0
        self.n_power = self.n_line = 0
        self.n_in = self.n_step_in = self.n_unresolved = self.n_step_out = 0
        self.shed = self.shed_step = 0.0

    def add(self, fits: pl.DataFrame) -> None:
        """One chunk of a run's fits (``kind``, ``lo``, ``hi``, :data:`COLUMNS`, and with a
        window :data:`WINDOW_COLUMNS`)."""
        kind = fits["kind"].fill_null("unfit").to_numpy().astype(str)
        step, power, line = (fits[c].to_numpy().astype(float) for c in COLUMNS)
        shed = np.abs(fits["hi"].to_numpy().astype(float) - fits["lo"].to_numpy().astype(float))
        ok = ~np.isin(kind, ("flat", "unfit")) & np.isfinite(step) & np.isfinite(power) \
            & np.isfinite(line) & np.isfinite(shed)
        smooth = np.minimum(power, line)
        prefer_step = ok & (step < smooth - MARGIN)
        prefer_smooth = ok & (smooth < step)
        self.n += int(ok.sum())
        self.n_step += int(prefer_step.sum())
        self.n_smooth += int(prefer_smooth.sum())
        self.n_flat += int((kind == "flat").sum())
        self.n_power += int((ok & (power <= line) & prefer_smooth).sum())
        self.n_line += int((ok & (line < power) & prefer_smooth).sum())
        self.shed += float(shed[ok].sum())
        self.shed_step += float(shed[prefer_step].sum())
        if self.window is not None and set(WINDOW_COLUMNS) <= set(fits.columns):
            tau, k = (fits[c].to_numpy().astype(float) for c in WINDOW_COLUMNS)
            inside = ok & self.window.inside(tau)
            unresolved = prefer_step & inside & self.window.unresolved(tau, k)
            self.n_in += int(inside.sum())
            self.n_unresolved += int(unresolved.sum())
            self.n_step_in += int((prefer_step & inside & ~unresolved).sum())
            self.n_step_out += int((prefer_step & ~inside).sum())

    def window_shares(self) -> dict:
        """The shares inside and outside the checkpoints (see the module docstring)."""
        if self.window is None:
            return {"share_step_in_window": None, "share_unresolved": None,
                    "share_outside_window": None}
        n_in, n_out = self.n_in, self.n - self.n_in
        return {"share_step_in_window": self.n_step_in / n_in if n_in else None,
                "share_unresolved": self.n_unresolved / n_in if n_in else None,
                "share_outside_window": n_out / self.n,
                "n_in_window": n_in, "n_outside_window": n_out,
                "n_step_outside_window": self.n_step_out, **self.window.describe()}

    def shares(self) -> dict:
        n = self.n
        if n == 0:
            return {"share_step": None, "share_step_shed": None, "n_tokens": 0,
                    "reason": "no token that changes"}
        w = self.shed
        return {"share_step": float(self.n_step / n),
                "share_step_shed": float(self.shed_step / w) if w > 0 else None,
                "share_smooth": float(self.n_smooth / n),
                "share_undecided": float((n - self.n_step - self.n_smooth) / n),
                **self.window_shares(),
                "n_tokens": n, "n_flat": self.n_flat,
                "preferred_smooth_form": {"power_law_T": self.n_power, "line_lnT": self.n_line}}


def run_shares(fits: pl.DataFrame, window: Window | None = None) -> dict:
    """``share_step``, ``share_step_shed``, ``share_smooth``, the window shares (given the run's
    fit grid) and counts for one run's fits."""
    if not set(COLUMNS) <= set(fits.columns):
        return {"share_step": None, "share_step_shed": None, "reason": NO_COLUMNS}
    counts = ShareCounts(window)
    counts.add(fits)
    return counts.shares()


TREND_INTERVAL = ("95% interval of the least-squares slope across runs (t distribution with "
                  "n - 2 degrees of freedom; each run one point, seed replicas included)")


def share_trend(points: list[tuple[float, float]]) -> tuple[float | None, list[float] | None]:
    """The least-squares slope of a share against ln M over runs ``(M, share)`` and its 95%
    interval (:data:`TREND_INTERVAL`); (None, None) without two sizes, no interval from fewer
    than three runs."""
    if len({m for m, _ in points}) < 2:
        return None, None
    res = stats.linregress(np.log([m for m, _ in points]), [v for _, v in points])
    if len(points) < 3:
        return float(res.slope), None
    half = float(stats.t.ppf(0.975, len(points) - 2) * res.stderr)
    return float(res.slope), [float(res.slope - half), float(res.slope + half)]


def stepwise_summary(runs: list) -> dict:
    """``stepwise`` of scores.json: per-run shares (each run's ``summary.shares``, counted over
    its fits at load), how they move with M (with intervals), the calibration and a verdict."""
    per_run = {r.name: {**r.summary.shares, "params": r.M, "tokens": r.D, "role": r.role}
               for r in runs if r.summary is not None}
    trends = {}
    for key in ("share_step", "share_step_in_window"):
        pts = [(v["params"], v[key]) for v in per_run.values() if v.get(key) is not None]
        trends[key] = share_trend(pts)
    trend, trend_ci = trends["share_step"]
    return {"criterion": CRITERION, "margin": MARGIN, "calibration": CALIBRATION,
            "runs": per_run, "slope_share_step_per_lnM": trend,
            "slope_share_step_per_lnM_ci": trend_ci,
            "slope_share_step_in_window_per_lnM": trends["share_step_in_window"][0],
            "slope_share_step_in_window_per_lnM_ci": trends["share_step_in_window"][1],
            "trend_interval": TREND_INTERVAL,
            "verdict": stepwise_verdict(per_run, trend, trend_ci)}


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else \
        f"{format(lo, fmt)} to {format(hi, fmt)}"


def window_words(per_run: dict) -> str:
    """The in-window shares in words (median over runs), or "" without fit grids."""
    rows = [v for v in per_run.values() if v.get("share_outside_window") is not None]
    inside = [v for v in rows if v.get("share_step_in_window") is not None]
    if not rows:
        return ""
    out = float(np.median([v["share_outside_window"] for v in rows]))
    words = (f" {out:.0%} of the tokens that change (median over runs) have their midpoint "
             f"outside the checkpoints, where the checkpoints see one side of the step; they are "
             f"counted apart.")
    if inside:
        step = float(np.median([v["share_step_in_window"] for v in inside]))
        unres = float(np.median([v["share_unresolved"] for v in inside]))
        words += (f" Of the tokens whose midpoint lies inside the checkpoints, {step:.0%} are "
                  f"resolved steps and {unres:.0%} jumps narrower than the checkpoints can "
                  f"resolve (unresolved, not counted as steps there).")
    return words


def limits_words(per_run: dict) -> str:
    """What the checkpoints, the rule's calibration and the schedule allow one to conclude."""
    rows = [v for v in per_run.values() if v.get("checkpoints")]
    out = ""
    if rows:
        k_max = next((v["k_max"] for v in rows if v.get("k_max")), None)
        sharpest = (f" (nor its sharpness beyond k = {k_max:g}, a 10%-90% width of "
                    f"{WIDTH_10_90 / k_max:.2f})" if k_max else "")
        out += (f" Limits: each run has {_span([v['checkpoints'] for v in rows], 'd')} fitted "
                f"checkpoints spanning {_span([v['span_lnT'] for v in rows], '.2f')} in ln T, "
                f"{_span([v['spacing_lnT'] for v in rows if v.get('spacing_lnT')], '.2f')} apart "
                f"(median spacing); a step narrower than the spacing cannot be resolved"
                f"{sharpest}, and a midpoint outside that span cannot be located.")
    rate = CALIBRATION.get("false_step_rate")
    if rate is not None:
        out += (f" On null runs of smooth tokens with the noise of real runs, the rule calls "
                f"{rate:.1%} of the tokens steps (its margin {MARGIN:g} is calibrated for the "
                f"built-in suite's checkpoint grid and that noise).")
    out += (" The learning-rate schedule is not in the manifest and the rule does not model it: "
            "a decaying learning rate (cosine, linear) hastens the fall of the loss late in a "
            "run, so late steps look sharper than the same learning under a constant rate; a "
            "step call says that a token's loss fell within a short stretch of ln T, not that "
            "the token, rather than the schedule, set its pace.")
    return out


def stepwise_verdict(per_run: dict, trend: float | None,
                     trend_ci: list[float] | None = None) -> str:
    vals = [v["share_step"] for v in per_run.values() if v.get("share_step") is not None]
    if not vals:
        return "Whether learning is stepwise was not tested (the fits lack the smooth alternatives)."
    lo, hi, med = min(vals), max(vals), float(np.median(vals))
    if med >= 0.5:
        head = (f"The data show stepwise learning: the sigmoid step is preferred over a power law "
                f"in T and a line in ln T for {med:.0%} of the tokens that change (median over "
                f"runs; {lo:.0%} to {hi:.0%}).")
    elif med > 0.1:
        head = (f"The data show stepwise learning for a minority of tokens only: the step is "
                f"preferred for {med:.0%} of the tokens that change (median over runs; {lo:.0%} "
                f"to {hi:.0%}); the rest are as well or better described by a smooth decline.")
    else:
        head = (f"The data show no stepwise learning: the step is preferred for only {med:.0%} of "
                f"the tokens that change (median over runs; {lo:.0%} to {hi:.0%}); a smooth "
                f"decline describes the trajectories as well or better.")
    head += window_words(per_run)
    if trend is not None:
        ci = (f" (95% interval {trend_ci[0]:+.3f} to {trend_ci[1]:+.3f}, least squares across "
              f"{len(vals)} runs)" if trend_ci else " (no interval from two runs)")
        head += f" The share changes by {trend:+.3f} per unit ln M across runs{ci}."
    return head + limits_words(per_run)
