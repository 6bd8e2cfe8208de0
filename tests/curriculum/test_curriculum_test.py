"""The controlled curriculum test: its arms and controls, its scores, and the command end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectrum.curriculum.trial import (Curve, arm_weights, frequency_buckets, markdown_table,
                                       shuffle_within, summarise, tokens_to_reach)


def test_tokens_to_reach_interpolates_in_log_tokens():
    t, l = [10, 100, 1000, 10000], [5.0, 4.0, 3.0, 2.5]
    assert tokens_to_reach(t, l, 3.0) == pytest.approx(1000)
    # halfway between 4.0 and 3.0 in loss is halfway between 100 and 1000 in ln T
    assert tokens_to_reach(t, l, 3.5) == pytest.approx(math.sqrt(100 * 1000))
    assert tokens_to_reach(t, l, 6.0) == 10
    assert tokens_to_reach(t, l, 2.0) is None
    # the first crossing counts, even if the curve rises again
    assert tokens_to_reach([1, 2, 4], [3.0, 1.0, 5.0], 2.0) == pytest.approx(math.exp(math.log(2) / 2))
    assert tokens_to_reach([1, 2, 4], [np.nan, 3.0, 1.0], 2.0) == pytest.approx(math.sqrt(8))


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
    arms = arm_weights(w, buckets, seed=3)
    assert set(arms) == {"uniform", "curriculum", "freq_shuffled", "random"}
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
    again = arm_weights(w, buckets, seed=3)
    np.testing.assert_array_equal(again["random"], arms["random"])
    assert not np.array_equal(arm_weights(w, buckets, seed=4)["random"], arms["random"])
    one = shuffle_within(w, np.zeros(60, dtype=int), np.random.default_rng(0))
    assert sorted(map(tuple, one)) == sorted(map(tuple, w))


def test_summary_scores_each_seed_against_its_own_uniform_run():
    t = [100, 1000, 10000]
    curves = [Curve("uniform", 0, t, [5.0, 4.0, 3.0]), Curve("uniform", 1, t, [5.0, 4.2, 3.2]),
              Curve("curriculum", 0, t, [5.0, 3.0, 2.8]), Curve("curriculum", 1, t, [5.0, 3.6, 3.1]),
              Curve("random", 0, t, [5.0, 4.5, 3.5]), Curve("random", 1, t, [5.0, 4.5, 3.1])]
    s = summarise(curves)
    runs = {(r["arm"], r["seed"]): r for r in s["runs"]}
    assert runs[("curriculum", 0)]["tokens_to_target"] == pytest.approx(1000)
    assert runs[("curriculum", 0)]["speedup"] == pytest.approx(10.0)
    # seed 1: target 3.2, curriculum crosses between 3.6 @1e3 and 3.1 @1e4: 4/5 of the way in ln T
    assert runs[("curriculum", 1)]["tokens_to_target"] == pytest.approx(10 ** (3 + 0.8))
    assert runs[("random", 0)]["tokens_to_target"] is None
    assert runs[("uniform", 1)]["speedup"] == pytest.approx(1.0)
    a = s["arms"]
    assert list(a) == ["uniform", "curriculum", "random"]
    assert a["random"]["reached"] == 1 and a["random"]["seeds"] == 2
    assert a["curriculum"]["final_loss"]["mean"] == pytest.approx(2.95)
    assert a["curriculum"]["final_loss"]["std"] == pytest.approx(np.std([2.8, 3.1], ddof=1))
    assert a["curriculum"]["final_minus_uniform"]["mean"] == pytest.approx(((2.8 - 3.0) + (3.1 - 3.2)) / 2)
    table = markdown_table(s)
    assert "| -0.1500 ± 0.0707 |" in table
    assert "| random |" in table and "1/2" in table


def _tiny_config(vocab: int = 64, context: int = 16):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=context,
                         tie_word_embeddings=False, use_cache=False)


def test_arms_train_with_the_same_compute_and_resume(tmp_path, monkeypatch):
    """Fast variant of the controlled test: the training of the arms on a synthetic pool."""
    import json

    import torch

    from pipelines.curriculum_test import run_arms, write_results
    from spectrum.curriculum.weights import phase_schedule
    from spectrum.curriculum.trial import report_section
    from spectrum.suite.train import OptimConfig

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # a learnable pool: half the sequences count upwards mod 64, half are noise
    base = (torch.arange(16)[None, :] + torch.randint(0, 64, (40, 1), generator=g)) % 64
    pool = torch.cat([base[:20], torch.randint(0, 64, (20, 16), generator=g)]).to(torch.int32)
    evals = ((torch.arange(16)[None, :] + torch.arange(8)[:, None] * 7) % 64).to(torch.int32)
    phases = phase_schedule(12, 4 * 16, 2)
    w = np.ones((40, 2))
    w[:20] = 1.8
    w[20:] = 0.2
    buckets = frequency_buckets(np.arange(40.0), 4)
    kw = dict(seeds=2, arms=["uniform", "curriculum", "freq_shuffled", "random"], out=tmp_path,
              fingerprint="f1", device="cpu")
    curves = run_arms(_tiny_config(), OptimConfig(learning_rate=1e-2, warmup_steps=2), pool, evals,
                      w, buckets, phases, **kw)
    assert len(curves) == 8
    for c in curves:  # same compute and the same evaluation schedule in every arm
        assert c.tokens[-1] == 12 * 64 and c.tokens == curves[0].tokens
        assert all(np.isfinite(c.losses))
    by = {(c.arm, c.seed): c for c in curves}
    # the arms really differ (other weights), and a seed is reproducible
    assert by[("uniform", 0)].losses != by[("curriculum", 0)].losses
    summary = write_results(curves, {"size": "tiny", "steps": 12, "tokens_per_step": 64,
                                     "pool_sequences": 40, "phases": 2, "floor": 0.25,
                                     "seeds": [0, 1], "buckets": 4, "eval_sequences": 8}, tmp_path)
    assert set(summary["arms"]) == set(kw["arms"])
    assert summary["arms"]["uniform"]["reached"] == 2
    for name in ("results.json", "results.md", "curriculum_test.png"):
        assert (tmp_path / name).stat().st_size > 0
    section = report_section(tmp_path)
    assert section is not None and "| curriculum |" in section["markdown"]
    assert [row[0] for row in section["rows"]] == ["uniform", "curriculum", "freq_shuffled", "random"]
    assert section["figure"] == tmp_path / "curriculum_test.png"
    assert report_section(tmp_path / "nothing") is None
    # a repeated command reuses finished runs instead of training them again
    import spectrum.suite.train as st

    monkeypatch.setattr(st, "train_model", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = run_arms(_tiny_config(), OptimConfig(), pool, evals, w, buckets, phases, **kw)
    assert [c.losses for c in again] == [c.losses for c in curves]
    rec = json.loads((tmp_path / "runs" / "random-seed1.json").read_text())
    assert rec["setup"] == "f1"


@pytest.mark.slow
def test_curriculum_test_command_end_to_end_on_the_micro_suite(micro_suite, tmp_path):
    import json
    import shutil

    from pipelines.cli import main

    shutil.copytree(micro_suite.parent, tmp_path / "suite")
    config = tmp_path / "suite" / micro_suite.name
    assert main(["curriculum-test", "--config", str(config), "--seeds", "2", "--size", "s1",
                 "--executor", "local", "--device", "cpu", "--eval-sequences", "16",
                 "--phases", "3"]) == 0
    out = tmp_path / "suite" / "artifacts" / "curriculum" / "test"
    rec = json.loads((out / "results.json").read_text())
    assert rec["setup"]["size"] == "s1" and rec["setup"]["seeds"] == [0, 1]
    assert set(rec["summary"]["arms"]) == {"uniform", "curriculum", "freq_shuffled", "random"}
    assert all(a["seeds"] == 2 for a in rec["summary"]["arms"].values())
    assert (out / "curriculum_test.png").is_file() and (out / "results.md").is_file()
    # the learnability of the pool came from the fit stage over the training split
    assert (out / "learnability" / "fits" / "run=m1-d1" / "part-0.parquet").is_file()
    meta = json.loads((out / "learnability" / "evalset" / "meta.json").read_text())
    assert meta["source"]["split"] == "train"


def test_weight_diagnostics_measure_concentration_and_frequency_preference():
    from spectrum.curriculum.trial import weight_diagnostics

    freq = np.linspace(-8, -2, 10)
    w = np.stack([np.ones(10), np.exp(freq) / np.exp(freq).mean(), np.r_[np.full(5, 2.0), np.zeros(5)]], 1)
    d = weight_diagnostics(w, freq)
    assert d[0]["ess_fraction"] == pytest.approx(1.0) and d[0]["spearman_freq"] == 0.0
    assert d[1]["spearman_freq"] == pytest.approx(1.0)
    assert d[2]["ess_fraction"] == pytest.approx(0.5)  # half the pool carries all the weight
    assert d[2]["spearman_freq"] < 0
