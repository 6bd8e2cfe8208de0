"""The built-in suite: configuration checks, the training loop, checkpoints, skip and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.cli import main as cli_main
from spectrum.errors import ManifestError, SpectrumError
from spectrum.manifest import load_manifest
from spectrum.suite.build import checkpoint_steps_in, prepare_data, run_status, train_suite, unigram_loss
from spectrum.suite.config import (ModelSize, doubling_checkpoint_steps, gpt_neox_config,
                                   log_checkpoint_steps, plan_suite)
from spectrum.suite.train import PARTIAL_PREFIX, save_checkpoint, train_model, trainer_state

ONE_RUN = [("m1-d1", "s1", 8, 0, "fit")]


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- schedule and configuration ----------------------------------------------------------------

def test_log_checkpoint_schedule():
    assert log_checkpoint_steps(10, 4) == (0, 1, 2, 5, 10)  # geomspace(1, 10, 4) = 1, 2.15, 4.64, 10
    steps = log_checkpoint_steps(1000, 20)
    assert steps[:2] == (0, 1) and steps[-1] == 1000
    assert list(steps) == sorted(set(steps))
    ratios = [b / a for a, b in zip(steps[1:], steps[2:])]
    assert max(ratios) <= 2.0 and ratios[-1] == pytest.approx(1000 ** (1 / 19), rel=0.05)


def test_doubling_checkpoint_grid():
    # 16 * 2^(k/4): 16, 19.03, 22.63, 26.91, 32, 38.05, 45.25, 53.82, 64, 76.1, 90.5, 107.6, 128
    assert doubling_checkpoint_steps(128, 16, 4) == (0, 16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91,
                                                     108, 128)
    assert doubling_checkpoint_steps(100, 16, 4) == (0, 16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91, 100)
    assert doubling_checkpoint_steps(10, 1, 1) == (0, 1, 2, 4, 8, 10)
    assert doubling_checkpoint_steps(16, 16, 4) == (0, 16)
    short, long = doubling_checkpoint_steps(256, 16, 3), doubling_checkpoint_steps(4096, 16, 3)
    assert set(short) <= set(long)  # runs of any length share the grid's steps
    with pytest.raises(ValueError):
        doubling_checkpoint_steps(10, 0, 4)


def test_suite_schedule_starts_at_the_warmup(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, [("m1-d1", "s1", 24, 0, "fit")], checkpoints_per_doubling=2,
                                warmup_steps=3)
    _edit(path, lambda d: d["suite"].pop("log_checkpoints"))
    (run,) = plan_suite(load_manifest(path)).runs
    assert run.checkpoint_steps == (0, 3, 4, 6, 8, 12, 17, 24)  # 3 * 2^(k/2), rounded
    _edit(path, lambda d: d["suite"].update(log_checkpoints=8))
    with pytest.raises(ManifestError, match="suite.checkpoints_per_doubling: give either log_checkpoints"):
        plan_suite(load_manifest(path))


def test_run_warmup_must_be_the_suites(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)
    _edit(path, lambda d: d["runs"][0].pop("warmup_steps"))
    with pytest.raises(ManifestError) as e:
        plan_suite(load_manifest(path))
    assert e.value.problems == [f"{path}: runs[0] (m1-d1).warmup_steps: 0 but the suite warms up for 2 "
                                f"steps (suite.warmup_steps); write warmup_steps: 2"]


def test_params_mismatch_names_the_right_number(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)
    _edit(path, lambda d: d["runs"][0].update(params=1234))
    with pytest.raises(ManifestError) as e:
        plan_suite(load_manifest(path))
    (msg,) = e.value.problems
    true = 3312  # s1: width 16, 1 layer, intermediate 64 (layer norms, attention, MLP, final norm)
    assert msg == f"{path}: runs[0] (m1-d1).params: 1234 but size s1 has {true} non-embedding " \
                  f"parameters; write params: {true}"


def test_every_suite_problem_is_reported_at_once(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)

    def spoil(d):
        d["suite"]["sizes"]["s2"]["width"] = -4
        d["suite"]["sizes"]["s1"]["heads"] = 3
        d["suite"]["learning_rate"] = "fast"
        d["suite"]["colour"] = "blue"
        d["runs"][0]["tokens"] = 1000
        d["runs"][0]["train"] = {"size": "s9", "sede": 1}
    _edit(path, spoil)
    with pytest.raises(ManifestError) as e:
        plan_suite(load_manifest(path))
    text = "\n".join(e.value.problems)
    for where in ("suite.sizes.s2.width: must be >= 1", "suite.sizes.s1.heads: must divide width 16",
                  "suite.learning_rate: must be a number", "suite.colour: unknown key",
                  "runs[0] (m1-d1).tokens: 1000 is not a positive multiple of tokens_per_step 256; "
                  "use 1024 (4 steps)",
                  "runs[0] (m1-d1).train.size: unknown size 's9'", "runs[0] (m1-d1).train.sede: unknown key"):
        assert f"{path}: {where}" in text
    # through the command line: exit 2, one line per problem
    assert cli_main(["suite", "--config", str(path)]) == 2


def test_no_suite_or_no_trained_run_is_a_no_op(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)
    _edit(path, lambda d: d["runs"][0].pop("train"))
    (tmp_path / "runs" / "m1-d1").mkdir(parents=True)
    assert train_suite(load_manifest(path)) is None
    _edit(path, lambda d: d.pop("suite"))
    assert train_suite(load_manifest(path)) is None
    assert not list((tmp_path / "runs").rglob("*.json"))


# --- the training loop -------------------------------------------------------------------------

def _tiny(seed_data: int = 0):
    g = torch.Generator().manual_seed(seed_data)
    seqs = torch.randint(0, 64, (40, 16), generator=g)
    seqs[:, 1::2] = (seqs[:, ::2] + 1) % 64  # learnable: every odd token follows its predecessor
    config = gpt_neox_config(ModelSize("t", 16, 1, 2, 32), vocab_size=64, context=16)
    return config, seqs


def test_same_seed_same_weights_other_seed_differs():
    config, seqs = _tiny()
    kw = dict(steps=6, tokens_per_step=64, progress=False, device="cpu")
    a = train_model(config, seqs, seed=3, **kw).model.state_dict()
    b = train_model(config, seqs, seed=3, **kw).model.state_dict()
    c = train_model(config, seqs, seed=4, **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sampler_sets_the_data_order():
    config, seqs = _tiny()
    kw = dict(steps=4, tokens_per_step=64, seed=0, progress=False, device="cpu")
    only_first = train_model(config, seqs, sampler=[0, 1, 2, 3], **kw).model.state_dict()
    same_rows = train_model(config, seqs[:4].repeat(10, 1), sampler=[0, 1, 2, 3], **kw).model.state_dict()
    shuffled = train_model(config, seqs, **kw).model.state_dict()
    assert all(torch.equal(only_first[k], same_rows[k]) for k in only_first)
    assert not all(torch.equal(only_first[k], shuffled[k]) for k in only_first)


def test_checkpoints_reload_and_reproduce_logits(tmp_path):
    config, seqs = _tiny()
    tok_texts = ["a b c d e f"] * 4
    from spectrum.data.tokenizer import train_tokenizer
    tokenizer = train_tokenizer(tok_texts, 270)
    saved = {}

    def on_checkpoint(s):
        state = trainer_state(s, max_steps=5, batch_size=4, n_sequences=len(seqs))
        saved[s.step] = save_checkpoint(tmp_path, s.step, s.model, tokenizer, state)

    result = train_model(config, seqs, steps=5, tokens_per_step=64, seed=0, checkpoint_steps=[0, 2, 5],
                         on_checkpoint=on_checkpoint, eval_sequences=seqs[:8], progress=False, device="cpu")
    assert sorted(saved) == [0, 2, 5] and checkpoint_steps_in(tmp_path) == [0, 2, 5]
    loaded = AutoModelForCausalLM.from_pretrained(saved[5]).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(seqs[:3]).logits, result.model(seqs[:3]).logits)
        # the validation loss is transformers' own mean next-token loss of the final model
        assert result.final_eval_loss == pytest.approx(float(loaded(seqs[:8], labels=seqs[:8]).loss), rel=1e-5)
    torch.manual_seed(0)  # step 0 is the untrained initialization for the seed
    init = AutoModelForCausalLM.from_config(config).state_dict()
    zero = AutoModelForCausalLM.from_pretrained(saved[0]).state_dict()
    assert all(torch.equal(init[k], zero[k]) for k in init)
    assert json.loads((saved[2] / "trainer_state.json").read_text())["num_input_tokens_seen"] == 128
    assert AutoTokenizer.from_pretrained(saved[2]).get_vocab() == tokenizer.get_vocab()
    assert not list(tmp_path.glob(f"{PARTIAL_PREFIX}*"))


# --- the micro suite ---------------------------------------------------------------------------

def test_micro_suite_checkpoints(micro_suite):
    manifest = load_manifest(micro_suite)
    plan = plan_suite(manifest)
    for run in plan.runs:
        steps = checkpoint_steps_in(run.folder)
        assert tuple(steps) == run.checkpoint_steps and steps[0] == 0 and steps[-1] == run.steps
        for step in steps:
            folder = run.folder / f"checkpoint-{step}"
            assert {"config.json", "model.safetensors", "trainer_state.json", "tokenizer.json"} <= \
                {p.name for p in folder.iterdir()}
            state = json.loads((folder / "trainer_state.json").read_text())
            assert state["global_step"] == step
            assert state["num_input_tokens_seen"] == step * run.run.tokens_per_step
        model = AutoModelForCausalLM.from_pretrained(run.folder / f"checkpoint-{run.steps}")
        assert type(model).__name__ == "GPTNeoXForCausalLM"
        counted = sum(p.numel() for n, p in model.named_parameters()
                      if p is not model.get_input_embeddings().weight
                      and p is not model.get_output_embeddings().weight)
        assert counted == run.run.params
        assert not (run.folder / ".resume").exists()


def test_micro_suite_learns_and_summarises(micro_suite):
    manifest = load_manifest(micro_suite)
    plan = plan_suite(manifest)
    summary = json.loads((plan.config.root / "suite_summary.json").read_text())
    data = prepare_data(plan.config)  # from the cache
    tokens = data.train_sequences.numpy().ravel()
    # independent unigram cross-entropy: counts with add-one smoothing, by hand
    counts = torch.bincount(torch.from_numpy(tokens).long(), minlength=len(data.tokenizer)).double() + 1
    targets = data.eval_sequences[:, 1:].long().ravel()
    expected = float(-(counts / counts.sum()).log()[targets].mean())
    assert summary["unigram_val_loss"] == pytest.approx(expected, rel=0.02)  # the stream keeps a tail
    assert unigram_loss(tokens, targets.numpy(), len(data.tokenizer)) == pytest.approx(expected)
    runs = summary["runs"]
    assert set(runs) == {"m1-d1", "m2-d1", "m2-d2"}
    assert runs["m2-d2"]["final_val_loss"] < 0.8 * runs["m2-d2"]["unigram_val_loss"]
    final = plan.runs[2].folder / "checkpoint-48"
    evals = [e for e in json.loads((final / "trainer_state.json").read_text())["log_history"]
             if "eval_loss" in e]
    assert evals[-1]["eval_loss"] == runs["m2-d2"]["final_val_loss"]


def test_rerun_skips_complete_runs(micro_suite):
    manifest = load_manifest(micro_suite)
    plan = plan_suite(manifest)
    stamps = {p: p.stat().st_mtime_ns for r in plan.runs for p in r.folder.rglob("*")}
    assert all(run_status(plan, r) == "complete" for r in plan.runs)
    assert cli_main(["suite", "--config", str(micro_suite)]) == 0
    assert {p: p.stat().st_mtime_ns for r in plan.runs for p in r.folder.rglob("*")} == stamps


def test_half_written_checkpoint_is_not_complete(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)
    train_suite(load_manifest(path), device="cpu", progress=False)
    plan = plan_suite(load_manifest(path))
    (run,) = plan.runs
    final = run.folder / "checkpoint-8"
    weights = (final / "model.safetensors").read_bytes()
    # a run killed while writing its last checkpoint leaves only the temporary folder
    final.rename(run.folder / f"{PARTIAL_PREFIX}8-abc123")
    (run.folder / f"{PARTIAL_PREFIX}8-abc123" / "model.safetensors").write_bytes(b"trunc")
    assert checkpoint_steps_in(run.folder)[-1] < 8
    assert run_status(plan, run) == "todo"
    train_suite(load_manifest(path), device="cpu", progress=False)
    assert run_status(plan, run) == "complete"
    assert (final / "model.safetensors").read_bytes() == weights  # deterministic retraining
    assert not list(run.folder.glob(f"{PARTIAL_PREFIX}*"))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, write_micro_manifest, monkeypatch):
    a = write_micro_manifest(tmp_path / "a", ONE_RUN)
    train_suite(load_manifest(a), device="cpu", progress=False)
    b = write_micro_manifest(tmp_path / "b", ONE_RUN)
    import spectrum.suite.train as st

    real = st.save_checkpoint

    def killed_after_step_4(folder, step, *args, **kw):
        out = real(folder, step, *args, **kw)
        if step == 4:
            raise KeyboardInterrupt
        return out
    monkeypatch.setattr(st, "save_checkpoint", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_suite(load_manifest(b), device="cpu", progress=False)
    monkeypatch.setattr(st, "save_checkpoint", real)
    folder_b = tmp_path / "b" / "runs" / "m1-d1"
    assert (folder_b / ".resume" / "state.pt").is_file() and not (folder_b / "checkpoint-8").exists()
    assert torch.load(folder_b / ".resume" / "state.pt", weights_only=False)["step"] == 3
    train_suite(load_manifest(b), device="cpu", progress=False)
    for step in (4, 6, 8):  # the schedule of 8 steps: 0 1 2 3 4 6 8
        wa = (tmp_path / "a" / "runs" / "m1-d1" / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        assert (folder_b / f"checkpoint-{step}" / "model.safetensors").read_bytes() == wa
    assert not (folder_b / ".resume").exists()


def test_changed_configuration_needs_force(tmp_path, write_micro_manifest):
    path = write_micro_manifest(tmp_path, ONE_RUN)
    train_suite(load_manifest(path), device="cpu", progress=False)
    _edit(path, lambda d: d["suite"].update(learning_rate=0.02))
    with pytest.raises(SpectrumError, match="another suite configuration.*--force"):
        train_suite(load_manifest(path), device="cpu", progress=False)
    train_suite(load_manifest(path), device="cpu", progress=False, force=True)
    plan = plan_suite(load_manifest(path))
    assert run_status(plan, plan.runs[0]) == "complete"


def test_copy_of_micro_suite_is_independent(micro_suite, tmp_path):
    """The fixture's folder can be copied and used elsewhere (relative paths)."""
    copy = tmp_path / "copy"
    shutil.copytree(micro_suite.parent, copy)
    plan = plan_suite(load_manifest(copy / "checkpoints.yaml"))
    assert all(run_status(plan, r) == "complete" for r in plan.runs)


