"""Where a run's checkpoints are: folders on disk or revisions in the local Hugging Face cache.

Sources a run's ``checkpoints:`` entry may name:

- a folder of HF-Trainer checkpoints ``checkpoint-<step>/`` (the layout ``spectrum suite`` writes);
- a folder of ``step<step>/`` folders (Pythia style) or ``step<step>-tokens<N>B/`` (OLMo style;
  ``N`` billions of tokens); steps may be irregular and are always parsed from the name;
- hub revisions (``{hub: EleutherAI/pythia-70m, revisions: [step1000, ...]}``) resolved offline
  from the local Hugging Face cache (``models--org--name/refs/<revision>`` ->
  ``snapshots/<commit>/``); the step is parsed from the revision name. Where the run names
  ``steps``, only the revisions of those steps need to be in the cache.

A checkpoint folder counts only when it is complete: it holds ``config.json`` and weights
(``model.safetensors``, ``pytorch_model.bin`` or their sharded ``*.index.json``). Folders whose
names do not match a layout (``tmp-checkpoint-10``, ``.checkpoint-10.tmp``, ``runs``, ...) are
ignored; folders that match but are incomplete are left out by :func:`resolve_checkpoints` and
listed by :func:`incomplete_checkpoints`, so that a stage can report them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrum.data.checkpoint_names import (REVISION, checkpoint_folders, named_folders,
                                            revision_step)
from spectrum.errors import ManifestError, SpectrumError
from spectrum.manifest import HubSource, Manifest, RunSpec
from spectrum.store import hash_files

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
LAYOUTS = "checkpoint-<step>/, step<step>/ or step<step>-tokens<N>B/ with config.json and weights"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of one run. ``tokens``: training tokens seen, when the checkpoint says so
    (an OLMo-style name, or ``num_input_tokens_seen`` in trainer_state.json); else None."""

    run: str
    step: int
    path: Path
    tokens: int | None = None


def weight_files(folder: Path) -> list[Path]:
    """The files holding a checkpoint's weights (shards included), or [] if there are none."""
    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            if name.endswith(".index.json"):
                try:
                    shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, TypeError):
                    return [f]
                return [f] + [folder / s for s in shards]
            return [f]
    return []


def is_complete(folder: Path) -> bool:
    """A checkpoint folder is complete when it has config.json and a weights file."""
    return (folder / "config.json").is_file() and bool(weight_files(folder))


def _tokens_seen(folder: Path, billions: str | None) -> int | None:
    if billions is not None:
        return int(billions) * 10**9
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            seen = json.loads(state.read_text()).get("num_input_tokens_seen")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(seen, (int, float)) and seen > 0:
            return int(seen)
    return None


def _hub_checkpoints(run: RunSpec, src: HubSource) -> list[Checkpoint]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    out = []
    wanted = set(run.steps) if run.steps is not None else None
    for rev in src.revisions:
        m = REVISION.fullmatch(rev)
        if not m:
            raise SpectrumError(
                f"run {run.name}: hub revision {rev!r} of {src.repo} does not name a step "
                "(expected step<step> or step<step>-tokens<N>B)")
        if wanted is not None and int(m.group("step")) not in wanted:
            continue  # listed but not chosen: need not be downloaded
        try:
            path = snapshot_download(src.repo, revision=rev, local_files_only=True,
                                     cache_dir=str(src.cache_dir) if src.cache_dir else None)
        except (LocalEntryNotFoundError, OSError, ValueError) as e:
            raise SpectrumError(
                f"run {run.name}: revision {rev} of {src.repo} is not in the local Hugging Face "
                f"cache ({src.cache_dir or 'default cache'}): {type(e).__name__}") from None
        path = Path(path)
        if not is_complete(path):
            continue
        out.append(Checkpoint(run.name, int(m.group("step")), path,
                              _tokens_seen(path, m.group("btok"))))
    return out


