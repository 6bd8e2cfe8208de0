"""The evalset and losses stages end to end on the trained micro suite: shards against
transformers, resume, stale shards, broken checkpoints, the executors, Ray against local."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.cli import main as cli
from pipelines.executor import LocalExecutor, RayExecutor
from spectrum.data.checkpoints import resolve_checkpoints
from spectrum.errors import SpectrumError
from spectrum.data.evalset import load_evalset
from spectrum.manifest import load_manifest
from spectrum.store import read_provenance


def _copy(src: Path, dst: Path, *, losses: bool = True) -> Path:
    shutil.copytree(src.parent, dst, symlinks=True,
                    ignore=None if losses else shutil.ignore_patterns("losses"))
    return dst / src.name


def _shards(manifest_path: Path) -> dict[tuple[str, int], Path]:
    root = manifest_path.parent / "artifacts" / "losses"
    return {(p.parent.parent.name.removeprefix("run="), int(p.parent.name.removeprefix("step="))): p
            for p in root.glob("run=*/step=*/part-0.parquet")}


def _table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    return {c: t.column(c).to_numpy() for c in t.column_names}


@pytest.fixture(scope="module")
def reference(micro_suite, tmp_path_factory) -> Path:
    """A copy of the micro suite with its evalset and the local executor's loss shards."""
    path = _copy(micro_suite, tmp_path_factory.mktemp("reference") / "suite")
    assert cli(["evalset", "--config", str(path)]) == 0
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    return path


def test_local_stage_writes_a_shard_per_checkpoint_that_matches_transformers(reference):
    from transformers import AutoModelForCausalLM

    manifest = load_manifest(reference)
    shards = _shards(reference)
    expected = {(r.name, c.step): (r, c) for r in manifest.runs for c in resolve_checkpoints(r)}
    assert set(shards) == set(expected) and len(shards) >= 20
    evalset = load_evalset(manifest.out / "evalset")
    n = evalset.num_tokens
    ids = torch.as_tensor(evalset.input_ids, dtype=torch.long)
    for key in [min(shards), max(shards)]:
        run, ck = expected[key]
        table = _table(shards[key])
        assert table["token_idx"].dtype == np.int64 and table["loss"].dtype == np.float32
        np.testing.assert_array_equal(table["token_idx"], np.arange(n))
        prov = read_provenance(shards[key])
        assert prov["run"] == run.name and prov["step"] == ck.step
        assert prov["tokens"] == ck.step * run.tokens_per_step
        assert prov["evalset_hash"] == evalset.hash and prov["dtype"] == "float32"
        assert prov["checkpoint"] == str(ck.path) and len(prov["checkpoint_hash"]) == 64
        model = AutoModelForCausalLM.from_pretrained(ck.path, dtype=torch.float32).eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.double(), -1)
        ref = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].reshape(-1).numpy()
        assert np.abs(table["loss"] - ref).max() < 1e-4
    # trained checkpoints lose less than the initial one on the same tokens
    first, last = _table(shards[("m2-d2", 0)])["loss"], _table(shards[("m2-d2", 48)])["loss"]
    assert last.mean() < first.mean() - 1


def test_resume_after_partial_shards_and_stale_shards_are_recomputed(reference, tmp_path, capfd):
    path = _copy(reference, tmp_path / "suite")
    shards = _shards(path)
    before = {k: _table(p) for k, p in shards.items()}
    stamps = {k: p.stat().st_mtime_ns for k, p in shards.items()}
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    assert "0 shards written" in capfd.readouterr().err
    assert {k: p.stat().st_mtime_ns for k, p in shards.items()} == stamps

    removed = sorted(shards)[3:5]
    for k in removed:
        shards[k].unlink()
    (shards[sorted(shards)[6]].parent / ".part-0.parquet.x1.tmp").write_bytes(b"half a file")
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    assert "2 shards written" in capfd.readouterr().err
    for k in removed:
        for col in ("token_idx", "loss"):
            np.testing.assert_array_equal(_table(shards[k])[col], before[k][col])

    # a checkpoint that changed after its shard was written: the shard is stale
    from transformers import AutoModelForCausalLM

    ckpt = path.parent / "runs" / "m1-d1" / "checkpoint-24"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(2)
    model.save_pretrained(ckpt)
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    err = capfd.readouterr().err
    assert "run=m1-d1/step=24/part-0.parquet is stale (checkpoint_hash changed)" in err
    assert "1 shards written" in err
    assert not np.array_equal(_table(shards[("m1-d1", 24)])["loss"], before[("m1-d1", 24)]["loss"])


