"""The report's sections, in order: each a function returning blocks of prose, tables and figures.

The statistics come from ``scores.json`` (:mod:`spectrum.report.tables` turns them into rows); the
words here say what was measured, how, and what it shows, whichever way it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spectrum.analysis.evaluation import IN_SAMPLE_LABEL, SMOOTHING, TESTS, SpectraResult
from spectrum.analysis.runs.fit_summary import FitSummary
from spectrum.analysis.runs.run_data import RunData
from spectrum.report import figures, tables
from spectrum.report.blocks import Block

HOW_TARGETS = (
    "Targets are measured among held-out runs only. L: each held-out run's mean loss at its "
    "scored checkpoints. dL/dlnT: finite differences of that curve between neighbouring scored "
    "checkpoints. dL/dlnM: between held-out runs of neighbouring model sizes at the same data "
    "scale and schedule, the difference of their losses at matched checkpoints over the "
    "difference in ln M. dL/dlnD: between held-out runs of one model size at neighbouring data "
    "scales, each annealed to its own D, the difference of their end-of-run losses over the "
    "difference in ln D (never two schedules compared at matched T). Every prediction and "
    "baseline is a loss curve at the same checkpoints, put through the same differences; "
    "param_model_analytic is the analytic dL/dlnT of the predicted sigmoids at the same midpoints. "
    "A target is an extrapolation when a run it is measured from lies outside the fit runs' range "
    "in ln M or ln D. Intervals: 95% bootstrap over sequences, predicted and measured curves "
    "resampled together, nothing refitted. The ceiling (seed_replicas) is the same score with one "
    "seed replica of a held-out point predicting another, on the targets that involve that point.")
BASELINE_WORDS = (
    "Baselines, all fitted on the fit runs only: chinchilla, E + A M^-alpha + B D^-beta on the fit "
    "runs' end-of-run losses, read along a run at D = T; power_law_T_interp, E + B T^-beta per fit "
    "run with its parameters interpolated in (ln M, ln D); aggregate_curve, the fit runs' measured "
    "mean-loss curves interpolated in ln T and then in (ln M, ln D), no tokens at all; "
    "token_power_law, a power law in T per token put through the same per-token parameter model "
    "as the sigmoids (the per-token smooth null); zero, no change.")


@dataclass(frozen=True)
class Inputs:
    manifest_path: str
    runs: list[RunData]
    spectra: SpectraResult
    scores: dict
    preds: pl.DataFrame
    fits: dict[str, FitSummary]  # run -> the summary of its fits
    fit_settings: dict[str, dict[str, Any]]  # run -> what its fits recorded
    edges: np.ndarray
    curriculum: dict[str, Any] | None


def _figure(caption: str, fig, name: str) -> Block:
    return Block("figure", caption, png=figures.png_bytes(fig), name=name)


def overview(d: Inputs) -> list[Block]:
    n_tokens = max((r.n_tokens for r in d.runs if r.has_fits), default=0)
    return [
        Block("p", f"Manifest: {d.manifest_path}. {len(d.runs)} runs with measured losses, "
                   f"{n_tokens} contextualized tokens in the evaluation set."),
        Block("h2", "What was measured and what was predicted"),
        Block("p", "Every run's loss was measured per token at each checkpoint, and a sigmoid in "
                   "x = ln T (T: training tokens seen) was fitted to every token's trajectory: "
                   "l(x) = lo + (hi - lo) * sigmoid(-k (x - tau)). tau is the token's learning "
                   "time, delta = hi - lo the loss it sheds. Each trajectory was also fitted by "
                   "two smooth alternatives, to ask whether it is a step at all. The scored range "
                   "of a run leaves out the checkpoints at or before its warmup."),
        Block("table", header=("run", "role", "M (params)", "D (tokens)", "checkpoints",
                               "warmup steps", "scored T range", "tokens with a fit"),
              rows=tuple(tables.run_rows(d.runs))),
    ]


def heldout_coverage(scores: dict) -> str | None:
    """How many of the manifest's held-out runs the held-out scores rest on, named when short."""
    listed = [r["name"] for r in scores.get("runs", []) if r.get("role") == "heldout"]
    scored = {r["name"] for r in scores["tests"]["heldout_runs"].get("runs", [])}
    if not listed:
        return None
    missing = [name for name in listed if name not in scored]
    if not missing:
        if len(listed) == 1:
            return (f"The held-out scores rest on one held-out run, {listed[0]}, the only one of "
                    "the manifest.")
        return f"The held-out scores rest on all {len(listed)} held-out runs of the manifest."
    if len(missing) == len(listed):
        return (f"No held-out run of the manifest could be scored (no measured losses or fits): "
                f"{', '.join(missing)}.")
    return (f"The held-out scores rest on {len(listed) - len(missing)} of the {len(listed)} "
            f"held-out runs of the manifest; not scored (no measured losses or fits): "
            f"{', '.join(missing)}.")