def resolve_checkpoints(run: RunSpec) -> list[Checkpoint]:
    """The complete checkpoints of ``run``, sorted by step, restricted to ``run.steps`` if set.

    Raises :class:`SpectrumError` when two folders claim the same step, or a hub revision is
    not in the local cache.
    """
    if isinstance(run.checkpoints, HubSource):
        found = _hub_checkpoints(run, run.checkpoints)
    else:
        found = [Checkpoint(run.name, step, path, _tokens_seen(path, btok))
                 for step, path, btok in named_folders(Path(run.checkpoints))
                 if is_complete(path)]
    by_step: dict[int, Checkpoint] = {}
    for c in found:
        if c.step in by_step:
            raise SpectrumError(f"run {run.name}: step {c.step} appears twice: "
                                f"{by_step[c.step].path} and {c.path}")
        by_step[c.step] = c
    if run.steps is not None:
        wanted = set(run.steps)
        by_step = {s: c for s, c in by_step.items() if s in wanted}
    return [by_step[s] for s in sorted(by_step)]


def incomplete_checkpoints(run: RunSpec) -> list[Path]:
    """Folders of ``run`` named like checkpoints that lack config.json or weights."""
    if isinstance(run.checkpoints, HubSource):
        return []
    wanted = set(run.steps) if run.steps is not None else None
    return [path for step, path, _ in named_folders(Path(run.checkpoints))
            if not is_complete(path) and (wanted is None or step in wanted)]


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def validate_checkpoint_sources(manifest: Manifest) -> None:
    """Check that every run's checkpoints exist; raise :class:`ManifestError` listing every run
    whose folder is missing or empty, whose hub revisions are not cached, or whose ``steps``
    name checkpoints that do not exist."""
    base = Path(manifest.path).resolve().parent
    problems = []
    for i, run in enumerate(manifest.runs):
        where = f"{manifest.path}: runs[{i}] ({run.name}).checkpoints"
        src = run.checkpoints
        if isinstance(src, Path):
            if not src.is_dir():
                what = "is a file, not a folder" if src.exists() else "does not exist"
                problems.append(f"{where}: folder {_shown(src, base)} {what}")
                continue
        try:
            # hub revisions outside `steps` need not be cached; folders are listed whole
            found = resolve_checkpoints(run if isinstance(src, HubSource)
                                        else RunSpec(**{**run.__dict__, "steps": None}))
        except SpectrumError as e:
            problems.extend(f"{where}: {p}" for p in e.problems)
            continue
        if not found:
            what = (f"hub repository {src.repo}: no cached revision holds config.json and weights"
                    if isinstance(src, HubSource) else
                    f"folder {_shown(src, base)} holds no checkpoints ({LAYOUTS})")
            problems.append(f"{where}: {what}")
            continue
        if run.steps is not None:
            missing = sorted(set(run.steps) - {c.step for c in found})
            if missing:
                problems.append(f"{manifest.path}: runs[{i}] ({run.name}).steps: no checkpoint "
                                f"for steps {', '.join(map(str, missing))}")
    if problems:
        raise ManifestError(*problems)


def checkpoint_hash(folder: str | Path, memo: dict[str, Any] | None = None) -> str:
    """SHA-256 identifying a checkpoint's config.json and weights.

    Files that are symlinks into a Hugging Face cache's ``blobs/`` are identified by their blob
    name (the hub's content hash) without reading them. ``memo`` (path -> {"stamp", "hash"}),
    when given, is used and updated, keyed on each file's size and modification time, so that a
    large checkpoint is read once and not on every run of a stage.
    """
    folder = Path(folder)
    files = [folder / "config.json", *weight_files(folder)]
    h = hashlib.sha256()
    for f in files:
        target = Path(os.path.realpath(f))
        if f.is_symlink() and target.parent.name == "blobs":
            h.update(f"{f.name}:blob:{target.name}\n".encode())
            continue
        st = target.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        key = str(target)
        if memo is not None and memo.get(key, {}).get("stamp") == stamp:
            digest = memo[key]["hash"]
        else:
            digest = hash_files([target])
            if memo is not None:
                memo[key] = {"stamp": stamp, "hash": digest}
        h.update(f"{f.name}:{digest}\n".encode())
    return h.hexdigest()
