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


# --- the report's pass: replicated points of a manifest, read from fits files -----------------

def _replica_world(root):
    """Synthetic artifacts whose fits are the planted parameters: tau differs between seeds by
    N(0, 0.05) per run and every stated tau_se is 0.05, so |z| is the absolute value of a
    standard normal (coverage 0.95, factor 1). Point m1-d1 has 4 seeds, m3-d1 2."""
    import yaml

    from tests.synthetic import make_synthetic_artifacts

    runs = [("m1-d1", 1e5, 1e6, "fit", 0), ("m1-d1-s1", 1e5, 1e6, "fit", 1),
            ("m1-d1-s2", 1e5, 1e6, "fit", 2), ("m1-d1-s3", 1e5, 1e6, "fit", 3),
            ("m3-d1", 1e6, 1e6, "fit", 0), ("m3-d1-s1", 1e6, 1e6, "fit", 1),
            ("m3-d3", 1e6, 1e7, "fit", 0)]
    path = make_synthetic_artifacts(root, n_seq=64, context=32, runs=runs, n_steps=8)
    manifest = yaml.safe_load(path.read_text())
    for spec, (_, _, _, _, seed) in zip(manifest["runs"], runs):
        spec["seed"] = seed
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def test_replicated_points_of_a_manifest(tmp_path) -> None:
    import polars as pl

    from spectrum.analysis.runs.reliability import reliability_summary
    from spectrum.analysis.runs.run_data import load_runs
    from spectrum.manifest import load_manifest

    manifest = load_manifest(_replica_world(tmp_path))
    runs = load_runs(manifest, chunk=500)  # chunks that do not divide the tokens
    out = reliability_summary(runs)
    assert set(out) == {"m1-d1", "m3-d1"}  # m3-d3 has one seed
    m1 = out["m1-d1"]
    assert m1["runs"] == ["m1-d1", "m1-d1-s1", "m1-d1-s2", "m1-d1-s3"] and len(m1["pairs"]) == 6
    # independent truth: the fits files read whole
    fits = {r.name: pl.read_parquet(r.fits_path) for r in runs}
    x = {r.name: r.x[r.scored] for r in runs}
    a, b = fits["m1-d1"], fits["m1-d1-s2"]
    keep = ((a["kind"] == "learned") & (b["kind"] == "learned")).to_numpy()
    for name, f in (("m1-d1", a), ("m1-d1-s2", b)):
        t = f["tau"].to_numpy()
        keep &= (t >= x[name].min()) & (t <= x[name].max())
    pair = next(p for p in m1["pairs"] if p["runs"] == ["m1-d1", "m1-d1-s2"])
    assert pair["n_tokens"] == keep.sum()
    assert pair["tau_corr"] == pytest.approx(
        np.corrcoef(a["tau"].to_numpy()[keep], b["tau"].to_numpy()[keep])[0, 1], abs=1e-9)
    assert m1["n_tokens"] == sum(p["n_tokens"] for p in m1["pairs"])
    # stated errors are right: coverage near 0.95 before and after, factors near 1, each from
    # other pairs only (with 4 seeds, the pair that shares no run)
    assert 0.92 <= m1["se_coverage_uncorrected"] <= 0.98
    assert 0.92 <= m1["se_coverage"] <= 0.98
    for p in m1["pairs"]:
        assert p["se_factor"] == pytest.approx(1.0, abs=0.15)
        assert p["se_factor_from"] == [sorted(set(m1["runs"]) - set(p["runs"]))]
    assert "never on the pair it is scored on" in m1["se_correction"]
    # one pair: the correction cannot be estimated, and the report says so
    m3 = out["m3-d1"]
    assert len(m3["pairs"]) == 1 and m3["se_coverage"] is None
    assert m3["se_coverage_uncorrected"] is not None
    assert "cannot be estimated" in m3["se_correction"]


def test_report_section_per_point() -> None:
    from types import SimpleNamespace

    from spectrum.report.sections import reliability_section

    assert reliability_section(SimpleNamespace(scores={"stepwise": {}})) == []
    pair = {"runs": ["a", "b"], "tau_corr": 0.5, "kappa_step": 0.1, "kappa_kind": 0.4,
            "se_coverage": None, "se_coverage_uncorrected": 0.7, "se_factor": None,
            "n_tokens": 10}
    entry = {**pair, "runs": ["a", "b"], "pairs": [pair], "se_correction": "cannot be estimated"}
    scores = {"stepwise": {"reliability": {"a": entry}}}
    blocks = reliability_section(SimpleNamespace(scores=scores))
    assert blocks[0].text == "Do per-token results replicate across seeds?"
    table = next(b for b in blocks if b.kind == "table")
    assert [r[0] for r in table.rows] == ["a vs b", "pooled"] and table.rows[0][5] == "0.7"
    assert blocks[-1].text == "cannot be estimated"