def _break(path: Path) -> dict[str, Path]:
    """Break three checkpoints of a suite copy in three ways; return them by kind."""
    runs = path.parent / "runs"
    truncated = runs / "m1-d1" / "checkpoint-4"
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    noconfig = runs / "m2-d1" / "checkpoint-2"
    (noconfig / "config.json").unlink()
    diverged = runs / "m2-d2" / "checkpoint-1"
    from safetensors.torch import load_file, save_file

    weights = load_file(diverged / "model.safetensors")
    weights = {k: v.fill_(float("nan")) if "embed_out" in k else v for k, v in weights.items()}
    save_file(weights, diverged / "model.safetensors", metadata={"format": "pt"})
    return {"truncated": truncated, "noconfig": noconfig, "diverged": diverged}


def test_broken_checkpoints_are_reported_by_path_and_the_rest_finish(reference, tmp_path, capfd):
    path = _copy(reference, tmp_path / "suite", losses=False)
    broken = _break(path)
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 1
    err = capfd.readouterr().err
    assert f"error: checkpoint {broken['truncated']}: cannot be read" in err
    assert f"error: checkpoint {broken['noconfig']}: cannot be read: incomplete" in err
    n_tokens = load_evalset(path.parent / "artifacts" / "evalset").num_tokens
    assert (f"2 checkpoints failed; {n_tokens} non-finite losses in 1 shards (m2-d2 step 1)"
            in err)
    shards = _shards(path)
    assert len(shards) == len(_shards(reference)) - 2
    assert np.isnan(_table(shards[("m2-d2", 1)])["loss"]).all()
    for k, p in shards.items():
        if k != ("m2-d2", 1):
            np.testing.assert_array_equal(_table(p)["loss"], _table(_shards(reference)[k])["loss"])


class _Flaky:
    """A worker that fails its first attempt at every unit (an unexpected error)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def process(self, unit: int) -> int:
        if unit == 3:
            raise SpectrumError(f"unit {unit} is bad input")
        if unit not in self.seen:
            self.seen.add(unit)
            raise RuntimeError("flaky")
        return unit * 10


def test_local_executor_retries_unexpected_errors_but_not_bad_input():
    out = {o.unit: o for o in LocalExecutor(retries=1).map(_Flaky, range(5))}
    assert [out[u].result for u in (0, 1, 2, 4)] == [0, 10, 20, 40]
    assert all(out[u].attempts == 2 for u in (0, 1, 2, 4))
    assert out[3].error == "unit 3 is bad input" and out[3].attempts == 1
    out = list(LocalExecutor(retries=0).map(_Flaky, [7]))
    assert out[0].error == "RuntimeError: flaky"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    # Ray's workers cannot import this test module: ship its test workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


class _DiesOnce:
    """A worker whose process dies the first time it meets unit 2."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def process(self, unit: int) -> tuple[int, int]:
        if unit == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return unit, os.getpid()


def test_ray_executor_replaces_a_dead_worker_and_retries_its_unit(local_ray, tmp_path):
    from functools import partial

    ex = RayExecutor(retries=1)
    out = {o.unit: o for o in ex.map(partial(_DiesOnce, str(tmp_path / "died")), list(range(6)))}
    assert sorted(out) == list(range(6)) and all(o.ok for o in out.values())
    assert out[2].attempts == 2 and out[2].result[0] == 2
    assert os.path.exists(tmp_path / "died")  # a worker process really died


