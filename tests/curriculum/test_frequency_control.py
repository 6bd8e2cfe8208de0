"""The frequency-matched control of the curriculum test: the token-frequency profile of the pool,
the quintile shares a weighting draws (checked against a brute-force draw), and the control tilted
to the curriculum's shares in every phase while its link to learnability stays broken."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from spectrum.curriculum.arms import (MATCH_TOLERANCE, arm_weights, frequency_buckets,
                                      frequency_match, frequency_match_record, frequency_profile,
                                      match_frequency, quintile_shares, shuffle_within,
                                      weight_diagnostics)


def test_frequency_profile_counts_each_sequences_tokens_per_equal_count_quintile():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 7, size=1000)
    logf = rng.normal(size=1000)
    logf[:10] = np.nan  # tokens without a frequency are not counted
    edges, prof = frequency_profile(seq, logf, 9)
    assert prof.shape == (9, 5) and prof.dtype.kind == "i"
    assert (prof[7:] == 0).all()  # sequences without tokens
    ok = ~np.isnan(logf)
    # equal-count bins over all tokens (990 distinct values: 198 each)
    assert prof.sum(0).tolist() == [198] * 5
    # brute force: each token's bin from the rank of its value among all tokens
    rank = stats.rankdata(logf[ok], method="ordinal") - 1
    q = rank * 5 // ok.sum()
    want = np.zeros((9, 5), dtype=int)
    for s, b in zip(seq[ok], q):
        want[s, b] += 1
    np.testing.assert_array_equal(prof, want)
    assert np.all(np.diff(edges) > 0) and len(edges) == 4


def test_quintile_shares_are_the_token_shares_of_a_weighted_draw():
    # exact: 2 tokens in the rarest bin, 8 in the most frequent: tokens, not sequences, count
    prof = np.array([[2, 0, 0, 0, 0], [0, 0, 0, 0, 8]])
    np.testing.assert_allclose(quintile_shares(np.ones((2, 1)), prof), [[0.2, 0, 0, 0, 0.8]])
    np.testing.assert_allclose(quintile_shares(np.array([[4.0], [1.0]]), prof),
                               [[0.5, 0, 0, 0, 0.5]])
    # brute force: draw sequences in proportion to their weight, count the drawn tokens per bin
    rng = np.random.default_rng(1)
    prof = rng.integers(0, 30, size=(12, 5)) * rng.integers(0, 2, size=(12, 1))
    w = rng.gamma(0.7, size=(12, 3))
    shares = quintile_shares(w, prof)
    assert shares.shape == (3, 5)
    for p in range(3):
        draws = rng.choice(12, size=200_000, p=w[:, p] / w[:, p].sum())
        tokens = np.bincount(draws, minlength=12) @ prof
        np.testing.assert_allclose(shares[p], tokens / tokens.sum(), atol=0.005)


def planted_pool(n: int = 3000, length: int = 32, seed: int = 2):
    """Sequences whose tokens lean frequent or rare (``tilt``), a learnability signal independent
    of it, and a curriculum that strongly favours frequent tokens early and learnable sequences
    throughout; phase 3 uniform; 20 sequences without target tokens."""
    rng = np.random.default_rng(seed)
    tilt = rng.normal(size=n)
    logf = tilt[:, None] + rng.normal(size=(n, length))
    seq = np.repeat(np.arange(n), length)
    keep = seq >= 20
    edges, prof = frequency_profile(seq[keep], logf.reshape(-1)[keep], n)
    mean_log_freq = np.where(np.arange(n) < 20, 0.0, logf.mean(1))
    learn = rng.normal(size=n)
    w = np.exp(np.stack([2.0 * tilt + learn, 1.0 * tilt + learn, learn, 0 * learn], 1))
    w /= w.mean(0)
    return w, prof, edges, mean_log_freq, learn


def test_the_control_matches_the_curricula_quintile_shares_and_not_its_learnability():
    w, prof, edges, mlf, learn = planted_pool()
    buckets = frequency_buckets(mlf, 8)
    arms = arm_weights(w, buckets, seed=1000, phase_steps=[1, 2, 4, 8], freq_profile=prof)
    ctl = arms["freq_shuffled"]
    plain = shuffle_within(w, buckets, np.random.default_rng([1000, 7919]))
    # a shuffle within frequency buckets misses the curriculum's frequency shift early on
    assert frequency_match(plain, w, prof)[0] > 0.02
    # the tilted control matches it in every phase
    assert max(frequency_match(ctl, w, prof)) < MATCH_TOLERANCE
    np.testing.assert_allclose(quintile_shares(ctl, prof), quintile_shares(w, prof), atol=1e-6)
    assert np.isfinite(ctl).all() and (ctl > 0).all()
    np.testing.assert_allclose(ctl.mean(0), 1.0)
    # the curriculum follows the planted learnability; the control does not
    for p in range(3):
        assert stats.spearmanr(w[:, p], learn)[0] > 0.4
        assert abs(stats.spearmanr(ctl[:, p], learn)[0]) < 0.08
    assert (ctl[:, 3] == 1).all()  # a uniform phase is matched by the shuffle already
    # sequences without tokens keep their shuffled weight
    np.testing.assert_allclose(ctl[:20], plain[:20])
    # the other arms draw the same random numbers as without the profile
    without = arm_weights(w, buckets, seed=1000, phase_steps=[1, 2, 4, 8])
    np.testing.assert_array_equal(without["random"], arms["random"])
    np.testing.assert_array_equal(without["freq_shuffled"], plain)
    # the record of the match, over seeds
    rec = frequency_match_record(w, buckets, [1000, 1001], prof, edges)
    assert rec["matched"] and max(rec["max_abs_diff"]) < MATCH_TOLERANCE
    assert rec["shuffle_max_abs_diff"][0] > 0.02 and len(rec["quintile_edges"]) == 4
    diag = weight_diagnostics(w, mlf, prof)
    assert np.allclose([d["quintile_shares"] for d in diag], quintile_shares(w, prof))
    # the curriculum's early phase really draws more of the most frequent quintile
    assert diag[0]["quintile_shares"][4] > diag[3]["quintile_shares"][4] + 0.1


@st.composite
def pools(draw):
    n = draw(st.integers(5, 60))
    phases = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    spread = draw(st.floats(0.0, 2.0))
    rng = np.random.default_rng(seed)
    prof = rng.integers(0, 20, size=(n, 5)) * (rng.random((n, 1)) > 0.1)
    w = np.exp(spread * rng.normal(size=(n, phases)))
    w /= w.mean(0)
    buckets = rng.integers(0, draw(st.integers(1, 4)), size=n)
    return w, prof, buckets, rng


@settings(max_examples=150, deadline=None)
@given(pools())
def test_the_control_matches_any_curriculum(pool):
    w, prof, buckets, rng = pool
    scale = rng.uniform(0.1, 10)  # any scale in, mean 1 out
    ctl = match_frequency(scale * shuffle_within(w, buckets, rng), w, prof)
    assert np.isfinite(ctl).all() and (ctl > 0).all()
    np.testing.assert_allclose(ctl.mean(0), 1.0)
    if prof.sum():
        assert max(frequency_match(ctl, w, prof)) < MATCH_TOLERANCE


def test_no_tokens_at_all_leaves_the_shuffle():
    w = np.random.default_rng(3).gamma(1.0, size=(6, 2))
    w /= w.mean(0)
    ctl = match_frequency(w, w[::-1], np.zeros((6, 5), dtype=int))
    np.testing.assert_allclose(ctl, w)
    assert frequency_match(ctl, w, np.zeros((6, 5))) == [0.0, 0.0]


def test_the_runs_train_the_tilted_control(tmp_path, monkeypatch):
    """run_arms hands every freq_shuffled run the control matched to the pool's profile."""
    import spectrum.curriculum.runner as runner
    from spectrum.curriculum.trial import Curve, curve_record
    from spectrum.curriculum.weights import phase_schedule

    w, prof, _, mlf, _ = planted_pool(n=300)
    buckets = frequency_buckets(mlf, 8)
    phases = phase_schedule(40, 64, 4, first_step=2)
    handed = {}

    def fake_run_tasks(fn, todo, *, on_result, **kw):
        for task in todo:
            handed[task[:3]] = task[3]
            on_result(task, curve_record(Curve(task[0], task[1], [0.0], [1.0], task[2])))

    monkeypatch.setattr(runner, "run_tasks", fake_run_tasks)
    runner.run_arms(None, None, None, None, w, buckets, phases, seeds=[1000, 1001],
                    arms=["uniform", "freq_shuffled", "random"], out=tmp_path, fingerprint="f",
                    freq_profile=prof)
    for seed in (1000, 1001):
        want = arm_weights(w, buckets, seed, np.diff(phases.step_edges), freq_profile=prof)
        ctl = handed[("freq_shuffled", seed, 1.0)]
        np.testing.assert_array_equal(ctl, want["freq_shuffled"])
        np.testing.assert_array_equal(handed[("random", seed, 1.0)], want["random"])
        assert max(frequency_match(ctl, w, prof)) < MATCH_TOLERANCE
