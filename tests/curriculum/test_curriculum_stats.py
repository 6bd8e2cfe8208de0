"""The statistics of the controlled curriculum test against independent truths: Holm's correction
(a worked example and its step-down definition), the quadratic compute curve (planted curvature,
coverage over simulated worlds), the multiplier as the curve's root, the minimum detectable effect
(simulated t-tests), and the claims ``summarise`` makes in a planted world."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from spectrum.curriculum.stats import (ComputeCurve, compute_curve, holm, ln_multiplier,
                                       min_detectable_difference, multiplier_interval,
                                       paired_test_power)
from spectrum.curriculum.trial import Curve, comparison_rows, summarise, table_rows

TOKENS = [1e3, 1e4, 1e5, 1e6]
SHAPE = np.array([2.0, 1.0, 0.4, 0.0])


# ---- Holm ------------------------------------------------------------------------------------


def test_holm_matches_a_worked_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06,
    # never below the one before); None is not a test and does not count in m = 4
    assert holm([0.01, None, 0.04, 0.03, 0.005]) == pytest.approx([0.03, None, 0.06, 0.06, 0.02])
    # a p of 0.031 alone among four tests: Bonferroni's 4 x 0.031 = 0.124
    assert holm([0.031, 0.2, 0.5, 0.6])[0] == pytest.approx(0.124)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([None, None]) == [None, None] and holm([]) == []


def _step_down_rejects(p: list[float], alpha: float) -> set[int]:
    """Holm's procedure by its definition: walk the p-values upwards, rejecting while
    ``p_(j) <= alpha / (m - j + 1)``, stop at the first that is not."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = set()
    for j, i in enumerate(order):
        if p[i] > alpha / (len(p) - j):
            break
        out.add(i)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1, max_size=9))
def test_holm_is_the_smallest_level_at_which_the_step_down_procedure_rejects(p):
    adj = holm(p)
    m = len(p)
    for i, a in enumerate(adj):
        assert p[i] <= a <= 1.0
        if a < 1.0:  # the adjusted p is where the step-down procedure starts to reject
            assert i in _step_down_rejects(p, a * (1 + 1e-9))
            assert i not in _step_down_rejects(p, a * (1 - 1e-6))
    order = np.argsort(p, kind="stable")
    assert all(adj[order[k]] <= adj[order[k + 1]] for k in range(m - 1))  # monotone in raw order
    assert adj[order[0]] == pytest.approx(min(1.0, m * p[order[0]]))  # Bonferroni for the smallest


# ---- the compute curve ------------------------------------------------------------------------

BUDGETS = np.array([0.25, 0.5, 0.7, 1.0, 1.4, 2.0])


def _world(rng, b, q, noise, seeds=6):
    s = np.repeat(np.arange(seeds), len(BUDGETS))
    c = np.tile(np.log(BUDGETS), seeds)
    y = 3 + rng.normal(0, 0.2, seeds)[s] + b * c + q * c * c + rng.normal(0, noise, len(c))
    return s, c, y


def test_compute_curve_recovers_a_planted_curvature_and_the_local_slope_exactly():
    b, q = -0.3, 0.04
    s, c, y = _world(np.random.default_rng(0), b, q, noise=0.0)
    center = 11.0  # ln compute of the arms: the curve is centred there
    cc = compute_curve(s, c + center, y, ln_center=center)
    assert cc.model == "quadratic in ln compute"
    assert cc.slope == pytest.approx(b, abs=1e-10) and cc.curvature == pytest.approx(q, abs=1e-10)
    assert cc.residual_sd < 1e-10 and cc.r2_within == pytest.approx(1.0)
    assert cc.budgets == pytest.approx(tuple(BUDGETS), rel=1e-6) and cc.n_seeds == 6
    # a straight line with the seed intercepts leaves, per budget, the part of q c^2 that is not
    # linear in c (balanced design: the residuals of a least-squares line through (c, q c^2))
    cb = np.log(BUDGETS)
    misfit = q * cb ** 2 - np.polyval(np.polyfit(cb, q * cb ** 2, 1), cb)
    assert cc.line_residual_by_budget == pytest.approx(tuple(misfit), abs=1e-10)
    assert max(map(abs, misfit)) > 0.005  # the planted misfit is visible
    # centred elsewhere, the slope is the tangent there
    off = compute_curve(s, c + center, y, ln_center=center + math.log(1.4))
    assert off.slope == pytest.approx(b + 2 * q * math.log(1.4), abs=1e-10)
    # two budgets: a line, with no curvature
    two = np.isin(np.round(c, 9), np.round(np.log([0.5, 1.0]), 9))
    line = compute_curve(s[two], c[two], y[two], ln_center=0.0)
    assert line.model == "line" and line.curvature == 0.0 and line.curvature_se == 0.0
    assert line.slope == pytest.approx((b * math.log(0.5) + q * math.log(0.5) ** 2) / math.log(0.5))


