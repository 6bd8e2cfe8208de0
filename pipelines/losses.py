"""``spectrum losses``: the loss of every evalset token at every checkpoint of every run.

One unit of work per (run, checkpoint); each writes its shard
(:func:`spectrum.layout.loss_shard`: ``token_idx`` int64, ``loss`` float32 nats, sorted by ``token_idx``) with its
provenance; a current shard is skipped, a stale one recomputed with a warning (see
:mod:`spectrum.losses.plan`).

Workers (:class:`spectrum.losses.worker.LossWorker`) are Ray actors (a fresh local Ray by
default, ``--ray-address`` for a cluster) or, with ``--executor local``, this process. Each worker
keeps the evalset on its device, and loads the next checkpoint in a background thread while it
evaluates the current one. Shards are written by
this process as results arrive, atomically, so an interrupted run loses only the checkpoints in
flight and the same command finishes it. A checkpoint that cannot be read (truncated weights,
missing config, another tokenizer, too short a context) is reported by path while the others
finish; the command then exits with status 1 and a summary. Non-finite losses (a diverged
checkpoint) are stored as they are and counted in the summary.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np

from pipelines.executor import executor_kind, make_executor
from pipelines.losses_options import HELP, OPTIONS  # noqa: F401 - exposed by every stage
from pipelines.losses_options import EXECUTOR, LossesOptions
from spectrum.console import progress
from spectrum.data.checkpoints import validate_checkpoint_sources
from spectrum.errors import SpectrumError, StageFailed
from spectrum.data.evalset import load_evalset, stale_reason
from spectrum.layout import evalset_dir
from spectrum.losses.plan import Unit, plan_units, write_shard
from spectrum.losses.worker import LossWorker, Result
from spectrum.manifest import Manifest

log = logging.getLogger(__name__)


def _dtype(options: LossesOptions, device: str) -> str:
    if options.dtype != "auto":
        return options.dtype
    from spectrum.devices import default_dtype, dtype_name, parse_device

    return dtype_name(default_dtype(parse_device(device)))


def run_units(units: list[Unit], executor: Any, make_worker: Any, tokens_per_unit: int
              ) -> tuple[list[str], dict[str, int], tuple[float, float]]:
    """Run the units, writing each shard as it arrives; (failures, non-finite counts per shard,
    (sum of pure evaluation seconds, sum of seconds spent waiting for checkpoints to load))."""
    failures: list[str] = []
    nonfinite: dict[str, int] = {}
    eval_seconds = load_wait = 0.0
    done_tokens = 0
    t0 = time.perf_counter()
    with progress(total=len(units), unit="shard", desc="losses", dynamic_ncols=True) as bar:
        for outcome in executor.map(make_worker, units):
            unit = outcome.unit
            if outcome.ok:
                res: Result = outcome.result
                write_shard(unit, res.losses)
                bad = int((~np.isfinite(res.losses)).sum())
                if bad:
                    nonfinite[f"{unit.run} step {unit.step}"] = bad
                eval_seconds += res.seconds
                load_wait += res.load_wait
                done_tokens += tokens_per_unit
            else:
                failures.append(outcome.error if unit.path in (outcome.error or "")
                                else f"checkpoint {unit.path}: {outcome.error}")
                log.error(failures[-1])
            elapsed = max(1e-9, time.perf_counter() - t0)
            bar.set_postfix_str(f"{done_tokens / elapsed:,.0f} tok/s", refresh=False)
            bar.update(1)
    return failures, nonfinite, (eval_seconds, load_wait)


def check_evalset(manifest: Manifest) -> Any:
    """The evalset, refused when missing, altered, or drawn with other manifest settings."""
    folder = evalset_dir(manifest.out)
    evalset = load_evalset(folder)
    reason = stale_reason(evalset.meta, manifest.evalset, corpus_path=False)
    if reason:
        raise SpectrumError(f"evalset {folder} is stale: it was drawn with other settings than "
                            f"{manifest.path} ({reason}); rebuild it with `spectrum evalset "
                            f"--config {manifest.path}`")
    return evalset


def main(manifest: Manifest, options: LossesOptions) -> None:
    validate_checkpoint_sources(manifest)
    evalset = check_evalset(manifest)
    placement = make_executor(  # refuses missing devices before any announcement
        executor_kind(options.executor, options.ray_address, EXECUTOR),
        ray_address=options.ray_address, device=options.device, num_gpus=options.num_gpus,
        workers=options.workers, cpus_per_worker=options.cpus_per_worker,
        retries=options.retries)
    dtype = _dtype(options, placement.device)
    units, skipped, problems = plan_units(manifest, evalset.hash, dtype, evalset.num_tokens,
                                          force=options.force)
    make_worker = partial(LossWorker, evalset.input_ids, evalset.meta, placement.device, dtype,
                          options.batch_size, placement.threads)
    unit_failures, nonfinite, (evals, waits) = [], {}, (0.0, 0.0)
    if units:
        unit_failures, nonfinite, (evals, waits) = run_units(
            units, placement.executor, make_worker, evalset.num_tokens)
    failures = problems + unit_failures
    computed = len(units) - (len(failures) - len(problems))
    summary = (f"losses: {computed} shards written, {skipped} current ones skipped, "
               f"{len(failures)} checkpoints failed; "
               f"{sum(nonfinite.values())} non-finite losses"
               + (f" in {len(nonfinite)} shards ({', '.join(nonfinite)})" if nonfinite else "")
               + (f" (workers: {evals:.1f} s evaluating, {waits:.1f} s waiting for checkpoints "
                  "to load)" if units else ""))
    if failures:
        raise StageFailed(*failures, summary, shown=tuple(unit_failures))
    log.info(summary)