GLANCE_WORDS = (
    "Each held-out target kind's verdict: predicts when the lower end of the noise-corrected "
    "score's 95% interval is at least 0.5, does_not_predict when its upper end is below 0.5, "
    "not_measurable otherwise (or with fewer than 3 seeds, fewer than 5 targets, or no signal "
    "above the seed noise). The noise-corrected score estimates the prediction's R^2 against the "
    "true values from its error in excess of the seed noise (intervals: jackknife over seeds "
    "plus a bootstrap over sequences); the oracle ceiling is what a noise-free predictor would "
    "score against one seed replica; snr is the spread of the true values across targets over "
    "the noise of one measured target (a mean over the seeds). The best baseline's score is the "
    "same noise-corrected score (jackknife over seeds only).")


def at_a_glance(d: Inputs) -> list[Block]:
    """The held-out verdicts in one table, first."""
    rows = tables.glance_rows(d.scores["tests"]["heldout_runs"])
    if not rows:
        return []
    return [Block("h2", "At a glance: does the spectrum predict held-out runs?"),
            Block("table", header=tables.GLANCE_HEADER, rows=tuple(rows)),
            Block("p", GLANCE_WORDS)]


def headline(d: Inputs) -> list[Block]:
    """The verdicts, first: is learning stepwise, and does the spectrum predict held-out runs."""
    out = [Block("h2", "Results in words"), Block("p", d.scores["stepwise"]["verdict"])]
    coverage = heldout_coverage(d.scores)
    if coverage:
        out.append(Block("p", coverage))
    for target, lines in d.scores["tests"]["heldout_runs"].get("verdicts", {}).items():
        out.append(Block("p", "Held-out runs, " + lines[0]))
    reason = d.scores["tests"]["heldout_runs"].get("reason")
    if reason:
        out.append(Block("p", f"Held-out runs: {reason}."))
    return out


def stepwise_section(d: Inputs) -> list[Block]:
    sw = d.scores["stepwise"]
    return [
        Block("h2", "Is learning stepwise?"),
        Block("p", sw["verdict"]),
        Block("p", f"Criterion: {sw['criterion']}. share_step_shed weights each token by the "
                   "loss it sheds (|hi - lo| of its sigmoid)."),
        *_stepwise_calibration(sw),
        Block("table", header=("run", "role", "M", "D", "step preferred", "of loss shed",
                               "smooth preferred", "undecided", "tokens that change",
                               "tau outside checkpoints", "step, tau inside",
                               "unresolved, tau inside", "checkpoints", "note"),
              rows=tuple(tables.stepwise_rows(sw))),
        _figure("Share of the tokens that change (left) and of the loss shed (right) for which "
                "the sigmoid step is preferred, per run against model size.",
                figures.stepwise(sw.get("runs", {})), "stepwise"),
    ]


