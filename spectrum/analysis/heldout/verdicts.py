"""The three-way verdict of the held-out-runs test, target kind by target kind, from seed noise.

Each target kind (L, dL/dlnT, dL/dlnM, dL/dlnD) is a family measured on the seed replicas of the
held-out points (:func:`spectrum.analysis.heldout.targets.seed_family`; row r = seed r, pairs
of runs paired by seed). The measurement is given to :func:`spectrum.analysis.heldout.noise.assess`
in per-sequence parts: a run's mean-loss curve is ``sum_s sums_s / sum_s counts_s`` over the
evaluation sequences, written as the mean over s of ``S sums_s / sum counts`` (exact for the
value; in the bootstrap over sequences the denominator is held fixed, which is exact when every
sequence counts the same tokens). Every target is linear in the curves, so its parts are the
target of the parts. The prediction is the full-sample one (row 0 of the sequence-bootstrap
draws): the bootstrap over sequences resamples the measurement only, which errs on the wide side
since the prediction, read on the same sequences, would move with it.

Per kind the entry holds the verdict on the spectrum's prediction (``param_model``), the noise
it rests on, the noise-corrected scores of the baselines (a jackknife interval over seeds only),
the skill against the tokenless aggregate null in excess of the noise, the noise estimate of what
that null leaves unexplained, and, for ``not_measurable``, what the suite would need.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from spectrum.analysis.heldout.noise import (FamilyVerdict, assess, finite_or_none, needed,
                                             skill, unexplained)
from spectrum.analysis.heldout.targets import TARGETS, Target, seed_family, seed_replicas
from spectrum.analysis.runs.run_data import RunData

MODEL = "param_model"
NULL = "aggregate_curve"  # the tokenless null the skill is measured against
SCHEMA_VERSION = 2
WORDS = {"predicts": "the spectrum predicts the held-out runs",
         "does_not_predict": "the spectrum does not predict the held-out runs",
         "not_measurable": "whether the spectrum predicts the held-out runs is not measurable"}


def sequence_parts(run: RunData) -> np.ndarray:
    """(S, K): the run's mean-loss curve in per-sequence parts whose mean over S is the curve."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return run.seq_sums.shape[0] * run.seq_sums / run.seq_counts.sum(0)


def _assess_model(y: np.ndarray, prediction: np.ndarray | None, **kw) -> FamilyVerdict | None:
    """The verdict on a prediction at the targets it predicts (None: it predicts none)."""
    if prediction is None:
        return None
    measured = np.isfinite(y).any(axis=tuple(a for a in range(y.ndim) if a != 1))
    ok = np.isfinite(prediction) & measured
    if not ok.any():
        return None
    return assess(y[:, ok], prediction[ok], **kw)


def _noise_json(result: FamilyVerdict) -> dict:
    doc = result.noise.to_json()
    if "reason" not in doc and any(doc[k] is None for k in ("snr", "snr_ci", "signal_var")):
        doc["reason"] = result.reason or "not computable from these replicas"
    return doc


def unmeasured_entry(reason: str, replicas: int = 0) -> dict:
    """The entry of a target kind whose noise and verdict cannot be computed, with why."""
    noise = {"snr": None, "snr_ci": None, "noise_var": None, "signal_var": None,
             "oracle_ceiling": {"r2": None, "ci": None}, "replicas": replicas, "reason": reason}
    return {"verdict": "not_measurable", "noise": noise,
            "score_corrected": {"value": None, "ci": None, "reason": reason},
            "verdict_basis": {"model": MODEL, "reason": reason, "needed": _need_words(reason)}}


def _need_words(reason: str) -> str:
    return ("seed replicas at the held-out points, paired across the runs of a derivative "
            f"(today: {reason})")


def _beside(y: np.ndarray, means: np.ndarray, predictions: dict[str, np.ndarray]) -> dict:
    """The baselines' noise-corrected scores, the skill against the null, and what the null
    leaves unexplained."""
    out: dict[str, Any] = {"baselines": {}}
    for model, p in predictions.items():
        if model == MODEL:
            continue
        r = _assess_model(means, p)
        if r is not None:
            out["baselines"][model] = {"value": finite_or_none(r.score),
                                       "ci": None if r.score_ci is None else list(r.score_ci),
                                       "verdict": r.verdict, "reason": r.reason}
    mine, null = predictions.get(MODEL), predictions.get(NULL)
    if mine is not None and null is not None:
        ok = np.isfinite(mine) & np.isfinite(null) & np.isfinite(means).any(axis=0)
        if ok.sum() >= 2:
            out[f"skill_vs_{NULL}"] = skill(y[:, ok], mine[ok], null[ok])
            left = unexplained(y[:, ok], null[ok])
            out[f"unexplained_by_{NULL}"] = left.to_json()
    return out


