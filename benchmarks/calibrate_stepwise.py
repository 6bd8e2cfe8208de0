"""Calibrate the stepwise rule's BIC margin on null runs with the noise of real runs.

The rule of :mod:`spectrum.analysis.runs.stepwise` calls a token's trajectory a step when the
sigmoid's BIC is below both smooth alternatives' by more than a margin. The BIC assumes
independent residuals; real residuals are autocorrelated in checkpoint order and share a
run-level curve with every other token of the run, so a sigmoid fits the shared wiggles of a
smooth decline and the textbook margin (2) calls many smooth tokens steps.

The null: runs of smooth tokens only (``tests.planted_noise.null_runs``: the planted power-law
decline in T, an AR(1) run-level curve added to every token of a run, AR(1) residuals per token,
the noise levels of ``tests.planted_noise.NoiseSpec``), fitted by the fit stage's own code
(``fit_sigmoids`` in float32, ``smooth_fits`` with the RSS recomputed in float64), on the
checkpoint grids of the built-in suite (4 per doubling from the end of the 16-step warmup to
128, 256 and 512 steps; the warmup's end left out) and of the planted test worlds (16 log-spaced
checkpoints from step 1, steps 1-2 left out as warmup). On each grid, the false-step share of a
null run is the share of its tokens that change (kind not flat or unfit) called steps.

The margin is the smallest value of :data:`MARGINS` for which, on every grid, at most
:data:`RUN_QUANTILE` of the null runs have a false-step share above :data:`MAX_FALSE_STEP`: so a
smooth run is called stepwise for more than 5% of its tokens at most once in a thousand runs
(a suite of 30 runs then passes whole with a probability above 97%).
The pooled false-step rate at that margin is reported beside it.

    PYTHONPATH=. python benchmarks/calibrate_stepwise.py

writes ``benchmarks/stepwise_calibration.json``.

Record the result in ``spectrum.analysis.runs.stepwise`` (``MARGIN`` and ``CALIBRATION``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from spectrum.fit.smooth import smooth_fits
from spectrum.fit.solver import fit_sigmoids
from spectrum.suite.config import doubling_checkpoint_steps
from tests.planted_noise import NoiseSpec, checkpoint_steps, null_runs
from tests.synthetic import SCALES, TOKENS_PER_STEP

MARGINS = tuple(float(m) for m in range(2, 41))
MAX_FALSE_STEP = 0.05
RUN_QUANTILE = 0.001


def grids() -> dict[str, np.ndarray]:
    """The checkpoint grids (x = ln T of the fitted checkpoints) of the suite and the tests."""
    out = {}
    for last in (128, 256, 512):
        steps = np.array([s for s in doubling_checkpoint_steps(last, 16, 4) if s > 16])
        out[f"suite, {last} steps"] = np.log(steps * 1024.0)
    for d, tokens in SCALES.items():
        steps = checkpoint_steps(tokens, 16)
        out[f"planted world, {d}"] = np.log(steps[steps > 2] * float(TOKENS_PER_STEP))
    return out


def null_differences(x: np.ndarray, runs: int, tokens: int, seed: int) -> np.ndarray:
    """(runs, tokens) of min(BIC power, BIC line) - BIC step on null runs; NaN where a token
    does not change (kind flat or unfit) or a BIC is not finite."""
    y = null_runs(x, runs, tokens, seed=seed).reshape(runs * tokens, -1).astype(np.float32)
    fits = fit_sigmoids(y, x, device="cpu")
    s = smooth_fits(y, x, fits.rss, sigmoid_params=fits.params)
    d = np.minimum(s["bic_power"], s["bic_line"]) - s["bic_step"]
    d[np.isin(fits.kind, ("flat", "unfit")) | ~np.isfinite(d)] = np.nan
    return d.reshape(runs, tokens)


def run_rates(d: np.ndarray, margin: float) -> np.ndarray:
    """Per null run, the share of its tokens that change called steps at ``margin``."""
    ok = np.isfinite(d)
    return (np.where(ok, d, -np.inf) > margin).sum(1) / ok.sum(1).clip(min=1)


def calibrate(runs: int, tokens: int, seed: int) -> dict:
    diffs = {}
    for name, x in grids().items():
        t0 = time.perf_counter()
        diffs[name] = (x, null_differences(x, runs, tokens, seed))
        print(f"{name}: {len(x)} checkpoints, {time.perf_counter() - t0:.0f} s")
    margin = next(m for m in MARGINS if all(
        np.mean(run_rates(d, m) > MAX_FALSE_STEP) <= RUN_QUANTILE for _, d in diffs.values()))
    per_grid = {}
    for name, (x, d) in diffs.items():
        rates = run_rates(d, margin)
        per_grid[name] = {"checkpoints": len(x), "span_lnT": round(float(x[-1] - x[0]), 3),
                          "false_step_rate": round(float(np.nanmean(d > margin)), 4),
                          "runs_above_5pct": round(float(np.mean(rates > MAX_FALSE_STEP)), 4),
                          "run_share_q99": round(float(np.quantile(rates, 0.99)), 4),
                          "false_step_rate_margin_2": round(float(np.nanmean(d > 2.0)), 4)}
    pooled = np.concatenate([d[np.isfinite(d)] for _, d in diffs.values()])
    noise = NoiseSpec()
    return {"margin": margin,
            "false_step_rate": round(float(np.mean(pooled > margin)), 4),
            "false_step_rate_margin_2": round(float(np.mean(pooled > 2.0)), 4),
            "runs_above_5pct": max(g["runs_above_5pct"] for g in per_grid.values()),
            "null": {"law": "planted smooth decline e + b T^-beta per token (no step)",
                     "run_noise": {"sd": noise.run_sd, "rho": noise.run_rho},
                     "token_noise": {"sd": noise.token_sd, "rho": noise.token_rho},
                     "runs_per_grid": runs, "tokens_per_run": tokens, "seed": seed},
            "rule": (f"smallest margin with at most {RUN_QUANTILE:.1%} of null runs above "
                     f"{MAX_FALSE_STEP:.0%} false steps, on every grid"),
            "grids": per_grid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="null runs per grid")
    ap.add_argument("--tokens", type=int, default=100, help="tokens per null run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("stepwise_calibration.json")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = calibrate(args.runs, args.tokens, args.seed)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "grids"}, indent=1))


if __name__ == "__main__":
    main()
