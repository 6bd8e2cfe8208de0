"""`spectrum curriculum-test`: does the learnability curriculum speed training up? A controlled test.

One model size of the manifest's suite is trained from scratch under the arms of
:mod:`spectrum.curriculum.arms` (``uniform``, ``curriculum``, ``freq_shuffled``, ``random``,
``timing_flat``, ``exported``) with the same optimizer, schedule, compute, seeds and pool of
training sequences; the arms differ only in the per-phase sampling weights. Uniform runs at other
budgets (fractions of the steps, each a full schedule) calibrate the compute multiplier.

- Pool: ``--sequences`` windows of the suite's context from the corpus's training split (the
  learnability evalset, so every pool sequence has measured learnability). By default as many as
  the training run consumes in two passes (``--epochs``), capped by what the split holds.
- Learnability: the evalset, losses and fit stages over the pool, with the checkpoints of the
  suite's ``fit`` runs of the chosen size on the test's schedule (every seed the suite has), or
  ``--runs``; under ``<out>/curriculum/test/learnability``. The test's seeds (from
  ``--seed-base``, default 1000) must differ from every seed of those runs.
- Exported arm: the weights ``spectrum export-curriculum`` gives the pool with its defaults (the
  manifest's fit runs on its own scored sample, under ``<out>/curriculum/learnability``, shared
  with that command), for the test's phases and floor.
- Compute: the steps and tokens per step of the shortest ``fit`` run of that size (``--steps``
  sets another number of steps); the suite's AdamW, warmup and cosine schedule. Phases: equal
  bins of ln T from the end of the warmup to the last step.

Outputs in ``<out>/curriculum/test/``: ``runs/*.json`` (each run's curve; a finished run is
skipped when the command is repeated), ``weights.parquet`` (every arm's weights for the first
seed), ``results.json``, ``results.md`` and ``curriculum_test.png``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from pipelines.curriculum_test_options import HELP, OPTIONS, CurriculumTestOptions  # noqa: F401
from pipelines.learnability import run_learnability_stages
from pipelines.options import option
from spectrum import layout
from spectrum.curriculum.arms import (ARMS, arm_weights, frequency_buckets, frequency_match_record,
                                      weight_diagnostics)
from spectrum.curriculum.learnability import (Pool, evalset_meta, exported_weights,
                                              learnability_manifest, learnability_runs, read_pool)
from spectrum.curriculum.runner import (Stopwatch, TrialSettings, budget_steps, fingerprint,
                                        learnability_cost, pool_size, run_arms, training_cost,
                                        write_results)
from spectrum.curriculum.weights import (Phases, phase_schedule, phase_weights, weight_columns,
                                         weights_hash)
from spectrum.data.evalset import vocab_hash
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import source_commit, write_parquet

if TYPE_CHECKING:  # the suite's modules are imported when the command runs
    from spectrum.suite.build import SuiteData
    from spectrum.suite.config import RunPlan, SuitePlan

__all__ = ["OPTIONS", "main", "run_arms", "write_results"]
log = logging.getLogger(__name__)


def settings_from(args: CurriculumTestOptions) -> TrialSettings:
    """The test's settings from the command line, checked."""
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        raise SpectrumError(f"--arms: unknown arm(s) {', '.join(unknown)} (arms: {', '.join(ARMS)})")
    if "uniform" not in arms:
        arms.insert(0, "uniform")  # every score is relative to the uniform run
    try:
        budgets = sorted({float(b) for b in args.budgets.split(",") if b.strip()} | {1.0})
    except ValueError:
        raise SpectrumError(f"--budgets: expected comma-separated numbers, got {args.budgets!r}") from None
    if len(budgets) < 3 or min(budgets) <= 0:
        raise SpectrumError(f"--budgets: at least 3 positive budgets (with 1) are needed for the "
                            f"compute multiplier, got {', '.join(f'{b:g}' for b in budgets)}")
    if args.seeds < 1:
        raise SpectrumError(f"--seeds must be at least 1, got {args.seeds}")
    return TrialSettings(size=args.size, seeds=args.seeds, seed_base=args.seed_base, steps=args.steps,
                         epochs=args.epochs, buckets=args.buckets, eval_sequences=args.eval_sequences,
                         arms=tuple(arms), budgets=tuple(budgets), phases=args.phases,
                         floor=args.floor, workers=args.workers)


