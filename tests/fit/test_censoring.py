"""Censored fits: where tau lies before the first fitted checkpoint, hi is the sigmoid's
extrapolated asymptote. The fits flag it (``censored``), the kinds measure the loss shed within
the checkpoints, and the curriculum's per-phase shed holds the loss at the first checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectrum.curriculum.weights import phase_schedule, token_phase_shed
from spectrum.fit import KindThresholds, classify, fit_sigmoids
from spectrum.fit.kinds import KINDS, censoring, seen_delta

X = np.log(np.unique(np.round(np.logspace(1, 4, 24))) * 512.0)  # steps 10 .. 1e4


def _curve(x, lo, hi, tau, k):
    return lo + (hi - lo) / (1.0 + np.exp(k * (x - tau)))


def test_a_fit_with_tau_before_the_first_checkpoint_is_censored_on_hi() -> None:
    # planted: learned before the first checkpoint (its tail still falls 0.5 nats in the window),
    # one inside, one still unfinished at the end
    truth = [(1.8, 6.0, X[0] - 0.6, 2.0), (1.5, 4.0, X.mean(), 3.0), (1.0, 3.0, X[-1] + 0.8, 2.5)]
    rows = np.stack([_curve(X, *p) for p in truth])
    rows = rows + np.random.default_rng(0).normal(0, 0.01, rows.shape)
    fits = fit_sigmoids(rows, X, device="cpu", dtype=__import__("torch").float64)
    table = fits.to_polars()
    assert table["censored"].to_list() == ["hi", "none", "lo"]
    assert table["kind"].to_list() == ["learned", "learned", "unfinished"]


def test_kinds_measure_delta_inside_the_window() -> None:
    x0, x1 = float(X[0]), float(X[-1])
    # tau far before the first checkpoint: hi - lo = 40 nats, but within the checkpoints the
    # curve falls by 40 * sigmoid(-3 * 4) ~ 2.5e-4 nats: nothing was seen to be learned
    lo, hi, tau, k = (np.array(v, float) for v in ([1.0, 1.0, 1.0], [41.0, 3.0, 3.0],
                                                   [x0 - 4.0, x0 - 0.5, (x0 + x1) / 2],
                                                   [3.0, 2.0, 2.0]))
    seen = seen_delta(lo, hi, tau, k, x0, x1)
    by_hand = [_curve(x0, lo[i], hi[i], tau[i], k[i]) - lo[i] for i in range(2)]
    assert seen[:2] == pytest.approx(by_hand, rel=1e-12) and seen[2] == hi[2] - lo[2]
    codes = classify(lo, hi, tau, np.ones(3), np.ones(3, bool), np.zeros(3, bool), x1,
                     KindThresholds(), k=k, x_first=x0)
    assert [KINDS[c] for c in codes] == ["flat", "learned", "learned"]
    assert censoring(tau, x0, x1).tolist() == [1, 1, 0]
    # without the window (the old call), the asymptote decides
    old = classify(lo, hi, tau, np.ones(3), np.ones(3, bool), np.zeros(3, bool), x1)
    assert KINDS[old[0]] == "learned"
    assert "before the first checkpoint" in KindThresholds().describe()


def test_the_curriculum_shed_never_uses_a_censored_hi() -> None:
    ph = phase_schedule(2000, 512, 5)
    x_first = ph.x_edges[2] - 0.3  # the first fitted checkpoint lies inside phase 1
    lo, hi, tau, k = 1.82, 563.4, x_first - 1.5, 4.0
    shed, beyond = token_phase_shed([lo], [hi], [tau], [k], ph, x_first=x_first)
    seen = _curve(x_first, lo, hi, tau, k)  # what the first fitted checkpoint saw
    # the loss is held at `seen` before x_first: phase 0 sheds nothing, phase 1 from x_first on
    edges = [-math.inf, *ph.x_edges[1:]]
    for p in range(ph.n):
        start = seen if edges[p] <= x_first else _curve(edges[p], lo, hi, tau, k)
        end = seen if edges[p + 1] <= x_first else _curve(edges[p + 1], lo, hi, tau, k)
        assert shed[0, p] == pytest.approx(start - end, abs=1e-9)
    assert shed[0].sum() + beyond[0] == pytest.approx(seen - lo, rel=1e-9)
    assert shed.sum() + beyond.sum() < 2  # not the 561 nats of the extrapolated asymptote
    # the measured initial loss is where the curve starts: what fell before x_first is phase 0's
    shed_m, beyond_m = token_phase_shed([lo], [hi], [tau], [k], ph, x_first=x_first,
                                        initial=np.array([seen + 0.2]))
    assert shed_m[0, 0] == pytest.approx(0.2, abs=1e-9)
    assert shed_m[0].sum() + beyond_m[0] == pytest.approx(seen + 0.2 - lo, rel=1e-9)
    # a token with tau inside the window: its extrapolated part before x_first is not used either
    inside = token_phase_shed([1.0], [3.0], [x_first + 1.0], [2.0], ph, x_first=x_first)
    plain = token_phase_shed([1.0], [3.0], [x_first + 1.0], [2.0], ph)
    held = _curve(x_first, 1.0, 3.0, x_first + 1.0, 2.0)
    assert inside[0][0].sum() + inside[1][0] == pytest.approx(held - 1.0, rel=1e-12)
    assert plain[0][0].sum() + plain[1][0] == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(inside[0][0, 2:], plain[0][0, 2:], rtol=1e-12)  # after x_first


def test_seen_delta_is_the_drop_within_the_window_numpy_and_torch():
    """Against scipy's expit: the censored side is the fitted curve at the window's edge."""
    import torch
    from scipy.special import expit

    from spectrum.fit.kinds import seen_delta

    rng = np.random.default_rng(3)
    n = 500
    lo = rng.uniform(0, 2, n)
    hi = lo + rng.uniform(-1, 5, n)
    tau, k = rng.uniform(5, 20, n), rng.uniform(0.1, 20, n)
    first, last = 9.0, 15.0
    want = np.where(tau < first, (hi - lo) * expit(-k * (first - tau)),
                    np.where(tau > last, (hi - lo) * (1 - expit(-k * (last - tau))), hi - lo))
    np.testing.assert_allclose(seen_delta(lo, hi, tau, k, first, last), want, atol=1e-12)
    got = seen_delta(*(torch.tensor(a) for a in (lo, hi, tau, k)), first, last)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
