"""Is learning stepwise? Per run, the share of tokens whose trajectory prefers the sigmoid step.

The fit stage stores, per token, the BIC of the sigmoid (4 parameters) and of two smooth
alternatives, a power law in T (3) and a line in ln T (2) (:mod:`spectrum.fit.smooth`). The step is
*preferred* when its BIC is lower than that of every smooth alternative by more than
:data:`MARGIN` (positive evidence on the Kass-Raftery scale); the smooth forms are preferred when
one of them is lower than the step's; otherwise the data do not decide. Shares are over the
tokens that change: those with a fit whose kind is not ``flat`` (nothing to describe) or
``unfit``. ``share_step_shed`` weights each token by the loss it sheds between its first and last
checkpoint (taken from the fitted sigmoid, ``|hi - lo|``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from spectrum import layout

MARGIN = 2.0
CRITERION = (f"BIC = n ln(rss/n) + p ln n per token (p = 4 sigmoid, 3 power law in T, 2 line in "
             f"ln T; noise variance estimated per token and model); step preferred when its BIC "
             f"is below both smooth alternatives' by more than {MARGIN:g}; shares over tokens "
             f"that change (kind not flat or unfit)")
COLUMNS = ("bic_step", "bic_power", "bic_line")


def step_preferred() -> pl.Expr:
    """Per token, the rule of :func:`run_shares`: the step's BIC below both smooth alternatives'
    by more than :data:`MARGIN` (null where a BIC is not finite)."""
    step, power, line = (pl.col(c) for c in COLUMNS)
    finite = step.is_finite() & power.is_finite() & line.is_finite()
    return (pl.when(finite).then(step < pl.min_horizontal(power, line) - MARGIN)
            .otherwise(None).alias(layout.STEP_PREFERRED))


NO_COLUMNS = "the fits lack the smooth alternatives; refit with `spectrum fit --force`"


class ShareCounts:
    """The counts and sums behind :func:`run_shares`, accumulated over token chunks."""

    def __init__(self) -> None:
        self.n = self.n_step = self.n_smooth = self.n_flat = 0
        self.n_power = self.n_line = 0
        self.shed = self.shed_step = 0.0

    def add(self, fits: pl.DataFrame) -> None:
        """One chunk of a run's fits (``kind``, ``lo``, ``hi`` and :data:`COLUMNS`)."""
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
                "n_tokens": n, "n_flat": self.n_flat,
                "preferred_smooth_form": {"power_law_T": self.n_power, "line_lnT": self.n_line}}


def run_shares(fits: pl.DataFrame) -> dict:
    """``share_step``, ``share_step_shed``, ``share_smooth`` and counts for one run's fits."""
    if not set(COLUMNS) <= set(fits.columns):
        return {"share_step": None, "share_step_shed": None, "reason": NO_COLUMNS}
    counts = ShareCounts()
    counts.add(fits)
    return counts.shares()


def stepwise_summary(runs: list) -> dict:
    """``stepwise`` of scores.json: per-run shares (each run's ``summary.shares``, counted over
    its fits at load), how they move with M, and a verdict."""
    per_run = {r.name: {**r.summary.shares, "params": r.M, "tokens": r.D, "role": r.role}
               for r in runs if r.summary is not None}
    shares = [(v["params"], v["share_step"]) for v in per_run.values() if v.get("share_step") is not None]
    trend = None
    if len({m for m, _ in shares}) >= 2:
        lnM, s = np.log([m for m, _ in shares]), np.array([v for _, v in shares])
        trend = float(np.polyfit(lnM, s, 1)[0])
    return {"criterion": CRITERION, "margin": MARGIN, "runs": per_run,
            "slope_share_step_per_lnM": trend, "verdict": stepwise_verdict(per_run, trend)}


def stepwise_verdict(per_run: dict, trend: float | None) -> str:
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
    if trend is not None:
        head += (f" The share changes by {trend:+.3f} per unit ln M across runs.")
    return head
