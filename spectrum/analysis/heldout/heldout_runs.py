"""The held-out-runs test and its second view, leave-one-run-out over the fit runs.

The spectrum's prediction (``param_model``): each token's sigmoid parameters, modelled as linear
functions of ln M and ln D on the fit runs only (:mod:`spectrum.analysis.heldout.param_model`),
give every token's curve at a held-out run's checkpoints; their mean is the predicted loss curve,
which goes through the same targets and operator as the measured one
(:mod:`spectrum.analysis.heldout.targets`). ``param_model_analytic`` is the analytic dL/dlnT of the
same sigmoids at the same midpoints, an extra row. The baselines
(:mod:`spectrum.analysis.heldout.baselines`) are fitted on the same fit runs and scored on the same
targets; the seed replicas of a held-out point give the noise ceiling (the same score, replica
against replica). Every score carries a bootstrap interval over sequences.

The verdict per target kind rests on the seed noise of the measured targets
(:mod:`spectrum.analysis.heldout.verdicts`): ``predicts``, ``does_not_predict`` or
``not_measurable``, from the noise-corrected score of the prediction; the raw R^2 sentences
follow it, and no R^2 verdict is given over fewer than :data:`MIN_TARGETS` targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from spectrum.analysis.heldout import baselines
from spectrum.analysis.heldout.noise import MIN_TARGETS
from spectrum.analysis.heldout.prediction_table import prediction_rows
from spectrum.analysis.heldout.schedule_law import SCHEDULE_LAW, fit_schedule_law
from spectrum.analysis.heldout.scores import (comparison_words, holm_family, holm_words,
                                              null_score, paired_difference, predicts, r2_words,
                                              score)
from spectrum.analysis.heldout.targets import (TARGETS, Target, heldout_targets, points, regime,
                                               replica_pairs, run_targets)
from spectrum.analysis.heldout.token_model import (ANALYTIC, PREDICTION, Job, TokenPredictions,
                                                   token_model_predictions)
from spectrum.analysis.heldout.verdicts import (heldout_verdicts, unmeasured_entry,
                                                verdict_sentence)
from spectrum.analysis.runs.curves import SeqCurve, fixed
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.schedule import Schedule
from spectrum.analysis.runs.token_passes import Mapper, in_process

CEILING = "seed_replicas"
BASELINES = ("chinchilla", "power_law_T_interp", SCHEDULE_LAW, "aggregate_curve",
             "token_power_law", "zero")


@dataclass
class Predictions:
    """Each model's predicted curves (run -> (R, K)), the analytic derivatives, and notes."""

    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    analytic: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (R, K_scored - 1)
    fitted: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def put(self, model: str, run: str, curve: np.ndarray) -> None:
        self.curves.setdefault(model, {})[run] = curve