def _reliability_row(label: str, e: dict, factor: float | None) -> tuple[str, ...]:
    keys = ("tau_corr", "kappa_step", "kappa_kind", "se_coverage", "se_coverage_uncorrected")
    return (label, *(tables.fmt(e[k]) for k in keys), tables.fmt(factor), str(e["n_tokens"]))


def reliability_section(d: Inputs) -> list[Block]:
    """Per replicated point, the agreement of per-token results across seed replicas."""
    points = d.scores["stepwise"].get("reliability") or {}
    if not points:
        return []
    out = [Block("h2", "Do per-token results replicate across seeds?"),
           Block("p", "Per point with runs of several training seeds, per pair of them and pooled: "
                      "the correlation of tau (tokens learned in both runs with tau inside the "
                      "checkpoints' window), Cohen's kappa of the step call (tokens that change in "
                      "both) and of the kinds, and the share of tau differences within 1.96 of "
                      "their combined standard error (near 0.95 when the errors are right), "
                      "before and after correction. Kappa is 0, or undefined (-), where a run "
                      "puts (nearly) every token in one category: agreement then says little. "
                      "A per-token claim that does not replicate across seeds is a property of "
                      "the seed, not of the token.")]
    header = ("pair", "tau corr.", "kappa step", "kappa kind", "SE coverage",
              "SE coverage uncorrected", "factor", "tau pairs")
    for name, entry in points.items():
        rows = [_reliability_row(" vs ".join(p["runs"]), p, p["se_factor"])
                for p in entry["pairs"]]
        rows.append(_reliability_row("pooled", entry, None))
        out += [Block("h3", f"Point {name} (runs {', '.join(entry['runs'])})"),
                Block("table", header=header, rows=tuple(rows)),
                Block("p", entry["se_correction"])]
    return out


def _stepwise_calibration(sw: dict) -> list[Block]:
    """How the rule's margin was calibrated, and how the trend in M is bounded."""
    cal = sw.get("calibration") or {}
    out = []
    if cal.get("how"):
        rate = cal.get("false_step_rate")
        out.append(Block("p", f"Calibration of the margin: {cal['how']}. False-step rate on that "
                              f"null: {'-' if rate is None else f'{rate:.1%}'}."))
    if sw.get("slope_share_step_per_lnM_ci"):
        out.append(Block("p", f"Trends in ln M: {sw['trend_interval']}. Tokens whose tau lies "
                              "outside the checkpoints are counted apart; the columns for tau "
                              "inside are shares of the tokens that change whose tau lies "
                              "inside."))
    return out


def heldout_section(d: Inputs) -> list[Block]:
    entry = d.scores["tests"]["heldout_runs"]
    out = [Block("h2", "Held-out runs: does the spectrum predict runs it was not fitted on?"),
           Block("p", f"Predicted from: {TESTS['heldout_runs'][0]}. {HOW_TARGETS}"),
           Block("p", BASELINE_WORDS),
           Block("table", header=("held-out run", "regime", "replica of", "M", "D",
                                  "warmup steps", "scored T range", "scored checkpoints"),
                 rows=tuple(tables.heldout_run_rows(entry))),
           Block("table", header=tables.HELDOUT_HEADER, rows=tuple(tables.heldout_rows(entry)))]
    for target, lines in entry.get("verdicts", {}).items():
        out.append(Block("p", " ".join(lines)))
    out += _chinchilla_blocks(d.scores.get("fitted", {}).get("chinchilla"))
    pm = d.scores.get("fitted", {}).get("param_model")
    if pm:
        out.append(Block("p", param_model_sentence(pm)))
    return out + _heldout_figures(d)


