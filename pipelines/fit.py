"""`spectrum fit`: a sigmoid for every token's loss trajectory of every run.

For each run of the manifest, the loss shards (:func:`spectrum.layout.loss_shard`)
are read as a (tokens x checkpoints) float32 matrix in chunks of ``--chunk-size`` tokens, on the
time axis ``x = ln(step * tokens_per_step)`` (step 0 has no place on it and is left out), and
fitted by :func:`spectrum.fit.fit_sigmoids` on ``--device``. The fits go to
:func:`spectrum.layout.fits_file` (one row per token: token_idx, lo, hi, tau, k, their standard
errors, rss, r2, n_iter, status, kind), written atomically. Its provenance records the steps, the
x grid, a digest of the loss shards' own provenance, the dtype, the solver options and the kind
thresholds (:mod:`spectrum.fit.runs`); a run whose fits record the same is skipped (``--force``
refits it). A run whose loss shards break their contract fails alone, naming them; the others
are fitted, and the command ends with a summary and exit status 1.

Units of work are (run, token chunk), fitted with torch using every core the worker is given. Where
reading has a core of its own (fits on a GPU, or spare cores), a worker reads its next unit's chunk
in a background thread while it fits the current one; where the solver takes every core, the chunk
is decoded on all of them just before its fit, while the OS reads the next unit's bytes ahead
(:class:`FitWorker`). The solver compiles while the shards are checked and the first chunk is read.
By default one worker runs in this process; with ``--ray-address`` the units go to Ray workers
(``local`` starts a local Ray, ``auto`` or ``ip:port`` joins a cluster) through the same executor
as the losses stage, and each run's fits are written as soon as its last unit is back. Memory is
set by the chunk size: one to three chunks of ``4 x checkpoints`` bytes per token in a worker, plus
the fits of the runs in progress in this process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.options import (cpus_per_worker_option, device_option, force_option,
                               not_positive, option, ray_address_option, workers_option)
from spectrum.console import progress
from spectrum.devices import resolve_device
from spectrum.errors import SpectrumError, StageFailed
from spectrum.fit import smooth
from spectrum.fit.kinds import KINDS, KindThresholds
from spectrum.fit.runs import check_runs, provenance
from spectrum.fit.solver import (COMPILE_MIN_ROWS, FitOptions, SigmoidFit, fit_sigmoids,
                                 is_warm, solver_name, warm_up)
from spectrum.layout import fits_file, loss_run_dir
from spectrum.losses.shards import check_run_shards, expected_tokens
from spectrum.losses.trajectories import RunLosses, Trajectories
from spectrum.manifest import Manifest
from spectrum.store import is_current, numeric_encodings, write_parquet

HELP = "fit a sigmoid in log-time to every token's loss trajectory (batched Levenberg-Marquardt)"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FitStageOptions:
    device: str = device_option()
    fit_dtype: str = option("float32", "precision of the fits (default float32)",
                            choices=tuple(DTYPES))
    chunk_size: int = option(1 << 20, "tokens read from the shards and fitted at a time "
                                      "(default 1048576)")
    fit_kernel: str = option("auto", "the LM iterations in the fused Triton kernel or in torch; "
                                     "auto: the kernel on CUDA when Triton is installed "
                                     "(default auto)", choices=("auto", "triton", "torch"))
    force: bool = force_option()
    ray_address: str | None = ray_address_option()
    workers: int | None = workers_option()
    cpus_per_worker: int = cpus_per_worker_option()

    def __post_init__(self) -> None:
        problems = not_positive((("--chunk-size", self.chunk_size),
                                 ("--cpus-per-worker", self.cpus_per_worker),
                                 ("--workers", self.workers)))
        if problems:
            raise SpectrumError(*problems)


OPTIONS = FitStageOptions


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
    """The fits of one unit's tokens (none when its range held no token), and the smooth
    alternatives of the step fitted to the same rows."""

    token_idx: np.ndarray
    fits: SigmoidFit | None
    smooth: dict[str, np.ndarray] | None = None


def fit_chunk(chunk: Trajectories, x: np.ndarray, settings: FitSettings,
              device: torch.device) -> tuple[SigmoidFit, dict[str, np.ndarray]]:
    """The sigmoid fits of one chunk's trajectories, and (is it a step at all?) the smooth
    alternatives with their BICs on the same rows."""
    t0 = time.perf_counter()
    fits = fit_sigmoids(chunk.losses, x, device=device, dtype=DTYPES[settings.dtype],
                        options=settings.options, thresholds=settings.thresholds)
    t1 = time.perf_counter()
    columns = smooth.smooth_fits(chunk.losses, x, fits.rss, device=device)
    log.debug(f"fit: {len(fits)} sigmoids in {t1 - t0:.1f} s, smooth alternatives in "
              f"{time.perf_counter() - t1:.1f} s")
    return fits, {name: v.astype(np.float32) for name, v in columns.items()}  # as stored


def _spare_cores() -> bool:
    """Whether this process may run on more cores than torch's threads use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) > torch.get_num_threads()


