"""`spectrum fit`: a sigmoid for every token's loss trajectory of every run.

For each run of the manifest, the loss shards (``losses/run=<run>/step=<step>/part-0.parquet``)
are read as a (tokens x checkpoints) float32 matrix in chunks of ``--chunk-size`` tokens, on the
time axis ``x = ln(step * tokens_per_step)`` (step 0 has no place on it and is left out), and
fitted by :func:`spectrum.fit.fit_sigmoids` on ``--device``. The fits go to
``fits/run=<run>/part-0.parquet`` (one row per token: token_idx, lo, hi, tau, k, their standard
errors, rss, r2, n_iter, status, kind), written atomically. Its provenance records the steps, the
x grid, a digest of the loss shards' own provenance, the dtype, the solver options and the kind
thresholds; a run whose fits record the same is skipped (``--force`` refits it).

Units of work are (run, token chunk). A worker reads its next unit's chunk in a background
thread while it fits the current one (reading and fitting overlap), with torch using every core
it is given. By default one worker runs in this process; with ``--ray-address`` the units go to
Ray workers (``local`` starts a local Ray, ``auto`` or ``ip:port`` joins a cluster) through the
same executor as the losses stage, and each run's fits are written as soon as its last unit is
back. Memory is set by the chunk size: about three chunks of ``4 x checkpoints`` bytes per token
in a worker, plus the fits of the runs in progress in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectrum.errors import SpectrumError, StageFailed
from spectrum.fit.solver import FitOptions, SigmoidFit, fit_sigmoids, solver_name
from spectrum.fit.kinds import KindThresholds
from spectrum.devices import resolve_device
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import hash_files, is_current, read_provenance, write_parquet
from spectrum.layout import fits_file, loss_run_dir, loss_shard, shard_steps
from spectrum.losses.trajectories import RunLosses, Trajectories, log_tokens

HELP = "fit a sigmoid in log-time to every token's loss trajectory (batched Levenberg-Marquardt)"
MIN_CHECKPOINTS = 5
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# shard provenance that identifies the data (where the checkpoint lay, or which code version
# wrote the shard, does not change the losses)
_VOLATILE = ("checkpoint", "code_version", "path")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--fit-dtype", choices=tuple(DTYPES), default="float32",
                   help="precision of the fits (default float32)")
    p.add_argument("--chunk-size", type=int, default=1 << 20,
                   help="tokens read from the shards and fitted at a time (default 1048576)")
    p.add_argument("--fit-kernel", choices=("auto", "triton", "torch"), default="auto",
                   help="the LM iterations in the fused Triton kernel or in torch; auto: the "
                        "kernel on CUDA when Triton is installed (default auto)")
    p.add_argument("--force", action="store_true", help="refit even if the fits are current")
    p.add_argument("--ray-address", default=None,
                   help="fit on Ray workers: local (start a local Ray), auto or ip:port (a "
                        "cluster); default: in this process")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers (default: one per GPU, or one per --cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=int, default=1,
                   help="CPUs (and torch threads) per Ray worker on CPUs (default 1)")


def fit_steps(out: Path, run: RunSpec) -> list[int]:
    """The steps > 0 to fit: those with a shard (and listed in the manifest, if it lists steps)."""
    steps = [s for s in shard_steps(out, run.name) if s > 0]
    if run.steps is not None:
        listed = set(run.steps)
        steps = [s for s in steps if s in listed]
    return steps


def check_runs(manifest: Manifest) -> dict[str, list[int]]:
    """Steps to fit per run; a SpectrumError naming every run that cannot be fitted."""
    problems, plan = [], {}
    for run in manifest.runs:
        steps = fit_steps(manifest.out, run)
        if not shard_steps(manifest.out, run.name):
            problems.append(f"run {run.name}: no loss shards under {loss_run_dir(manifest.out, run.name)} "
                            "(run `spectrum losses` first)")
        elif len(steps) < MIN_CHECKPOINTS:
            problems.append(f"run {run.name}: {len(steps)} checkpoint(s) after step 0 have loss "
                            f"shards; a sigmoid fit needs at least {MIN_CHECKPOINTS}")
        plan[run.name] = steps
    if problems:
        raise SpectrumError(*problems)
    return plan


def losses_digest(out: Path, run: str, steps: list[int]) -> str:
    """SHA-256 over the shards' provenance (or their bytes, where a shard records none)."""
    h = hashlib.sha256()
    for step in steps:
        path = loss_shard(out, run, step)
        prov = read_provenance(path)
        if prov is None:
            record: Any = {"sha256": hash_files([path])}
        else:
            record = {k: v for k, v in prov.items() if k not in _VOLATILE}
        h.update(json.dumps([step, record], sort_keys=True, default=str).encode())
    return h.hexdigest()


