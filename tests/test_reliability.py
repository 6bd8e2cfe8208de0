"""Reliability across seed replicas against independent truths: numpy's correlation, a kappa
computed by hand, and planted standard errors that under-cover by a known factor."""

from __future__ import annotations

import numpy as np
import pytest

from spectrum.analysis.runs.reliability import PairCounts, cohen_kappa, cross_checked


def _run(tau, se, kind=None, step=None, inside=None):
    n = len(tau)
    return {"tau": tau, "tau_se": se,
            "inside": np.ones(n, bool) if inside is None else inside,
            "learned": np.ones(n, bool),
            "kind": np.zeros(n, int) if kind is None else kind,
            "step": np.ones(n, int) if step is None else step}


def test_kappa_by_hand() -> None:
    # 50 pairs: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no
    confusion = np.array([[15, 10], [5, 20]])
    po = 35 / 50
    pe = (25 / 50) * (30 / 50) + (25 / 50) * (20 / 50)
    assert cohen_kappa(confusion) == pytest.approx((po - pe) / (1 - pe))
    assert cohen_kappa(np.zeros((2, 2))) is None
    assert cohen_kappa(np.array([[0, 0], [0, 7]])) is None  # one category: kappa undefined


def test_tau_correlation_over_chunks_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(10, 1, 1000)
    b = 0.6 * a + rng.normal(0, 0.8, 1000)
    inside = rng.random(1000) > 0.1
    counts = PairCounts(n_kinds=6)
    for lo in range(0, 1000, 128):  # chunked as the report reads tokens
        sl = slice(lo, lo + 128)
        counts.add(_run(a[sl], np.ones(len(a[sl])), inside=inside[sl]), _run(b[sl], np.ones(len(a[sl]))))
    assert counts.n_tau == inside.sum()
    assert counts.tau_corr() == pytest.approx(np.corrcoef(a[inside], b[inside])[0, 1], abs=1e-12)


def test_step_and_kind_kappa_ignore_tokens_without_a_call() -> None:
    a = _run(np.zeros(6), np.ones(6), kind=np.array([0, 1, 2, -1, 0, 0]), step=np.array([1, 0, -1, 1, 1, 0]))
    b = _run(np.zeros(6), np.ones(6), kind=np.array([0, 1, 2, 0, 1, 0]), step=np.array([1, 0, 1, -1, 0, 0]))
    counts = PairCounts(n_kinds=6)
    counts.add(a, b)
    assert counts.step.sum() == 4 and counts.kind.sum() == 5


def _pair(rng, n, true_sd, stated_se):
    tau = rng.normal(12, 1, n)
    a = tau + rng.normal(0, true_sd, n)
    b = tau + rng.normal(0, true_sd, n)
    counts = PairCounts(n_kinds=6)
    counts.add(_run(a, np.full(n, stated_se)), _run(b, np.full(n, stated_se)))
    return counts


def test_under_covering_errors_are_corrected_by_a_factor_from_other_pairs() -> None:
    rng = np.random.default_rng(1)
    # the real scatter is 2.5x the stated standard error
    pairs = {(f"s{i}", f"s{i + 1}"): _pair(rng, 4000, 0.25, 0.1) for i in (1, 3, 5)}
    out = cross_checked(pairs)
    for pair, entry in out.items():
        assert entry["se_coverage_uncorrected"] < 0.6
        assert entry["se_factor"] == pytest.approx(2.5, rel=0.1)
        assert 0.93 <= entry["se_coverage"] <= 0.97
        assert pair not in [tuple(p) for p in entry["se_factor_from"]]


def test_right_errors_cover_and_one_pair_cannot_be_corrected() -> None:
    rng = np.random.default_rng(2)
    right = _pair(rng, 4000, 0.1, 0.1)
    assert right.coverage() == pytest.approx(0.95, abs=0.015)
    out = cross_checked({("a", "b"): right})
    assert out[("a", "b")]["se_coverage"] is None and "one replicated pair" in out[("a", "b")]["se_reason"]
