import numpy as np
import polars as pl
import pytest
from scipy import stats

from spectrum.analysis.spectra.spectrum import bin_index, log_time_grid
from spectrum.analysis.stats import bootstrap_weights
from tests.analysis.oracles import annotation_slices, compare_mean_tau, compute_spectrum


def test_hand_computed_spectrum():
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    tau = np.array([0.5, 0.7, 1.5, 5.0, 2.5])
    delta = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    include = np.array([True, True, True, True, False])
    sp = compute_spectrum(tau, delta, np.arange(5), edges, include=include, n_boot=0)
    # N = 5 tokens (the excluded one and the off-grid one count in N only)
    np.testing.assert_allclose(sp.S, [3 / 5, 3 / 5, 0.0])
    np.testing.assert_allclose(sp.count, [2 / 5, 1 / 5, 0.0])
    assert (sp.n_tokens, sp.n_in, sp.n_off_grid) == (5, 3, 1)


def test_bin_widths_make_a_density():
    edges = np.array([0.0, 0.5, 2.5])
    sp = compute_spectrum(np.array([0.25, 1.0]), np.array([1.0, 1.0]), np.arange(2), edges,
                          n_boot=0)
    np.testing.assert_allclose(sp.S, [0.5 / 0.5, 0.5 / 2.0])
    assert (sp.S * np.diff(edges)).sum() == pytest.approx(1.0)


def test_bin_index_edges():
    edges = np.array([0.0, 1.0, 2.0])
    np.testing.assert_array_equal(bin_index(np.array([-0.1, 0.0, 1.0, 2.0, 2.1, np.nan]), edges),
                                  [-1, 0, 1, 1, -1, -1])


def test_grid_spans_every_run():
    edges = log_time_grid([(5.0, 9.0), (6.0, 12.0)], n_bins=7)
    assert edges[0] == 5.0 and edges[-1] == 12.0 and len(edges) == 8


def test_bootstrap_bands_equal_an_explicit_resampling():
    rng = np.random.default_rng(1)
    n_seq, per = 12, 5
    groups = np.repeat(np.arange(n_seq), per)
    tau = rng.uniform(0, 3, n_seq * per)
    delta = rng.uniform(0, 1, n_seq * per)
    edges = np.linspace(0, 3, 4)
    W = bootstrap_weights(n_seq, 3, seed=0)
    vec = compute_spectrum(tau, delta, groups, edges, weights=W[:1])
    # the same replicate built by copying whole sequences
    idx = np.concatenate([np.flatnonzero(groups == g) for g in range(n_seq)
                          for _ in range(int(W[0, g]))])
    direct = compute_spectrum(tau[idx], delta[idx], np.arange(idx.size), edges, n_boot=0)
    np.testing.assert_allclose(vec.S_lo, direct.S)
    np.testing.assert_allclose(vec.count_hi, direct.count)


def test_spectrum_recovers_a_planted_density_within_its_bands():
    rng = np.random.default_rng(0)
    n_seq, per = 600, 32
    n = n_seq * per
    # learning times from a two-component mixture; amplitudes independent of tau, mean 0.8
    comp = rng.random(n) < 0.3
    tau = np.where(comp, rng.normal(8.0, 0.5, n), rng.normal(10.5, 1.0, n))
    delta = rng.gamma(2.0, 0.4, n)
    included = rng.random(n) < 0.8
    edges = np.linspace(6.0, 13.0, 29)
    sp = compute_spectrum(tau, delta, np.repeat(np.arange(n_seq), per), edges, include=included,
                          n_boot=300, seed=3)

    def cdf(x):
        return 0.3 * stats.norm.cdf(x, 8.0, 0.5) + 0.7 * stats.norm.cdf(x, 10.5, 1.0)

    density = np.diff(cdf(edges)) / np.diff(edges)
    truth_S = 0.8 * 0.8 * density
    truth_count = 0.8 * density
    inside_S = (sp.S_lo <= truth_S) & (truth_S <= sp.S_hi)
    inside_c = (sp.count_lo <= truth_count) & (truth_count <= sp.count_hi)
    assert inside_S.mean() >= 0.85, inside_S
    assert inside_c.mean() >= 0.85, inside_c
    # and the bands are informative: narrower than the signal at its peak
    peak = np.argmax(truth_S)
    assert sp.S_hi[peak] - sp.S_lo[peak] < 0.3 * truth_S[peak]


def test_comparison_detects_a_planted_shift_and_not_a_null_one():
    rng = np.random.default_rng(2)
    n_seq, per = 200, 20
    n = n_seq * per
    groups = np.repeat(np.arange(n_seq), per)
    frequent = rng.random(n) < 0.5
    delta = rng.gamma(3.0, 0.5, n)
    tau_shift = rng.normal(10, 1, n) - 0.5 * frequent
    c = compare_mean_tau(tau_shift, delta, groups, frequent, ~frequent, question="q",
                         a="frequent", b="rare", n_boot=300)
    assert c.hi < 0 and c.verdict == "frequent earlier"
    assert c.lo < -0.5 < c.hi + 0.2
    tau_null = rng.normal(10, 1, n)
    c0 = compare_mean_tau(tau_null, delta, groups, frequent, ~frequent, question="q",
                          a="frequent", b="rare", n_boot=300)
    assert c0.lo < 0 < c0.hi
    assert c0.verdict.startswith("no clear difference")


def test_annotation_slices():
    n = 400
    rng = np.random.default_rng(0)
    tokens = pl.DataFrame({"target_freq": rng.random(n), "pos": np.tile(np.arange(40), 10),
                           "word_start": rng.random(n) < 0.3})
    sl = annotation_slices(tokens, freq_buckets=4)
    freq = [s for s in sl if s.axis == "frequency"]
    assert [s.mask.sum() for s in freq] == [100, 100, 100, 100]
    assert "rarest" in freq[0].name and "most frequent" in freq[-1].name
    pos = [s for s in sl if s.axis == "position"]
    assert [s.name for s in pos] == ["pos 0-3", "pos 4-15", "pos 16-39"]
    assert sum(s.mask.sum() for s in pos) == n
    ws = [s for s in sl if s.axis == "word_start"]
    assert ws[0].mask.sum() + ws[1].mask.sum() == n
    # missing annotations give no slices rather than an error
    assert annotation_slices(pl.DataFrame({"seq_id": [0, 1]})) == []
