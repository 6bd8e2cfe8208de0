"""``spectrum losses``: the loss of every evalset token at every checkpoint of every run.

One unit of work per (run, checkpoint); each writes ``<out>/losses/run=<run>/step=<step>/
part-0.parquet`` (``token_idx`` int64, ``loss`` float32 nats, sorted by ``token_idx``) with its
provenance (run, step, tokens = step * tokens_per_step, checkpoint path and content hash, evalset
hash, dtype, code version) and the checksum of its content. A shard whose checkpoint hash,
evalset hash, dtype, run, step and tokens match, and whose content keeps the shard contract and
matches its checksum (:mod:`spectrum.losses.shards`), is current and skipped; any other is stale
and recomputed with a warning. An evalset drawn with other settings than the manifest's is
refused (rebuild it first), and so are devices or GPUs this machine or cluster lacks, before any
work is announced.

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

import argparse
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from spectrum import __version__
from spectrum.data.checkpoints import (content_hash, incomplete_checkpoints, resolve_checkpoints,
                                  validate_checkpoint_sources, weight_files)
from spectrum.errors import SpectrumError, StageFailed
from spectrum.data.evalset import load_evalset, stale_reason
from spectrum.layout import evalset_dir, loss_shard
from spectrum.losses.shards import CHECKSUM, shard_problem, write_loss_shard
from spectrum.manifest import Manifest
from spectrum.store import read_provenance, write_json

HELP = "per-token losses of every checkpoint of every run over the evalset (Parquet shards)"
# provenance keys that decide whether a shard is current (path and code version are recorded only)
CURRENT_KEYS = ("run", "step", "tokens", "checkpoint_hash", "evalset_hash", "dtype")
MAX_STALE_LINES = 10  # stale shards named one by one; the rest are counted


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto|cpu|cuda|cuda:N for the local executor (default auto); Ray "
                        "workers use CUDA when they are given GPUs")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default: a local Ray, or --ray-address) or local (this process)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (auto, ip:port); default: start a local Ray")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per Ray worker (default: 1 if this machine has GPUs, else 0)")
    p.add_argument("--force", action="store_true", help="recompute even if current")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers (default: one per GPU, or one per --cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=int, default=1,
                   help="CPUs (and torch threads) per CPU worker (default 1)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="weights and activations: auto = bfloat16 on GPUs, float32 on CPUs")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per forward pass (default: automatic)")
    p.add_argument("--retries", type=int, default=2,
                   help="retries of a unit that failed unexpectedly (default 2)")


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


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values no run can use, naming every one."""
    problems = []
    for name, value, least in (("--cpus-per-worker", args.cpus_per_worker, 1),
                               ("--workers", args.workers, 1), ("--batch-size", args.batch_size, 1),
                               ("--retries", args.retries, 0), ("--num-gpus", args.num_gpus, 0)):
        if value is not None and value < least:
            problems.append(f"{name} must be at least {least}, got {value:g}")
    if args.num_gpus == 0 and args.device.startswith("cuda"):
        problems.append(f"--device {args.device} with --num-gpus 0: the workers would have no GPU")
    if problems:
        raise SpectrumError(*problems)


def make_executor(args: argparse.Namespace) -> tuple[Any, str]:
    """(executor, device for the workers) from the stage's options. ``--num-gpus`` defaults to 1
    when GPUs exist (on this machine for a local Ray, in the cluster for --ray-address) and
    ``--device`` is not cpu, else 0. Devices and GPUs that this machine (or the cluster) lacks
    are refused here, before any work is planned."""
    from pipelines.executor import LocalExecutor, RayExecutor
    from spectrum.devices import parse_device, resolve_device

    local_machine = args.executor == "local" or args.ray_address is None
    if local_machine:
        resolve_device(args.device)  # a device this machine has
    else:
        parse_device(args.device)  # the workers' machines are checked by the cluster's GPUs
    if args.executor == "local":
        return LocalExecutor(retries=args.retries), args.device
    ex = RayExecutor(args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                     retries=args.retries)
    import torch

    gpus = args.num_gpus
    if args.ray_address is None:
        have_gpus: float = torch.cuda.device_count() if torch.cuda.is_available() else 0
        where = "this machine"
    else:
        have_gpus = ex.cluster_resources().get("GPU", 0)
        where = f"the Ray cluster at {args.ray_address}"
    if gpus is None:
        gpus = 0 if args.device == "cpu" else (1 if have_gpus >= 1 else 0)
    if gpus > 0 and have_gpus < gpus:
        raise SpectrumError(f"--num-gpus {gpus:g} per worker, but {where} has {have_gpus:g} GPUs; "
                            "use --num-gpus 0 to run on CPUs")
    if gpus == 0 and args.device.startswith("cuda"):
        raise SpectrumError(f"--device {args.device}: {where} has no GPU for the workers")
    cpus = os.cpu_count() or 1
    if args.ray_address is None and args.cpus_per_worker > cpus:
        raise SpectrumError(f"--cpus-per-worker {args.cpus_per_worker}: this machine has "
                            f"{cpus} CPUs")
    ex.gpus_per_worker = gpus
    device = ("cuda" if gpus > 0 else "cpu") if args.device == "auto" else args.device
    return ex, device