def family_entry(y: np.ndarray, predictions: dict[str, np.ndarray], *,
                 n_boot: int = 2000, seed: int = 0) -> dict:
    """One target kind's entry: ``y`` (seeds, J, S) its family in per-sequence parts,
    ``predictions`` model -> (J,) full-sample predictions (NaN where a model has none)."""
    means = y.mean(axis=2) if y.shape[2] else np.full(y.shape[:2], np.nan)
    replicas = int(np.isfinite(means).any(axis=1).sum())
    r = _assess_model(y, predictions.get(MODEL), n_boot=n_boot, seed=seed)
    if r is None:
        return unmeasured_entry(f"{MODEL} predicts none of the measured targets", replicas)
    basis = {"model": MODEL, "threshold": r.threshold, "rmse_nats": finite_or_none(r.rmse),
             "error_over_noise": {"value": finite_or_none(r.error_over_noise),
                                  "ci": None if r.error_over_noise_ci is None
                                  else list(r.error_over_noise_ci)},
             "reason": r.reason, "needed": needed(r) or None, **_beside(y, means, predictions)}
    doc = r.to_json()
    if doc["score_corrected"]["value"] is None:
        doc["score_corrected"].setdefault("reason", r.reason or "not computable")
    return {"verdict": doc["verdict"], "noise": _noise_json(r),
            "score_corrected": doc["score_corrected"], "verdict_basis": basis}


def heldout_verdicts(targets: list[Target], held: list[RunData],
                     predictions: dict[str, dict[str, np.ndarray]], *,
                     fit: Sequence[RunData] = (), n_boot: int = 2000,
                     seed: int = 0) -> dict[str, dict]:
    """target kind -> its entry (:func:`family_entry`). ``predictions``: kind -> model -> the
    (J,) full-sample values at that kind's targets, in the order of ``targets``. Held-out seeds
    that ``fit`` runs also use are named (``seeds_shared_with_fit_runs``): a held-out run on a
    fit run's seed shares its noise, so its targets look more predictable than they are."""
    parts = {r.name: sequence_parts(r) for r in held}
    seeds, _ = seed_replicas(held)
    fit_seeds = {r.seed for r in fit if r.seed is not None}
    shared = [s for known, s in seeds if known == 0 and s in fit_seeds]
    out = {}
    for kind in TARGETS:
        of_kind = [t for t in targets if t.target == kind]
        if not of_kind:
            out[kind] = unmeasured_entry("no such target among the held-out runs")
            continue
        y = seed_family(of_kind, parts, held)
        out[kind] = family_entry(y, predictions.get(kind, {}), n_boot=n_boot, seed=seed)
        out[kind]["verdict_basis"].update(seeds=len(seeds), seeds_shared_with_fit_runs=shared)
    return out


def _ci(ci: list | None) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else ""


def _val(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def verdict_sentence(target: str, entry: dict) -> str:
    """The three-way verdict in words, with its numbers; what a ``not_measurable`` verdict
    would need; the skill against the tokenless null and what it leaves unexplained."""
    noise, sc, basis = entry["noise"], entry["score_corrected"], entry["verdict_basis"]
    ceiling = noise["oracle_ceiling"]
    nums = []
    if sc.get("value") is not None:
        nums.append(f"noise-corrected score {_val(sc['value'])}{_ci(sc.get('ci'))} against "
                    f"the threshold {basis.get('threshold', 0.5):g}")
    if ceiling.get("r2") is not None:
        nums.append(f"oracle ceiling {_val(ceiling['r2'])}{_ci(ceiling.get('ci'))}")
    if noise.get("snr") is not None:
        nums.append(f"snr {_val(noise['snr'])}{_ci(noise.get('snr_ci'))}")
    nums.append(f"{noise.get('replicas', 0)} seed(s), {noise.get('targets', 0)} targets")
    err = (basis.get("error_over_noise") or {}).get("value")
    if sc.get("value") is None and err is not None:
        nums.append(f"error {_val(err)} times the noise of a measured target")
    out = f"{target}: {WORDS[entry['verdict']]} ({entry['verdict']}; {'; '.join(nums)})."
    if entry["verdict"] == "not_measurable":
        why = basis.get("reason")
        out += (f" Why: {why}." if why else "") + \
            f" The suite would need: {basis.get('needed') or 'seed replicas'}"
        out = out if out.endswith(".") else out + "."
    shared = basis.get("seeds_shared_with_fit_runs")
    if shared:
        out += (f" Caution: seed(s) {', '.join(map(str, shared))} of the held-out runs also "
                "train fit runs, whose noise the prediction has learned.")
    sk = basis.get(f"skill_vs_{NULL}")
    if sk is not None:
        out += (f" Skill against the tokenless {NULL} null, in excess of the noise: "
                + (f"{_val(sk['value'])}{_ci(sk.get('ci'))}" if sk.get("value") is not None
                   else f"not computable ({sk.get('reason')})"))
        left = basis.get(f"unexplained_by_{NULL}") or {}
        snr = left.get("snr")
        out += (f"; what it leaves unexplained has snr {_val(snr)}{_ci(left.get('snr_ci'))}."
                if snr is not None else
                f"; what it leaves unexplained: {left.get('reason') or 'no snr'}.")
    return out
