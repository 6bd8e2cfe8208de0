"""Fitting a run: which of its checkpoints are fitted, and the provenance its fits file records.

The fits' provenance records the steps, the x grid, a digest of the loss shards' own provenance,
the dtype, the solver options and the kind thresholds; fits that record the same are current.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from spectrum.errors import SpectrumError
from spectrum.fit import smooth
from spectrum.fit.kinds import KindThresholds
from spectrum.fit.solver import FitOptions
from spectrum.layout import loss_run_dir, loss_shard, shard_steps
from spectrum.losses.trajectories import log_tokens
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import hash_files, read_provenance

MIN_CHECKPOINTS = 5
# shard provenance that identifies the data (where the checkpoint lay, or which code version
# wrote the shard, does not change the losses)
_VOLATILE = ("checkpoint", "code_version", "path")


def fit_steps(out: Path, run: RunSpec) -> list[int]:
    """The steps to fit: those after the run's warmup (and after step 0) with a shard, and listed
    in the manifest if it lists steps. Checkpoints within the warmup are evaluated and shown, but
    a trajectory there follows the warmup's learning rate, not the time axis the sigmoid is fitted
    on, so they are left out of the fit as they are left out of the scores."""
    first = max(0, run.warmup_steps)
    steps = [s for s in shard_steps(out, run.name) if s > first]
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
            after = f"the warmup (step {run.warmup_steps})" if run.warmup_steps else "step 0"
            problems.append(f"run {run.name}: {len(steps)} checkpoint(s) after {after} have loss "
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