def test_compute_curve_intervals_cover_the_planted_coefficients():
    """Over 200 simulated worlds the 95% t-intervals of the local slope and the curvature cover
    the planted values about 95% of the time; the covariance of the two matches their spread."""
    rng = np.random.default_rng(1)
    b, q, reps = -0.3, 0.04, 200
    hit_b = hit_q = 0
    est, covs = [], []
    for _ in range(reps):
        s, c, y = _world(rng, b, q, noise=0.01)
        cc = compute_curve(s, c, y, ln_center=0.0)
        tq = stats.t.ppf(0.975, len(y) - 6 - 2)
        hit_b += abs(cc.slope - b) <= tq * cc.slope_se
        hit_q += abs(cc.curvature - q) <= tq * cc.curvature_se
        est.append((cc.slope, cc.curvature))
        covs.append(cc.cov_slope_curvature)
    assert 0.90 <= hit_b / reps <= 0.99 and 0.90 <= hit_q / reps <= 0.99
    emp = np.cov(np.array(est).T)[0, 1]
    assert np.mean(covs) == pytest.approx(emp, rel=0.35)


# ---- the multiplier ---------------------------------------------------------------------------


def _curve(b, q, sb=0.0, sq=0.0, cov=0.0):
    return ComputeCurve(b, sb, 0.01, 0.99, 40, 8, (0.5, 1.0, 2.0), curvature=q, curvature_se=sq,
                        cov_slope_curvature=cov, model="quadratic in ln compute")


def test_the_multiplier_is_the_root_of_the_curve_nearest_one():
    b, q = -0.3, 0.05
    for m in (1.3, 1 / 1.3, 1.11):
        d = b * math.log(m) + q * math.log(m) ** 2  # uniform at m x the compute ends d from 1x
        res = multiplier_interval([d] * 5, _curve(b, q))
        assert res["mean"] == pytest.approx(m, rel=1e-12)
        roots = np.roots([q, b, -d])  # brute force: both roots, keep the one nearest 0
        assert res["log_mean"] == pytest.approx(roots[np.argmin(abs(roots))].real, rel=1e-12)
    # no curvature: d / b as before
    assert ln_multiplier(-0.03, _curve(-0.3, 0.0))[0] == pytest.approx(0.1)
    # beyond the curve's reach (its minimum is -b^2 / 4q = -0.225) and a curve that does not fall
    assert ln_multiplier(-0.3, _curve(-0.3, 0.1))[0] is None
    assert "reach" in multiplier_interval([-0.3] * 4, _curve(-0.3, 0.1))["undefined"]
    assert multiplier_interval([-0.03] * 4, _curve(0.01, 0.0))["mean"] is None


def test_multiplier_standard_error_is_the_delta_method_over_d_slope_and_curvature():
    d = np.array([-0.02, -0.035, -0.01, -0.025, -0.03])
    sb, sq, cov = 0.02, 0.015, -0.0001
    res = multiplier_interval(d, _curve(-0.3, 0.05, sb, sq, cov))

    def root(dbar, b, q):  # brute force, by numpy's polynomial roots
        r = np.roots([q, b, -dbar])
        return r[np.argmin(abs(r))].real

    x0 = np.array([d.mean(), -0.3, 0.05])
    h = 1e-6
    grad = np.array([(root(*(x0 + h * e)) - root(*(x0 - h * e))) / (2 * h) for e in np.eye(3)])
    sigma = np.array([[d.var(ddof=1) / len(d), 0, 0], [0, sb ** 2, cov], [0, cov, sq ** 2]])
    assert res["log_se"] == pytest.approx(math.sqrt(grad @ sigma @ grad), rel=1e-5)
    half = stats.t.ppf(0.975, len(d) - 1) * res["log_se"]
    assert res["ci"] == pytest.approx([math.exp(res["log_mean"] - half),
                                       math.exp(res["log_mean"] + half)])