class FitWorker:
    """Fits units, reading each unit's chunk in one of two ways.

    In the background, where reading has a core of its own (fits on a GPU, or more cores than
    torch's threads): a reader thread reads the next unit's chunk while this one is fitted.
    In the foreground, where the solver's threads take every core: a reader thread beside them
    would take cores from the solver's OpenMP team mid-step (on two cores, reading 1M tokens
    x 99 checkpoints costs the fit 5-6 s instead of the read's own 1.6 CPU-s), so the chunk is
    decoded and transposed on all cores just before it is fitted, into a buffer reused from
    chunk to chunk, and the next unit's bytes are only announced to the OS (read ahead into its
    page cache while this one is fitted: disk and network reads still overlap the fit). The
    first unit is read in the background either way while the solver compiles, unless it is
    compiled already (by the driver, in this process).
    """

    def __init__(self, settings: FitSettings) -> None:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.foreground = self.device.type == "cpu" and not _spare_cores()
        self.readers: dict[str, RunLosses] = {}  # opened by whichever thread reads first
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit-reader")
        self.decoders = (ThreadPoolExecutor(max_workers=torch.get_num_threads(),
                                            thread_name_prefix="fit-decode")
                         if self.foreground else None)
        self.buffer: np.ndarray | None = None  # the foreground reads' block, reused
        self.pending: dict[FitUnit, Future] = {}
        self.upcoming: FitUnit | None = None
        # whether the solver's compiled steps were built (warm_up), here or by the driver
        self.warm = is_warm(self.device, DTYPES[settings.dtype], settings.options)

    def _losses(self, run: str) -> RunLosses:
        if run not in self.readers:
            self.readers[run] = RunLosses(Path(self.settings.out), run,
                                          self.settings.steps[run], checked=True)
        return self.readers[run]

    def _read(self, unit: FitUnit) -> Trajectories:
        return self._losses(unit.run).read(unit.start, unit.stop)

    def _read_here(self, unit: FitUnit) -> Trajectories:
        """Read on every core, into the reused buffer."""
        losses = self._losses(unit.run)
        need = (unit.stop - unit.start) * len(losses.steps)
        if self.buffer is None or self.buffer.size < need:
            self.buffer = None  # the old block goes before the new one is mapped
            self.buffer = np.empty(need, np.float32)
        return losses.read(unit.start, unit.stop, pool=self.decoders, into=self.buffer)

    def prefetch(self, unit: FitUnit) -> None:
        """The unit after the next :meth:`process`: read (or announced) once that one's own
        read is under way."""
        self.upcoming = unit

    def _submit(self, unit: FitUnit) -> None:
        if unit not in self.pending:
            self.pending[unit] = self.reader.submit(self._read, unit)

    def _chunk(self, unit: FitUnit) -> Trajectories:
        """The unit's chunk; starts reading (or announcing) the upcoming unit, and compiles the
        solver while the first chunk is read."""
        first = not self.warm
        if first or not self.foreground or unit in self.pending:
            self._submit(unit)
        if self.upcoming is not None:
            if self.foreground:
                self._losses(self.upcoming.run).advise(self.upcoming.start, self.upcoming.stop)
            else:
                self._submit(self.upcoming)
            self.upcoming = None
        if first:
            self.warm = True
            if _WARMING is not None and _WARMING.is_alive():  # the driver's, in this process
                _WARMING.join()
            if unit.stop - unit.start >= COMPILE_MIN_ROWS and not is_warm(
                    self.device, DTYPES[self.settings.dtype], self.settings.options):
                warm_up(np.asarray(self.settings.x[unit.run]), device=self.device,
                        dtype=DTYPES[self.settings.dtype], options=self.settings.options)
        if unit in self.pending:
            return self.pending.pop(unit).result()
        return self._read_here(unit)

    def process(self, unit: FitUnit) -> FitPart:
        t0 = time.perf_counter()
        chunk = self._chunk(unit)
        if not len(chunk):
            return FitPart(chunk.token_idx, None)
        t1 = time.perf_counter()
        x = np.asarray(self.settings.x[unit.run])
        part = FitPart(chunk.token_idx, *fit_chunk(chunk, x, self.settings, self.device))
        log.debug(f"fit: run {unit.run}, tokens {unit.start}-{unit.stop - 1}: read "
                  f"{t1 - t0:.1f} s ({'here' if self.foreground else 'ahead'}), fitted "
                  f"{time.perf_counter() - t1:.1f} s")
        return part