def predict_runs(fit: list[RunData], targets: list[RunData], weights: np.ndarray, *,
                 tokens: TokenPredictions, laws: dict,
                 chinchilla_refits: int | None = 100) -> Predictions:
    """Every model's curves for the ``targets`` runs, fitted on ``fit`` only: the per-token
    models' (``tokens``, :func:`token_model_predictions` of the same fit runs and targets) and the
    baselines' (``laws``: the runs' own power laws in T, :func:`baselines.run_power_laws`;
    ``chinchilla_refits`` None: no Chinchilla baseline). The baselines that read the fit runs
    along ln M or ln D are refused, with the reason, where the fit runs have one value on an axis
    and the target another (:func:`baselines.refusal`); the cheap ones are refitted on every
    bootstrap replicate."""
    pred = Predictions(analytic=dict(tokens.analytic), fitted=dict(tokens.fitted),
                       reasons=list(tokens.reasons))
    for model, by_run in tokens.curves.items():
        for run, curve in by_run.items():
            pred.put(model, run, curve)
    R = weights.shape[0]
    law = None
    if chinchilla_refits is not None:
        law, pred.fitted["chinchilla"] = baselines.fit_chinchilla(fit, weights, chinchilla_refits)
    interp, pred.fitted["power_law_T_interp"] = baselines.power_law_T_interp(fit, laws, weights)
    schedule, pred.fitted[SCHEDULE_LAW] = fit_schedule_law(fit, weights)
    curves = {"chinchilla": None if law is None else
              (lambda h: fixed(baselines.chinchilla_curve(law)(h), R)),
              "power_law_T_interp": interp, SCHEDULE_LAW: schedule,
              "aggregate_curve": baselines.aggregate_curve(fit, weights)}
    refused = {h.name: baselines.refusal(fit, h) for h in targets}
    for h in targets:
        for model, curve in curves.items():
            if curve is not None and refused[h.name] is None:
                pred.put(model, h.name, curve(h))
        pred.put("zero", h.name, np.zeros((R, len(h.x))))
    unknown = [h.name for h in targets if not isinstance(h.schedule, Schedule)]
    if schedule is not None and unknown:
        pred.fitted[SCHEDULE_LAW]["targets_without_schedule"] = unknown
        if len(unknown) == len(targets):
            pred.fitted[SCHEDULE_LAW]["reason"] = "no target run has a known learning-rate schedule"
    why = [w for w in refused.values() if w]
    if why and len(why) == len(targets):
        for model in (m for m in curves if m != "chinchilla" or chinchilla_refits is not None):
            pred.fitted[model] = {**(pred.fitted.get(model) or {}), "reason": why[0]}
    return pred


# ---------------------------------------------------------------------------------------------
# scoring

@dataclass
class Pooled:
    """(R, n) predicted and measured values of one model on one target, with their labels."""

    pred: list[np.ndarray] = field(default_factory=list)
    meas: list[np.ndarray] = field(default_factory=list)
    regime: list[np.ndarray] = field(default_factory=list)

    def add(self, p: np.ndarray, m: np.ndarray, regime: str) -> None:
        self.pred.append(p)
        self.meas.append(m)
        self.regime.append(np.full(m.shape[1], regime))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self.pred, 1), np.concatenate(self.meas, 1),
                np.concatenate(self.regime))


def _model_values(t: Target, model: str, pred: Predictions) -> np.ndarray | None:
    if model == ANALYTIC:
        return pred.analytic.get(t.runs[0]) if t.target == "dL/dlnT" else None
    curves = pred.curves.get(model, {})
    if model == "zero" and t.target == "L":
        return None
    if not all(r in curves for r in t.runs):
        return None
    return t.build(curves)


def pool_targets(targets: list[Target], measured: dict[str, np.ndarray], pred: Predictions,
                 rows: list[pl.DataFrame], test: str,
                 models: tuple[str, ...] = (PREDICTION, ANALYTIC, *BASELINES)
                 ) -> dict[str, dict[str, Pooled]]:
    """target -> model -> pooled values; appends rows of the predictions table. A model that
    cannot predict a target gets NaN there, so every model's values stay aligned target by
    target (paired comparisons use the targets both predict)."""
    pooled: dict[str, dict[str, Pooled]] = {t: {} for t in TARGETS}
    for t in targets:
        m = t.build(measured)
        for model in models:
            if (model == "zero" and t.target == "L") or (model == ANALYTIC and t.target != "dL/dlnT"):
                continue
            p = _model_values(t, model, pred)
            if p is None:
                p = np.full_like(m, np.nan)
            pooled[t.target].setdefault(model, Pooled()).add(p, m, t.regime)
            rows.append(_rows(test, t, model, p[0], m[0]))
    return pooled


def _rows(test: str, t: Target, model: str, p: np.ndarray, m: np.ndarray) -> pl.DataFrame:
    kind = "prediction" if model in (PREDICTION, ANALYTIC) else \
        "reference" if model == CEILING else "baseline"
    return prediction_rows(test=test, target=t.target, model=model, model_kind=kind,
                           run=t.label, regime=t.regime, x=t.x, measured=m, predicted=p)