def _dtype(args: argparse.Namespace, device: str) -> str:
    if args.dtype != "auto":
        return args.dtype
    from spectrum.devices import default_dtype, dtype_name, parse_device

    return dtype_name(default_dtype(parse_device(device)))


def _stale_reason(found: dict[str, Any], expected: dict[str, Any]) -> str:
    return ", ".join(f"{k} changed" for k in CURRENT_KEYS if found.get(k) != expected.get(k))


def shard_state(shard: Path, expected: dict[str, Any], n_tokens: int) -> str | None:
    """Why an existing ``shard`` is stale (its provenance differs from ``expected``, it records no
    content checksum, or its content breaks the shard contract or no longer matches the
    checksum); None when it is current."""
    found = read_provenance(shard)
    if found is None:
        return shard_problem(shard, n_tokens) or "no provenance recorded"
    reason = _stale_reason(found, expected)
    if reason:
        return reason
    if CHECKSUM not in found:
        return "no content checksum recorded"
    return shard_problem(shard, n_tokens)


def plan(manifest: Manifest, evalset_hash: str, dtype: str, n_tokens: int, *,
         force: bool = False, log=print) -> tuple[list[Unit], int, list[str]]:
    """(units to compute, number of current shards skipped, problems with checkpoint folders).

    A shard is current when its provenance matches and its content matches its checksum (see
    :func:`shard_state`); a stale one is recomputed with a warning."""
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
                    "checkpoint": str(ck.path), "checkpoint_hash": content_hash(ck.path, memo),
                    "evalset_hash": evalset_hash, "dtype": dtype, "code_version": __version__}
            shard = loss_shard(out, run.name, ck.step)
            reason = shard_state(shard, prov, n_tokens) if shard.exists() else "missing"
            if reason is None and not force:
                skipped += 1
                continue
            if reason not in (None, "missing"):
                stale += 1
                if stale <= MAX_STALE_LINES:
                    log(f"warning: {shard} is stale ({reason}): recomputing")
            size = sum(f.stat().st_size for f in weight_files(ck.path))
            units.append(Unit(run.name, ck.step, str(ck.path), str(shard), prov, size))
    if stale > MAX_STALE_LINES:
        log(f"warning: {stale - MAX_STALE_LINES} more stale shards: recomputing")
    write_json(memo, memo_path)
    # largest first, so that the last units to finish are short ones (less idle time at the end)
    units.sort(key=lambda u: -u.size)
    return units, skipped, problems


def write_shard(unit: Unit, losses: np.ndarray) -> None:
    write_loss_shard(unit.shard, losses, unit.provenance)


def run_units(units: list[Unit], executor: Any, make_worker: Any, tokens_per_unit: int
              ) -> tuple[list[str], dict[str, int], tuple[float, float]]:
    """Run the units, writing each shard as it arrives; (failures, non-finite counts per shard,
    (sum of pure evaluation seconds, sum of seconds spent waiting for checkpoints to load))."""
    from tqdm.auto import tqdm

    failures: list[str] = []
    nonfinite: dict[str, int] = {}
    eval_seconds = load_wait = 0.0
    done_tokens = 0
    t0 = time.perf_counter()
    with tqdm(total=len(units), unit="shard", desc="losses", file=sys.stderr,
              dynamic_ncols=True) as bar:
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
                bar.write(f"error: {failures[-1]}", file=sys.stderr)
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


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    check_options(args)
    validate_checkpoint_sources(manifest)
    evalset = check_evalset(manifest)
    executor, device = make_executor(args)  # refuses missing devices before any announcement
    dtype = _dtype(args, device)
    units, skipped, problems = plan(manifest, evalset.hash, dtype, evalset.num_tokens,
                                    force=args.force, log=lambda m: print(m, file=sys.stderr))
    threads = args.cpus_per_worker if args.executor == "ray" else None
    make_worker = partial(LossWorker, evalset.input_ids, evalset.meta, device, dtype,
                          args.batch_size, threads)
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
    print(summary, file=sys.stderr)