# --- slow: worker processes and the default suite ----------------------------------------------

@pytest.mark.slow
def test_worker_processes_train_the_same_runs(tmp_path, write_micro_manifest, micro_suite):
    from spectrum.suite.parallel import train_suite_in_processes

    path = write_micro_manifest(tmp_path)
    train_suite_in_processes(load_manifest(path), device="cpu", progress=False, workers=2)
    ours, theirs = plan_suite(load_manifest(path)), plan_suite(load_manifest(micro_suite))
    for a, b in zip(ours.runs, theirs.runs):
        for step in a.checkpoint_steps:
            wa = (a.folder / f"checkpoint-{step}" / "model.safetensors").read_bytes()
            assert wa == (b.folder / f"checkpoint-{step}" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_default_suite_learns(tmp_path):
    """The default manifest's suite (minutes on 2 CPU cores): every run beats the unigram baseline."""
    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "checkpoints.yaml", tmp_path / "checkpoints.yaml")
    summary = train_suite(load_manifest(tmp_path / "checkpoints.yaml"), device="cpu", progress=False)
    runs = summary["runs"]
    assert all(r["final_val_loss"] < r["unigram_val_loss"] for r in runs.values())
    largest = max(runs.values(), key=lambda r: (r["params"], r["tokens"]))
    assert largest["final_val_loss"] < largest["unigram_val_loss"] - 1.0


