"""Checkpoint resolution: every folder layout, the offline hub cache, incomplete folders, and the
manifest-level validation that names every broken run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectrum.data.checkpoints import (Checkpoint, incomplete_checkpoints, resolve_checkpoints,
                                  validate_checkpoint_sources)
from spectrum.errors import ManifestError, SpectrumError
from spectrum.manifest import HubSource, RunSpec, parse_manifest


def _ckpt(folder: Path, *, config: bool = True, weights: str | None = "model.safetensors",
          state: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text("{}")
    if weights:
        (folder / weights).write_bytes(b"weights")
    if state is not None:
        (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def _run(checkpoints, steps=None) -> RunSpec:
    return RunSpec(name="r", params=1e6, tokens=1e7, tokens_per_step=100, role="fit",
                   checkpoints=checkpoints, steps=steps)


def test_hf_trainer_layout_sorted_by_step_and_ignores_temporary_folders(tmp_path):
    for step in (100, 0, 20, 3):
        _ckpt(tmp_path / f"checkpoint-{step}", state={"global_step": step,
                                                     "num_input_tokens_seen": step * 64})
    _ckpt(tmp_path / "tmp-checkpoint-200")
    _ckpt(tmp_path / ".checkpoint-300.tmp")
    _ckpt(tmp_path / "checkpoint-400", weights=None)            # being written
    _ckpt(tmp_path / "checkpoint-500", config=False)            # being written
    (tmp_path / "checkpoint-600").write_text("a file, not a folder")
    (tmp_path / "runs").mkdir()
    got = resolve_checkpoints(_run(tmp_path))
    assert [c.step for c in got] == [0, 3, 20, 100]
    assert got[1] == Checkpoint("r", 3, tmp_path / "checkpoint-3", None if 3 * 64 == 0 else 192)
    assert got[0].tokens is None  # zero tokens seen is "unknown", not 0 on a log axis
    assert sorted(p.name for p in incomplete_checkpoints(_run(tmp_path))) == \
        ["checkpoint-400", "checkpoint-500"]


def test_pythia_and_olmo_layouts_with_irregular_steps(tmp_path):
    _ckpt(tmp_path / "pythia" / "step0", weights="pytorch_model.bin")
    _ckpt(tmp_path / "pythia" / "step512")
    _ckpt(tmp_path / "pythia" / "step143000")
    _ckpt(tmp_path / "pythia" / "step7")
    got = resolve_checkpoints(_run(tmp_path / "pythia"))
    assert [c.step for c in got] == [0, 7, 512, 143000]
    assert all(c.tokens is None for c in got)

    _ckpt(tmp_path / "olmo" / "step1000-tokens4B")
    _ckpt(tmp_path / "olmo" / "step30-tokens0B")
    _ckpt(tmp_path / "olmo" / "step477000-tokens2000B")
    got = resolve_checkpoints(_run(tmp_path / "olmo"))
    assert [(c.step, c.tokens) for c in got] == [(30, 0), (1000, 4 * 10**9),
                                                 (477000, 2000 * 10**9)]


def test_sharded_weights_count_as_weights_and_steps_subset(tmp_path):
    folder = _ckpt(tmp_path / "checkpoint-10", weights="model.safetensors.index.json")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    _ckpt(tmp_path / "checkpoint-20")
    _ckpt(tmp_path / "checkpoint-30")
    assert [c.step for c in resolve_checkpoints(_run(tmp_path))] == [10, 20, 30]
    assert [c.step for c in resolve_checkpoints(_run(tmp_path, steps=(10, 30)))] == [10, 30]


def test_same_step_twice_is_an_error(tmp_path):
    _ckpt(tmp_path / "checkpoint-10")
    _ckpt(tmp_path / "step10")
    with pytest.raises(SpectrumError, match="step 10 appears twice"):
        resolve_checkpoints(_run(tmp_path))


def _hub_cache(cache: Path, repo: str, revisions: dict[str, str]) -> None:
    """A cache folder laid out as huggingface_hub lays it out: blobs named by content hash,
    snapshots/<commit>/ of symlinks into blobs, refs/<revision> holding the commit."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    for rev, commit in revisions.items():
        (root / "refs" / rev).write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        for name, content in (("config.json", b'{"model_type": "gpt_neox"}'),
                              ("model.safetensors", f"weights of {rev}".encode())):
            blob = root / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
            (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)