def _make_worker(settings: FitSettings) -> FitWorker:
    return FitWorker(settings)


def make_executor(options: FitStageOptions) -> tuple[Any, str, int | None]:
    """(executor, device for the workers, torch threads per worker): this process without
    ``--ray-address``; Ray workers with it (``local`` starts a local Ray)."""
    from pipelines.executor import LocalExecutor, RayExecutor

    device, address = options.device, options.ray_address
    if address is None:
        return LocalExecutor(retries=0), device, None
    ex = RayExecutor(None if address == "local" else address, workers=options.workers,
                     cpus_per_worker=options.cpus_per_worker, retries=1)
    if device.startswith("cuda"):
        ex.gpus_per_worker = 1
    elif device == "auto":
        if address == "local":
            ex.gpus_per_worker = 1 if torch.cuda.is_available() else 0
        else:
            ex.gpus_per_worker = 1 if ex.cluster_resources().get("GPU", 0) >= 1 else 0
    if device == "auto":
        device = "cuda" if ex.gpus_per_worker else "cpu"
    return ex, device, options.cpus_per_worker


def run_units(units: list[FitUnit], executor: Any, settings: FitSettings,
              on_run_done: Any) -> tuple[list[str], set[str]]:
    """Fit every unit; ``on_run_done(run, token_idx, fits, smooth columns)`` as soon as a run's
    units are all back (in token order). Returns the failures (one line each) and the runs they belong to."""
    from functools import partial

    left = {u.run: 0 for u in units}
    for u in units:
        left[u.run] += 1
    parts: dict[str, list[tuple[int, FitPart]]] = {run: [] for run in left}
    failed: set[str] = set()
    failures: list[str] = []
    total = sum(u.stop - u.start for u in units)
    with progress(total=total, unit="tok", desc="fit", smoothing=0.1, dynamic_ncols=True) as bar:
        for outcome in executor.map(partial(_make_worker, settings), units):
            unit: FitUnit = outcome.unit
            left[unit.run] -= 1
            if outcome.ok:
                parts[unit.run].append((unit.start, outcome.result))
            else:
                failed.add(unit.run)
                failures.append(f"run {unit.run}, tokens {unit.start}-{unit.stop - 1}: "
                                f"{outcome.error}")
                log.error(failures[-1])
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
                            SigmoidFit.concat([p.fits for p in done]),
                            smooth.concat_columns([p.smooth for p in done]))
    return failures, failed


def _compiles(out: Path) -> bool:
    """Whether a first chunk will be large enough for the solver to compile (from the
    evalset's token count; unknown: no)."""
    n = expected_tokens(out)
    return n is not None and n >= COMPILE_MIN_ROWS


