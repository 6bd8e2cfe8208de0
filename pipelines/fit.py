"""`spectrum fit`: a sigmoid for every token's loss trajectory of every run.

For each run of the manifest, the loss shards (``losses/run=<run>/step=<step>/part-0.parquet``)
are read as a (tokens x checkpoints) matrix in chunks of ``--chunk-size`` tokens, on the time
axis ``x = ln(step * tokens_per_step)`` (step 0 has no place on it and is left out), and fitted
by :func:`spectrum.fit.fit_sigmoids` on ``--device``. The fits go to
``fits/run=<run>/part-0.parquet`` (one row per token: token_idx, lo, hi, tau, k, their standard
errors, rss, r2, n_iter, status, kind), written atomically. Its provenance records the steps, the
x grid, a digest of the loss shards' own provenance, the dtype, the solver options and the kind
thresholds (:mod:`spectrum.fit.runs`); a run whose fits record the same is skipped (``--force``
refits it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.options import device_option, force_option, option
from spectrum.devices import resolve_device
from spectrum.errors import SpectrumError, StageFailed
from spectrum.fit import smooth
from spectrum.fit.kinds import KindThresholds
from spectrum.fit.runs import check_runs, fit_run, provenance
from spectrum.fit.solver import FitOptions, solver_name
from spectrum.layout import fits_file
from spectrum.manifest import Manifest
from spectrum.store import is_current, write_parquet

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

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise SpectrumError(f"--chunk-size must be positive, got {self.chunk_size}")


OPTIONS = FitStageOptions


def main(manifest: Manifest, options: FitStageOptions) -> None:
    device = resolve_device(options.device)
    solver_options = FitOptions(kernel=options.fit_kernel)
    thresholds = KindThresholds()
    try:
        solver = solver_name(solver_options, device)
    except ValueError as e:
        raise SpectrumError(f"--fit-kernel {options.fit_kernel}: {e}") from None
    plan = check_runs(manifest)
    done = skipped = 0
    failed: list[str] = []
    failed_runs = 0
    for run in manifest.runs:
        steps = plan[run.name]
        path = fits_file(manifest.out, run.name)
        prov = provenance(manifest.out, run, steps, options.fit_dtype, solver_options, thresholds)
        if not options.force and is_current(path, prov):
            log.debug(f"fit: run {run.name}: {path} is current")
            skipped += 1
            continue
        if path.exists() and not options.force:
            log.info(f"fit: {path} is stale: refitting")
        t0 = time.perf_counter()
        try:  # a run with a bad loss shard fails alone; the others are fitted
            token_idx, fits, smooth_columns = fit_run(manifest.out, run, steps, device=device,
                                      dtype=DTYPES[options.fit_dtype],
                                      chunk_size=options.chunk_size, options=solver_options,
                                      thresholds=thresholds)
        except SpectrumError as e:
            failed += e.problems
            failed_runs += 1
            continue
        write_parquet(smooth.with_columns(fits.to_arrow(token_idx), smooth_columns), path, prov)
        done += 1
        kinds, counts = np.unique(fits.kind, return_counts=True)
        summary = ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))
        log.info(f"fit: run {run.name}: {len(fits)} tokens in {time.perf_counter() - t0:.1f} s "
                 f"on {device}, {solver} ({summary}) -> {path}")
    summary = (f"fit: {done} run(s) fitted, {skipped} current run(s) skipped"
               + (f", {failed_runs} run(s) failed" if failed else "")
               + f" (kinds: {thresholds.describe()})")
    if failed:
        raise StageFailed(*failed, summary)
    log.info(summary)
