"""A user's own runs: checkpoints written by Hugging Face's ``Trainer`` (GPT-2 and a Llama-style
model with tied embeddings, GPT-NeoX untied) through ``spectrum evalset`` and ``spectrum losses``
with the default executor (Ray) and the local one, from scratch several times: every checkpoint
accepted every time, losses equal to transformers' own, a checkpoint whose weights do not fit its
config.json still refused, and never two checkpoint loads at once in one process."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.cli import main as cli
from spectrum.data.evalset import load_evalset
from tests.trainer_checkpoints import CONTEXT, TrainerRuns, write_manifest

# fp32 on CPUs on any machine, so that both executors' shards can be compared with transformers'
LOCAL = ["--executor", "local", "--device", "cpu"]
RAY = ["--device", "cpu"]  # the default executor: a fresh local Ray


def _shards(manifest: Path) -> dict[tuple[str, int], Path]:
    root = manifest.parent / "artifacts" / "losses"
    return {(p.parent.parent.name.removeprefix("run="), int(p.parent.name.removeprefix("step="))): p
            for p in root.glob("run=*/step=*/part-0.parquet")}


def _losses(path: Path) -> np.ndarray:
    return pq.read_table(path).column("loss").to_numpy()


def _expected(runs: TrainerRuns, names: list[str] | None = None) -> set[tuple[str, int]]:
    return {(r.name, s) for r in runs.runs if names is None or r.name in names for s in r.steps}


def _measure(runs: TrainerRuns, folder: Path, capfd: Any, executor: list[str],
             names: list[str] | None = None) -> Path:
    """A fresh manifest in ``folder``, its evalset and its losses; every checkpoint accepted."""
    path = write_manifest(runs, folder, names)
    assert cli(["evalset", "--config", str(path)]) == 0
    capfd.readouterr()
    rc = cli(["losses", "--config", str(path), *executor])
    err = capfd.readouterr().err
    assert "Traceback" not in err and "error:" not in err, err
    assert rc == 0, err
    expected = _expected(runs, names)
    assert f"losses: {len(expected)} shards written, 0 current ones skipped, " \
           "0 checkpoints failed" in err, err
    assert set(_shards(path)) == expected
    return path


@pytest.fixture(scope="module")
def local_suite(trainer_runs, tmp_path_factory) -> Path:
    """The three runs measured once with the local executor (capfd is function-scoped)."""
    path = write_manifest(trainer_runs, tmp_path_factory.mktemp("local_suite"))
    assert cli(["evalset", "--config", str(path)]) == 0
    assert cli(["losses", "--config", str(path), *LOCAL]) == 0
    assert set(_shards(path)) == _expected(trainer_runs)
    return path


def test_the_runs_are_what_users_write(trainer_runs):
    """Trainer's folders, six checkpoints at irregular steps, the embeddings tied as declared."""
    for run in trainer_runs.runs:
        assert run.steps == (1, 3, 6, 10, 20, 22)
        ckpt = run.folder / f"checkpoint-{run.steps[-1]}"
        for name in ("config.json", "model.safetensors", "trainer_state.json", "tokenizer.json"):
            assert (ckpt / name).is_file(), ckpt / name
        config = json.loads((ckpt / "config.json").read_text())
        assert config.get("tie_word_embeddings", True) == (run.name != "neox-untied"), run.name


def test_losses_equal_transformers_own_cross_entropy(trainer_runs, local_suite):
    from transformers import AutoModelForCausalLM

    evalset = load_evalset(local_suite.parent / "artifacts" / "evalset")
    ids = torch.as_tensor(evalset.input_ids, dtype=torch.long)
    n_seq = ids.shape[0]
    assert ids.shape == (16, CONTEXT)
    shards = _shards(local_suite)
    for run in trainer_runs.runs:
        means = []
        for step in run.steps:
            table = pq.read_table(shards[(run.name, step)])
            np.testing.assert_array_equal(table.column("token_idx").to_numpy(),
                                          np.arange(n_seq * (CONTEXT - 1)))
            ours = table.column("loss").to_numpy().reshape(n_seq, CONTEXT - 1)
            model, info = AutoModelForCausalLM.from_pretrained(
                run.folder / f"checkpoint-{step}", dtype=torch.float32, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], (run.name, info)
            model.eval()
            with torch.no_grad():
                logits = model(ids).logits.double()
                per_token = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                    reduction="none").reshape(n_seq, CONTEXT - 1).numpy()
                # transformers' own loss, one sequence at a time: the mean of its tokens
                own = np.array([model(ids[s:s + 1], labels=ids[s:s + 1]).loss.item()
                                for s in range(n_seq)])
            assert np.abs(ours - per_token).max() < 1e-4, (run.name, step)
            assert np.abs(ours.astype(np.float64).mean(1) - own).max() < 1e-4, (run.name, step)
            means.append(ours.mean())
        assert means[-1] < means[0] - 1, (run.name, means)  # the runs learned something


def test_local_executor_accepts_every_checkpoint_every_time(trainer_runs, local_suite, tmp_path,
                                                            capfd):
    reference = {k: _losses(p) for k, p in _shards(local_suite).items()}
    for rep in range(4):  # with the fixture's, five runs from scratch
        path = _measure(trainer_runs, tmp_path / f"rep{rep}", capfd, LOCAL)
        for k, p in _shards(path).items():
            assert _losses(p).tobytes() == reference[k].tobytes(), (rep, k)


