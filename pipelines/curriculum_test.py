"""`spectrum curriculum-test`: does the learnability curriculum speed training up? A controlled test.

One model size of the manifest's suite is trained from scratch under the arms of
:mod:`spectrum.curriculum.arms` (``uniform``, ``curriculum``, ``freq_shuffled``, ``random``,
``timing_flat``) with the same optimizer, schedule, compute, seeds and pool of training sequences;
the arms differ only in the per-phase sampling weights. Uniform runs at other budgets (fractions
of the steps, each a full schedule) calibrate the compute multiplier.

- Pool: ``--sequences`` windows of the suite's context from the corpus's training split (the
  learnability evalset, so every pool sequence has measured learnability). By default as many as
  the training run consumes in two passes (``--epochs``), capped by what the split holds.
- Learnability: the evalset, losses and fit stages over the pool, with the checkpoints of the
  suite's ``fit`` runs of the chosen size on the test's schedule (every seed the suite has), or
  ``--runs``; under ``<out>/curriculum/test/learnability``. The test's seeds (from
  ``--seed-base``, default 1000) must differ from every seed of those runs.
- Compute: the steps and tokens per step of the shortest ``fit`` run of that size (``--steps``
  sets another number of steps); the suite's AdamW, warmup and cosine schedule. Phases: equal
  bins of ln T from the end of the warmup to the last step.

Outputs in ``<out>/curriculum/test/``: ``runs/*.json`` (each run's curve; a finished run is
skipped when the command is repeated), ``weights.parquet`` (every arm's weights for the first
seed), ``results.json``, ``results.md`` and ``curriculum_test.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.curriculum_export import (LearnabilityOptions, learnability_runs,
                                         read_learnability_fits, run_learnability_stages)
from pipelines.options import option
from spectrum import layout
from spectrum.curriculum.arms import ARMS, arm_weights, frequency_buckets, weight_diagnostics
from spectrum.curriculum.runner import (Stopwatch, TrialSettings, budget_steps, default_workers,
                                        fingerprint,
                                        learnability_cost, pool_size, run_arms, training_cost,
                                        write_results)
from spectrum.curriculum.weights import learnability, phase_schedule, phase_weights, weight_columns
from spectrum.data.evalset import vocab_hash
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import write_parquet

__all__ = ["OPTIONS", "main", "run_arms", "write_results"]
log = logging.getLogger(__name__)
HELP = "controlled test: train one suite size under uniform, curriculum and control weightings"


_DEFAULTS = TrialSettings()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurriculumTestOptions(LearnabilityOptions):
    sequences: int | None = option(None, "training-split sequences to measure (default: what the "
                                         "run consumes in --epochs passes, at most the split's "
                                         "windows)")
    size: str | None = option(None, "model size of the suite to train (default: the smallest "
                                    "size of a fit run)")
    seeds: int = option(_DEFAULTS.seeds, f"seeds per arm (default {_DEFAULTS.seeds})")
    seed_base: int = option(_DEFAULTS.seed_base, f"first seed of the test (default "
                                                 f"{_DEFAULTS.seed_base}); must differ from the "
                                                 "seeds of the runs that measure learnability")
    steps: int | None = option(None, "training steps (default: the steps of the shortest fit run "
                                     "of that size)")
    epochs: float = option(_DEFAULTS.epochs, "passes over the pool that the default pool size "
                                             f"allows (default {_DEFAULTS.epochs:g})")
    buckets: int = option(_DEFAULTS.buckets, "token-frequency buckets of the frequency-matched "
                                             f"control (default {_DEFAULTS.buckets})")
    eval_sequences: int = option(_DEFAULTS.eval_sequences, "validation sequences for the loss "
                                                           "curves (default "
                                                           f"{_DEFAULTS.eval_sequences})")
    arms: str = option(",".join(ARMS), f"arms to train (default {','.join(ARMS)})")
    budgets: str = option(",".join(f"{b:g}" for b in _DEFAULTS.budgets),
                          "compute of the uniform calibration runs as fractions of the arms' "
                          f"(default {','.join(f'{b:g}' for b in _DEFAULTS.budgets)}; at least 3)")
    workers: int | None = option(None, "runs trained at once, each in its own process (default: "
                                       "one per CPU core on the CPU, 1 on a GPU)")


OPTIONS = CurriculumTestOptions


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


def main(manifest: Manifest, args: CurriculumTestOptions) -> None:
    import torch

    from spectrum.suite.build import prepare_data, run_status, train_suite
    from spectrum.suite.config import gpt_neox_config

    settings = settings_from(args)
    plan = _suite(manifest)
    cfg = plan.config
    size, base, runs = _choose(plan, settings.size, args.runs, manifest)
    _check_seeds(plan, runs, settings)
    if any(run_status(plan, r) == "todo" for r in plan.runs if r.run.name in {x.name for x in runs}):
        # the checkpoints to measure learnability with: only those runs are trained here
        train_suite(dataclasses.replace(manifest, runs=runs), device=args.device)
    steps = settings.steps or base.steps
    tps = base.run.tokens_per_step
    out = layout.curriculum_test_dir(manifest.out)
    data = prepare_data(dataclasses.replace(cfg, eval_sequences=settings.eval_sequences))
    pool_n = args.sequences or pool_size(_split_windows(cfg, data), steps, tps // cfg.context,
                                         settings.epochs)
    log.info(f"curriculum-test: size {size}, {steps} steps x {tps} tokens, pool of {pool_n} "
             f"training sequences of {cfg.context} tokens, learnability from "
             f"{', '.join(r.name for r in runs)}, seeds {settings.seed_ids[0]}.."
             f"{settings.seed_ids[-1]}")

    # learnability of the pool (evalset, losses and fit stages, resumable)
    ev = dataclasses.replace(manifest.evalset, corpus=cfg.corpus, split="train", sequences=pool_n,
                             context=cfg.context)
    lm = dataclasses.replace(manifest, out=out / "learnability", evalset=ev, runs=runs)
    run_learnability_stages(lm, args)
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id", "target_freq"])
    meta = json.loads(layout.evalset_meta(lm.out).read_text())
    if meta["tokenizer"]["vocab_hash"] != vocab_hash(data.tokenizer):
        raise SpectrumError(f"{cfg.root / 'data'}: the suite's cached tokenizer differs from the one "
                            f"saved with the checkpoints of {runs[0].name} ({meta['tokenizer']['source']})")
    phases = phase_schedule(steps, tps, settings.phases,
                            first_step=min(max(cfg.optim.warmup_steps, 1), steps - 1))
    learn = learnability(tokens, read_learnability_fits(lm), phases)
    seqs = pl.read_parquet(layout.evalset_sequences(lm.out)).sort("seq_id")
    if seqs["seq_id"].to_list() != learn.sequences["seq_id"].to_list():
        raise SpectrumError(f"{lm.out / 'evalset'}: sequences and tokens disagree; rerun with --force")
    pool = torch.tensor(np.stack(seqs["input_ids"].to_numpy()), dtype=torch.int32)
    w_curr = phase_weights(learn.shed(), settings.floor)
    mean_log_freq = (tokens.group_by("seq_id").agg(pl.col("target_freq").log().mean())
                     .sort("seq_id")["target_freq"].to_numpy())
    buckets = frequency_buckets(mean_log_freq, settings.buckets)

    cost = learnability_cost(runs, {r.name: len(layout.shard_steps(lm.out, r.name)) for r in runs},
                             int(tokens.height), base.run.params, steps * tps)
    setup = {"size": size, "steps": steps, "tokens_per_step": tps, "context": cfg.context,
             "pool_sequences": pool_n, "phases": phases.n, "phase_steps": list(phases.step_edges),
             "floor": settings.floor, "buckets": int(buckets.max()) + 1, "seeds": settings.seed_ids,
             "budgets": list(settings.budgets),
             "budget_steps": [budget_steps(steps, b) for b in settings.budgets],
             "eval_sequences": int(len(data.eval_sequences)), "learnability_runs": [r.name for r in runs],
             "suite_fingerprint": plan.fingerprint(base), "arms": list(settings.arms),
             "weights_hash": hashlib.sha256(w_curr.tobytes()).hexdigest()[:16],
             "curriculum_weights": weight_diagnostics(w_curr, mean_log_freq),
             "learnability_cost": cost}
    fp = fingerprint({k: v for k, v in setup.items()
                      if k not in ("seeds", "arms", "budgets", "budget_steps", "curriculum_weights",
                                   "learnability_cost")})
    _write_weights(out, fp, learn, mean_log_freq, buckets, w_curr, phases, settings)

    model_config = gpt_neox_config(base.size, len(data.tokenizer), cfg.context,
                                   eos_token_id=data.tokenizer.eos_token_id)
    watch = Stopwatch()

    def interim(curves):  # results of the seeds finished so far, rewritten after every seed
        write_results(curves, {**setup, **watch.read(), "training": training_cost(out, curves)},
                      out, quiet=True)

    curves = run_arms(model_config, cfg.optim, pool, data.eval_sequences, w_curr, buckets, phases,
                      seeds=settings.seed_ids, arms=settings.arms, budgets=settings.budgets, out=out,
                      fingerprint=fp, device=args.device, force=args.force, on_seed=interim,
                      workers=settings.workers or default_workers(args.device))
    write_results(curves, {**setup, **watch.read(), "training": training_cost(out, curves)}, out)


def _write_weights(out: Path, fp: str, learn, mean_log_freq, buckets, w_curr, phases,
                   settings: TrialSettings) -> None:
    """Every arm's weights for the first seed, beside each sequence's frequency profile."""
    w0 = arm_weights(w_curr, buckets, settings.seed_ids[0], np.diff(phases.step_edges))
    cols = {"seq_id": learn.sequences["seq_id"], "doc_id": learn.sequences["doc_id"],
            "mean_log_freq": mean_log_freq, "freq_bucket": buckets}
    for arm in settings.arms:
        for p, c in enumerate(weight_columns(phases.n)):
            cols[f"{arm}_{c}"] = w0[arm][:, p]
    write_parquet(pl.DataFrame(cols).to_arrow(), out / "weights.parquet", {"setup": fp})
