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
(:class:`spectrum.fit.worker.FitWorker`). The solver compiles while the shards are checked and the
first chunk is read. By default one worker runs in this process; with ``--executor ray`` (or a
``--ray-address``: ``auto`` or ``ip:port`` joins a cluster, ``local`` starts a local Ray) the units
go to Ray workers through the executor of every stage (:func:`pipelines.executor.make_executor`),
and each run's fits are written as soon as its last unit is back. Memory is
set by the chunk size: one to three chunks of ``4 x checkpoints`` bytes per token in a worker, plus
the fits of the runs in progress in this process.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.executor import Executor, executor_kind, make_executor
from pipelines.fit_options import HELP, OPTIONS  # noqa: F401 - exposed by every stage
from pipelines.fit_options import EXECUTOR, FitStageOptions
from spectrum.console import progress
from spectrum.devices import resolve_device
from spectrum.errors import SpectrumError, StageFailed
from spectrum.fit import smooth
from spectrum.fit.kinds import KINDS, KindThresholds
from spectrum.fit.runs import check_runs, provenance
from spectrum.fit.solver import COMPILE_MIN_ROWS, FitOptions, SigmoidFit, solver_name
from spectrum.fit.worker import FitPart, FitSettings, FitUnit, FitWorker, warm_up_beside
from spectrum.layout import fits_file, loss_run_dir
from spectrum.losses.shards import check_run_shards, expected_tokens
from spectrum.losses.trajectories import RunLosses
from spectrum.manifest import Manifest
from spectrum.store import is_current, numeric_encodings, write_parquet

log = logging.getLogger(__name__)


def run_units(units: list[FitUnit], executor: Executor, make_worker: Any, out: str,
              on_run_done: Any) -> tuple[list[str], set[str]]:
    """Fit every unit with the workers of ``make_worker`` (:class:`FitWorker`); ``on_run_done(run,
    token_idx, fits, smooth columns)`` as soon as a run's units are all back (in token order).
    Returns the failures (one line each) and the runs they belong to."""
    left = {u.run: 0 for u in units}
    for u in units:
        left[u.run] += 1
    parts: dict[str, list[tuple[int, FitPart]]] = {run: [] for run in left}
    failed: set[str] = set()
    failures: list[str] = []
    total = sum(u.stop - u.start for u in units)
    with progress(total=total, unit="tok", desc="fit", smoothing=0.1, dynamic_ncols=True) as bar:
        for outcome in executor.map(make_worker, units):
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
                                    f"{loss_run_dir(out, unit.run)} hold no tokens")
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


def main(manifest: Manifest, options: FitStageOptions) -> None:
    solver_options = FitOptions(kernel=options.fit_kernel)
    thresholds = KindThresholds()
    kind = executor_kind(options.executor, options.ray_address, EXECUTOR)
    placement = make_executor(kind, ray_address=options.ray_address, device=options.device,
                              workers=options.workers, cpus_per_worker=options.cpus_per_worker,
                              retries=1 if kind == "ray" else 0)
    device = resolve_device(placement.device)
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
    # the in-process worker's solver compiles while the shards are checked
    warming = (warm_up_beside(provs[stale[0]]["x"], device, options.fit_dtype, solver_options)
               if stale and not placement.distributed and _compiles(manifest.out) else None)
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
                           {n: provs[n]["x"] for n in todo}, placement.device, options.fit_dtype,
                           solver_options, thresholds, placement.threads)
    make_worker = partial(FitWorker, settings, warming)
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

    unit_failures, failed = (run_units(units, placement.executor, make_worker, settings.out, write)
                             if units else ([], set()))
    failures += unit_failures
    done = len(todo) - len(failed)
    summary = (f"fit: {done} run(s) fitted, {skipped} current run(s) skipped"
               + (f", {bad_runs + len(failed)} run(s) failed" if failures else "")
               + f" (kinds: {thresholds.describe()})")
    if failures:
        raise StageFailed(*failures, summary, shown=tuple(unit_failures))
    log.info(summary)