def provenance(out: Path, run: RunSpec, steps: list[int], dtype: str, options: FitOptions,
               thresholds: KindThresholds) -> dict[str, Any]:
    return {"stage": "fit", "run": run.name, "steps": steps,
            "tokens_per_step": run.tokens_per_step,
            "x": log_tokens(steps, run.tokens_per_step).tolist(),
            "losses": losses_digest(out, run.name, steps), "dtype": dtype,
            "options": options.to_dict(), "thresholds": thresholds.to_dict(),
            "min_checkpoints": MIN_CHECKPOINTS}


# ---- units of work: (run, token chunk), fitted by a worker that reads ahead ---------------------

@dataclass(frozen=True)
class FitUnit:
    """The tokens ``start <= token_idx < stop`` of one run."""

    run: str
    start: int
    stop: int


@dataclass(frozen=True)
class FitSettings:
    """What a worker needs (picklable): where the shards are, each run's steps and x grid, and
    how to fit."""

    out: str
    steps: dict[str, list[int]]
    x: dict[str, list[float]]
    device: str
    dtype: str
    options: FitOptions
    thresholds: KindThresholds
    threads: int | None = None  # torch threads; None: torch's default (every core)


@dataclass
class FitPart:
    """The fits of one unit's tokens (none when its range held no token)."""

    token_idx: np.ndarray
    fits: SigmoidFit | None


def fit_chunk(chunk: Trajectories, x: np.ndarray, settings: FitSettings,
              device: torch.device) -> SigmoidFit:
    """The sigmoid fits of one chunk's trajectories."""
    return fit_sigmoids(chunk.losses, x, device=device, dtype=DTYPES[settings.dtype],
                        options=settings.options, thresholds=settings.thresholds)


class FitWorker:
    """Fits units; one background thread reads the next unit's chunk while this one is fitted."""

    def __init__(self, settings: FitSettings) -> None:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.readers: dict[str, RunLosses] = {}  # used by the reader thread alone
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit-reader")
        self.pending: dict[FitUnit, Future] = {}
        self.upcoming: FitUnit | None = None

    def _read(self, unit: FitUnit) -> Trajectories:
        if unit.run not in self.readers:
            self.readers[unit.run] = RunLosses(Path(self.settings.out), unit.run,
                                               self.settings.steps[unit.run])
        return self.readers[unit.run].read(unit.start, unit.stop)

    def prefetch(self, unit: FitUnit) -> None:
        """The unit after the next :meth:`process`: read once that one's own read is queued."""
        self.upcoming = unit

    def _submit(self, unit: FitUnit) -> None:
        if unit not in self.pending:
            self.pending[unit] = self.reader.submit(self._read, unit)

    def process(self, unit: FitUnit) -> FitPart:
        self._submit(unit)
        if self.upcoming is not None:  # read while this unit is fitted
            self._submit(self.upcoming)
            self.upcoming = None
        chunk = self.pending.pop(unit).result()
        if not len(chunk):
            return FitPart(chunk.token_idx, None)
        x = np.asarray(self.settings.x[unit.run])
        return FitPart(chunk.token_idx, fit_chunk(chunk, x, self.settings, self.device))


def _make_worker(settings: FitSettings) -> FitWorker:
    return FitWorker(settings)


def make_executor(args: argparse.Namespace) -> tuple[Any, str, int | None]:
    """(executor, device for the workers, torch threads per worker) from the stage's options."""
    from pipelines.executor import LocalExecutor, RayExecutor

    device = getattr(args, "device", "auto")
    address = getattr(args, "ray_address", None)
    if address is None:
        return LocalExecutor(retries=0), device, None
    cpus = getattr(args, "cpus_per_worker", 1)
    if cpus < 1:
        raise SpectrumError(f"--cpus-per-worker must be positive, got {cpus}")
    ex = RayExecutor(None if address == "local" else address, workers=getattr(args, "workers", None),
                     cpus_per_worker=cpus, retries=1)
    if device.startswith("cuda"):
        ex.gpus_per_worker = 1
    elif device == "auto":
        if address == "local":
            ex.gpus_per_worker = 1 if torch.cuda.is_available() else 0
        else:
            ex.gpus_per_worker = 1 if ex.cluster_resources().get("GPU", 0) >= 1 else 0
    if device == "auto":
        device = "cuda" if ex.gpus_per_worker else "cpu"
    return ex, device, cpus