def _chinchilla_blocks(info: dict | None) -> list[Block]:
    """The Chinchilla law's parameters with their intervals, or why it was not fitted."""
    if not info:
        return []
    out = [Block("h3", "The Chinchilla baseline's parameters")]
    if "reason" in info:
        return out + [Block("p", f"Not fitted: {info['reason']}.")]
    n = info.get("n_end_losses")
    fitted = f"Fitted to {'the' if n is None else n} end-of-run losses of the fit runs"
    how = info.get("interval_method")
    if info.get("intervals"):
        intervals = f"95% intervals from {how}"
    else:  # fewer than two refits converged
        intervals = f"no 95% intervals ({how})" if how else "no 95% intervals"
    return out + [Block("p", f"{fitted}; {intervals}."),
                  Block("table", header=("law", "parameter", "estimate", "95% interval"),
                        rows=tuple(tables.chinchilla_rows({"chinchilla": info})))]


_AXIS_WORDS = {"lnM": ("M", "model size"), "lnD": ("D", "data scale")}


def param_model_sentence(pm: dict) -> str:
    """The parameter model's fit runs and the population dependence of the learning time on each
    axis the fit runs vary; an axis they do not vary is named with the one value they share."""
    tau = pm["population_coefficients"].get("tau", [])
    coef = ", ".join(f"d tau / d {a} = {tables.fmt(v)}" for a, v in zip(pm["axes"], tau[1:]))
    text = f"Parameter model: fitted on {', '.join(pm['fit_runs'])}; "
    fixed = [(_AXIS_WORDS[a], pm["fixed"][a]) for a in _AXIS_WORDS
             if a in pm.get("fixed", {}) and a not in pm["axes"]]
    if coef or not fixed:
        text += f"population dependence of the learning time: {coef or 'none recorded'}"
    if fixed:
        shared = " and ".join(f"one {words} ({sym} = {tables.fmt(float(v))})"
                              for (sym, words), v in fixed)
        names = " and ".join(sym for (sym, _), _ in fixed)
        text += ("; " if coef else "") + (f"the fit runs share {shared}, so the learning time's "
                                          f"dependence on {names} is not estimated")
    return text + "."


def _not_drawn(models: list[str]) -> str:
    """The sentence naming the models a figure leaves out for want of a prediction."""
    if not models:
        return ""
    return (" Not drawn, having no prediction here (the tables give the reasons): "
            f"{', '.join(models)}.")


def _loss_curves_caption(preds: pl.DataFrame) -> str:
    """What ``loss_curves.png`` draws: the reconstructions of each run that have values."""
    held = figures.curves(preds, "L", ("heldout_runs",))
    loro = figures.curves(preds, "L", ("leave_one_run_out",))
    text = ("Measured mean loss (dots) per run; the mean of the run's own fitted sigmoids "
            "(in-sample, identity check)")
    if held["drawn"]:
        text += ("; for held-out runs the prediction and baselines fitted on the fit runs"
                 if "param_model" in held["drawn"] else
                 f"; for held-out runs, fitted on the fit runs: {tables.join_and(held['drawn'])}")
    if loro["drawn"]:
        text += "; for fit runs the leave-one-run-out prediction"
    return text + "." + _not_drawn([f"{m} (held-out runs)" for m in held["not drawn"]]
                                   + [f"{m} (leave one run out)" for m in loro["not drawn"]])


def _heldout_figures(d: Inputs) -> list[Block]:
    roles = {r.name: r.role for r in d.runs}
    out = [_figure(_loss_curves_caption(d.preds), figures.loss_curves(d.preds, roles),
                   "loss_curves")]
    for target in ("dL/dlnT", "dL/dlnM", "dL/dlnD"):
        block = d.scores["tests"]["heldout_runs"].get("targets", {}).get(target, {})
        reason = block.get("predictions", {}).get("param_model", {}).get("reason")
        out.append(_figure(_derivative_caption(d.preds, target, reason),
                           figures.derivatives(d.preds, "heldout_runs", target),
                           f"heldout_runs_{target.split('/')[1]}"))
    return out


