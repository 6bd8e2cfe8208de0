"""The fit stage's worker: fits units of (run, token chunk), reading ahead.

A unit is a token range of one run (:class:`FitUnit`); :class:`FitSettings` is what a worker needs
to fit one (picklable, so the same worker runs in this process or in a worker process of an
executor); :class:`FitPart` is what comes back. How the worker overlaps reading with fitting is
said in :class:`FitWorker`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectrum.devices import resolve_device
from spectrum.fit import smooth
from spectrum.fit.kinds import KindThresholds
from spectrum.fit.solver import (COMPILE_MIN_ROWS, FitOptions, SigmoidFit, fit_sigmoids,
                                 is_warm, warm_up)
from spectrum.losses.trajectories import RunLosses, Trajectories

DTYPES = {"float32": torch.float32, "float64": torch.float64}
log = logging.getLogger(__name__)


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
    columns = smooth.smooth_fits(chunk.losses, x, fits.rss, sigmoid_params=fits.params,
                                 device=device)
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

    ``warming``: a thread of this process that builds the solver's compiled steps (see
    :func:`warm_up_beside`); the worker waits for it before its first fit instead of compiling
    the same steps again. Only a worker in the driver's process can be given one.
    """

    def __init__(self, settings: FitSettings, warming: threading.Thread | None = None) -> None:
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
        self.warming = warming

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
            if self.warming is not None:
                self.warming.join()
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


def warm_up_beside(x: list[float], device: torch.device, dtype: str,
                   options: FitOptions) -> threading.Thread:
    """Build the solver's compiled steps on a thread of their own while the driver checks the
    shards (tracing holds the GIL, decoding and hashing release it) and the in-process worker
    reads its first chunk; that worker is given the thread and waits for it before its first
    fit. A failure here is only logged: the worker then compiles again."""
    def run() -> None:
        try:
            warm_up(np.asarray(x), device=device, dtype=DTYPES[dtype], options=options)
        except Exception as e:  # noqa: BLE001 - the worker's own warm-up reports it
            log.debug(f"fit: compiling beside the shard checks failed ({e})")

    thread = threading.Thread(target=run, name="fit-warm-up", daemon=True)
    thread.start()
    return thread
