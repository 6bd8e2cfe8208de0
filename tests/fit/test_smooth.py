"""The smooth alternatives of the step test, against scipy and numpy on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from spectrum.fit.smooth import BETA_MAX, power_curve, smooth_fits

def sigmoid_loss(x, lo, hi, tau, k):
    return lo + (hi - lo) / (1 + np.exp(k * (x - tau)))


X = np.log(np.unique(np.round(np.logspace(0, 4, 24))) * 1000.0)


def _scipy_power_rss(y: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    best = np.inf
    for beta0 in (0.05, 0.3, 1.0, 3.0):
        res = least_squares(lambda p: p[0] + p[1] * np.exp(-p[2] * (x - X.min())) - y,
                            [y.min(), y.max() - y.min(), beta0],
                            bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, BETA_MAX]))
        best = min(best, 2 * res.cost)
    return best


def test_power_law_and_line_match_scipy_and_numpy():
    rng = np.random.default_rng(0)
    n = 40
    e, b, beta = rng.uniform(1, 3, n), rng.uniform(0.5, 4, n), rng.uniform(0.05, 1.5, n)
    y = e[:, None] + b[:, None] * np.exp(-beta[:, None] * (X - X.min())) \
        + rng.normal(0, 0.05, (n, len(X)))
    y[::7, 3] = np.nan  # masked points
    got = smooth_fits(y, X, np.full(n, 1.0))
    for i in range(n):
        ref = _scipy_power_rss(y[i], X)
        assert got["rss_power"][i] <= ref * (1 + 1e-6) + 1e-9, (i, got["rss_power"][i], ref)
        ok = np.isfinite(y[i])
        coef = np.polyfit(X[ok], y[i, ok], 1)
        line = ((np.polyval(coef, X[ok]) - y[i, ok]) ** 2).sum()
        assert np.isclose(got["rss_line"][i], line, rtol=1e-8, atol=1e-10)
    # the stored parameters reproduce the fitted rss
    curve = power_curve(got["power_e"], got["power_b"], got["power_beta"], got["power_x0"], X)
    rss = np.nansum((curve - y) ** 2, axis=1)
    assert np.allclose(rss, got["rss_power"], rtol=1e-6)
    assert np.median(np.abs(got["power_beta"] - beta)) < 0.1


def test_bic_by_hand_and_too_few_points():
    y = np.array([[3.0, 2.5, 2.0, 1.8, 1.7, 1.65], [1.0, np.nan, np.nan, np.nan, 2.0, np.nan]])
    x = np.log([1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4])
    got = smooth_fits(y, x, np.array([0.01, 0.0]))
    assert np.isclose(got["bic_step"][0], 6 * np.log(0.01 / 6) + 4 * np.log(6))
    assert np.isclose(got["bic_line"][0], 6 * np.log(got["rss_line"][0] / 6) + 2 * np.log(6))
    assert all(np.isnan(got[c][1]) for c in ("bic_step", "bic_power", "bic_line", "rss_power"))


def test_steps_prefer_the_sigmoid_and_power_laws_do_not():
    rng = np.random.default_rng(1)
    n = 300
    tau, k = rng.uniform(X.min() + 2, X.max() - 2, n), rng.uniform(2, 5, n)
    step = sigmoid_loss(X[None, :], np.full((n, 1), 1.0), np.full((n, 1), 3.0), tau[:, None],
                        k[:, None]) + rng.normal(0, 0.05, (n, len(X)))
    # the sigmoid's own rss would come from the fit stage; here: the noise it leaves
    rss_step = ((step - sigmoid_loss(X[None, :], 1.0, 3.0, tau[:, None], k[:, None])) ** 2).sum(1)
    got = smooth_fits(step, X, rss_step)
    assert (got["bic_step"] < np.minimum(got["bic_power"], got["bic_line"]) - 2).mean() > 0.95


def test_complete_and_masked_batches_agree_and_lines_are_the_limit():
    """A batch without missing points takes the unmasked path: the same rows fitted beside a row
    with a missing point give the same fits. A trajectory linear in ln T is the power law's limit
    as beta -> 0: the fitted power law comes within a hair of the line's RSS."""
    rng = np.random.default_rng(2)
    n = 50
    y = 2.0 + rng.uniform(0.5, 3, (n, 1)) * np.exp(-rng.uniform(0.1, 1.5, (n, 1)) * (X - X.min())) \
        + rng.normal(0, 0.05, (n, len(X)))
    y[-5:] = 3.0 - 0.1 * (X - X.min()) + rng.normal(0, 0.05, (5, len(X)))  # lines in ln T
    alone = smooth_fits(y, X, np.ones(n))
    masked = np.vstack([y, np.where(np.arange(len(X)) == 2, np.nan, y[:1])])
    beside = smooth_fits(masked, X, np.ones(n + 1))
    for c in ("rss_power", "rss_line", "power_beta", "bic_power"):
        assert np.allclose(alone[c][:-5], beside[c][:n - 5], rtol=1e-9, atol=1e-12), c
    # near beta = 0 the power law is ill-conditioned (e and b cancel, the RSS is a difference of
    # nearly equal sums): both paths come within 1% of the line's RSS, the family's limit
    for got in (alone["rss_power"][-5:], beside["rss_power"][n - 5:n]):
        assert np.all(got <= alone["rss_line"][-5:] * (1 + 1e-2))


def test_the_step_bic_uses_the_sigmoid_rss_in_float64_from_its_parameters():
    """Given the fitted parameters, the step's RSS is recomputed in float64 on the finite points,
    whatever RSS the (float32) fit reported; its BIC is then n ln(rss / n) + 4 ln n."""
    rng = np.random.default_rng(4)
    n = 12
    p = np.stack([rng.uniform(1, 2, n), rng.uniform(3, 5, n), rng.uniform(X[4], X[-4], n),
                  rng.uniform(0.5, 3, n)], axis=1)
    y = np.stack([sigmoid_loss(X, *row) for row in p]) + rng.normal(0, 1e-4, (n, len(X)))
    y[::3, 5] = np.nan
    y32 = y.astype(np.float32)
    got = smooth_fits(y32, X, np.full(n, 123.0), sigmoid_params=p)
    for i in range(n):
        ok = np.isfinite(y32[i])
        r = y32[i][ok].astype(np.float64) - sigmoid_loss(X[ok], *p[i])
        m = ok.sum()
        want = m * np.log(r @ r / m) + 4 * np.log(m)
        assert got["bic_step"][i] == pytest.approx(want, rel=1e-9), i
    # without parameters, the RSS given is used as it is
    assert np.allclose(smooth_fits(y32, X, np.full(n, 1.0))["bic_step"][:2],
                       [np.sum(np.isfinite(y32[i])) * np.log(1.0 / np.sum(np.isfinite(y32[i])))
                        + 4 * np.log(np.sum(np.isfinite(y32[i]))) for i in range(2)])