_WARMING: threading.Thread | None = None  # the driver's warm-up (:func:`_warm_up_beside`)


def _warm_up_beside(x: list[float], device: torch.device, dtype: str,
                    options: FitOptions) -> threading.Thread:
    """Build the solver's compiled steps on a thread of their own while the driver checks the
    shards (tracing holds the GIL, decoding and hashing release it) and the in-process worker
    reads its first chunk; the worker waits for it before its first fit. A failure here is only
    logged: the worker then compiles again."""
    def run() -> None:
        try:
            warm_up(np.asarray(x), device=device, dtype=DTYPES[dtype], options=options)
        except Exception as e:  # noqa: BLE001 - the worker's own warm-up reports it
            log.debug(f"fit: compiling beside the shard checks failed ({e})")

    thread = threading.Thread(target=run, name="fit-warm-up", daemon=True)
    thread.start()
    return thread


def main(manifest: Manifest, options: FitStageOptions) -> None:
    solver_options = FitOptions(kernel=options.fit_kernel)
    thresholds = KindThresholds()
    executor, device_name, threads = make_executor(options)
    device = resolve_device(device_name)
    try:
        solver = solver_name(solver_options, device)
    except ValueError as e:
        raise SpectrumError(f"--fit-kernel {options.fit_kernel}: {e}") from None
    plan = check_runs(manifest)
    provs = {run.name: provenance(manifest.out, run, plan[run.name], options.fit_dtype,
                                  solver_options, thresholds) for run in manifest.runs}
    stale = []
    for run in manifest.runs:
        path = fits_file(manifest.out, run.name)
        if not options.force and is_current(path, provs[run.name]):
            log.debug(f"fit: run {run.name}: {path} is current")
        else:
            stale.append(run.name)
    skipped = len(manifest.runs) - len(stale)
    global _WARMING  # read by the in-process worker
    _WARMING = (_warm_up_beside(provs[stale[0]]["x"], device, options.fit_dtype, solver_options)
                if stale and options.ray_address is None and _compiles(manifest.out) else None)
    todo, failures, bad_runs = [], [], 0
    for name in stale:
        try:  # a run with a bad loss shard fails alone; the others are fitted
            check_run_shards(manifest.out, name, plan[name])
        except SpectrumError as e:
            failures += e.problems
            bad_runs += 1
            continue
        if fits_file(manifest.out, name).exists() and not options.force:
            log.info(f"fit: {fits_file(manifest.out, name)} is stale: refitting")
        todo.append(name)
    units = [FitUnit(name, a, b) for name in todo
             for a, b in RunLosses(manifest.out, name, plan[name], checked=True)
             .ranges(options.chunk_size)]
    settings = FitSettings(str(manifest.out), {n: plan[n] for n in todo},
                           {n: provs[n]["x"] for n in todo}, device_name, options.fit_dtype,
                           solver_options, thresholds, threads)
    t0 = time.perf_counter()

    def write(name: str, token_idx: np.ndarray, fits: SigmoidFit,
              smooth_columns: dict[str, np.ndarray]) -> None:
        path = fits_file(manifest.out, name)
        table = smooth.with_columns(fits.to_arrow(token_idx), smooth_columns)
        write_parquet(table, path, provs[name],
                      encodings=numeric_encodings(table, ascending=("token_idx",)))
        counts = np.bincount(fits.kind_code, minlength=len(KINDS))
        summary = ", ".join(f"{k} {c}" for k, c in sorted(zip(KINDS, counts)) if c)
        log.info(f"fit: run {name}: {len(fits)} tokens ({time.perf_counter() - t0:.1f} s since "
                 f"the start) on {device}, {solver} ({summary}) -> {path}")

    unit_failures, failed = run_units(units, executor, settings, write) if units else ([], set())
    failures += unit_failures
    done = len(todo) - len(failed)
    summary = (f"fit: {done} run(s) fitted, {skipped} current run(s) skipped"
               + (f", {bad_runs + len(failed)} run(s) failed" if failures else "")
               + f" (kinds: {thresholds.describe()})")
    if failures:
        raise StageFailed(*failures, summary)
    log.info(summary)