def score_with_regimes(p: Pooled) -> dict:
    pv, mv, reg = p.arrays()
    s = score(pv, mv)
    s["by_regime"] = {r: {k: v for k, v in score(pv[:, reg == r], mv[:, reg == r]).items()
                          if k in ("r2", "r2_ci", "rmse_nats", "n_targets", "reason")}
                      for r in ("interpolation", "extrapolation") if (reg == r).any()}
    return s


def ceiling(targets: list[Target], measured: dict[str, np.ndarray], held: list[RunData],
            pred: Predictions) -> dict[str, dict]:
    """target -> the seed-replica score, and the prediction's score on the same targets."""
    out = {}
    for name in TARGETS:
        rep, own = Pooled(), Pooled()
        for t in (t for t in targets if t.target == name):
            for as_meas, as_pred in replica_pairs(t, held):
                m = t.build({**measured, **{k: measured[v] for k, v in as_meas.items()}})
                rep.add(t.build({**measured, **{k: measured[v] for k, v in as_pred.items()}}), m,
                        t.regime)
                p = _model_values(t, PREDICTION, pred)
                if p is not None:
                    own.add(p, m, t.regime)
        if rep.pred:
            s = score(*rep.arrays()[:2])
            s["targets"] = "those measured from a seed-replicated point, replica against replica"
            if own.pred:
                s["param_model_on_these_targets"] = {k: v for k, v in score(*own.arrays()[:2]).items()
                                                     if k in ("r2", "r2_ci", "rmse_nats")}
            out[name] = s
    return out


def full_sample(pooled: dict[str, dict[str, Pooled]]) -> dict[str, dict[str, np.ndarray]]:
    """target -> model -> its full-sample (row 0) values at every target, in pooled order (the
    spectrum's prediction and the baselines)."""
    return {name: {model: np.concatenate([p[0] for p in pool.pred])
                   for model, pool in models.items() if model in (PREDICTION, *BASELINES)}
            for name, models in pooled.items()}


def target_verdict(target: str, block: dict, pooled: dict[str, Pooled],
            what: str = "the held-out runs") -> list[str]:
    """Sentences for one target: does the spectrum predict it, and against each baseline."""
    s = block["predictions"].get(PREDICTION, {})
    if s.get("r2") is None:
        return [f"{target}: not scored ({s.get('reason') or 'no targets'})."]
    ci = s.get("r2_ci")
    interval = f" [{r2_words(ci[0])}, {r2_words(ci[1])}]" if ci else ""
    n = s.get("n_targets", 0)
    if n < MIN_TARGETS:
        head = (f"{target}: {n} targets, too few for an R^2 verdict (at least {MIN_TARGETS}; "
                f"error {s['rmse_nats']:.3g} nats, R^2 = {r2_words(s['r2'])}{interval}")
    else:
        says = predicts(s)
        head = (f"{target}, by raw R^2 (seed noise not corrected): the spectrum "
                f"{'predicts' if says else 'does not predict'} {what} "
                f"(R^2 = {r2_words(s['r2'])}{interval}, error {s['rmse_nats']:.3g} nats")
    ceil = block["references"].get(CEILING)
    if ceil and ceil.get("r2") is not None:
        head += f"; seed-replica ceiling R^2 = {r2_words(ceil['r2'])}"
    out = [head + ")."]
    mine = pooled.get(PREDICTION)
    for base in BASELINES:
        if base in pooled and mine is not None:
            pm, mm, _ = mine.arrays()
            pb, mb, _ = pooled[base].arrays()
            out.append(comparison_words(PREDICTION, base, paired_difference(pm, pb, mm)) + ".")
    return out


