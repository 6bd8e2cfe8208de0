"""The controlled curriculum test: its arms and controls, statistics that cannot flatter (checked on
simulated loss curves with a planted truth, including "no effect"), and the command end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from spectrum.curriculum.arms import (ARMS, arm_weights, frequency_buckets, shuffle_within,
                                      timing_control)
from spectrum.curriculum.stats import compute_curve, mean_interval, multiplier_interval
from spectrum.curriculum.trial import Curve, markdown_table, summarise

SLOPE = -0.30  # simulated nats per unit of ln compute


def simulated_curves(rng: np.random.Generator, effects: dict[str, float], *, seeds: int = 8,
                     budgets=(0.5, 0.7, 1.0, 1.4), seed_sd: float = 0.03,
                     run_sd: float = 0.01) -> list[Curve]:
    """Loss curves of a planted world: an arm with effect ``e`` ends ``e`` nats from uniform;
    uniform runs at budget b end at ``SLOPE * ln b`` from the 1x run; every run adds noise."""
    tokens = [1e3, 1e4, 1e5, 1e6]
    shape = np.array([2.0, 1.0, 0.4, 0.0])
    out = []
    for s in range(seeds):
        base = 3.0 + rng.normal(0, seed_sd)
        for arm, e in effects.items():
            final = base + e + rng.normal(0, run_sd)
            out.append(Curve(arm, 1000 + s, tokens, (final + shape).tolist()))
        for b in budgets:
            if b != 1.0:
                final = base + SLOPE * math.log(b) + rng.normal(0, run_sd)
                out.append(Curve("uniform", 1000 + s, [t * b for t in tokens], (final + shape).tolist(), b))
    return out


def test_frequency_buckets_are_equal_count_quantiles():
    v = np.random.default_rng(0).normal(size=100)
    b = frequency_buckets(v, 5)
    assert np.bincount(b).tolist() == [20] * 5
    order = np.argsort(v)
    assert (np.diff(b[order]) >= 0).all()  # buckets follow the frequency order


def test_controls_keep_the_weights_and_break_their_link():
    rng = np.random.default_rng(1)
    w = rng.gamma(2.0, size=(60, 3))
    w /= w.mean(0)
    freq = rng.normal(size=60)
    buckets = frequency_buckets(freq, 6)
    arms = arm_weights(w, buckets, seed=3, phase_steps=[5, 10, 20])
    assert set(arms) == set(ARMS) - {"exported"}  # the exported arm's weights are given, not derived
    assert (arms["uniform"] == 1).all() and arms["curriculum"] is w
    for name in ("freq_shuffled", "random"):
        a = arms[name]
        # the same rows (whole per-sequence phase profiles), so the same weight distribution
        assert sorted(map(tuple, a)) == sorted(map(tuple, w))
        np.testing.assert_allclose(a.mean(0), 1.0)
        assert not np.array_equal(a, w)
    # within every frequency bucket, the shuffled weights are a permutation of that bucket's
    for b in range(6):
        rows = buckets == b
        assert sorted(map(tuple, arms["freq_shuffled"][rows])) == sorted(map(tuple, w[rows]))
    # seeded: the same seed gives the same controls, another seed others
    again = arm_weights(w, buckets, seed=3, phase_steps=[5, 10, 20])
    np.testing.assert_array_equal(again["random"], arms["random"])
    assert not np.array_equal(arm_weights(w, buckets, seed=4)["random"], arms["random"])
    one = shuffle_within(w, np.zeros(60, dtype=int), np.random.default_rng(0))
    assert sorted(map(tuple, one)) == sorted(map(tuple, w))


def test_timing_control_draws_every_item_as_often_as_the_curriculum_only_at_other_times():
    from spectrum.curriculum.sampling import PhaseSampler

    rng = np.random.default_rng(2)
    w = rng.gamma(1.0, size=(30, 3))
    w /= w.mean(0)
    steps = [4, 12, 48]
    flat = timing_control(w, steps)
    assert (flat == flat[:, :1]).all()  # constant over phases
    np.testing.assert_allclose(flat.mean(0), 1.0)
    # expected draws of each item over the run: sum over phases of steps * batch * w / sum(w)
    draws = lambda m: (m / m.sum(0)) @ np.asarray(steps, float)  # noqa: E731
    np.testing.assert_allclose(draws(flat), draws(w))
    # and the sampler realises it: item frequencies over a long run agree
    starts = np.cumsum([0] + steps[:-1])
    n = {name: np.bincount(np.concatenate([PhaseSampler(m, starts, batch_size=64, num_steps=64,
                                                        seed=s).batch(t).numpy()
                                           for s in range(60) for t in range(64)]), minlength=30)
         for name, m in (("curriculum", w), ("timing", flat))}
    assert stats.pearsonr(n["curriculum"], n["timing"])[0] > 0.95
    with pytest.raises(ValueError):
        timing_control(w, [1, 2])


def test_mean_interval_is_the_student_t_interval_and_the_paired_test():
    d = np.array([0.01, -0.02, 0.03, 0.015, -0.005, 0.02])
    s = mean_interval(d)
    ref = stats.ttest_1samp(d, 0.0)
    lo, hi = ref.confidence_interval(0.95)
    assert s["ci"] == pytest.approx([lo, hi]) and s["p"] == pytest.approx(ref.pvalue)
    assert s["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    one = mean_interval([0.3])
    assert one["mean"] == 0.3 and one["ci"] == [None, None]  # one seed: no interval, not a spread of 0
    bad = mean_interval([0.1, float("nan"), 0.2])
    assert bad["mean"] is None and bad["nonfinite"] == 1 and bad["n"] == 3


def test_compute_curve_recovers_a_planted_slope_with_seed_offsets():
    rng = np.random.default_rng(3)
    seeds = np.repeat(np.arange(6), 4)
    x = np.tile(np.log([0.5, 0.7, 1.0, 1.4]) + 12, 6)
    y = 3 + rng.normal(0, 0.2, 6)[seeds] - 0.25 * x + rng.normal(0, 0.002, len(x))
    c = compute_curve(seeds, x, y)
    assert c.slope == pytest.approx(-0.25, abs=0.01) and c.r2_within > 0.99 and c.n_seeds == 6
    assert c.budgets == pytest.approx((0.357143, 0.5, 0.714286, 1.0), rel=1e-4)
    assert compute_curve([0, 0], [1.0, 1.0], [2.0, 2.1]) is None  # one budget: no slope


def test_a_planted_gain_and_a_planted_loss_are_measured_on_both_sides_of_one():
    """The statistic is not censored: a harmful arm comes out below 1, a helpful one above."""
    gain = SLOPE * math.log(1.2)  # reaching what 1.2x the compute reaches
    curves = simulated_curves(np.random.default_rng(4), {"uniform": 0.0, "curriculum": gain,
                                                         "random": -gain}, run_sd=0.002)
    s = summarise(curves)
    cur, rnd = s["arms"]["curriculum"], s["arms"]["random"]
    assert cur["compute_multiplier"]["mean"] == pytest.approx(1.2, rel=0.03)
    assert cur["compute_multiplier"]["ci"][0] > 1.0 and cur["final_minus_uniform"]["ci"][1] < 0
    assert rnd["compute_multiplier"]["mean"] == pytest.approx(1 / 1.2, rel=0.03)
    assert rnd["compute_multiplier"]["ci"][1] < 1.0 and rnd["final_minus_uniform"]["ci"][0] > 0
    assert s["arms"]["uniform"]["compute_multiplier"] == {"mean": 1.0, "ci": [1.0, 1.0], "n": 8}
    assert s["compute_curve"]["slope"] == pytest.approx(SLOPE, abs=0.02)
    assert list(s["compute_curve"]["budgets"]) == [0.5, 0.7, 1.0, 1.4]
    cc, ln_paper = s["compute_curve"], math.log(1.11)
    assert s["paper"]["final_minus_uniform"] == pytest.approx(cc["slope"] * ln_paper
                                                              + cc["curvature"] * ln_paper ** 2)
    v = {k: c["verdict"] for k, c in s["comparisons"].items()}
    assert v["uniform"].startswith("the curriculum beats uniform beyond the 95% interval")
    assert v["random"].startswith("the curriculum beats random")
    assert "| random | 8 |" in markdown_table(s)


def test_identical_arms_give_intervals_that_cover_no_effect():
    """Unbiased under the null: arms with identical weights (here: the same distribution of final
    losses) give intervals covering 0 (differences) and 1 (multipliers) in >= 90% of repetitions,
    and the mean difference is centred on 0."""
    rng = np.random.default_rng(5)
    reps, cover_d, cover_m, means = 300, 0, 0, []
    for _ in range(reps):
        s = summarise(simulated_curves(rng, {"uniform": 0.0, "curriculum": 0.0}))
        d = s["arms"]["curriculum"]["final_minus_uniform"]
        m = s["arms"]["curriculum"]["compute_multiplier"]
        cover_d += d["ci"][0] <= 0 <= d["ci"][1]
        cover_m += m["ci"][0] <= 1 <= m["ci"][1]
        means.append(d["mean"])
    assert cover_d / reps >= 0.90 and cover_m / reps >= 0.90
    assert cover_d / reps <= 0.99  # an interval that always covers would prove nothing
    assert abs(np.mean(means)) < 3 * np.std(means) / math.sqrt(reps)


def test_no_statistic_drops_a_seed():
    curves = simulated_curves(np.random.default_rng(6), {"uniform": 0.0, "curriculum": -0.01},
                              seeds=4)
    diverged = next(c for c in curves if c.arm == "curriculum" and c.seed == 1002)
    diverged.losses[-1] = float("nan")
    s = summarise(curves)
    cur = s["arms"]["curriculum"]
    assert cur["seeds"] == 4 and cur["final_minus_uniform"]["mean"] is None
    assert cur["compute_multiplier"]["mean"] is None
    assert "undefined" in s["comparisons"]["uniform"]["verdict"]
    # a missing uniform run: no pair, hence no statistic, rather than a mean over the rest
    curves = [c for c in simulated_curves(np.random.default_rng(7), {"uniform": 0.0, "curriculum": 0.0})
              if not (c.arm == "uniform" and c.seed == 1003 and c.budget == 1.0)]
    assert summarise(curves)["arms"]["curriculum"]["final_minus_uniform"]["mean"] is None


def test_multiplier_interval_widens_with_an_uncertain_slope():
    from spectrum.curriculum.stats import ComputeCurve

    d = [-0.02, -0.03, -0.01, -0.025]
    sharp = ComputeCurve(-0.3, 1e-6, 0.01, 0.99, 32, 8, (0.5, 1.0))
    vague = ComputeCurve(-0.3, 0.1, 0.01, 0.5, 32, 8, (0.5, 1.0))
    a, b = multiplier_interval(d, sharp), multiplier_interval(d, vague)
    assert a["mean"] == pytest.approx(math.exp(np.mean(d) / -0.3)) == b["mean"]
    assert b["ci"][0] < a["ci"][0] < a["ci"][1] < b["ci"][1]
    flat = ComputeCurve(0.01, 0.01, 0.01, 0.0, 32, 8, (0.5, 1.0))
    assert multiplier_interval(d, flat)["mean"] is None


def _tiny_config(vocab: int = 64, context: int = 16):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=context,
                         tie_word_embeddings=False, use_cache=False)


def test_arms_train_with_the_same_compute_and_resume(tmp_path, monkeypatch):
    """Fast variant of the controlled test: the training of the arms on a synthetic pool."""
    import json

    import torch

    from spectrum.curriculum.runner import run_arms, write_results
    from spectrum.curriculum.trial import report_section
    from spectrum.curriculum.weights import phase_schedule
    from spectrum.suite.train import OptimConfig

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # a learnable pool: half the sequences count upwards mod 64, half are noise
    base = (torch.arange(16)[None, :] + torch.randint(0, 64, (40, 1), generator=g)) % 64
    pool = torch.cat([base[:20], torch.randint(0, 64, (20, 16), generator=g)]).to(torch.int32)
    evals = ((torch.arange(16)[None, :] + torch.arange(8)[:, None] * 7) % 64).to(torch.int32)
    phases = phase_schedule(12, 4 * 16, 2, first_step=2)
    w = np.ones((40, 2))
    w[:20] = [1.8, 0.2]
    w[20:] = [0.2, 1.8]
    buckets = frequency_buckets(np.arange(40.0), 4)
    exported = np.full((40, 2), 1.0)
    exported[::2] = [1.5, 0.5]  # weights of their own, the same for every seed
    exported[1::2] = [0.5, 1.5]
    kw = dict(seeds=[1000, 1001], arms=list(ARMS), out=tmp_path, fingerprint="f1", device="cpu",
              budgets=(0.5, 1.0, 1.5), fixed={"exported": exported})
    interim = []
    curves = run_arms(_tiny_config(), OptimConfig(learning_rate=1e-2, warmup_steps=2), pool, evals,
                      w, buckets, phases, workers=2, on_seed=interim.append, **kw)
    # interim results whenever the first seeds are whole (after the first seed, then after both;
    # once only when the first seed's last run finishes after the second seed's), whole seeds only
    seen = [sorted({c.seed for c in cs}) for cs in interim]
    assert seen in ([[1000], [1000, 1001]], [[1000, 1001]])
    assert all(len(cs) == len(seen[i]) * (len(ARMS) + 2) for i, cs in enumerate(interim))
    assert len(curves) == 2 * len(ARMS) + 2 * 2
    main = [c for c in curves if c.budget == 1.0]
    for c in main:  # same compute and the same evaluation schedule in every arm
        assert c.tokens[-1] == 12 * 64 and c.tokens == main[0].tokens
        assert all(np.isfinite(c.losses))
    assert sorted(c.tokens[-1] for c in curves if c.budget != 1.0) == [6 * 64, 6 * 64, 18 * 64, 18 * 64]
    by = {(c.arm, c.seed): c for c in main}
    # the arms really differ (other weights); timing_flat differs from the curriculum too
    assert by[("uniform", 1000)].losses != by[("curriculum", 1000)].losses
    assert by[("timing_flat", 1000)].losses != by[("curriculum", 1000)].losses
    summary = write_results(curves, {"size": "tiny", "steps": 12, "tokens_per_step": 64,
                                     "pool_sequences": 40, "phases": 2, "floor": 0.25,
                                     "seeds": [1000, 1001], "buckets": 4, "eval_sequences": 8,
                                     "budgets": [0.5, 1.0, 1.5]}, tmp_path)
    assert set(summary["arms"]) == set(ARMS)
    rec = json.loads((tmp_path / "results.json").read_text())
    for arm, a in rec["summary"]["arms"].items():  # the contract others read
        assert a["seeds"] == 2
        for key in ("final_minus_uniform", "compute_multiplier"):
            assert set(a[key]) >= {"mean", "ci"} and len(a[key]["ci"]) == 2
    assert any("timing" in a for a in rec["summary"]["arms"])
    for name in ("results.json", "results.md", "curriculum_test.png"):
        assert (tmp_path / name).stat().st_size > 0
    section = report_section(tmp_path)
    assert section is not None and "| curriculum |" in section["markdown"]
    assert [row[0] for row in section["rows"]] == list(ARMS)
    # every verdict: the curriculum against each of the 5 other arms, each of the 4 others
    # against uniform (the curriculum against uniform is one claim, stated once)
    assert section["verdicts"] == summary["verdicts"] and len(section["verdicts"]) == 2 * len(ARMS) - 3
    assert section["figure"] == tmp_path / "curriculum_test.png"
    assert report_section(tmp_path / "nothing") is None
    # a repeated command reuses finished runs instead of training them again
    import spectrum.suite.train as st

    monkeypatch.setattr(st, "train_model", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = run_arms(_tiny_config(), OptimConfig(), pool, evals, w, buckets, phases, **kw)
    assert [c.losses for c in again] == [c.losses for c in curves]
    assert json.loads((tmp_path / "runs" / "random-seed1001.json").read_text())["setup"] == "f1"
    # other exported weights retrain the exported arm's runs only
    trained = []
    monkeypatch.setattr(st, "train_model", lambda *a, **k: _stub_result(trained, k))
    run_arms(_tiny_config(), OptimConfig(), pool, evals, w, buckets, phases,
             **{**kw, "fixed": {"exported": exported[::-1].copy()}})
    assert sorted(trained) == ["exported-seed1000", "exported-seed1001"]
    with pytest.raises(ValueError, match="exported"):  # an arm with weights of its own needs them
        run_arms(_tiny_config(), OptimConfig(), pool, evals, w, buckets, phases,
                 **{**kw, "fixed": None, "force": True})


def _stub_result(trained, k):
    from types import SimpleNamespace

    trained.append(k["progress"])
    return SimpleNamespace(eval_curve=[(s, 1.0) for s in k["eval_steps"]], seconds=0.0)


def test_settings_reject_too_few_budgets_and_unknown_arms():
    from pipelines.curriculum_test import CurriculumTestOptions, settings_from
    from spectrum.errors import SpectrumError

    s = settings_from(CurriculumTestOptions())
    assert s.seeds >= 8 and min(s.seed_ids) >= 1000 and len(s.budgets) >= 3 and "timing_flat" in s.arms
    with pytest.raises(SpectrumError, match="--budgets"):
        settings_from(CurriculumTestOptions(budgets="0.5"))
    with pytest.raises(SpectrumError, match="--arms"):
        settings_from(CurriculumTestOptions(arms="uniform,nope"))


@pytest.mark.slow
def test_curriculum_test_command_end_to_end_on_the_micro_suite(micro_suite, tmp_path, capsys):
    import json
    import shutil

    from pipelines.cli import main

    shutil.copytree(micro_suite.parent, tmp_path / "suite")
    config = tmp_path / "suite" / micro_suite.name
    args = ["curriculum-test", "--config", str(config), "--seeds", "2", "--size", "s1",
            "--executor", "local", "--device", "cpu", "--eval-sequences", "16", "--phases", "3"]
    # a test seed that trained a learnability run is refused, before anything is trained
    capsys.readouterr()
    assert main(args + ["--seed-base", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --seed-base: test seed(s) 0 also trained a run that measures learnability; the "
        "test needs other seeds")
    assert not (tmp_path / "suite" / "artifacts" / "curriculum").exists()
    assert main(args) == 0
    out = tmp_path / "suite" / "artifacts" / "curriculum" / "test"
    rec = json.loads((out / "results.json").read_text())
    assert rec["setup"]["size"] == "s1" and rec["setup"]["seeds"] == [1000, 1001]
    assert set(rec["summary"]["arms"]) == set(ARMS)
    assert all(a["seeds"] == 2 for a in rec["summary"]["arms"].values())
    assert rec["summary"]["compute_curve"] is not None
    assert rec["setup"]["learnability_cost"]["token_evaluations"] > 0
    # the exported arm: the export's weights for every pool sequence, from the export's own sample
    ex = rec["setup"]["exported"]
    assert ex["pool_measured"] + ex["pool_predicted"] == rec["setup"]["pool_sequences"]
    assert (tmp_path / "suite" / "artifacts" / "curriculum" / "learnability" / "fits").is_dir()
    assert rec["setup"]["frequency_match"]["matched"] and "code_commit" in rec["setup"]
    assert "p_holm" in rec["summary"]["arms"]["exported"]["final_minus_uniform"]
    assert rec["summary"]["noise"]["min_detectable_multiplier_80"] > 1
    assert (out / "curriculum_test.png").is_file() and (out / "results.md").is_file()
    # the learnability of the pool came from the fit stage over the training split
    assert (out / "learnability" / "fits" / "run=m1-d1" / "part-0.parquet").is_file()
    meta = json.loads((out / "learnability" / "evalset" / "meta.json").read_text())
    assert meta["source"]["split"] == "train"
