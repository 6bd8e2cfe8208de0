"""Seed noise, the three-way verdict and Holm's correction (spectrum.analysis.heldout.noise) against
planted truths; and the planted worlds with realistic run-level noise (tests.planted_noise)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from spectrum.analysis.heldout.noise import (assess, family_stats, holm, jackknife_interval,
                                     leave_one_seed_out, needed, skill, unexplained)
from spectrum.manifest import load_manifest
from spectrum.layout import loss_shard
from tests.planted_noise import (NoiseSpec, ar1, checkpoint_steps, clean_curves, planted_suite,
                                 planted_world, write_world)

SIGMA = 0.5  # planted noise sd of one replica


def _family(rng, J=60, R=4, sigma=SIGMA, shared=0.0):
    """True values t (J,) and R replicas; ``shared`` of the noise variance is a shift common to
    all targets of a replica (a seed's run-level noise)."""
    t = rng.normal(0.0, 1.0, J)
    noise = (np.sqrt(1 - shared) * rng.normal(0, sigma, (R, J))
             + np.sqrt(shared) * rng.normal(0, sigma, (R, 1)))
    return t, t + noise


def _covers(ci, value) -> bool:
    return ci is not None and ci[0] <= value <= ci[1]


# ---------------------------------------------------------------------------------------------
# the estimates

def test_intervals_cover_the_planted_noise_signal_and_snr():
    rng = np.random.default_rng(0)
    n_fam, R = 200, 4
    hits = {"snr": 0, "noise": 0, "signal": 0, "score": 0}
    for _ in range(n_fam):
        t, y = _family(rng, R=R)
        p = t + rng.normal(0, 0.6, t.size)
        r = assess(y, p)
        signal = np.var(t, ddof=1)
        hits["snr"] += _covers(r.noise.snr_ci, signal / (SIGMA ** 2 / R))
        ci = _ci_of(y, p, "noise_var")
        hits["noise"] += _covers(ci, SIGMA ** 2)
        hits["signal"] += _covers(_ci_of(y, p, "signal_var"), signal)
        true_r2 = 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2)
        hits["score"] += _covers(r.score_ci, true_r2)
    for key, h in hits.items():
        assert 0.90 <= h / n_fam <= 0.99, (key, h / n_fam)


def _ci_of(y, p, key):
    est = family_stats(y[None], p)[key][0]
    return jackknife_interval(key, est, leave_one_seed_out(y, p)[key])


def test_point_estimates_are_unbiased_and_a_common_seed_shift_is_not_signal():
    """Half the noise a shift shared by every target of a seed: the pooled noise variance still
    recovers the planted one, and the signal variance is corrected with the noise that moves
    targets against each other (subtracting noise_var / n instead would eat half the noise's
    worth of signal)."""
    rng = np.random.default_rng(1)
    R, J, n_fam = 4, 40, 400
    est, naive, truth, noise = [], [], [], []
    for _ in range(n_fam):
        t, y = _family(rng, J=J, R=R, shared=0.5)
        s = family_stats(y[None], t)
        est.append(s["signal_var"][0])
        naive.append(np.var(y.mean(0), ddof=1) - s["noise_var"][0] / R)
        truth.append(np.var(t, ddof=1))
        noise.append(s["noise_var"][0])
    err = np.array(est) - np.array(truth)
    se = err.std() / np.sqrt(n_fam)
    assert abs(err.mean()) < 3 * se + 1e-3
    assert abs(np.mean(noise) - SIGMA ** 2) < 0.01
    # the naive rule is biased low by about half of sigma^2 / R
    bias = np.mean(naive) - np.mean(truth)
    assert bias < -0.5 * 0.5 * SIGMA ** 2 / R


def test_oracle_ceiling_is_the_r2_of_the_truth_against_one_replica():
    rng = np.random.default_rng(2)
    R, J = 4, 400
    ceilings, empirical, closed = [], [], []
    for _ in range(100):
        t, y = _family(rng, J=J, R=R)
        s = family_stats(y[None], t)
        ceilings.append(s["oracle_ceiling"][0])
        one = y[0]
        empirical.append(1 - np.sum((one - t) ** 2) / np.sum((one - one.mean()) ** 2))
        snr1 = np.var(t, ddof=1) / SIGMA ** 2
        closed.append(snr1 / (1 + snr1))
    assert abs(np.mean(ceilings) - np.mean(closed)) < 0.005
    assert abs(np.mean(ceilings) - np.mean(empirical)) < 0.005