def compare_family(pooled: dict[str, dict[str, Pooled]], blocks: dict,
                   verdicts: dict[str, list[str]]) -> None:
    """The prediction against every baseline on every target of a test, machine-readable in
    ``blocks[target]["comparisons"][baseline]`` (``diff``, ``ci``, ``p``, ``p_holm``,
    ``survives_holm``, ``claim``), Holm-corrected over the whole test's family, with a sentence
    per target on which claims survive."""
    family = []
    for name, block in blocks.items():
        mine = pooled.get(name, {}).get(PREDICTION)
        block["comparisons"] = {}
        for base in BASELINES:
            if base in pooled.get(name, {}) and mine is not None:
                pm, mm, _ = mine.arrays()
                d = paired_difference(pm, pooled[name][base].arrays()[0], mm)
                if d is not None:
                    block["comparisons"][base] = d
                    family.append(d)
    holm_family(family)
    for name, block in blocks.items():
        words = holm_words(block["comparisons"])
        if words and name in verdicts:
            verdicts[name].append(words)


# ---------------------------------------------------------------------------------------------
# the two tests

NO_TARGETS = {
    "L": "no held-out run has a scored checkpoint",
    "dL/dlnT": "no held-out run has two scored checkpoints",
    "dL/dlnM": "no two held-out runs of different model sizes share a data scale and schedule",
    "dL/dlnD": "no two held-out runs of one model size have different data scales",
}


def _blocks(pooled: dict[str, dict[str, Pooled]], reason: str | None,
            present: set[str] | None = None) -> dict[str, dict]:
    """Score blocks per target; a target without values gets ``reason`` or, when the test ran
    but had no such target (``present``), why there was none."""
    out = {}
    for name in TARGETS:
        if present is not None and name not in present:
            reason_here = NO_TARGETS[name]
        else:
            reason_here = reason
        block: dict = {"predictions": {}, "baselines": {}, "references": {}}
        for model, p in pooled.get(name, {}).items():
            group = "predictions" if model in (PREDICTION, ANALYTIC) else "baselines"
            block[group][model] = score_with_regimes(p)
        if PREDICTION not in block["predictions"]:
            block["predictions"][PREDICTION] = null_score(reason_here or "no targets")
        for s in block["predictions"].values():
            if s.get("r2") is None and s.get("n_targets", 0) == 0 and reason_here:
                s["reason"] = reason_here
        out[name] = block
    return out


def _explain_missing(blocks: dict, pred: Predictions) -> None:
    """A baseline that could not be fitted says why instead of 'no finite targets'."""
    for block in blocks.values():
        for model, s in block["baselines"].items():
            why = pred.fitted.get(model, {}).get("reason") if isinstance(pred.fitted.get(model),
                                                                         dict) else None
            if s.get("r2") is None and s.get("n_targets", 0) == 0 and why:
                s["reason"] = f"not fitted: {why}"


def _run_entry(h: RunData, fit: list[RunData], first: RunData) -> dict:
    sc = h.scored
    return {"name": h.name, "params": h.M, "tokens": h.D, "regime": regime([h], fit),
            "replica_of": None if first.name == h.name else first.name,
            "warmup_steps": h.warmup_steps,
            "scored_T": [float(np.exp(h.x[sc].min())), float(np.exp(h.x[sc].max()))]
            if sc.any() else None, "scored_checkpoints": int(sc.sum())}