def test_ray_executor_refuses_gpus_the_cluster_does_not_have(local_ray):
    with pytest.raises(SpectrumError, match="--num-gpus 1 per worker, but the Ray cluster has 0"):
        list(RayExecutor(gpus_per_worker=1).map(_Flaky, [1]))


def _cannot_start() -> None:
    raise ValueError("no such device: 'tpu:7'")


def test_ray_worker_that_cannot_start_stops_the_map_with_one_line(local_ray):
    with pytest.raises(SpectrumError) as e:
        list(RayExecutor(retries=2).map(_cannot_start, list(range(4))))
    assert e.value.problems == ["a Ray worker could not start: ValueError: no such device: 'tpu:7'"]


def test_ray_stage_on_a_local_cluster_equals_the_local_executor(local_ray, reference, tmp_path,
                                                                 capfd):
    path = _copy(reference, tmp_path / "suite", losses=False)
    broken = _break(path)
    assert cli(["losses", "--config", str(path), "--executor", "ray", "--num-gpus", "0"]) == 1
    err = capfd.readouterr().err
    assert f"checkpoint {broken['truncated']}: cannot be read" in err
    shards, ref = _shards(path), _shards(reference)
    assert set(shards) == set(ref) - {("m1-d1", 4), ("m2-d1", 2)}
    for k, p in shards.items():
        if k != ("m2-d2", 1):
            assert _table(p)["loss"].tobytes() == _table(ref[k])["loss"].tobytes(), k


@pytest.mark.slow
def test_two_node_cluster_equals_the_local_executor(reference, tmp_path):
    from ray.cluster_utils import Cluster

    import ray

    path = _copy(reference, tmp_path / "suite", losses=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=1, num_gpus=0)
    try:
        assert cli(["losses", "--config", str(path), "--ray-address", cluster.address,
                    "--num-gpus", "0"]) == 0
        assert ray.is_initialized() is False
    finally:
        cluster.shutdown()
    shards, ref = _shards(path), _shards(reference)
    assert set(shards) == set(ref)
    for k, p in shards.items():
        assert _table(p)["loss"].tobytes() == _table(ref[k])["loss"].tobytes(), k


@pytest.mark.slow
def test_kill_minus_9_then_rerun_finishes_with_the_uninterrupted_shards(reference, tmp_path):
    path = _copy(reference, tmp_path / "suite", losses=False)
    cmd = [sys.executable, "-m", "pipelines.cli", "losses", "--config", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(_shards(path)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the stage finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(_shards(path))
    assert 3 <= partial < len(_shards(reference))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (f"losses: {len(_shards(reference)) - partial} shards written, {partial} current "
            "ones skipped, 0 checkpoints failed") in done.stderr, done.stderr
    shards, ref = _shards(path), _shards(reference)
    assert set(shards) == set(ref)
    for k, p in shards.items():
        assert _table(p)["loss"].tobytes() == _table(ref[k])["loss"].tobytes(), k


@pytest.mark.gpu
def test_ray_stage_on_a_gpu_agrees_with_fp32_within_the_bf16_tolerance(reference, tmp_path, capfd):
    path = _copy(reference, tmp_path / "suite")
    assert cli(["losses", "--config", str(path)]) == 0  # GPUs: 1 per worker, bf16
    assert "is stale (dtype changed)" in capfd.readouterr().err
    shards, ref = _shards(path), _shards(reference)
    assert set(shards) == set(ref)
    for k, p in shards.items():
        assert read_provenance(p)["dtype"] == "bfloat16"
        err = np.abs(_table(p)["loss"] - _table(ref[k])["loss"])
        assert err.max() < 0.25 and err.mean() < 0.05, k
