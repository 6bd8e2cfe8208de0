"""`spectrum curriculum-test`: does the learnability curriculum speed training up? A controlled test.

One model size of the manifest's suite is trained from scratch under four arms
(:mod:`spectrum.curriculum.trial`: ``uniform``, ``curriculum``, ``freq_shuffled``, ``random``)
with the same optimizer, schedule, compute (steps x tokens per step), seeds and pool of training
sequences; the arms differ only in the per-phase sampling weights that one
:class:`~spectrum.curriculum.PhaseSampler` draws batches with (and a seed draws the same
random numbers in every arm).

- Pool: ``--sequences`` windows of the suite's context from the corpus's training split (the
  learnability evalset, so every pool sequence has measured learnability). By default as many as
  the training run consumes in two passes (``--epochs``), capped by what the split holds.
- Learnability: the evalset, losses and fit stages over the pool, with the checkpoints of the
  suite's ``fit`` runs of the same size and the same schedule as the test (steps and tokens per
  step of the shortest one; every seed the suite has), or ``--runs``; under
  ``<out>/curriculum/test/learnability``. Tokens become learnable at a time that depends on the
  learning-rate schedule, so runs on the schedule being tested are the relevant ones.
- Compute: the steps and tokens per step of the shortest ``fit`` run of that size (affordable on
  a CPU; ``--steps`` sets another number of steps); the same AdamW, warmup and cosine schedule
  as the suite.
- Validation: the suite's validation sequences (``--eval-sequences`` of them, evenly spaced
  over the validation split), evaluated on a log-spaced schedule densified over the second half.

Outputs in ``<out>/curriculum/test/``: ``runs/<arm>-seed<seed>.json`` (each run's curve; a
finished run is skipped when the command is repeated), ``weights.parquet`` (every arm's weights
for seed 0), ``results.json``, ``results.md`` and ``curriculum_test.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.curriculum_export import (LearnabilityOptions, learnability_runs,
                                         read_learnability_fits, run_learnability_stages)
from pipelines.options import option
from spectrum.curriculum.weights import learnability, phase_schedule, phase_weights, weight_columns
from spectrum.curriculum.trial import (ARMS, FIGURE, RESULTS_JSON, RESULTS_MD, Curve, arm_weights,
                                       curve_record, frequency_buckets, markdown_table, plot,
                                       results_markdown, weight_diagnostics,
                                       summarise)
from spectrum import layout
from spectrum.errors import SpectrumError
from spectrum.data.evalset import vocab_hash
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import write_json, write_parquet, write_text

HELP = "controlled test: train one suite size under uniform, curriculum and control weightings"


log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurriculumTestOptions(LearnabilityOptions):
    sequences: int | None = option(None, "training-split sequences to measure (default: what the "
                                         "run consumes in --epochs passes, at most the split's "
                                         "windows)")
    size: str | None = option(None, "model size of the suite to train (default: the smallest "
                                    "size of a fit run)")
    seeds: int = option(3, "seeds per arm (default 3)")
    steps: int | None = option(None, "training steps (default: the steps of the shortest fit run "
                                     "of that size)")
    epochs: float = option(2.0, "passes over the pool that the default pool size allows "
                                "(default 2)")
    buckets: int = option(8, "token-frequency buckets of the frequency-matched control "
                             "(default 8)")
    eval_sequences: int = option(128, "validation sequences for the loss curves (default 128)")
    arms: str = option(",".join(ARMS), f"arms to train (default {','.join(ARMS)})")


OPTIONS = CurriculumTestOptions


def test_dir(manifest: Manifest) -> Path:
    return layout.curriculum_test_dir(manifest.out)


def _suite(manifest: Manifest):
    from spectrum.suite.config import plan_suite

    plan = plan_suite(manifest)
    if plan is None:
        raise SpectrumError(f"{manifest.path}: curriculum-test trains a size of the built-in suite, "
                            "but the manifest has no suite: section with runs to train")
    return plan


def _choose(plan, size: str | None, runs_arg: str | None, manifest: Manifest):
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


def _split_windows(config, data) -> int:
    """Windows of ``context`` tokens the training split holds, document by document."""
    from spectrum.data.corpus import documents

    docs = documents(config.corpus, "train")
    ids = data.tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return sum(len(x) // config.context for x in ids)


def _fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_schedule(steps: int, n_log: int = 10, n_late: int = 8) -> list[int]:
    """Log-spaced evaluation steps, densified linearly over the second half of training."""
    grid = np.geomspace(1, steps, n_log)
    late = np.linspace(steps / 2, steps, n_late + 1)
    return sorted({0, steps, *np.rint(grid).astype(int).tolist(), *np.rint(late).astype(int).tolist()})


def main(manifest: Manifest, options: CurriculumTestOptions) -> None:
    import torch

    from spectrum.suite.build import prepare_data
    from spectrum.suite.config import gpt_neox_config

    from pipelines.suite import train_suite_in_processes
    from spectrum.suite.build import run_status

    plan = _suite(manifest)
    cfg = plan.config
    size, base, runs = _choose(plan, options.size, options.runs, manifest)
    needed = {r.name for r in runs}
    if any(run_status(plan, r) == "todo" for r in plan.runs if r.run.name in needed):
        # the checkpoints to measure learnability with
        train_suite_in_processes(manifest, device=options.device)
    arms = [a.strip() for a in options.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        raise SpectrumError(f"--arms: unknown arm(s) {', '.join(unknown)} (arms: {', '.join(ARMS)})")
    if "uniform" not in arms:
        arms.insert(0, "uniform")  # every score is relative to the uniform run
    if options.seeds < 1:
        raise SpectrumError(f"--seeds must be at least 1, got {options.seeds}")
    steps = options.steps or base.steps
    tps = base.run.tokens_per_step
    batch = tps // cfg.context
    out = test_dir(manifest)

    data = prepare_data(dataclasses.replace(cfg, eval_sequences=options.eval_sequences))
    pool_n = options.sequences or min(_split_windows(cfg, data),
                                      math.ceil(steps * batch / options.epochs))
    log.info(f"curriculum-test: size {size}, {steps} steps x {tps} tokens, pool of {pool_n} "
             f"training sequences of {cfg.context} tokens, learnability from "
             f"{', '.join(r.name for r in runs)}")

    # learnability of the pool (evalset, losses and fit stages, resumable)
    ev = dataclasses.replace(manifest.evalset, corpus=cfg.corpus, split="train", sequences=pool_n,
                             context=cfg.context)
    lm = dataclasses.replace(manifest, out=out / "learnability", evalset=ev, runs=runs)
    run_learnability_stages(lm, options)
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id", "target_freq"])
    meta = json.loads(layout.evalset_meta(lm.out).read_text())
    if meta["tokenizer"]["vocab_hash"] != vocab_hash(data.tokenizer):
        raise SpectrumError(f"{cfg.root / 'data'}: the suite's cached tokenizer differs from the one "
                            f"saved with the checkpoints of {runs[0].name} ({meta['tokenizer']['source']})")
    phases = phase_schedule(steps, tps, options.phases)
    learn = learnability(tokens, read_learnability_fits(lm), phases)
    seqs = pl.read_parquet(layout.evalset_sequences(lm.out)).sort("seq_id")
    if seqs["seq_id"].to_list() != learn.sequences["seq_id"].to_list():
        raise SpectrumError(f"{lm.out / 'evalset'}: sequences and tokens disagree; rerun with --force")
    pool = torch.tensor(np.stack(seqs["input_ids"].to_numpy()), dtype=torch.int32)
    w_curr = phase_weights(learn.shed(), options.floor)
    mean_log_freq = (tokens.group_by("seq_id").agg(pl.col("target_freq").log().mean())
                     .sort("seq_id")["target_freq"].to_numpy())
    buckets = frequency_buckets(mean_log_freq, options.buckets)

    setup = {"size": size, "steps": steps, "tokens_per_step": tps, "context": cfg.context,
             "pool_sequences": pool_n, "phases": phases.n, "phase_steps": list(phases.step_edges),
             "floor": options.floor, "buckets": int(buckets.max()) + 1,
             "seeds": list(range(options.seeds)),
             "eval_sequences": int(len(data.eval_sequences)), "learnability_runs": [r.name for r in runs],
             "suite_fingerprint": plan.fingerprint(base), "arms": arms,
             "weights_hash": hashlib.sha256(w_curr.tobytes()).hexdigest()[:16],
             "curriculum_weights": weight_diagnostics(w_curr, mean_log_freq)}
    fp = _fingerprint({k: v for k, v in setup.items()
                       if k not in ("seeds", "arms", "curriculum_weights")})
    w0 = arm_weights(w_curr, buckets, 0)
    cols = {"seq_id": learn.sequences["seq_id"], "doc_id": learn.sequences["doc_id"],
            "mean_log_freq": mean_log_freq, "freq_bucket": buckets}
    for arm in arms:
        for p, c in enumerate(weight_columns(phases.n)):
            cols[f"{arm}_{c}"] = w0[arm][:, p]
    write_parquet(pl.DataFrame(cols).to_arrow(), out / "weights.parquet", {"setup": fp})

    model_config = gpt_neox_config(base.size, len(data.tokenizer), cfg.context,
                                   eos_token_id=data.tokenizer.eos_token_id)
    curves = run_arms(model_config, cfg.optim, pool, data.eval_sequences, w_curr, buckets, phases,
                      seeds=options.seeds, arms=arms, out=out, fingerprint=fp,
                      device=options.device, force=options.force)
    write_results(curves, setup, out)


def run_arms(model_config: Any, optim: Any, pool: Any, eval_sequences: Any, w_curr: np.ndarray,
             buckets: np.ndarray, phases: Any, *, seeds: int, arms: list[str], out: Path,
             fingerprint: str, device: str = "auto", force: bool = False) -> list[Curve]:
    """Train every (arm, seed); a run whose record in ``out/runs`` matches ``fingerprint`` is reused."""
    from spectrum.curriculum.sampling import PhaseSampler
    from spectrum.suite.train import train_model

    steps, tps = phases.target_steps, phases.tokens_per_step
    batch = tps // pool.shape[1]
    at = eval_schedule(steps)
    curves: list[Curve] = []
    for seed in range(seeds):
        weights = arm_weights(w_curr, buckets, seed)
        for arm in arms:
            path = out / "runs" / f"{arm}-seed{seed}.json"
            if not force and path.is_file():
                rec = json.loads(path.read_text())
                if rec.get("setup") == fingerprint:
                    curves.append(Curve(**rec["curve"]))
                    continue
            sampler = PhaseSampler(weights[arm], phases.step_starts, batch_size=batch,
                                   num_steps=steps, seed=seed)
            res = train_model(model_config, pool, steps=steps, tokens_per_step=tps, seed=seed,
                              optim=optim, sampler=sampler, eval_sequences=eval_sequences,
                              eval_steps=at, device=device, progress=f"{arm} seed {seed}")
            curve = Curve(arm, seed, [float(s * tps) for s, _ in res.eval_curve],
                          [float(v) for _, v in res.eval_curve])
            write_json({"setup": fingerprint, "curve": curve_record(curve), "seconds": res.seconds},
                       path)
            curves.append(curve)
    return curves


def write_results(curves: list[Curve], setup: dict[str, Any], out: Path) -> dict[str, Any]:
    """Score the curves, write results.json, results.md and the figure; return the summary."""
    # step 0 has no place on a log axis of tokens: scores and figure use T > 0
    scored = [Curve(c.arm, c.seed, c.tokens[1:], c.losses[1:]) if c.tokens[0] == 0 else c
              for c in curves]
    summary = summarise(scored)
    write_json({"setup": setup, "summary": summary, "curves": [curve_record(c) for c in curves]},
               out / RESULTS_JSON)
    plot(scored, summary, out / FIGURE)
    text = results_markdown(summary, setup)
    write_text(text, out / RESULTS_MD)
    print(markdown_table(summary))  # the result table, on stdout
    log.info(f"curriculum-test: results in {out / RESULTS_MD}")
    return summary