def test_hub_revisions_resolve_offline_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commits = {"step1000": "a" * 40, "step143000": "b" * 40, "step3000-tokens6B": "c" * 40}
    _hub_cache(tmp_path, "EleutherAI/pythia-70m", commits)
    src = HubSource("EleutherAI/pythia-70m", ("step143000", "step1000", "step3000-tokens6B"),
                    cache_dir=tmp_path)
    got = resolve_checkpoints(_run(src))
    snaps = tmp_path / "models--EleutherAI--pythia-70m" / "snapshots"
    assert [(c.step, c.path, c.tokens) for c in got] == [
        (1000, snaps / commits["step1000"], None),
        (3000, snaps / commits["step3000-tokens6B"], 6 * 10**9),
        (143000, snaps / commits["step143000"], None)]
    assert (got[0].path / "model.safetensors").read_bytes() == b"weights of step1000"

    missing = HubSource("EleutherAI/pythia-70m", ("step2000",), cache_dir=tmp_path)
    with pytest.raises(SpectrumError, match="step2000 of EleutherAI/pythia-70m is not in the local"):
        resolve_checkpoints(_run(missing))
    unnamed = HubSource("EleutherAI/pythia-70m", ("main",), cache_dir=tmp_path)
    with pytest.raises(SpectrumError, match="does not name a step"):
        resolve_checkpoints(_run(unnamed))


def test_validate_lists_every_broken_run_with_its_location(tmp_path):
    _ckpt(tmp_path / "runs" / "good" / "checkpoint-1")
    (tmp_path / "runs" / "empty" / "tmp-checkpoint-1").mkdir(parents=True)
    _ckpt(tmp_path / "runs" / "partial" / "checkpoint-5")
    run = {"params": 1e6, "tokens": 1e7, "tokens_per_step": 10, "role": "fit"}
    manifest = parse_manifest({"runs": [
        {"name": "good", "checkpoints": "runs/good", **run},
        {"name": "gone", "checkpoints": "runs/gone", **run},
        {"name": "empty", "checkpoints": "runs/empty", **run},
        {"name": "partial", "checkpoints": "runs/partial", "steps": [5, 6, 7], **run},
        {"name": "hub", "checkpoints": {"hub": "org/x", "revisions": ["step1"],
                                        "cache_dir": "cache"}, **run},
    ]}, tmp_path / "checkpoints.yaml")
    with pytest.raises(ManifestError) as e:
        validate_checkpoint_sources(manifest)
    m = str(tmp_path / "checkpoints.yaml")
    assert e.value.problems[0] == \
        f"{m}: runs[1] (gone).checkpoints: folder runs/gone does not exist"
    assert e.value.problems[1].startswith(
        f"{m}: runs[2] (empty).checkpoints: folder runs/empty holds no checkpoints")
    assert e.value.problems[2] == f"{m}: runs[3] (partial).steps: no checkpoint for steps 6, 7"
    assert e.value.problems[3].startswith(f"{m}: runs[4] (hub).checkpoints: run hub: revision "
                                          "step1 of org/x is not in the local Hugging Face cache")
    assert len(e.value.problems) == 4

    ok = parse_manifest({"runs": [{"name": "good", "checkpoints": "runs/good", **run}]},
                        tmp_path / "checkpoints.yaml")
    validate_checkpoint_sources(ok)


def test_content_hash_follows_the_weights_and_reads_hub_blobs_by_name(tmp_path):
    import hashlib
    import os

    from spectrum.data.checkpoints import checkpoint_hash

    a = _ckpt(tmp_path / "a" / "checkpoint-1")
    b = _ckpt(tmp_path / "b" / "checkpoint-1")
    memo: dict = {}
    assert checkpoint_hash(a, memo) == checkpoint_hash(b) == checkpoint_hash(a, memo)
    assert len(memo) == 2  # config.json and model.safetensors of a
    (b / "model.safetensors").write_bytes(b"other weights")
    assert checkpoint_hash(b, memo) != checkpoint_hash(a, memo)
    # a changed file with a new size or time is hashed again, not taken from the memo
    (a / "model.safetensors").write_bytes(b"other weights")
    os.utime(a / "model.safetensors", ns=(1, 1))
    assert checkpoint_hash(a, memo) == checkpoint_hash(b)

    _hub_cache(tmp_path / "hub", "org/m", {"step1": "1" * 40, "step2": "2" * 40})
    snaps = tmp_path / "hub" / "models--org--m" / "snapshots"
    blob = Path(os.path.realpath(snaps / ("1" * 40) / "model.safetensors"))
    assert blob.name == hashlib.sha256(b"weights of step1").hexdigest()
    h1, h2 = checkpoint_hash(snaps / ("1" * 40)), checkpoint_hash(snaps / ("2" * 40))
    assert h1 != h2
    blob.write_bytes(b"not read: the blob's name is its content hash")
    assert checkpoint_hash(snaps / ("1" * 40)) == h1