@pytest.mark.slow
def test_a_killed_worker_fails_the_call_and_the_same_command_resumes(tmp_path, write_micro_manifest):
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from spectrum.suite.parallel import train_suite_in_processes

    path = write_micro_manifest(tmp_path, [("m1-d1", "s1", 48, 0, "fit"), ("m2-d1", "s2", 48, 0, "fit")])
    killed: list[int] = []

    def kill_a_worker_once_training_started() -> None:
        while not killed:
            workers = multiprocessing.active_children()
            if workers and any((tmp_path / "runs").glob("*/checkpoint-1")):
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.02)

    threading.Thread(target=kill_a_worker_once_training_started, daemon=True).start()
    with pytest.raises(SpectrumError, match="ended abruptly .* unfinished; .* the same command resumes"):
        train_suite_in_processes(load_manifest(path), device="cpu", progress=False, workers=2)
    assert killed
    plan = plan_suite(load_manifest(path))
    assert any(run_status(plan, r) == "todo" for r in plan.runs)
    train_suite_in_processes(load_manifest(path), device="cpu", progress=False, workers=2)
    assert all(run_status(plan, r) == "complete" for r in plan.runs)


@pytest.mark.slow
def test_ctrl_c_ends_the_workers_keeps_the_checkpoints_and_says_one_line(tmp_path, write_micro_manifest):
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_micro_manifest(tmp_path, [("m1-d1", "s1", 4000, 0, "fit"), ("m2-d1", "s2", 4000, 0, "fit")])
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    # a new process group, as a terminal's: Ctrl-C reaches the command and its workers
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "suite", "--config", str(path),
                             "--device", "cpu", "--suite-workers", "2"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not glob.glob(str(tmp_path / "runs" / "*" / "checkpoint-3")) and time.monotonic() - t0 < 300:
        assert proc.poll() is None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    t1 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and time.monotonic() - t1 < 20
    text = err.decode()
    assert "Traceback" not in text and "leaked" not in text
    assert text.count("interrupted: finished outputs are kept") == 1
    time.sleep(1)  # multiprocessing's resource tracker ends when the command's pipe closes
    ps = subprocess.run(["ps", "-o", "stat=,cmd=", "-g", str(proc.pid)], capture_output=True, text=True)
    assert [line for line in ps.stdout.splitlines() if not line.startswith("Z")] == []  # no worker left
    plan = plan_suite(load_manifest(path))
    assert all(run_status(plan, r) == "todo" for r in plan.runs)
    assert any((r.folder / "checkpoint-3" / "model.safetensors").is_file() for r in plan.runs)