def _suite(manifest: Manifest):
    from spectrum.suite.config import plan_suite

    plan = plan_suite(manifest)
    if plan is None:
        raise SpectrumError(f"{manifest.path}: curriculum-test trains a size of the built-in suite, "
                            "but the manifest has no suite: section with runs to train")
    return plan


def _choose(plan, size: str | None, runs_arg: str | None, manifest: Manifest):
    """The size, the run whose schedule the test uses, and the runs that measure learnability."""
    fit_plans = [r for r in plan.runs if r.run.role == "fit"] or list(plan.runs)
    if size is None:
        size = min(fit_plans, key=lambda r: r.run.params).size.name
    if size not in plan.config.sizes:
        raise SpectrumError(f"{manifest.path}: --size {size!r} is not a suite size "
                            f"(suite.sizes: {', '.join(plan.config.sizes)})")
    same = [r for r in fit_plans if r.size.name == size] or [r for r in plan.runs if r.size.name == size]
    if not same:
        raise SpectrumError(f"{manifest.path}: no suite run has size {size}: it has no checkpoints "
                            "to measure learnability with")
    base = min(same, key=lambda r: (r.steps, r.run.name))
    schedule = [r for r in same if (r.steps, r.run.tokens_per_step) == (base.steps, base.run.tokens_per_step)]
    runs: tuple[RunSpec, ...] = learnability_runs(manifest, runs_arg) if runs_arg else \
        tuple(r.run for r in schedule)
    return size, base, runs


def _check_seeds(plan, runs: tuple[RunSpec, ...], settings: TrialSettings) -> None:
    used = {r.seed for r in plan.runs if r.run.name in {x.name for x in runs}}
    if clash := sorted(used & set(settings.seed_ids)):
        raise SpectrumError(f"--seed-base: test seed(s) {', '.join(map(str, clash))} also trained "
                            "a run that measures learnability; the test needs other seeds")


