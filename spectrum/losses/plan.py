"""The loss shards to compute: one unit per checkpoint, with the provenance its shard records.

A shard (:func:`spectrum.layout.loss_shard`: ``token_idx`` int64, ``loss`` float32
nats, sorted by ``token_idx``) records the run, the step, the tokens seen (step *
tokens_per_step), the checkpoint's path and content hash, the evalset's hash, the dtype and the
code version and its content checksum. One whose checkpoint hash, evalset hash, dtype, run, step
and tokens match, and whose content keeps the shard contract and matches its checksum
(:mod:`spectrum.losses.shards`), is current and skipped; any other is stale: it is recomputed,
with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectrum import __version__
from spectrum.data.checkpoints import (checkpoint_hash, incomplete_checkpoints,
                                       resolve_checkpoints, weight_files)
from spectrum.layout import checkpoint_hash_memo, loss_shard
from spectrum.losses.shards import CHECKSUM, shard_problem, write_loss_shard
from spectrum.manifest import Manifest
from spectrum.store import read_provenance, write_json

# provenance keys that decide whether a shard is current (path and code version are recorded only)
CURRENT_KEYS = ("run", "step", "tokens", "checkpoint_hash", "evalset_hash", "dtype")
MAX_STALE_LINES = 10  # stale shards named one by one; the rest are counted
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One checkpoint to evaluate, and where its shard goes."""

    run: str
    step: int
    path: str
    shard: str
    provenance: dict[str, Any]
    size: int = 0  # bytes of weights: the largest checkpoints are scheduled first


def _stale_reason(found: dict[str, Any], expected: dict[str, Any]) -> str:
    return ", ".join(f"{k} changed" for k in CURRENT_KEYS if found.get(k) != expected.get(k))


def shard_state(shard: Path, expected: dict[str, Any], n_tokens: int | None) -> str | None:
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


def plan_units(manifest: Manifest, evalset_hash: str, dtype: str, n_tokens: int | None, *,
               force: bool = False) -> tuple[list[Unit], int, list[str]]:
    """(units to compute, number of current shards skipped, problems with checkpoint folders)."""
    out = Path(manifest.out)
    memo_path = checkpoint_hash_memo(out)
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
            reason = shard_state(shard, prov, n_tokens) if shard.exists() else "missing"
            if reason is None and not force:
                log.debug(f"losses: {shard} is current")
                skipped += 1
                continue
            if reason not in (None, "missing"):
                stale += 1
                if stale <= MAX_STALE_LINES:
                    log.warning(f"{shard} is stale ({reason}): recomputing")
            size = sum(f.stat().st_size for f in weight_files(ck.path))
            units.append(Unit(run.name, ck.step, str(ck.path), str(shard), prov, size))
    if stale > MAX_STALE_LINES:
        log.warning(f"{stale - MAX_STALE_LINES} more stale shards: recomputing")
    write_json(memo, memo_path)
    # largest first, so that the last units to finish are short ones (less idle time at the end)
    units.sort(key=lambda u: -u.size)
    return units, skipped, problems


def write_shard(unit: Unit, losses: np.ndarray) -> None:
    """The unit's shard, with its content checksum."""
    write_loss_shard(unit.shard, losses, unit.provenance)
