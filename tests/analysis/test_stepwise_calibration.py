"""The stepwise rule calibrated on null data with the noise of real runs, and what it says about
the checkpoints: steps outside them counted apart, steps narrower than them unresolved."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main as cli
from spectrum.analysis.runs.stepwise import (CALIBRATION, MARGIN, Window, run_shares,
                                             share_trend)
from spectrum.fit.model import WIDTH_10_90
from spectrum.fit.smooth import smooth_fits
from spectrum.fit.solver import FitOptions, fit_sigmoids
from tests.planted_noise import planted_suite, planted_world, write_world

FAST = ["--bootstrap", "30", "--spectrum-bins", "12"]


def test_a_smooth_world_with_the_noise_of_real_runs_is_not_called_stepwise(tmp_path):
    world = planted_world("smooth", runs=planted_suite(heldout_seeds=(1, 2)), n_seq=8)
    manifest = write_world(world, tmp_path)
    assert cli(["fit", "--config", str(manifest), "--device", "cpu"]) == 0
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    out = tmp_path / "artifacts"
    sw = json.loads((out / "reconstruction/scores.json").read_text())["stepwise"]
    shares = {run: v["share_step"] for run, v in sw["runs"].items()}
    assert len(shares) == len(world.runs)
    assert max(shares.values()) <= 0.05, shares
    # the calibration is recorded with the null it was measured on
    assert sw["calibration"]["false_step_rate"] <= 0.05
    assert "null runs of smooth tokens" in sw["calibration"]["how"]
    assert sw["margin"] == MARGIN and f"by more than {MARGIN:g}" in sw["criterion"]
    # the window shares are there, and the verdict states its limits
    some = next(iter(sw["runs"].values()))
    assert some["checkpoints"] == 14 and some["share_outside_window"] is not None
    report = (out / "report/report.md").read_text()
    assert "The data show no stepwise learning" in report
    assert "14 fitted checkpoints" in sw["verdict"]
    assert "cannot be resolved" in sw["verdict"] and "schedule" in sw["verdict"]
    assert "95% interval" in sw["verdict"] and sw["slope_share_step_per_lnM_ci"] is not None


def test_the_textbook_margin_calls_the_same_null_stepwise():
    """The calibration is needed: at margin 2 the null's false-step rate exceeds 5%."""
    assert CALIBRATION["false_step_rate_margin_2"] > 0.05 >= CALIBRATION["false_step_rate"]


def _planted_steps(x: np.ndarray, tau: np.ndarray, k: float, noise: float = 0.01,
                   seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = 1.0 + 2.0 / (1.0 + np.exp(np.clip(k * (x[None, :] - tau[:, None]), -60, 60)))
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def _shares(y: np.ndarray, x: np.ndarray) -> dict:
    opts = FitOptions()
    fits = fit_sigmoids(y, x, device="cpu", options=opts)
    s = smooth_fits(y, x, fits.rss, sigmoid_params=fits.params)
    table = pl.DataFrame({"kind": fits.kind.astype(str), "lo": fits.lo, "hi": fits.hi,
                          "tau": fits.tau, "k": fits.k, **{c: s[c] for c in
                                                           ("bic_step", "bic_power", "bic_line")}})
    return run_shares(table, Window(x, opts.k_max))


X = np.log(np.geomspace(1e4, 1e6, 14))  # spacing 0.35 in ln T


def test_steps_sharper_than_the_checkpoints_are_unresolved():
    rng = np.random.default_rng(1)
    # midpoints between checkpoints, away from them: a jump from one checkpoint to the next
    cells = rng.integers(3, 10, 200)
    tau = X[cells] + rng.uniform(0.3, 0.7, 200) * np.diff(X)[cells]
    sharp = _shares(_planted_steps(X, tau, k=200.0), X)
    assert sharp["share_outside_window"] == 0.0
    assert sharp["share_step"] >= 0.8  # the rule prefers a step ...
    assert sharp["share_unresolved"] >= 0.8  # ... that the checkpoints cannot resolve
    assert sharp["share_step_in_window"] <= 0.2
    # the same midpoints with a step as wide as several spacings: resolved steps
    wide = _shares(_planted_steps(X, tau, k=WIDTH_10_90 / (4 * 0.35)), X)
    assert wide["share_step_in_window"] >= 0.8 and wide["share_unresolved"] <= 0.05


def test_midpoints_outside_the_checkpoints_are_counted_apart():
    rng = np.random.default_rng(2)
    span = X[-1] - X[0]
    before = X[0] - rng.uniform(0.1, 0.3, 100) * span  # learned before the first checkpoint
    inside = rng.uniform(X[3], X[-4], 100)
    shares = _shares(_planted_steps(X, np.concatenate([before, inside]), k=2.0), X)
    assert shares["share_outside_window"] == pytest.approx(0.5, abs=0.1)
    assert shares["n_in_window"] + shares["n_outside_window"] == shares["n_tokens"]


def test_a_tail_before_the_window_is_fitted_with_its_midpoint_there():
    """The restart scan reaches midpoints before the first checkpoint, as the smooth side's
    profile reaches its optimum: the sigmoid fits the tail of a step it does not see begin."""
    tau = np.full(50, X[0] - 0.25 * (X[-1] - X[0]))
    y = _planted_steps(X, tau, k=1.5, noise=0.002, seed=3)
    fits = fit_sigmoids(y, X, device="cpu", dtype=__import__("torch").float64)
    assert np.median(fits.tau) < X[0]
    assert np.median(np.abs(fits.tau - tau)) < 0.3


def test_share_trend_interval_by_hand():
    lnm = np.log([1e5, 1e6, 1e7, 1e8])
    share = np.array([0.8, 0.7, 0.65, 0.5])
    slope, ci = share_trend(list(zip(np.exp(lnm), share)))
    b = np.polyfit(lnm, share, 1)
    resid = share - np.polyval(b, lnm)
    se = np.sqrt(resid @ resid / 2 / ((lnm - lnm.mean()) @ (lnm - lnm.mean())))
    assert slope == pytest.approx(b[0])
    assert ci == pytest.approx([b[0] - 4.302653 * se, b[0] + 4.302653 * se], rel=1e-5)
    assert share_trend([(1e5, 0.5), (1e6, 0.4)]) == (pytest.approx(-0.1 / np.log(10)), None)
    assert share_trend([(1e5, 0.5), (1e5, 0.4)]) == (None, None)
