"""`spectrum fit`: a sigmoid for every token's loss trajectory of every run.

For each run of the manifest, the loss shards (``losses/run=<run>/step=<step>/part-0.parquet``)
are read as a (tokens x checkpoints) matrix in chunks of ``--chunk-size`` tokens, on the time
axis ``x = ln(step * tokens_per_step)`` (step 0 has no place on it and is left out), and fitted
by :func:`spectrum.fit.fit_sigmoids` on ``--device``. The fits go to
``fits/run=<run>/part-0.parquet`` (one row per token: token_idx, lo, hi, tau, k, their standard
errors, rss, r2, n_iter, status, kind), written atomically. Its provenance records the steps, the
x grid, a digest of the loss shards' own provenance, the dtype, the solver options and the kind
thresholds; a run whose fits record the same is skipped (``--force`` refits it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectrum.errors import SpectrumError
from spectrum.fit.solver import FitOptions, SigmoidFit, fit_sigmoids, solver_name
from spectrum.fit.kinds import KindThresholds
from spectrum.fit import smooth
from spectrum.devices import resolve_device
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import hash_files, is_current, read_provenance, write_parquet
from spectrum.layout import fits_file, loss_run_dir, loss_shard, shard_steps
from spectrum.losses.trajectories import iter_trajectories, log_tokens, token_count

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
            "min_checkpoints": MIN_CHECKPOINTS, "smooth": smooth.settings()}


def fit_run(out: Path, run: RunSpec, steps: list[int], *, device: torch.device,
            dtype: torch.dtype, chunk_size: int, options: FitOptions,
            thresholds: KindThresholds) -> tuple[np.ndarray, SigmoidFit, dict[str, np.ndarray]]:
    """Fit every token of ``run`` in chunks; returns (token_idx, fits, smooth alternatives)."""
    from tqdm.auto import tqdm

    x = log_tokens(steps, run.tokens_per_step)
    total = token_count(out, run.name, steps)
    tokens, parts, smooth_parts = [], [], []
    with tqdm(total=total, unit="tok", desc=f"fit {run.name}", smoothing=0.1) as bar:
        for chunk in iter_trajectories(out, run.name, chunk_size=chunk_size, steps=steps):
            parts.append(fit_sigmoids(chunk.losses, x, device=device, dtype=dtype,
                                      options=options, thresholds=thresholds))
            # is it a step at all: smooth alternatives and BICs on the same rows
            smooth_parts.append(smooth.smooth_fits(chunk.losses, x, parts[-1].rss, device=device))
            tokens.append(chunk.token_idx)
            bar.update(int(chunk.token_idx[-1]) + 1 - bar.n)
    if not parts:
        raise SpectrumError(f"run {run.name}: the loss shards under "
                            f"{loss_run_dir(out, run.name)} hold no tokens")
    return np.concatenate(tokens), SigmoidFit.concat(parts), smooth.concat_columns(smooth_parts)


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    device = resolve_device(getattr(args, "device", "auto"))
    dtype_name = getattr(args, "fit_dtype", "float32")
    chunk_size = getattr(args, "chunk_size", 1 << 20)
    force = getattr(args, "force", False)
    if chunk_size < 1:
        raise SpectrumError(f"--chunk-size must be positive, got {chunk_size}")
    options = FitOptions(kernel=getattr(args, "fit_kernel", "auto"))
    thresholds = KindThresholds()
    try:
        solver = solver_name(options, device)
    except ValueError as e:
        raise SpectrumError(f"--fit-kernel {options.kernel}: {e}") from None
    plan = check_runs(manifest)
    done = skipped = 0
    for run in manifest.runs:
        steps = plan[run.name]
        path = fits_file(manifest.out, run.name)
        prov = provenance(manifest.out, run, steps, dtype_name, options, thresholds)
        if not force and is_current(path, prov):
            skipped += 1
            continue
        if path.exists() and not force:
            print(f"fit: {path} is stale: refitting", flush=True)
        t0 = time.perf_counter()
        token_idx, fits, smooth_columns = fit_run(manifest.out, run, steps, device=device,
                                  dtype=DTYPES[dtype_name], chunk_size=chunk_size,
                                  options=options, thresholds=thresholds)
        write_parquet(smooth.with_columns(fits.to_arrow(token_idx), smooth_columns), path, prov)
        done += 1
        kinds, counts = np.unique(fits.kind, return_counts=True)
        summary = ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))
        print(f"fit: run {run.name}: {len(fits)} tokens in {time.perf_counter() - t0:.1f} s "
              f"on {device}, {solver} ({summary}) -> {path}", flush=True)
    print(f"fit: {done} run(s) fitted, {skipped} current run(s) skipped "
          f"(kinds: {thresholds.describe()})", flush=True)
