"""``spectrum losses``: the loss of every evalset token at every checkpoint of every run.

One unit of work per (run, checkpoint); each writes ``<out>/losses/run=<run>/step=<step>/
part-0.parquet`` (``token_idx`` int64, ``loss`` float32 nats, sorted by ``token_idx``) with its
provenance (run, step, tokens = step * tokens_per_step, checkpoint path and content hash, evalset
hash, dtype, code version). A shard whose checkpoint hash, evalset hash, dtype, run, step and
tokens match is current and skipped; one that differs is stale and recomputed with a warning.

Workers are Ray actors (a fresh local Ray by default, ``--ray-address`` for a cluster) or, with
``--executor local``, this process. Each worker keeps the evalset on its device, and loads the
next checkpoint in a background thread while it evaluates the current one. Shards are written by
this process as results arrive, atomically, so an interrupted run loses only the checkpoints in
flight and the same command finishes it. A checkpoint that cannot be read (truncated weights,
missing config, another tokenizer, too short a context) is reported by path while the others
finish; the command then exits with status 1 and a summary. Non-finite losses (a diverged
checkpoint) are stored as they are and counted in the summary.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.options import (device_option, executor_option, force_option, num_gpus_option,
                               option, ray_address_option)
from spectrum import __version__
from spectrum.console import progress
from spectrum.data.checkpoints import (checkpoint_hash, incomplete_checkpoints, resolve_checkpoints,
                                  validate_checkpoint_sources, weight_files)
from spectrum.errors import SpectrumError, StageFailed
from spectrum.data.evalset import load_evalset
from spectrum.layout import evalset_dir, loss_shard
from spectrum.manifest import Manifest
from spectrum.store import read_provenance, write_json, write_parquet

HELP = "per-token losses of every checkpoint of every run over the evalset (Parquet shards)"
# provenance keys that decide whether a shard is current (path and code version are recorded only)
CURRENT_KEYS = ("run", "step", "tokens", "checkpoint_hash", "evalset_hash", "dtype")
MAX_STALE_LINES = 10  # stale shards named one by one; the rest are counted


log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LossesOptions:
    device: str = device_option()
    executor: str = executor_option()
    ray_address: str | None = ray_address_option()
    num_gpus: float | None = num_gpus_option()
    force: bool = force_option()
    workers: int | None = option(None, "Ray workers (default: one per GPU, or one per "
                                       "--cpus-per-worker CPUs)")
    cpus_per_worker: int = option(1, "CPUs (and torch threads) per CPU worker (default 1)")
    dtype: str = option("auto", "weights and activations: auto = bfloat16 on GPUs, float32 on "
                                "CPUs", choices=("auto", "float32", "bfloat16"))
    batch_size: int | None = option(None, "sequences per forward pass (default: automatic)")
    retries: int = option(2, "retries of a unit that failed unexpectedly (default 2)")


OPTIONS = LossesOptions


@dataclass(frozen=True)
class Unit:
    """One checkpoint to evaluate, and where its shard goes."""

    run: str
    step: int
    path: str
    shard: str
    provenance: dict[str, Any]
    size: int = 0  # bytes of weights: the largest checkpoints are scheduled first


@dataclass(frozen=True)
class Result:
    losses: np.ndarray  # float32, token_idx order
    seconds: float  # evaluation only, without loading
    load_wait: float  # time spent waiting for the checkpoint to load


class LossWorker:
    """Evaluates checkpoints on one device; loads the next one in a background thread."""

    def __init__(self, input_ids: np.ndarray, meta: dict[str, Any], device: str, dtype: str,
                 batch_size: int | None, threads: int | None) -> None:
        import torch

        from spectrum.devices import parse_dtype, resolve_device
        from spectrum.losses.evaluator import Evaluator

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype)
        self.meta = meta
        # compiled cross-entropy on every device: on CPUs it halves the time of small models,
        # whose evaluation is mostly the log-sum-exp over the vocabulary
        self.evaluator = Evaluator(input_ids, self.device, batch_size=batch_size, fused=True)
        self.loader = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[str, Future] = {}

    def _load(self, path: str) -> Any:
        from transformers import AutoConfig

        from spectrum.losses.evaluator import check_compatible, load_model

        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpectrumError(f"checkpoint {path}: cannot be read: {first}") from None
        check_compatible(path, config, self.meta)
        return load_model(path, device=self.device, dtype=self.dtype)

    def prefetch(self, unit: Unit) -> None:
        if unit.path not in self.pending:
            self.pending[unit.path] = self.loader.submit(self._load, unit.path)

    def process(self, unit: Unit) -> Result:
        t0 = time.perf_counter()
        future = self.pending.pop(unit.path, None)
        model = future.result() if future is not None else self._load(unit.path)
        t1 = time.perf_counter()
        losses = self.evaluator(model).reshape(-1)
        del model
        return Result(losses, time.perf_counter() - t1, t1 - t0)


def make_executor(options: LossesOptions) -> tuple[Any, str]:
    """(executor, device for the workers) from the stage's options. ``--num-gpus`` defaults to 1
    when GPUs exist (on this machine for a local Ray, in the cluster for --ray-address) and
    ``--device`` is not cpu, else 0."""
    from pipelines.executor import LocalExecutor, RayExecutor

    if options.executor == "local":
        return LocalExecutor(retries=options.retries), options.device
    ex = RayExecutor(options.ray_address, workers=options.workers,
                     cpus_per_worker=options.cpus_per_worker, retries=options.retries)
    gpus = options.num_gpus
    if gpus is None:
        if options.device == "cpu":
            gpus = 0
        elif options.ray_address is None:
            import torch

            gpus = 1 if torch.cuda.is_available() else 0
        else:
            gpus = 1 if ex.cluster_resources().get("GPU", 0) >= 1 else 0
    ex.gpus_per_worker = gpus
    device = ("cuda" if gpus > 0 else "cpu") if options.device == "auto" else options.device
    return ex, device


def _dtype(options: LossesOptions, device: str) -> str:
    if options.dtype != "auto":
        return options.dtype
    from spectrum.devices import default_dtype, dtype_name, resolve_device

    return dtype_name(default_dtype(resolve_device(device)))


def _stale_reason(found: dict[str, Any], expected: dict[str, Any]) -> str:
    return ", ".join(f"{k} changed" for k in CURRENT_KEYS if found.get(k) != expected.get(k))


def plan(manifest: Manifest, evalset_hash: str, dtype: str, *, force: bool = False
         ) -> tuple[list[Unit], int, list[str]]:
    """(units to compute, number of current shards skipped, problems with checkpoint folders)."""
    out = Path(manifest.out)
    memo_path = out / ".cache" / "checkpoint_hashes.json"  # outside losses/: scans read only shards
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    units, skipped, stale, problems = [], 0, 0, []
    for run in manifest.runs:
        problems += [f"checkpoint {p}: cannot be read: incomplete (no config.json or no weights)"
                     for p in incomplete_checkpoints(run)]
        for ck in resolve_checkpoints(run):
            prov = {"run": run.name, "step": ck.step, "tokens": ck.step * run.tokens_per_step,
                    "checkpoint": str(ck.path), "checkpoint_hash": checkpoint_hash(ck.path, memo),
                    "evalset_hash": evalset_hash, "dtype": dtype, "code_version": __version__}
            shard = loss_shard(out, run.name, ck.step)
            found = read_provenance(shard)
            current = found is not None and all(found.get(k) == prov[k] for k in CURRENT_KEYS)
            if current and not force:
                skipped += 1
                continue
            if found is not None and not current:
                stale += 1
                if stale <= MAX_STALE_LINES:
                    log.warning(f"{shard} is stale ({_stale_reason(found, prov)}): recomputing")
            size = sum(f.stat().st_size for f in weight_files(ck.path))
            units.append(Unit(run.name, ck.step, str(ck.path), str(shard), prov, size))
    if stale > MAX_STALE_LINES:
        log.warning(f"{stale - MAX_STALE_LINES} more stale shards: recomputing")
    write_json(memo, memo_path)
    # largest first, so that the last units to finish are short ones (less idle time at the end)
    units.sort(key=lambda u: -u.size)
    return units, skipped, problems


def write_shard(unit: Unit, losses: np.ndarray) -> None:
    table = pa.table({"token_idx": pa.array(np.arange(len(losses), dtype=np.int64)),
                      "loss": pa.array(np.asarray(losses, dtype=np.float32))})
    write_parquet(table, unit.shard, unit.provenance)


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


def main(manifest: Manifest, options: LossesOptions) -> None:
    validate_checkpoint_sources(manifest)
    evalset = load_evalset(evalset_dir(manifest.out))
    executor, device = make_executor(options)
    dtype = _dtype(options, device)
    units, skipped, problems = plan(manifest, evalset.hash, dtype, force=options.force)
    threads = options.cpus_per_worker if options.executor == "ray" else None
    make_worker = partial(LossWorker, evalset.input_ids, evalset.meta, device, dtype,
                          options.batch_size, threads)
    failures, nonfinite, (evals, waits) = [], {}, (0.0, 0.0)
    if units:
        failures, nonfinite, (evals, waits) = run_units(units, executor, make_worker,
                                                        evalset.num_tokens)
    failures = problems + failures
    computed = len(units) - (len(failures) - len(problems))
    summary = (f"losses: {computed} shards written, {skipped} current ones skipped, "
               f"{len(failures)} checkpoints failed; "
               f"{sum(nonfinite.values())} non-finite losses"
               + (f" in {len(nonfinite)} shards ({', '.join(nonfinite)})" if nonfinite else "")
               + (f" (workers: {evals:.1f} s evaluating, {waits:.1f} s waiting for checkpoints "
                  "to load)" if units else ""))
    if failures:
        raise StageFailed(*failures, summary)
    log.info(summary)