def _split_windows(config, data) -> int:
    """Windows of ``context`` tokens the training split holds, document by document."""
    from spectrum.data.corpus import documents

    docs = documents(config.corpus, "train")
    ids = data.tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return sum(len(x) // config.context for x in ids)


@dataclasses.dataclass(frozen=True)
class _Trial:
    """What the test trains: the suite's size and schedule, and the runs measuring learnability."""

    plan: SuitePlan
    size: str
    base: RunPlan  # the run whose schedule the test uses
    runs: tuple[RunSpec, ...]
    steps: int
    data: SuiteData  # with the test's validation sequences

    @property
    def tokens_per_step(self) -> int:
        return self.base.run.tokens_per_step

    def phases(self, n: int) -> Phases:
        """``n`` equal bins of ln T from the end of the warmup to the last step."""
        first = min(max(self.plan.config.optim.warmup_steps, 1), self.steps - 1)
        return phase_schedule(self.steps, self.tokens_per_step, n, first_step=first)


def main(manifest: Manifest, args: CurriculumTestOptions) -> None:
    settings = settings_from(args)
    trial = _trial(manifest, settings, args)
    lm = _measure_pool(manifest, trial, settings, args)
    phases = trial.phases(settings.phases)
    pool = read_pool(lm, phases)
    w_curr = phase_weights(pool.learn.shed(), settings.floor)
    buckets = frequency_buckets(pool.mean_log_freq, settings.buckets)
    fixed, exported = _exported(manifest, trial, settings, args, pool, phases)
    setup = {**_setup_record(trial, settings, lm, pool, phases, w_curr, buckets), **exported}
    fp = fingerprint({k: v for k, v in setup.items() if k not in _NOT_FINGERPRINTED})
    out = layout.curriculum_test_dir(manifest.out)
    _write_weights(out, fp, pool, buckets, w_curr, phases, settings, fixed)
    for p, d in enumerate(setup["frequency_match"]["max_abs_diff"]):
        if d > setup["frequency_match"]["tolerance"]:
            log.warning(f"curriculum-test: the frequency control matches the curriculum's quintile "
                        f"shares of phase {p} only within {d:.4f}")
    _train_arms(trial, settings, args, pool, w_curr, buckets, phases, setup, fp, out, fixed)


def _exported(manifest: Manifest, trial: _Trial, settings: TrialSettings,
              args: CurriculumTestOptions, pool: Pool, phases: Phases
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``exported`` arm's weights (when it is among the arms): the export of
    ``spectrum export-curriculum`` with its defaults (the manifest's fit runs on its own scored
    sample, under ``<out>/curriculum/learnability``) for the test's phases and floor, looked up
    for the pool's sequences; and the setup record's ``exported`` entry."""
    if "exported" not in settings.arms:
        return {}, {}
    runs = learnability_runs(manifest, None)
    lm = learnability_manifest(manifest, runs, layout.learnability_dir(manifest.out))
    run_learnability_stages(lm, args)
    w, record = exported_weights(lm, pool, phases, settings.floor, len(trial.data.tokenizer))
    log.info(f"curriculum-test: exported arm: {record['pool_measured']} pool sequences measured "
             f"by the export's sample, {record['pool_predicted']} predicted")
    return {"exported": w}, {"exported": record}


def _trial(manifest: Manifest, settings: TrialSettings, args: CurriculumTestOptions) -> _Trial:
    """The size and schedule to train, with the checkpoints that measure learnability trained
    first where they are missing (only those runs of the suite)."""
    from spectrum.suite.build import prepare_data, run_status, train_suite

    plan = _suite(manifest)
    size, base, runs = _choose(plan, settings.size, args.runs, manifest)
    _check_seeds(plan, runs, settings)
    if any(run_status(plan, r) == "todo" for r in plan.runs if r.run.name in {x.name for x in runs}):
        train_suite(dataclasses.replace(manifest, runs=runs), device=args.device)
    data = prepare_data(dataclasses.replace(plan.config, eval_sequences=settings.eval_sequences))
    return _Trial(plan, size, base, runs, settings.steps or base.steps, data)


def _measure_pool(manifest: Manifest, trial: _Trial, settings: TrialSettings,
                  args: CurriculumTestOptions) -> Manifest:
    """The learnability of the pool (the evalset, losses and fit stages, resumable); the
    learnability manifest, its tokenizer checked against the suite's."""
    cfg = trial.plan.config
    pool_n = args.sequences or pool_size(_split_windows(cfg, trial.data), trial.steps,
                                         trial.tokens_per_step // cfg.context, settings.epochs)
    log.info(f"curriculum-test: size {trial.size}, {trial.steps} steps x {trial.tokens_per_step} "
             f"tokens, pool of {pool_n} training sequences of {cfg.context} tokens, learnability "
             f"from {', '.join(r.name for r in trial.runs)}, seeds {settings.seed_ids[0]}.."
             f"{settings.seed_ids[-1]}")
    lm = learnability_manifest(manifest, trial.runs,
                               layout.curriculum_test_learnability_dir(manifest.out),
                               sequences=pool_n, corpus=cfg.corpus, context=cfg.context)
    run_learnability_stages(lm, args)
    meta = evalset_meta(lm)
    if meta["tokenizer"]["vocab_hash"] != vocab_hash(trial.data.tokenizer):
        raise SpectrumError(f"{cfg.root / 'data'}: the suite's cached tokenizer differs from the one "
                            f"saved with the checkpoints of {trial.runs[0].name} "
                            f"({meta['tokenizer']['source']})")
    return lm


#: what a run's curve does not depend on: a change of these reuses the finished runs
_NOT_FINGERPRINTED = ("seeds", "arms", "budgets", "budget_steps", "curriculum_weights",
                      "learnability_cost", "exported", "code_commit", "frequency_match")


def _setup_record(trial: _Trial, settings: TrialSettings, lm: Manifest, pool: Pool,
                  phases: Phases, w_curr: np.ndarray, buckets: np.ndarray) -> dict[str, Any]:
    """Everything that defines the test, for results.json (and, less the seeds, arms, budgets
    and costs, the fingerprint that decides whether a finished run is reused)."""
    steps, tps, runs = trial.steps, trial.tokens_per_step, trial.runs
    cost = learnability_cost(runs, {r.name: len(layout.shard_steps(lm.out, r.name)) for r in runs},
                             pool.tokens, trial.base.run.params, steps * tps)
    return {"size": trial.size, "steps": steps, "tokens_per_step": tps,
            "context": trial.plan.config.context, "pool_sequences": lm.evalset.sequences,
            "phases": phases.n, "phase_steps": list(phases.step_edges), "floor": settings.floor,
            "buckets": int(buckets.max()) + 1, "seeds": settings.seed_ids,
            "budgets": list(settings.budgets),
            "budget_steps": [budget_steps(steps, b) for b in settings.budgets],
            "eval_sequences": int(len(trial.data.eval_sequences)),
            "learnability_runs": [r.name for r in runs],
            "suite_fingerprint": trial.plan.fingerprint(trial.base), "arms": list(settings.arms),
            "weights_hash": weights_hash(w_curr),
            "code_commit": source_commit(),
            "curriculum_weights": weight_diagnostics(w_curr, pool.mean_log_freq, pool.freq_profile),
            "frequency_control": "shuffled within buckets, tilted to the quintile shares",
            "frequency_match": frequency_match_record(w_curr, buckets, settings.seed_ids,
                                                      pool.freq_profile, pool.freq_edges),
            "learnability_cost": cost}


def _train_arms(trial: _Trial, settings: TrialSettings, args: CurriculumTestOptions, pool: Pool,
                w_curr: np.ndarray, buckets: np.ndarray, phases: Phases, setup: dict[str, Any],
                fp: str, out: Path, fixed: dict[str, np.ndarray]) -> None:
    """Train every arm and the calibration runs; results rewritten after every seed."""
    import torch

    from spectrum.suite.config import gpt_neox_config

    tokenizer = trial.data.tokenizer
    model_config = gpt_neox_config(trial.base.size, len(tokenizer), trial.plan.config.context,
                                   eos_token_id=tokenizer.eos_token_id)
    watch = Stopwatch()

    def results(curves, quiet: bool = False) -> None:
        write_results(curves, {**setup, **watch.read(), "training": training_cost(out, curves)},
                      out, quiet=quiet)

    curves = run_arms(model_config, trial.plan.config.optim,
                      torch.tensor(pool.input_ids, dtype=torch.int32), trial.data.eval_sequences,
                      w_curr, buckets, phases, seeds=settings.seed_ids, arms=settings.arms,
                      budgets=settings.budgets, out=out, fingerprint=fp, device=args.device,
                      force=args.force, on_seed=lambda c: results(c, quiet=True),
                      workers=settings.workers, freq_profile=pool.freq_profile, fixed=fixed)
    results(curves)


def _write_weights(out: Path, fp: str, pool: Pool, buckets: np.ndarray, w_curr: np.ndarray,
                   phases: Phases, settings: TrialSettings, fixed: dict[str, np.ndarray]) -> None:
    """Every arm's weights for the first seed, beside each sequence's frequency profile."""
    w0 = {**arm_weights(w_curr, buckets, settings.seed_ids[0], np.diff(phases.step_edges),
                        freq_profile=pool.freq_profile), **fixed}
    learn = pool.learn
    cols = {"seq_id": learn.sequences["seq_id"], "doc_id": learn.sequences["doc_id"],
            "mean_log_freq": pool.mean_log_freq, "freq_bucket": buckets}
    for q in range(pool.freq_profile.shape[1]):
        cols[f"freq_q{q}_tokens"] = pool.freq_profile[:, q]
    for arm in settings.arms:
        for p, c in enumerate(weight_columns(phases.n)):
            cols[f"{arm}_{c}"] = w0[arm][:, p]
    write_parquet(pl.DataFrame(cols).to_arrow(), out / "weights.parquet", {"setup": fp})