def _ray_repetition(trainer_runs: TrainerRuns, local_suite: Path, folder: Path,
                    capfd: Any) -> None:
    path = _measure(trainer_runs, folder, capfd, RAY)
    reference = _shards(local_suite)
    for k, p in _shards(path).items():
        assert _losses(p).tobytes() == _losses(reference[k]).tobytes(), k


def test_ray_executor_accepts_every_checkpoint(trainer_runs, local_suite, tmp_path, capfd):
    _ray_repetition(trainer_runs, local_suite, tmp_path, capfd)


@pytest.mark.slow
@pytest.mark.parametrize("rep", range(3))
def test_ray_executor_accepts_every_checkpoint_again(trainer_runs, local_suite, tmp_path, capfd,
                                                     rep):
    _ray_repetition(trainer_runs, local_suite, tmp_path, capfd)


# config.json edited after training so that the weights do not fit it
MISFITS = [
    ("llama-tied", {"tie_word_embeddings": False},
     "1 weights of the model are missing from the checkpoint (lm_head.weight)"),
    ("gpt2-tied", {"n_layer": 3},
     "weights of the model are missing from the checkpoint (transformer.h.2."),
    ("neox-untied", {"hidden_size": 64}, "weights have other shapes than config.json implies"),
]


@pytest.mark.parametrize("run_name, edit, says", MISFITS, ids=[m[0] for m in MISFITS])
def test_a_checkpoint_whose_weights_do_not_fit_is_refused_in_one_line(
        trainer_runs, tmp_path, capfd, run_name, edit, says):
    run = next(r for r in trainer_runs.runs if r.name == run_name)
    folder = tmp_path / "runs" / run_name
    shutil.copytree(run.folder, folder)
    ckpt = folder / "checkpoint-10"
    config = json.loads((ckpt / "config.json").read_text())
    config.update(edit)
    (ckpt / "config.json").write_text(json.dumps(config))
    copied = dataclasses.replace(trainer_runs, runs=tuple(
        dataclasses.replace(r, folder=folder) if r.name == run_name else r
        for r in trainer_runs.runs))
    path = write_manifest(copied, tmp_path / "suite")
    assert cli(["evalset", "--config", str(path)]) == 0
    capfd.readouterr()
    assert cli(["losses", "--config", str(path), *LOCAL]) == 1  # some units failed: status 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    line = f"error: checkpoint {ckpt}: its weights do not fit its config.json: "
    assert lines and lines[0].startswith(line) and says in lines[0], lines
    # shown as it happens, then again above the summary; nothing else failed
    assert set(lines[:-1]) == {lines[0]} and "1 checkpoints failed" in lines[-1], lines
    assert set(_shards(path)) == _expected(trainer_runs) - {(run_name, 10)}


class _Overlaps:
    """Wraps ``from_pretrained`` methods: records the most threads inside any of them at once.
    Each outermost entry stays inside a while, so that loads that could overlap do."""

    def __init__(self, hold: float = 0.2) -> None:
        self.hold = hold
        self.lock = threading.Lock()
        self.depth: dict[int, int] = {}  # thread -> nesting depth (a model load reads its config)
        self.most = 0
        self.threads: set[int] = set()
        self.loads: list[str] = []

    def wrap(self, method: Any, kind: str) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            me = threading.get_ident()
            with self.lock:
                self.depth[me] = self.depth.get(me, 0) + 1
                self.threads.add(me)
                self.loads.append(kind)
                self.most = max(self.most, sum(1 for d in self.depth.values() if d > 0))
            try:
                if self.depth[me] == 1:
                    time.sleep(self.hold)
                return method(*args, **kwargs)
            finally:
                with self.lock:
                    self.depth[me] -= 1

        return staticmethod(counted)


def test_two_checkpoint_loads_never_overlap_in_one_process(trainer_runs, tmp_path, capfd,
                                                           monkeypatch):
    """The local executor runs the stage's worker in this process: it loads the next checkpoint in
    a background thread while it loads or evaluates the current one. (An overlap can also leave
    transformers' ``PreTrainedModel.tie_weights`` patched to a no-op, which loading swaps in and
    back, for every later load of the process.)"""
    import transformers

    tie_weights = transformers.PreTrainedModel.tie_weights

    names = ["gpt2-tied", "llama-tied"]
    path = write_manifest(trainer_runs, tmp_path, names)
    assert cli(["evalset", "--config", str(path)]) == 0
    overlaps = _Overlaps()
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoConfig,
                transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained",
                            overlaps.wrap(cls.from_pretrained, cls.__name__))
    capfd.readouterr()
    rc = cli(["losses", "--config", str(path), *LOCAL])
    err = capfd.readouterr().err
    n = len(_expected(trainer_runs, names))
    assert overlaps.loads.count("AutoModelForCausalLM") == n  # every load went through the wrapper
    assert len(overlaps.threads) >= 2  # loads ran in the background thread and in this one
    assert overlaps.most == 1, f"{overlaps.most} threads were loading at once"
    assert transformers.PreTrainedModel.tie_weights is tie_weights
    assert rc == 0, err
    assert set(_shards(path)) == _expected(trainer_runs, names)