def run_units(units: list[FitUnit], executor: Any, settings: FitSettings,
              on_run_done: Any) -> tuple[list[str], set[str]]:
    """Fit every unit; ``on_run_done(run, token_idx, fits)`` as soon as a run's units are all
    back (in token order). Returns the failures (one line each) and the runs they belong to."""
    from functools import partial

    from tqdm.auto import tqdm

    left = {u.run: 0 for u in units}
    for u in units:
        left[u.run] += 1
    parts: dict[str, list[tuple[int, FitPart]]] = {run: [] for run in left}
    failed: set[str] = set()
    failures: list[str] = []
    total = sum(u.stop - u.start for u in units)
    with tqdm(total=total, unit="tok", desc="fit", smoothing=0.1, dynamic_ncols=True) as bar:
        for outcome in executor.map(partial(_make_worker, settings), units):
            unit: FitUnit = outcome.unit
            left[unit.run] -= 1
            if outcome.ok:
                parts[unit.run].append((unit.start, outcome.result))
            else:
                failed.add(unit.run)
                failures.append(f"run {unit.run}, tokens {unit.start}-{unit.stop - 1}: "
                                f"{outcome.error}")
                bar.write(f"error: {failures[-1]}")
            bar.update(unit.stop - unit.start)
            if left[unit.run] == 0 and unit.run not in failed:
                done = [p for _, p in sorted(parts.pop(unit.run), key=lambda t: t[0])
                        if p.fits is not None]
                if not done:
                    failed.add(unit.run)
                    failures.append(f"run {unit.run}: the loss shards under "
                                    f"{loss_run_dir(settings.out, unit.run)} hold no tokens")
                    continue
                on_run_done(unit.run, np.concatenate([p.token_idx for p in done]),
                            SigmoidFit.concat([p.fits for p in done]))
    return failures, failed


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    dtype_name = getattr(args, "fit_dtype", "float32")
    chunk_size = getattr(args, "chunk_size", 1 << 20)
    force = getattr(args, "force", False)
    if chunk_size < 1:
        raise SpectrumError(f"--chunk-size must be positive, got {chunk_size}")
    options = FitOptions(kernel=getattr(args, "fit_kernel", "auto"))
    thresholds = KindThresholds()
    executor, device_name, threads = make_executor(args)
    device = resolve_device(device_name)
    try:
        solver = solver_name(options, device)
    except ValueError as e:
        raise SpectrumError(f"--fit-kernel {options.kernel}: {e}") from None
    plan = check_runs(manifest)
    runs = {run.name: run for run in manifest.runs}
    todo, provs, skipped = [], {}, 0
    for run in manifest.runs:
        path = fits_file(manifest.out, run.name)
        provs[run.name] = provenance(manifest.out, run, plan[run.name], dtype_name, options,
                                     thresholds)
        if not force and is_current(path, provs[run.name]):
            skipped += 1
            continue
        if path.exists() and not force:
            print(f"fit: {path} is stale: refitting", flush=True)
        todo.append(run.name)
    units = [FitUnit(name, a, b) for name in todo
             for a, b in RunLosses(manifest.out, name, plan[name]).ranges(chunk_size)]
    settings = FitSettings(str(manifest.out), {n: plan[n] for n in todo},
                           {n: provs[n]["x"] for n in todo}, device_name, dtype_name, options,
                           thresholds, threads)
    t0 = time.perf_counter()

    def write(name: str, token_idx: np.ndarray, fits: SigmoidFit) -> None:
        path = fits_file(manifest.out, name)
        write_parquet(fits.to_arrow(token_idx), path, provs[name])
        kinds, counts = np.unique(fits.kind, return_counts=True)
        summary = ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))
        print(f"fit: run {name}: {len(fits)} tokens ({time.perf_counter() - t0:.1f} s since the "
              f"start) on {device_name}, {solver} ({summary}) -> {path}", flush=True)

    failures, failed = run_units(units, executor, settings, write)
    done = len(todo) - len(failed)
    print(f"fit: {done} run(s) fitted, {skipped} current run(s) skipped "
          f"(kinds: {thresholds.describe()})", flush=True)
    if failures:
        raise StageFailed(*failures)
