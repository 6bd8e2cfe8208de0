"""The controlled curriculum test: its arms and controls, its scores, and the command end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectrum.curriculum_trial import (Curve, arm_weights, frequency_buckets, markdown_table,
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
    table = markdown_table(s)
    assert "| random |" in table and "1/2" in table