def test_corrected_score_is_the_r2_against_the_true_values():
    rng = np.random.default_rng(3)
    scores, truths, raws = [], [], []
    for _ in range(200):
        t, y = _family(rng, J=50, R=4, sigma=0.8)
        p = 0.7 * t + rng.normal(0, 0.3, t.size)
        scores.append(family_stats(y[None], p)["score_corrected"][0])
        truths.append(1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))
        m = y.mean(0)
        raws.append(1 - np.sum((p - m) ** 2) / np.sum((m - m.mean()) ** 2))
    assert abs(np.mean(scores) - np.mean(truths)) < 0.02
    assert np.mean(raws) < np.mean(truths) - 0.05  # the raw R^2 against the noisy means is lower


def test_sequences_are_resampled_alike_for_measurement_and_prediction():
    rng = np.random.default_rng(4)
    R, J, S = 4, 30, 40
    t = rng.normal(0, 1, J)
    per_seq = rng.normal(0, 2.0, (J, S))  # which sequences were drawn: shared by every seed
    parts = t[None, :, None] + per_seq[None] + rng.normal(0, 0.3, (R, J, 1))
    means = parts.mean(axis=2)
    pred = t + rng.normal(0, 0.2, J)
    a, b = assess(means, pred), assess(parts, pred)
    assert a.score == pytest.approx(b.score) and a.noise.snr == pytest.approx(b.noise.snr)
    # the measurement's sequence noise is uncertainty a prediction without it does not share
    assert (b.score_ci[1] - b.score_ci[0]) > 1.5 * (a.score_ci[1] - a.score_ci[0])
    # a per-sequence prediction that carries the same sequences' values: one draw moves both
    shared = t[:, None] + per_seq + rng.normal(0, 0.2, (J, 1))
    c = assess(parts, shared)
    assert (c.score_ci[1] - c.score_ci[0]) < 0.5 * (b.score_ci[1] - b.score_ci[0])


# ---------------------------------------------------------------------------------------------
# verdicts on planted worlds

def _dldlnt_family(w, law=None):
    """dL/dlnT of every held-out point after the warmup: (seeds, targets) and the prediction
    of ``law`` (the world's own by default) without noise."""
    rows, preds = [], []
    for point, by_seed in sorted(w.replicas().items()):
        seeds = sorted(by_seed)
        x = w.x[by_seed[seeds[0]]]
        slope = lambda L: (np.diff(L) / np.diff(x))[2:]  # noqa: E731
        rows.append(np.stack([slope(w.losses[by_seed[s]].mean(0)) for s in seeds]))
        clean, _ = clean_curves(law or w.world, w.truth, w.run(by_seed[seeds[0]]), x)
        preds.append(slope(clean.mean(0)))
    return np.concatenate(rows, axis=1), np.concatenate(preds)


def test_three_verdicts_where_they_should_be():
    signal = assess(*_dldlnt_family(planted_world("step")))
    assert signal.verdict == "predicts", signal.to_json()
    assert signal.noise.snr > 9 and signal.noise.oracle_ceiling > 0.5
    other = assess(*_dldlnt_family(planted_world("other_law"), law="step"))
    assert other.verdict == "does_not_predict", other.to_json()
    swamped = assess(*_dldlnt_family(planted_world("step", noise=NoiseSpec(run_sd=0.6))))
    assert swamped.verdict == "not_measurable" and swamped.reason, swamped.to_json()
    assert swamped.noise.snr < 1
    # what it would need: replicas for snr 9 at its snr per replica
    n = swamped.noise.n_harmonic
    want = max(math.ceil(9 / (swamped.noise.snr / n)), 2)
    assert f"{want} replicas per point give snr 9" in needed(swamped)
    assert needed(signal) == ""