def _derivative_caption(preds: pl.DataFrame, target: str, reason: str | None) -> str:
    """What a held-out derivative figure draws: the curves that have values; without any
    measured target, why (``reason``: the prediction's reason for being null)."""
    curves = figures.curves(preds, target, ("heldout_runs",))
    drawn, left_out = curves["drawn"], curves["not drawn"]
    if not drawn and not left_out:
        return f"{target} among held-out runs: no targets" + (f" ({reason})." if reason else ".")
    if "param_model" in drawn or not left_out:
        what = ", the prediction and the baselines through the same finite differences"
    elif drawn:
        what = f", {tables.join_and(drawn)} through the same finite differences"
    else:
        what = ""
    return f"{target} measured among held-out runs (dots){what}." + _not_drawn(left_out)


def other_tests(d: Inputs) -> list[Block]:
    loro = d.scores["tests"].get("leave_one_run_out", {})
    out = [Block("h2", "Leave one fit run out"),
           Block("p", "A second view of the same question: each fit run predicted by the "
                      "parameter model fitted on the other fit runs (L and dL/dlnT)."),
           Block("table", header=tables.SCORE_HEADER, rows=tuple(tables.score_rows(
               d.scores, ("leave_one_run_out",), IN_SAMPLE_LABEL)))]
    for lines in loro.get("verdicts", {}).values():
        out.append(Block("p", " ".join(lines)))
    out += [Block("h2", "Held-out tokens, the spectrum alone, and the in-sample check"),
            Block("p", f"The in_sample rows are an {IN_SAMPLE_LABEL}: the sum of fitted sigmoids "
                       "reproduces the loss curve by construction. Measured derivatives: "
                       f"{SMOOTHING}."),
            Block("table", header=("test", "predicted from", "targets"),
                  rows=tuple((n, f, t) for n, (f, t) in TESTS.items())),
            Block("table", header=tables.SCORE_HEADER, rows=tuple(tables.score_rows(
                d.scores, ("heldout_tokens", "spectrum_only", "in_sample"), IN_SAMPLE_LABEL))),
            _figure("dL/dlnT of one half of the sequences (dots) predicted from the other half's "
                    "spectrum (sharp and kernel), beside the power law fitted to the other half's "
                    "curve and the other half's own measured derivative (reference).",
                    figures.derivatives(d.preds, "heldout_tokens", "dL/dlnT"), "heldout_tokens"),
            _figure("dL/dlnT of each run (dots) from its own spectrum alone.",
                    figures.derivatives(d.preds, "spectrum_only", "dL/dlnT"), "spectrum_only")]
    return out


def spectra_section(d: Inputs) -> list[Block]:
    settings, edges = d.scores.get("settings", {}), d.edges
    return [
        Block("h2", "Learning-time spectra"),
        Block("p", d.scores["stepwise"]["verdict"] + " The spectra below describe the learning "
                   "times of the sigmoids whatever the answer; where the step is not preferred, a "
                   "token's tau is the midpoint of a curve, not the time of a step."),
        Block("p", f"S(x) = (1/N) sum_i delta_i [tau_i in bin] / bin width, and the count "
                   f"density, on one grid of {len(edges) - 1} bins over ln T in "
                   f"[{edges[0]:.2f}, {edges[-1]:.2f}] (T {np.exp(edges[0]):.3g} to "
                   f"{np.exp(edges[-1]):.3g}) shared by all runs. Tokens entering: kinds "
                   f"{', '.join(settings.get('kinds', []))}; N counts every token with a fit. "
                   f"Bands: 95% percentile bootstrap over sequences ({settings.get('n_boot')} "
                   f"replicates)."),
        _figure("Spectra of every run with bootstrap bands.", figures.spectra(d.spectra.table),
                "spectra"),
    ]


