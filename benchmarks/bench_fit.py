"""Sigmoid fits per second: spectrum.fit.fit_sigmoids against a scipy curve_fit loop.

Trajectories have Pythia's checkpoint schedule without step 0 (steps 1, 2, 4, ..., 512, then
1000, 2000, ..., 143000: 153 points) at 2,097,152 tokens per step. They are synthetic; the
``realistic`` mix has 60% learned steps (tau across the grid, k log-uniform in [0.5, 8], a drop of
0.2-5 nats), 10% forgotten (the loss rises by 0.2-2 nats), 30% flat; ``steps`` has learned steps
only (scipy is far faster on those than on flat noise). Gaussian noise, default 0.1 nats.

The peer is scipy.optimize.curve_fit with the same model, bounds and analytic Jacobian (TRF,
scipy's default tolerances), started from the same guess, one trajectory at a time in this
process, on the first ``--scipy-n`` trajectories. Both are timed in the same run; the report
gives fits/s of each, their ratio, and how often our RSS is no worse than scipy's. On a GPU the
fitter uses the fused Triton kernel (``--kernel auto``), and the torch path (``torch.compile``d
iterations, the reference implementation) is timed beside it on the first ``--peer-n`` rows.

    python benchmarks/bench_fit.py                      # CPU, 2 threads
    python benchmarks/bench_fit.py --device cuda --n 10000000 --dtype float32

Compiling once: besides the warm rate, the report times a batch size this process has not
fitted before (``new_size``) and a first call in a new process (``first_call_new_process``,
which reuses inductor's on-disk cache but traces the graphs again), each against scipy's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import curve_fit
from scipy.special import expit

from spectrum.fit.solver import FitOptions, SigmoidFit, fit_sigmoids, solver_name
from spectrum.devices import resolve_device
from spectrum.fit.model import guess, model

STEPS = np.array([2**i for i in range(10)] + list(range(1000, 143_001, 1000)))
TOKENS_PER_STEP = 2_097_152


MIXES = {"realistic": [0.6, 0.1, 0.3], "steps": [1.0, 0.0, 0.0]}  # learned, forgotten, flat


def trajectories(n: int, noise: float, seed: int = 0, mix: str = "realistic"
                 ) -> tuple[np.ndarray, np.ndarray]:
    x = np.log(STEPS * float(TOKENS_PER_STEP))
    rng = np.random.default_rng(seed)
    span = x[-1] - x[0]
    kind = rng.choice(3, size=n, p=MIXES[mix])
    lo = rng.uniform(0.3, 3.0, n)
    delta = np.select([kind == 0, kind == 1], [rng.uniform(0.2, 5.0, n), -rng.uniform(0.2, 2.0, n)],
                      0.0)
    tau = rng.uniform(x[0] + 0.05 * span, x[-1], n)
    k = np.exp(rng.uniform(np.log(0.5), np.log(8.0), n))
    p = np.stack([lo, lo + delta, tau, k], axis=1)
    y = np.empty((n, len(x)), dtype=np.float32)
    xt = torch.tensor(x)
    for s in range(0, n, 1 << 18):
        block = model(xt, torch.tensor(p[s:s + (1 << 18)])).numpy()
        y[s:s + len(block)] = block + noise * rng.standard_normal(block.shape)
    return x, y


def _f(x, lo, hi, tau, k):
    return lo + (hi - lo) * expit(-k * (x - tau))


def _jac(x, lo, hi, tau, k):
    s = expit(-k * (x - tau))
    a = s * (1 - s)
    return np.stack([1 - s, s, (hi - lo) * k * a, -(hi - lo) * (x - tau) * a], axis=1)


def scipy_loop(x: np.ndarray, y: np.ndarray, opts: FitOptions) -> tuple[float, np.ndarray]:
    """(seconds, rss) of curve_fit (TRF with bounds) over the rows of ``y``."""
    lb, ub = opts.bounds(x)
    inner = np.isfinite(lb) & np.isfinite(ub)
    p0 = guess(torch.tensor(y, dtype=torch.float64), torch.tensor(x)).numpy()
    p0[:, inner] = np.clip(p0[:, inner], lb[inner] + 1e-9, ub[inner] - 1e-9)
    rss = np.empty(len(y))
    yd = y.astype(np.float64)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(y)):
            try:
                p, _ = curve_fit(_f, x, yd[i], p0=p0[i], bounds=(lb, ub), jac=_jac, method="trf")
            except RuntimeError:
                p = p0[i]
            rss[i] = np.sum((yd[i] - _f(x, *p)) ** 2)
    return time.perf_counter() - t0, rss


def _first_call(args: argparse.Namespace) -> None:
    """Time one first call of fit_sigmoids in this (new) process; print it as JSON."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    opts = FitOptions(batch_size=args.batch_size,
                      compile={"auto": None, "on": True, "off": False}[args.compile],
                      kernel=args.kernel)
    x, y = trajectories(args.n, args.noise, seed=1, mix=args.mix)
    losses = torch.from_numpy(y).to(device)
    t0 = time.perf_counter()
    fit_sigmoids(losses, x, device=device, dtype=getattr(torch, args.dtype), options=opts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(json.dumps({"n": args.n, "seconds": round(seconds, 3),
                      "fits_per_s": round(args.n / seconds)}))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="trajectories fitted by torch")
    ap.add_argument("--scipy-n", type=int, default=500, help="trajectories fitted by scipy")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--mix", choices=tuple(MIXES), default="realistic",
                    help="realistic: 60%% learned, 10%% forgotten, 30%% flat; steps: all learned")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of the torch fit")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="on")
    ap.add_argument("--kernel", choices=("auto", "triton", "torch"), default="auto",
                    help="LM iterations in the fused Triton kernel or in torch (default auto: "
                         "the kernel on CUDA)")
    ap.add_argument("--peer-n", type=int, default=1_000_000,
                    help="on CUDA, rows also fitted by the torch path for comparison (0: none)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--fresh-process", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a first call in a new process (default on)")
    ap.add_argument("--first-call-only", action="store_true", help=argparse.SUPPRESS)
    return ap


def _seconds(device: torch.device, fit: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``fit()``, the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def _new_size(args: argparse.Namespace, fit: Callable[..., Any], device: torch.device
              ) -> tuple[dict, dict | None]:
    """A batch size this process has not fitted before (and a first call in a new process):
    what compiling once buys, against the warm figure."""
    new_n = max(2, (args.n * 7) // 9 + 1)
    seconds, _ = _seconds(device, lambda: fit(new_n))
    new_size = {"n": new_n, "seconds": round(seconds, 3)}
    new_size["fits_per_s"] = round(new_n / new_size["seconds"])
    if not args.fresh_process:
        return new_size, None
    cmd = [sys.executable, __file__, "--first-call-only", "--n", str(new_n + 1),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
           "--noise", str(args.noise), "--mix", args.mix, "--compile", args.compile,
           "--kernel", args.kernel]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    fresh = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                       .stdout.strip().splitlines()[-1])
    return new_size, fresh


def _torch_path(args: argparse.Namespace, losses: torch.Tensor, x: np.ndarray,
                device: torch.device, dtype: torch.dtype, opts: FitOptions) -> dict | None:
    """On CUDA with the fused kernel: the torch path's rate on the same rows, for comparison."""
    if device.type != "cuda" or not args.peer_n or solver_name(opts, device) == "torch":
        return None
    torch_opts = replace(opts, kernel="torch")
    rows = losses[: min(args.peer_n, args.n)]
    fit_sigmoids(rows[:50_000], x, device=device, dtype=dtype, options=torch_opts)
    seconds, _ = _seconds(device, lambda: fit_sigmoids(rows, x, device=device, dtype=dtype,
                                                       options=torch_opts))
    return {"n": len(rows), "seconds": round(seconds, 3), "fits_per_s": round(len(rows) / seconds)}


def main() -> None:
    args = _parser().parse_args()
    if args.first_call_only:  # the new process of --fresh-process: one first call, timed
        return _first_call(args)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    opts = FitOptions(batch_size=args.batch_size,
                      compile={"auto": None, "on": True, "off": False}[args.compile],
                      kernel=args.kernel)
    x, y = trajectories(args.n, args.noise, mix=args.mix)
    losses = torch.from_numpy(y)
    if device.type == "cuda":  # resident on the GPU, as the target states
        losses = losses.to(device)

    def fit(n: int) -> SigmoidFit:
        return fit_sigmoids(losses[:n], x, device=device, dtype=dtype, options=opts)

    t0 = time.perf_counter()
    fit(min(args.n, 50_000))
    warmup = time.perf_counter() - t0
    timed = [_seconds(device, lambda: fit(args.n)) for _ in range(args.repeat)]
    times, fitted = [t for t, _ in timed], timed[-1][1]
    ours = args.n / min(times)
    new_size, fresh = _new_size(args, fit, device)
    peer = _torch_path(args, losses, x, device, dtype, opts)

    m = min(args.scipy_n, args.n)
    sp_time, sp_rss = scipy_loop(x, y[:m], opts)
    theirs = m / sp_time
    ours_rss = np.sum((y[:m].astype(np.float64) - model(torch.tensor(x), torch.tensor(
        fitted.params[:m].astype(np.float64))).numpy()) ** 2, axis=1)
    no_worse = float(np.mean(ours_rss <= sp_rss * (1 + 1e-4) + 1e-12))

    statuses, counts = np.unique(fitted.status, return_counts=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": args.threads, "dtype": args.dtype,
        "compile": args.compile, "solver": solver_name(opts, device), "n": args.n,
        "points": len(x), "noise": args.noise, "mix": args.mix,
        "seconds": [round(t, 3) for t in times], "warmup_seconds": round(warmup, 1),
        "fits_per_s": round(ours), "scipy_n": m, "scipy_seconds": round(sp_time, 2),
        "scipy_fits_per_s": round(theirs, 1), "ratio": round(ours / theirs, 1),
        "rss_no_worse_than_scipy_1e-4": round(no_worse, 4),
        "mean_iterations": round(float(fitted.n_iter.mean()), 2),
        "new_size": {**new_size, "ratio": round(new_size["fits_per_s"] / theirs, 1)},
        "first_call_new_process": fresh and {**fresh,
                                             "ratio": round(fresh["fits_per_s"] / theirs, 1)},
        "torch_path_on_gpu": peer,
        "status": dict(zip(statuses.tolist(), counts.tolist())),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)

if __name__ == "__main__":
    main()