def test_too_few_replicas_or_targets_is_not_measurable_with_a_reason():
    rng = np.random.default_rng(5)
    t, y = _family(rng, J=40, R=4)
    one = assess(y[:1], t)
    assert one.verdict == "not_measurable" and "seed replica" in one.reason
    assert one.noise.snr is None and one.score is None and one.rmse is not None
    # replicas missing everywhere but at one seed count as one replica
    y2 = y.copy()
    y2[1:] = np.nan
    assert assess(y2, t).noise.replicas == 1
    few = assess(y[:, :4], t[:4] + 0.1)
    assert few.verdict == "not_measurable" and "fewer than 5" in few.reason
    assert few.score is None and few.noise.snr is None and few.noise.noise_var is not None
    # the error against the noise: RMSE of prediction - mean over sqrt(noise_var / n)
    m = y[:, :4].mean(0)
    expect = np.sqrt(np.mean((t[:4] + 0.1 - m) ** 2) / (few.noise.noise_var / 4))
    assert few.error_over_noise == pytest.approx(expect)
    two = assess(y[:2], t)
    assert two.verdict == "not_measurable" and two.noise.noise_var is not None
    assert "a third seed" in needed(two)


def test_result_serialises_to_the_scores_contract():
    rng = np.random.default_rng(6)
    t, y = _family(rng, J=30, R=5)
    y[0, :3] = np.nan  # one seed lacks some targets
    for result in (assess(y, t), assess(y[:1], t), assess(y[:, :3], t[:3])):
        doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
        assert doc["verdict"] in ("predicts", "does_not_predict", "not_measurable")
        assert set(doc["noise"]) >= {"snr", "snr_ci", "noise_var", "signal_var",
                                     "oracle_ceiling", "replicas"}
        assert set(doc["noise"]["oracle_ceiling"]) == {"r2", "ci"}
        assert set(doc["score_corrected"]) >= {"value", "ci"}
        if doc["noise"]["snr"] is None:
            assert doc["noise"]["reason"]
        if doc["score_corrected"]["value"] is None:
            assert doc["score_corrected"]["reason"]
    ok = assess(y, t).to_json()
    assert ok["verdict"] == "predicts" and ok["noise"]["replicas"] == 5