def heldout_runs_test(runs: list[RunData], weights: np.ndarray, ridge: float,
                      rows: list[pl.DataFrame], laws: dict,
                      mapper: Mapper = in_process) -> dict:
    """``tests.heldout_runs`` of scores.json (see the module docstring)."""
    fit = [r for r in runs if r.role == "fit" and r.has_fits]
    held = [r for r in runs if r.role == "heldout"]
    reason = ("the manifest has no heldout run with measured losses" if not held else
              "no fit run has fits" if not fit else None)
    entry: dict = {"runs": [], "fitted": {}, "verdicts": {}}
    if reason:
        entry.update(targets=_blocks({}, reason), reason=reason)
        for block in entry["targets"].values():
            block.update(unmeasured_entry(reason))
        return entry
    measured = {r.name: SeqCurve(r.seq_sums, r.seq_counts).draw(weights) for r in held}
    targets = heldout_targets(held, fit)
    groups = points(held)
    firsts = [p[0] for p in groups]
    tokens = token_model_predictions([Job(fit, firsts)], weights, ridge, mapper)[0]
    pred = predict_runs(fit, firsts, weights, tokens=tokens, laws=laws,
                        chinchilla_refits=min(weights.shape[0] - 1, 100))
    pooled = pool_targets(targets, measured, pred, rows, "heldout_runs")
    reason = "; ".join(dict.fromkeys(pred.reasons)) or None
    entry["targets"] = _blocks(pooled, reason, {t.target for t in targets})
    _explain_missing(entry["targets"], pred)
    ceilings = ceiling(targets, measured, held, pred)
    families = heldout_verdicts(targets, held, full_sample(pooled), fit=fit)
    for name, block in entry["targets"].items():
        block["references"][CEILING] = ceilings.get(name) or null_score(
            "no seed-replicated held-out point enters these targets")
        block.update(families[name])
        entry["verdicts"][name] = [verdict_sentence(name, families[name]),
                                   *target_verdict(name, block, pooled[name])]
    compare_family(pooled, entry["targets"], entry["verdicts"])
    entry["runs"] = [_run_entry(h, fit, p[0]) for p in groups for h in p]
    entry["fitted"] = pred.fitted
    entry["reason"] = reason
    return entry


def leave_one_run_out_test(runs: list[RunData], weights: np.ndarray, ridge: float,
                           rows: list[pl.DataFrame], laws: dict,
                           mapper: Mapper = in_process) -> dict:
    """Each fit run predicted from the other fit runs: L and dL/dlnT (without the Chinchilla
    baseline, whose end-of-run law says nothing along a run that the others do not)."""
    fit = [r for r in runs if r.role == "fit" and r.has_fits]
    if len(fit) < 3:
        blocks = _blocks({}, "fewer than 3 fit runs")
        return {"targets": {k: blocks[k] for k in ("L", "dL/dlnT")},
                "reason": "fewer than 3 fit runs", "verdicts": {}}
    pooled: dict[str, dict[str, Pooled]] = {t: {} for t in TARGETS}
    reasons = []
    jobs = [Job([o for o in fit if o.name != r.name], [r]) for r in fit]
    for job, tokens in zip(jobs, token_model_predictions(jobs, weights, ridge, mapper)):
        r, others = job.targets[0], job.fit
        pred = predict_runs(others, [r], weights, tokens=tokens, laws=laws, chinchilla_refits=None)
        reasons += pred.reasons
        measured = {r.name: SeqCurve(r.seq_sums, r.seq_counts).draw(weights)}
        models = (PREDICTION, ANALYTIC, *(b for b in BASELINES if b != "chinchilla"))
        for name, models in pool_targets(run_targets(r, others), measured, pred, rows,
                                         "leave_one_run_out", models).items():
            for model, p in models.items():
                into = pooled[name].setdefault(model, Pooled())
                into.pred += p.pred
                into.meas += p.meas
                into.regime += p.regime
    reason = "; ".join(dict.fromkeys(reasons)) or None
    blocks = _blocks({k: v for k, v in pooled.items() if k in ("L", "dL/dlnT")}, reason)
    blocks = {k: v for k, v in blocks.items() if k in ("L", "dL/dlnT")}
    verdicts = {k: target_verdict(k, blocks[k], pooled[k], "each fit run from the others")
                for k in blocks}
    compare_family(pooled, blocks, verdicts)
    return {"targets": blocks, "reason": reason, "verdicts": verdicts}