# ---- the minimum detectable effect ------------------------------------------------------------


def _rejection_rate(effect, sd, n, rng, trials=20000):
    x = rng.normal(effect, sd, size=(trials, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    return float((np.abs(t) > stats.t.ppf(0.975, n - 1)).mean())


@pytest.mark.parametrize("n,sd", [(8, 0.012), (4, 0.03), (2, 0.01)])
def test_min_detectable_difference_is_detected_with_80_percent_power(n, sd):
    d80 = min_detectable_difference(sd, n)
    rng = np.random.default_rng(n)
    assert _rejection_rate(d80, sd, n, rng) == pytest.approx(0.8, abs=0.03)
    # and half of it is detected clearly less often
    assert _rejection_rate(d80 / 2, sd, n, rng) < 0.6
    assert min_detectable_difference(0.0, n) is None and min_detectable_difference(sd, 1) is None


def test_noise_of_a_planted_world_at_the_papers_multiplier():
    """The curriculum's true effect is the paper's 1.11 on a straight compute curve: the reported
    power against 1.11 is the rate at which simulated t-tests with the measured spread reject, and
    the minimum detectable multiplier is the curve's root at the 80%-power difference."""
    rng = np.random.default_rng(2)
    slope, seeds = -0.3, 8
    effect = slope * math.log(1.11)
    curves = []
    for s in range(seeds):
        base = 3.0 + rng.normal(0, 0.03)
        for arm, e in (("uniform", 0.0), ("curriculum", effect)):
            curves.append(Curve(arm, s, TOKENS, (base + e + rng.normal(0, 0.02) + SHAPE).tolist()))
        for b in (0.5, 0.7, 1.4):
            final = base + slope * math.log(b) + rng.normal(0, 0.002)
            curves.append(Curve("uniform", s, [t * b for t in TOKENS], (final + SHAPE).tolist(), b))
    summary = summarise(curves)
    noise, cc = summary["noise"], summary["compute_curve"]
    sd, n = noise["power_sd"], noise["power_n"]
    assert n == seeds
    paper = abs(cc["slope"] * math.log(1.11) + cc["curvature"] * math.log(1.11) ** 2)
    assert noise["power_at_paper_multiplier"] == pytest.approx(
        _rejection_rate(paper, sd, n, np.random.default_rng(3)), abs=0.02)
    d80 = noise["min_detectable_difference_80"]
    assert _rejection_rate(d80, sd, n, np.random.default_rng(4)) == pytest.approx(0.8, abs=0.03)
    root = np.roots([cc["curvature"], cc["slope"], d80])
    assert noise["min_detectable_multiplier_80"] == pytest.approx(
        math.exp(root[np.argmin(abs(root))].real), rel=1e-9)
    # the half-width of the interval is a smaller, 50%-power figure
    assert 1 < noise["resolvable_multiplier"] < noise["min_detectable_multiplier_80"]


def test_power_is_the_noncentral_t_power():
    # a direct check of the formula against simulation at an intermediate power
    assert paired_test_power(0.01, 0.015, 6) == pytest.approx(
        _rejection_rate(0.01, 0.015, 6, np.random.default_rng(5)), abs=0.015)
    # both tails count: with no effect the test rejects at its level, a little more nearby
    for n in (2, 5, 12):
        assert paired_test_power(0.0, 0.01, n) == pytest.approx(0.05, abs=1e-9)
        assert paired_test_power(-0.002, 0.01, n) == pytest.approx(
            paired_test_power(0.002, 0.01, n))


# ---- the claims of summarise -------------------------------------------------------------------


def _paired(mean: float, p: float | None, n: int, sd: float = 0.01) -> np.ndarray:
    """n differences with a fixed shape; with ``p`` their paired t-test gives exactly that p."""
    z = np.linspace(-1, 1, n) + 0.3 * np.sin(np.arange(n))
    z = (z - z.mean()) / z.std(ddof=1)
    if p is not None:
        mean = stats.t.ppf(1 - p / 2, n - 1) * sd / math.sqrt(n)
    return mean + sd * z


def test_holm_keeps_a_real_effect_and_removes_a_marginal_null():
    """One real effect (the curriculum, 0.05 nats lower), a null arm at p = 0.03 alone and two
    clear nulls: Holm over the 7 distinct claims keeps every curriculum claim and removes the
    marginal one, and the sentences say so; "curriculum vs uniform" counts once."""
    n = 8
    diffs = {"uniform": np.zeros(n), "curriculum": -0.05 + _paired(0.0, None, n, 0.005),
             "random": _paired(0.0, 0.03, n), "timing_flat": _paired(0.001, None, n),
             "exported": _paired(-0.002, None, n)}
    rng = np.random.default_rng(6)
    curves = []
    for s in range(n):
        base = 3.0 + rng.normal(0, 0.03)
        for arm, d in diffs.items():
            curves.append(Curve(arm, s, TOKENS, (base + d[s] + SHAPE).tolist()))
        for b in (0.5, 1.4):
            curves.append(Curve("uniform", s, [t * b for t in TOKENS],
                                (base - 0.3 * math.log(b) + SHAPE).tolist(), b))
    summary = summarise(curves)
    fam = summary["family"]
    names = [c["name"] for c in fam["claims"]]
    assert fam["size"] == 7 and len(set(names)) == 7 and names.count("curriculum vs uniform") == 1
    rnd = summary["arms"]["random"]["final_minus_uniform"]
    assert rnd["p"] == pytest.approx(0.03, rel=1e-6) and rnd["ci"][0] > 0
    # by hand: the four curriculum claims are tiny, so 0.03 is fifth of seven: 3 x 0.03
    assert rnd["p_holm"] == pytest.approx(0.09, rel=1e-6) and rnd["survives_holm"] is False
    raw = {c["name"]: c["p"] for c in fam["claims"]}
    expected = dict(zip(raw, holm(list(raw.values()))))
    for c in fam["claims"]:
        assert c["p_holm"] == pytest.approx(expected[c["name"]])
        assert c["survives"] == (c["p_holm"] < 0.05)
    cur = summary["arms"]["curriculum"]["final_minus_uniform"]
    same = summary["comparisons"]["uniform"]["difference"]
    assert cur["p_holm"] == same["p_holm"] < 0.05 and cur["survives_holm"] and same["survives_holm"]
    assert all(c["difference"]["survives_holm"] for c in summary["comparisons"].values())
    w = holm([summary["comparisons"][k]["difference"]["p_wilcoxon"] for k in summary["comparisons"]]
             + [summary["arms"][a]["final_minus_uniform"]["p_wilcoxon"]
                for a in ("random", "timing_flat", "exported")])
    assert [c["p_wilcoxon_holm"] for c in fam["claims"]] == pytest.approx(w)
    v = summary["verdicts"]
    assert len(v) == 7 and v[0] == summary["comparisons"]["uniform"]["verdict"]
    assert v[0].startswith("the curriculum beats uniform beyond the 95% interval, and the claim "
                           "survives Holm's correction over 7 claims")
    assert summary["arms"]["random"]["verdict"].startswith(
        "random does not differ from uniform after Holm's correction over 7 claims: the 95% "
        "interval excludes 0")
    assert "Holm-adjusted p = 0.09" in summary["arms"]["random"]["verdict"]
    assert summary["arms"]["timing_flat"]["verdict"].startswith(
        "timing_flat does not differ from uniform beyond the 95% interval (it covers 0)")
    rows = {r[0]: r for r in table_rows(summary)}
    assert rows["random"][4] == "0.03" and rows["random"][5] == "0.09"
    assert all(r[-1] == "curriculum better" for r in comparison_rows(summary))
