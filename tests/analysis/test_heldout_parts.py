"""The parts of the held-out tests against independent truths: the operator, the bootstrap draws,
the targets among held-out runs, the scores and verdicts, the stepwise shares."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spectrum.analysis.runs.curves import SeqCurve, finite_difference, midpoints, replicate_weights
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.heldout import baselines
from spectrum.analysis.heldout.scaling import PowerLaw, power_law_in_T
from spectrum.analysis.heldout.scores import (bootstrap_p, comparison_words, holm_family,
                                              holm_words, paired_difference, predicts, score)
from spectrum.analysis.runs.stepwise import MARGIN, run_shares
from spectrum.analysis.heldout.targets import heldout_targets, points, replica_pairs


def test_finite_difference_is_exact_for_lines_and_centred_for_quadratics():
    x = np.array([0.0, 0.3, 1.0, 1.2, 2.5])
    np.testing.assert_allclose(finite_difference(3.0 - 2.0 * x, x), -2.0)
    # for a quadratic, the two-point quotient is the derivative at the midpoint exactly
    np.testing.assert_allclose(finite_difference(x ** 2, x), 2 * midpoints(x))


def test_sequence_curves_draw_the_mean_and_resample_sequences_together():
    rng = np.random.default_rng(0)
    sums, counts = rng.uniform(1, 2, (7, 4)) * 5, np.full((7, 4), 5.0)
    W = replicate_weights(7, 50, seed=1)
    drawn = SeqCurve(sums, counts).draw(W)
    np.testing.assert_allclose(drawn[0], sums.sum(0) / counts.sum(0))
    assert drawn.shape == (51, 4) and W[1:].sum(1).tolist() == [7.0] * 50
    # one sequence counted twice in a replicate: its weight doubles
    w = np.array([[2.0, 0, 0, 0, 0, 0, 5.0]])
    np.testing.assert_allclose(SeqCurve(sums, counts).draw(w)[0],
                               (2 * sums[0] + 5 * sums[6]) / (2 * counts[0] + 5 * counts[6]))


def _run(name, M, D, role="heldout", steps=(1, 2, 4, 8, 16), warmup=1, level=0.0):
    steps = np.array(steps)
    x = np.log(steps * 100.0)
    curve = 5.0 - 0.3 * np.log(M) - 0.2 * np.log(D) - 0.1 * x + level
    return RunData(name=name, role=role, M=M, D=D, tokens_per_step=100, warmup_steps=warmup,
                   steps=steps, x=x, seq_ids=np.arange(2), seq_half=np.array([0, 1]),
                   seq_sums=np.stack([curve, curve]), seq_counts=np.ones((2, len(steps))),
                   pop_sums=np.stack([curve, curve]), pop_counts=np.ones((2, len(steps))),
                   )


def test_targets_are_measured_among_held_out_runs_with_known_slopes():
    fit = [_run(f"f{i}", M, D, "fit") for i, (M, D) in enumerate([(1e2, 1e3), (1e3, 1e4)])]
    held = [_run("a", 1e2, 1e3), _run("b", 1e4, 1e3), _run("c", 1e4, 1e4),
            _run("c-s1", 1e4, 1e4, level=0.01)]
    targets = heldout_targets(held, fit)
    curves = {r.name: r.seq_sums[:1] for r in held}
    by = {(t.target, t.label): t for t in targets}
    np.testing.assert_allclose(by[("dL/dlnM", "a -> b")].build(curves), -0.3)
    np.testing.assert_allclose(by[("dL/dlnD", "b -> c (end of run)")].build(curves), -0.2)
    np.testing.assert_allclose(by[("dL/dlnT", "a")].build(curves), -0.1)
    assert by[("L", "a")].build(curves).shape == (1, 4)  # the warmup checkpoint is not scored
    assert by[("L", "a")].regime == "interpolation" and by[("L", "b")].regime == "extrapolation"
    assert {t.label for t in targets if t.target == "L"} == {"a", "b", "c"}  # replicas stand apart
    assert [len(p) for p in points(held)] == [1, 1, 2]
    pairs = replica_pairs(by[("L", "c")], held)
    assert pairs == [({"c": "c"}, {"c": "c-s1"}), ({"c": "c-s1"}, {"c": "c"})]
    assert replica_pairs(by[("L", "a")], held) == []


def test_scores_by_hand_and_verdicts_either_way():
    m = np.array([[1.0, 2.0, 3.0, 4.0]])
    s = score(m + np.array([[0.1, -0.1, 0.1, -0.1]]), m)
    assert s["r2"] == pytest.approx(1 - 0.04 / 5.0) and s["rmse_nats"] == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    meas = np.linspace(0, 1, 30)[None, :] + rng.normal(0, 0.01, (41, 30))
    good = meas + rng.normal(0, 0.02, meas.shape)
    bad = meas + rng.normal(0, 0.3, meas.shape)
    s = score(good, meas)
    assert s["r2_ci"][0] < s["r2_ci"][1] and predicts(s)
    assert not predicts(score(bad, meas))
    assert comparison_words("a", "b", paired_difference(good, bad, meas)).startswith("a beats b")
    assert comparison_words("b", "a", paired_difference(bad, good, meas)).startswith(
        "b is beaten by a")
    same = paired_difference(good, good + 1e-12, meas)
    assert "not distinguishable" in comparison_words("a", "b", same)


def test_stepwise_shares_by_hand():
    fits = pl.DataFrame({
        "kind": ["learned", "learned", "learned", "flat", "learned"],
        "lo": [1.0, 1.0, 1.0, 1.0, 1.0], "hi": [3.0, 2.0, 1.5, 1.0, 2.0],
        "bic_step": [-100.0, -50.0, -50.0, -10.0, -50.0],
        "bic_power": [-80.0, -50.0 + MARGIN / 2, -60.0, -50.0, np.nan],
        "bic_line": [-70.0, -40.0, -40.0, -50.0, -40.0]})
    got = run_shares(fits)
    # token 0: step; token 1: within the margin (undecided); token 2: smooth; flat and NaN rows out
    assert got["n_tokens"] == 3 and got["share_step"] == pytest.approx(1 / 3)
    assert got["share_step_shed"] == pytest.approx(2.0 / 3.5)
    assert got["share_smooth"] == pytest.approx(1 / 3) and got["share_undecided"] == pytest.approx(1 / 3)
    assert run_shares(fits.drop("bic_line"))["share_step"] is None


# ---------------------------------------------------------------------------------------------
# baselines refitted per replicate, refused where the fit runs cannot support them; Holm

def _noisy_run(name, M, D, rng, role="fit", n_seq=8):
    steps = np.array([1, 2, 4, 8, 16, 32])
    x = np.log(steps * 100.0)
    curve = 1.0 + 30.0 * np.exp(x) ** -0.3 - 0.1 * np.log(M)
    counts = np.full((n_seq, len(steps)), 4.0)
    sums = (curve[None, :] + rng.normal(0, 0.05, (n_seq, len(steps)))) * counts
    return RunData(name=name, role=role, M=M, D=D, tokens_per_step=100, warmup_steps=1,
                   steps=steps, x=x, seq_ids=np.arange(n_seq), seq_half=np.arange(n_seq) % 2,
                   seq_sums=sums, seq_counts=counts, pop_sums=sums, pop_counts=counts)


def test_aggregate_curve_is_refitted_on_each_replicate():
    rng = np.random.default_rng(0)
    fit = [_noisy_run(f"f{i}", M, 1e4, rng) for i, M in enumerate([1e2, 1e3, 1e4])]
    h = _noisy_run("h", 3e3, 1e4, rng, role="heldout")
    W = replicate_weights(8, 40, seed=3)
    got = baselines.aggregate_curve(fit, W)(h)
    assert got.shape == (41, 6) and np.ptp(got[1:, 3]) > 0  # the replicates differ
    for r in (0, 7):  # by hand: each fit run's drawn curve, a line in ln M read at the run
        ys = [SeqCurve(f.seq_sums, f.seq_counts).draw(W[r:r + 1])[0] for f in fit]
        lnM = np.log([f.M for f in fit])
        for j in range(1, 6):
            coef = np.polyfit(lnM, [y[j] for y in ys], 1)
            np.testing.assert_allclose(got[r, j], np.polyval(coef, np.log(h.M)), rtol=1e-10)


def test_power_law_draws_recover_planted_laws_per_row():
    x = np.log(np.array([2, 4, 8, 16, 32, 64, 128]) * 100.0)
    betas = np.array([0.3, 0.8])
    Y = np.stack([1.5 + 40.0 * np.exp(x) ** -b for b in betas])
    got = baselines.power_law_draws(x, Y)
    np.testing.assert_allclose(got[:, 2], betas, atol=1e-5)
    np.testing.assert_allclose(got[:, 0], 1.5, atol=1e-4)


def test_power_law_draws_agree_with_the_estimates_fit_also_at_its_bound():
    x = np.log(np.array([2, 4, 8, 16, 32, 64, 128]) * 100.0)
    rng = np.random.default_rng(4)
    # a curve whose free optimum has E < 0: both hold E at 0
    Y = np.stack([2.0 + 3.0 * np.exp(x) ** -0.05 + rng.normal(0, 0.02, 7),
                  1.0 + 30.0 * np.exp(x) ** -0.3 + rng.normal(0, 0.02, 7)])
    got = baselines.power_law_draws(x, Y)
    for row, y in zip(got, Y):
        law = power_law_in_T(x, y)
        np.testing.assert_allclose(row, [law.E, np.log(law.B), law.beta], atol=2e-4)
    assert got[0, 0] == 0.0


def test_power_law_interp_varies_across_replicates_with_the_estimate_in_row_0():
    rng = np.random.default_rng(1)
    fit = [_noisy_run(f"f{i}", M, 1e4, rng) for i, M in enumerate([1e2, 1e3, 1e4])]
    laws = baselines.run_power_laws(fit)
    W = replicate_weights(8, 30, seed=2)
    curve, info = baselines.power_law_T_interp(fit, laws, W)
    h = _noisy_run("h", 3e3, 1e4, rng, role="heldout")
    got = curve(h)
    one, _ = baselines.power_law_T_interp(fit, laws)
    np.testing.assert_allclose(got[0], one(h)[0])
    assert got.shape == (31, 6) and np.ptp(got[1:, -1]) > 0 and "30 bootstrap" in \
        info["interval_method"]


def test_baselines_are_refused_along_an_axis_the_fit_runs_do_not_span():
    rng = np.random.default_rng(2)
    fit = [_noisy_run("f", 1e3, 1e4, rng), _noisy_run("g", 1e3, 4e4, rng)]
    assert baselines.refusal(fit, _noisy_run("h", 1e3, 2e4, rng)) is None
    why = baselines.refusal(fit, _noisy_run("h", 1e4, 2e4, rng))
    assert "one model size only" in why and "dependence on M is unknown" in why
    one_d = [_noisy_run("f", 1e3, 1e4, rng), _noisy_run("g", 1e4, 1e4, rng)]
    assert baselines.refusal(one_d, _noisy_run("h", 3e3, 1e4, rng)) is None
    why = baselines.refusal(one_d, _noisy_run("h", 3e3, 2e4, rng))
    assert "one data scale only" in why and "dependence on D is unknown" in why


def test_bootstrap_p_and_holm_over_a_family():
    d = np.random.default_rng(0).normal(0.3, 0.1, 4000)
    assert bootstrap_p(d, 0.3) == pytest.approx(0.0027, abs=3e-4)  # 3 standard errors
    assert bootstrap_p(np.full(5, 0.2), 0.2) is None
    fam = [{"diff": 1.0, "ci": [0.5, 1.5], "p": 0.001}, {"diff": 1.0, "ci": [0.1, 2], "p": 0.03},
           {"diff": -1.0, "ci": [-2, -0.5], "p": 0.02}, {"diff": 0.1, "ci": [-1, 1], "p": 0.6}]
    holm_family(fam)
    # ascending p 0.001, 0.02, 0.03, 0.6 times 4, 3, 2, 1, made monotone
    assert [c["p_holm"] for c in fam] == pytest.approx([0.004, 0.06, 0.06, 0.6])
    assert [c["survives_holm"] for c in fam] == [True, False, False, False]
    assert [c["claim"] for c in fam] == ["beats", "beats", "beaten", "indistinguishable"]
    words = holm_words({"a": fam[0], "b": fam[1], "c": fam[2], "d": fam[3]})
    assert "1 of 3 claims survive (against a)" in words and "not surviving: against b, c" in words


def test_chinchilla_identifiability_in_words():
    good = PowerLaw(E=1.5, A=10.0, alpha=0.3, B=20.0, beta=0.4)
    ok, words = baselines.chinchilla_identifiability(
        good, {"A": [8.0, 12.0], "B": [15.0, 30.0], "E": [1.4, 1.6]}, 4.0)
    assert ok and "identified" in words
    bad = PowerLaw(E=0.0, A=10.0, alpha=0.05, B=20.0, beta=2.0)
    ok, words = baselines.chinchilla_identifiability(bad, {"A": [0.1, 500.0]}, 4.0)
    assert not ok and "E is at its lower bound 0" in words and "beta is at a bound" in words
    assert "interval of A" in words and "not identifiable" in words
