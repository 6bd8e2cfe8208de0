"""The schedule-aware baseline and where schedules come from, against independent truths: the
trainer's own scheduler, closed forms of the annealing area, and a planted annealing law."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from spectrum.analysis.heldout.schedule_law import LAMBDA, areas, fit_schedule_law
from spectrum.analysis.runs.curves import replicate_weights
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.schedule import Schedule, from_trainer_state, run_schedule
from spectrum.errors import ManifestError
from spectrum.manifest import SUITE_SCHEDULE, RunSpec, load_manifest


def _spec(tmp_path, schedule=None, tokens=2000.0, tps=10, **kw) -> RunSpec:
    return RunSpec(name="r", params=1e4, tokens=tokens, tokens_per_step=tps, role="fit",
                   checkpoints=tmp_path, schedule=schedule, **kw)


def test_the_suite_schedule_is_the_trainers_scheduler(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    spec = _spec(tmp_path, {"kind": "cosine", "peak_lr": 3e-3, "warmup_steps": 10,
                            "min_lr_ratio": 0.1})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=10,
                                                        num_training_steps=200, min_lr_rate=0.1)
    used = []
    for _ in range(200):  # the learning rate of each update, in order
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = run_schedule(spec)
    assert isinstance(got, Schedule) and len(got.lr) == 201
    np.testing.assert_allclose(got.lr[1:], used, rtol=1e-9, atol=1e-15)


def test_suite_defaults_match_the_trainer():
    from spectrum.suite.train import OptimConfig

    c = OptimConfig()
    assert SUITE_SCHEDULE == {"learning_rate": c.learning_rate, "min_lr_ratio": c.min_lr_ratio,
                              "warmup_steps": c.warmup_steps}


def test_annealing_area_has_the_closed_form_of_a_step_drop(tmp_path):
    lr = np.r_[0.0, np.full(20, 1.0), np.full(30, 0.4)]  # peak from step 1, drop at step 21
    s = Schedule(lr, "test", warmup_steps=0)
    steps = np.arange(51)
    S1, S2 = areas(s, steps)
    np.testing.assert_allclose(S1, np.cumsum(lr))
    after = np.clip(steps - 20, 0, None)  # annealed updates so far
    np.testing.assert_allclose(S2, 0.6 * (1 - LAMBDA ** after) / (1 - LAMBDA), rtol=1e-12)


def test_trainer_state_learning_rates_are_read_and_interpolated(tmp_path):
    folder = tmp_path / "checkpoint-40"
    folder.mkdir()
    log = [{"step": 10, "learning_rate": 1e-3, "loss": 5.0}, {"step": 20, "loss": 4.0},
           {"step": 30, "learning_rate": 5e-4}, {"step": 40, "eval_loss": 4.1}]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    spec = _spec(tmp_path, tokens=400.0)
    got = run_schedule(spec)
    assert isinstance(got, Schedule) and "trainer_state.json" in got.source
    assert got.lr[10] == 1e-3 and got.lr[30] == 5e-4 and got.lr[40] == 5e-4
    np.testing.assert_allclose(got.lr[20], 7.5e-4)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log[:1]}))
    assert "fewer than two" in from_trainer_state(spec, folder / "trainer_state.json")


def test_a_run_without_a_known_schedule_says_so(tmp_path):
    why = run_schedule(_spec(tmp_path))
    assert isinstance(why, str) and "no learning-rate schedule is known" in why


def _manifest(tmp_path, run_extra: dict, suite: dict | None = None):
    run = {"name": "a", "params": 1e4, "tokens": 1000, "tokens_per_step": 10, "role": "fit",
           "checkpoints": "runs/a", **run_extra}
    data = {"runs": [run], **({"suite": suite} if suite else {})}
    path = tmp_path / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_manifest_schedule_is_validated_one_line_per_problem(tmp_path):
    bad = {"schedule": {"kind": "exponential", "peak_lr": -1, "min_lr_ratio": 2, "foo": 1}}
    with pytest.raises(ManifestError) as e:
        load_manifest(_manifest(tmp_path, bad))
    lines = str(e.value).splitlines()
    for key in ("schedule.foo", "schedule.kind", "schedule.peak_lr", "schedule.min_lr_ratio"):
        assert sum(key in ln for ln in lines) == 1, (key, lines)
    with pytest.raises(ManifestError, match=r"\[step, learning_rate\] pairs"):
        load_manifest(_manifest(tmp_path, {"schedule": [[0, 1e-3]]}))
    pairs = load_manifest(_manifest(tmp_path, {"schedule": [[100, 0.0], [0, 1e-3]]}))
    assert pairs.runs[0].schedule == ((0, 1e-3), (100, 0.0))
    own = load_manifest(_manifest(tmp_path, {"schedule": {"kind": "wsd", "peak_lr": 1e-3}}))
    lr = run_schedule(own.runs[0]).lr
    # stable to step 90 (10% of the run decays), then linear towards 0 at the scheduler's step 100
    assert lr[50] == lr[91] == 1e-3
    np.testing.assert_allclose(lr[92:], 1e-3 * (1 - np.arange(1, 10) / 10))


def test_suite_runs_get_the_suites_schedule(tmp_path):
    m = load_manifest(_manifest(tmp_path, {"train": {"size": "m1", "seed": 0}},
                                suite={"learning_rate": 1e-2, "warmup_steps": 4}))
    s = m.runs[0].schedule
    assert s["kind"] == "cosine" and s["peak_lr"] == 1e-2 and s["warmup_steps"] == 4
    assert s["min_lr_ratio"] == SUITE_SCHEDULE["min_lr_ratio"]


# ---------------------------------------------------------------------------------------------
# the law, planted

def _law_run(name, M, D, steps_total, law, n_seq=6, role="fit") -> RunData:
    lr = np.r_[0.0, np.linspace(0.1, 1.0, 5),
               0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.arange(steps_total - 5)
                                             / (steps_total - 5)))] * 1e-3
    sched = Schedule(lr, "planted", warmup_steps=5)
    steps = np.unique(np.geomspace(6, steps_total, 14).astype(int))
    S1, S2 = areas(sched, steps)
    L0, A, C = law(np.log(M), np.log(D))
    curve = L0 + A * S1 ** -0.4 - C * S2
    counts = np.full((n_seq, len(steps)), 10.0)
    sums = curve[None, :] * counts
    return RunData(name=name, role=role, M=M, D=D, tokens_per_step=10, warmup_steps=5,
                   steps=steps, x=np.log(steps * 10.0), seq_ids=np.arange(n_seq),
                   seq_half=np.arange(n_seq) % 2, seq_sums=sums, seq_counts=counts,
                   pop_sums=sums, pop_counts=counts, schedule=sched), curve


def _planted(lnM, lnD):
    return 3.0 - 0.2 * lnM + 0.05 * lnD, 0.5 + 0.01 * lnM, 2.0 - 0.1 * lnD


def test_schedule_law_recovers_a_planted_annealing_law_on_a_held_out_schedule():
    fit = [_law_run(f"f{i}", M, D, int(D / 10), _planted)[0]
           for i, (M, D) in enumerate([(1e4, 2000), (1e5, 2000), (1e4, 8000), (1e5, 8000)])]
    held, truth = _law_run("h", 3e4, 4000, 400, _planted, role="heldout")
    W = replicate_weights(6, 20, seed=0)
    law, info = fit_schedule_law(fit, W)
    assert law is not None and info["axes"] == ["lnM", "lnD"]
    assert abs(info["alpha"] - 0.4) < 0.02
    got = law(held)
    assert got.shape == (21, len(held.steps))
    np.testing.assert_allclose(got[0], truth, atol=2e-3)


def test_schedule_law_is_null_without_schedules():
    run, _ = _law_run("f", 1e4, 2000, 200, _planted)
    from dataclasses import replace

    law, info = fit_schedule_law([replace(run, schedule="run f: no schedule")],
                                 np.ones((1, 6)))
    assert law is None and "no fit run has a known learning-rate schedule" in info["reason"]


def test_decayed_sums_follow_the_recursion_across_blocks():
    from spectrum.analysis.heldout.schedule_law import decayed_sums

    d = np.random.default_rng(0).normal(size=1500)
    m, want = 0.0, []
    for v in d:
        m = 0.99 * m + v
        want.append(m)
    np.testing.assert_allclose(decayed_sums(d, 0.99, block=256), want, rtol=1e-9, atol=1e-9)
