"""Measured sheds shrunk toward the prediction: planted worlds where the truth per sequence is
known, the runs measure it with planted run-to-run noise, and a model predicts it with a planted
error."""

from __future__ import annotations

import numpy as np
import pytest

from spectrum.curriculum.shrinkage import run_noise, shrinkage


def world(rng, *, S=400, P=3, R=9, signal=0.3, noise=0.6, pred_sd=0.5):
    """Sequences' true shed = prediction + signal; each run measures it with noise."""
    pred = rng.gamma(4.0, 0.25, size=(S, P))
    truth = np.clip(pred + rng.normal(0, signal, (S, P)), 0, None)
    runs = truth[None] + rng.normal(0, noise, (R, S, P))
    return pred, truth, runs


def test_the_noise_is_the_run_to_run_variance_of_the_mean():
    rng = np.random.default_rng(0)
    _, _, runs = world(rng, S=4000, noise=0.6, R=9)
    np.testing.assert_allclose(run_noise(runs), 0.36 / 9, rtol=0.05)
    assert run_noise(runs[:1]) is None


@pytest.mark.parametrize("signal,noise", [(0.3, 0.6), (0.3, 0.1), (0.0, 0.6)])
def test_shrunk_sheds_are_closer_to_the_truth_than_either_source(signal, noise):
    rng = np.random.default_rng(1)
    pred, truth, runs = world(rng, S=2000, signal=signal, noise=noise)
    measured = runs.mean(0)
    sh = shrinkage(measured, pred, runs)
    # the factor is the planted signal / (signal + noise of the mean)
    expected = signal ** 2 / (signal ** 2 + noise ** 2 / runs.shape[0])
    np.testing.assert_allclose(sh.factor, expected, atol=0.08)
    shrunk = sh.apply(measured, pred)
    mse = lambda a: ((a - truth) ** 2).mean()  # noqa: E731
    assert mse(shrunk) <= min(mse(measured), mse(pred)) * 1.02
    if signal == 0.0:  # nothing to learn beyond the prediction: kept at the prediction
        assert max(sh.factor) < 0.1
    assert all(0 <= r <= 1 for r in sh.reliability)


def test_one_run_cannot_measure_its_noise_and_keeps_the_measured_shed():
    rng = np.random.default_rng(2)
    pred, _, runs = world(rng, R=1)
    sh = shrinkage(runs.mean(0), pred, runs)
    assert sh.noise_var is None and sh.factor == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(sh.apply(runs.mean(0), pred), np.clip(runs.mean(0), 0, None), atol=1e-12)


def test_shrunk_and_predicted_sheds_share_one_scale():
    """Predicted sequences' shed spreads like the predictions; shrunk measured ones spread like
    the posterior means, not like the noisy raw measurements."""
    rng = np.random.default_rng(3)
    pred, truth, runs = world(rng, S=3000, signal=0.1, noise=1.0)
    measured = runs.mean(0)
    shrunk = shrinkage(measured, pred, runs).apply(measured, pred)
    raw_ratio = measured.std(0) / pred.std(0)
    ratio = shrunk.std(0) / pred.std(0)
    assert (raw_ratio > 1.15).all() and (np.abs(ratio - 1) < 0.05).all(), (raw_ratio, ratio)