def test_a_non_finite_prediction_is_refused():
    rng = np.random.default_rng(7)
    t, y = _family(rng, J=10, R=3)
    t[2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        assess(y, t)


# ---------------------------------------------------------------------------------------------
# Holm

def test_holm_against_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    # capped at 1; NaN is not in the family (m = 2 here)
    np.testing.assert_allclose(holm([0.7, np.nan, 0.2]), [0.7, np.nan, 0.4])
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# the generator

def _lag1(series: np.ndarray) -> float:
    return float(np.sum(series[..., 1:] * series[..., :-1]) / np.sum(series[..., :-1] ** 2))


def test_run_level_noise_is_ar1_with_the_planted_sd_and_shared_by_seed():
    runs = planted_suite(heldout_seeds=tuple(range(1, 41)))
    w = planted_world("step", runs=runs, n_seq=2, context=4)
    noise = np.stack([w.run_noise[r.name] for r in runs])
    assert noise.std() == pytest.approx(0.04, rel=0.1)
    assert _lag1(noise) == pytest.approx(0.4, abs=0.08)
    # runs of one seed share its component: correlation about seed_share, 0 across seeds
    by_seed: dict[int, list[np.ndarray]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, []).append(w.run_noise[r.name])
    same = [np.sum(a * b) for v in by_seed.values() for i, a in enumerate(v) for b in v[i + 1:]]
    seeds = sorted(by_seed)
    other = [np.sum(by_seed[s][0] * by_seed[u][0]) for s, u in zip(seeds, seeds[1:])]
    var = np.sum(noise ** 2) / noise.shape[0]
    assert np.mean(same) / var == pytest.approx(0.5, abs=0.12)
    assert abs(np.mean(other) / var) < 0.12
    for r in runs:
        own = w.run_noise[r.name] - w.seed_noise[r.seed]
        assert not np.allclose(own, 0)
    # every token of a run carries the run's curve; the rest is AR(1) per token
    name = runs[-1].name
    residual = w.losses[name] - w.clean[name] - w.run_noise[name]
    assert residual.std() == pytest.approx(0.05, rel=0.15)
    assert _lag1(residual) == pytest.approx(0.3, abs=0.1)


def test_ar1_has_the_planted_autocorrelation_and_sd():
    x = ar1(np.random.default_rng(8), (4000, 30), 0.4, 0.04)
    assert x.std() == pytest.approx(0.04, rel=0.03)
    assert _lag1(x) == pytest.approx(0.4, abs=0.02)
    assert _lag1(x[:, ::2]) == pytest.approx(0.16, abs=0.03)  # rho^2 at lag 2


def test_worlds_follow_their_laws():
    runs = planted_suite(heldout_seeds=(1,))
    quiet = NoiseSpec(run_sd=0.0, token_sd=0.0, tau_sd=0.0)
    step, smooth, other = (planted_world(k, runs=runs, noise=quiet, n_seq=4, context=8)
                           for k in ("step", "smooth", "other_law"))
    for r in runs:
        np.testing.assert_allclose(step.losses[r.name], step.clean[r.name])
        steps = step.steps[r.name]
        assert len(steps) == 16 and np.all(np.diff(steps) > 0) and steps[0] == 1
        assert steps[-1] == round(r.tokens / 1000)
        same = np.allclose(other.losses[r.name], step.losses[r.name])
        at_reference = r.point == (1e6, 1e6)  # where both laws agree (ln M, ln D at the origin)
        assert same == (r.role == "fit" or at_reference), r.name
        assert smooth.tau[r.name] is None and step.tau[r.name] is not None
        # smooth tokens decline monotonically, step tokens fall around their tau
        assert np.all(np.diff(smooth.losses[r.name], axis=1) < 0)
    # tau moves with ln M by the planted law (-0.3 per unit on average) in the step world
    a, b = step.tau["m1-d2"], step.tau["m4-d2"]
    assert np.mean(b - a) / np.log(30) == pytest.approx(-0.3, abs=0.02)


def test_written_world_loads_as_a_manifest_with_seeds(tmp_path):
    runs = planted_suite(heldout_seeds=(3, 5))
    w = planted_world("smooth", runs=runs, n_seq=2, context=8)
    manifest = load_manifest(write_world(w, tmp_path))
    assert [r.name for r in manifest.runs] == [r.name for r in runs]
    held = manifest.heldout_runs
    assert {r.seed for r in held} == {3, 5} and {r.seed for r in manifest.fit_runs} == {0}
    points = {}
    for r in held:
        points.setdefault(r.point, set()).add(r.seed)
    assert len(points) == 6 and all(s == {3, 5} for s in points.values())
    name = held[0].name
    step = int(w.steps[name][5])
    table = pq.read_table(loss_shard(manifest.out, name, step))
    np.testing.assert_allclose(table.column("loss").to_numpy(),
                               w.losses[name][:, 5].astype(np.float32))
    assert checkpoint_steps(1e6, 16)[-1] == 1000


def test_skill_against_a_baseline_and_what_it_leaves_unexplained():
    rng = np.random.default_rng(9)
    R, J = 5, 60
    t = rng.normal(0, 1, J)
    y = t + rng.normal(0, 0.3, (R, J))
    null = 0.8 * t  # a baseline that explains most of the spread
    good = t + rng.normal(0, 0.02, J)
    s = skill(y, good, null)
    true_skill = 1 - np.mean((good - t) ** 2) / np.mean((null - t) ** 2)
    assert s["value"] == pytest.approx(true_skill, abs=0.1) and s["ci"][0] > 0.5
    assert skill(y, null, null)["value"] == pytest.approx(0.0)
    # what the null leaves, 0.2 t, is signal well above the noise of a mean of 5 replicas
    left = unexplained(y, null)
    planted = np.var(0.2 * t, ddof=1) / (0.09 / R)
    assert _covers(left.snr_ci, planted)
    # a baseline equal to the truth leaves only noise
    assert unexplained(y, t).snr < 1


def test_snr_of_four_seeds_on_the_noisy_planted_world_is_covered():
    """The run-level noise is autocorrelated and half shared by a seed's runs: targets are not
    independent. Truth from 120 seeds; 30 families of 4 seeds each."""
    n_seeds, R = 120, 4
    w = planted_world("step", runs=planted_suite(heldout_seeds=tuple(range(1, n_seeds + 1))),
                      n_seq=8)
    blocks = []
    for _, by_seed in sorted(w.replicas().items()):
        x = w.x[by_seed[1]]
        blocks.append(np.stack([(np.diff(w.losses[by_seed[s]].mean(0)) / np.diff(x))[2:]
                                for s in sorted(by_seed)]))
    y = np.concatenate(blocks, axis=1)  # (seeds, targets)
    t = y.mean(0)
    snr = np.var(t, ddof=1) / (np.mean(np.var(y, axis=0, ddof=1)) / R)
    results = [assess(y[g:g + R], t).noise for g in range(0, n_seeds, R)]
    assert np.mean([_covers(r.snr_ci, snr) for r in results]) >= 0.85
    assert np.mean([r.snr for r in results]) == pytest.approx(snr, rel=0.15)