def slices_section(d: Inputs) -> list[Block]:
    comps = d.spectra.comparisons
    rows = [(run, c.question, c.a, c.b, tables.fmt(c.mean_a), tables.fmt(c.mean_b),
             tables.fmt(c.diff), f"[{tables.fmt(c.lo)}, {tables.fmt(c.hi)}]", c.verdict)
            for run, cs in comps.items() for c in cs]
    out = [Block("h2", "Which tokens are learned first"),
           Block("p", "Amplitude-weighted mean learning time (ln T) of learned tokens in two "
                      "slices, their difference and its 95% bootstrap interval over sequences. "
                      "An interval that includes 0 means the data do not tell the slices apart. "
                      "Position in the context is the proxy for the range of a prediction.")]
    by_question: dict[str, list[str]] = {}
    for cs in comps.values():
        for c in cs:
            by_question.setdefault(c.question, []).append(c.verdict)
    for question, verdicts in by_question.items():
        tally = ", ".join(f"{v}: {verdicts.count(v)} of {len(verdicts)} runs"
                          for v in dict.fromkeys(verdicts))
        out.append(Block("p", f"{question[0].upper()}{question[1:]} {tally}."))
    if rows:
        out.append(Block("table", header=("run", "question", "slice a", "slice b", "mean tau a",
                                          "mean tau b", "a - b", "95% interval", "answer"),
                         rows=tuple(rows)))
    else:
        out.append(Block("p", "No comparison: the evaluation set has no annotations or no fits."))
    out.append(_figure("Difference of mean learning time per slice pair and run.",
                       figures.comparisons(comps), "slice_comparisons"))
    if d.spectra.spectra:
        ref = max((r for r in d.runs if r.name in d.spectra.spectra), key=lambda r: r.M * r.D)
        out.append(_figure(f"Spectra of the annotation slices of {ref.name} (each slice "
                           "normalised by its own token count), with bands.",
                           figures.slices(d.spectra.table, ref.name), "slices"))
    return out


def fit_quality_section(d: Inputs) -> list[Block]:
    settings = tables.fit_settings_text(d.fit_settings or {}, [r.name for r in d.runs])
    return [Block("h2", "Fit quality"),
            Block("table", header=("run", "tokens", "by kind", "median R^2",
                                   "median SE of tau (learned)"),
                  rows=tuple(tables.fit_quality_rows(d.fits))),
            Block("p", "Kind thresholds and fit settings, as recorded by the fit stage "
                       + settings),
            _figure("Per-token fit R^2, counts by kind, and standard errors of tau.",
                    figures.fit_quality(d.fits), "fit_quality")]


def curriculum_section(d: Inputs) -> list[Block]:
    """The controlled test of the curriculum, when it has results: every arm against uniform,
    the curriculum against each control, the verdicts and the curves."""
    c = d.curriculum
    if c is None:
        return []
    out = [Block("h2", c["title"]), Block("p", c["intro"]),
           Block("table", header=tuple(c["header"]), rows=tuple(map(tuple, c["rows"])))]
    if c["comparison_rows"]:
        out += [Block("p", "The curriculum against each control, paired by seed (a negative "
                           "difference: the curriculum reached the lower loss)."),
                Block("table", header=tuple(c["comparison_header"]),
                      rows=tuple(map(tuple, c["comparison_rows"])))]
    out += [Block("p", f"Verdict: {v}") for v in c["verdicts"]]
    if c["figure"] is not None:
        out.append(Block("figure", "Validation loss of each arm against training tokens, and its "
                                   "difference to the uniform run of the same seed.",
                         png=Path(c["figure"]).read_bytes(), name="curriculum_test"))
    return out


SECTIONS = (at_a_glance, headline, overview, stepwise_section, reliability_section,
            heldout_section, other_tests, spectra_section, slices_section, fit_quality_section,
            curriculum_section)


def build_blocks(inputs: Inputs) -> list[Block]:
    """The whole document, section by section."""
    return [b for section in SECTIONS for b in section(inputs)]
