"""The fused Triton fit kernel: step for step the torch solver, checked on a CPU under Triton's
interpreter, and compiled for an H100 (sm_90) by Triton's own compiler without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from spectrum.fit import solver as fit_module  # noqa: E402
from spectrum.fit import triton_kernel as fit_triton  # noqa: E402
from spectrum.fit.solver import FitOptions, fit_sigmoids  # noqa: E402
from spectrum.fit.model import guess  # noqa: E402
from tests.fit.test_fit import X, curves, rss_no_worse, scipy_rss, truth  # noqa: E402

# every 5th checkpoint of Pythia's schedule: the interpreter pays for each point of each pass
GRID = np.arange(0, len(X), 5)
XS = X[GRID]


@pytest.fixture
def interpreter():
    """The kernel runs on the CPU under Triton's interpreter (tests/conftest.py chooses it on
    machines without CUDA)."""
    if not fit_triton.interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 before Triton is imported")
    with warnings.catch_warnings():
        # the interpreter evaluates with numpy, which warns where a GPU silently gives inf
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        yield


def noisy(n: int, noise: float, seed: int, missing: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = curves(truth(n, rng))[:, GRID] + noise * rng.standard_normal((n, len(GRID)))
    y[rng.random(y.shape) < missing] = np.nan
    return y


def test_budgets_cover_max_iter_in_growing_rounds():
    assert list(fit_triton._budgets(100)) == [(0, 16), (16, 16), (32, 32), (64, 36)]
    assert list(fit_triton._budgets(5)) == [(0, 5)]


def test_kernel_iterates_like_the_torch_solver(interpreter):
    """Same start, same data: the same statuses, iteration counts and optimum (float64)."""
    y = torch.tensor(noisy(160, 0.05, seed=21))
    finite = torch.isfinite(y)
    mask = finite.to(torch.float64)
    y0 = torch.where(finite, y, 0)
    x = torch.tensor(XS)
    opts = FitOptions()
    lb, ub = (torch.tensor(b) for b in opts.bounds(XS))
    p0 = guess(y, x).clamp(lb, ub)
    floor = fit_module._rss_floor(y0)
    ours = fit_module._levenberg_marquardt(y0, mask, x, p0, lb, ub, opts, False, floor,
                                           fused=True)
    ref = fit_module._levenberg_marquardt(y0, mask, x, p0, lb, ub, opts, False, floor)
    p, rss, jtj, n_iter, status = (t.numpy() for t in ours)
    p_ref, rss_ref, jtj_ref, n_iter_ref, status_ref = (t.numpy() for t in ref)
    assert (status == status_ref).mean() >= 0.98
    assert (np.abs(n_iter - n_iter_ref) <= 1).mean() >= 0.95
    close = np.abs(rss - rss_ref) <= 1e-6 * rss_ref + 1e-12
    # rows still crawling along a flat valley at the iteration cap are stopped at slightly
    # different points by the two summation orders; every converged row must agree
    converged = (status_ref == 0) & (status == 0)
    assert converged.mean() >= 0.8
    assert close[converged].all()
    assert close.mean() >= 0.98
    # where the optimum is well determined, the same point and the same normal equations
    same = close & (np.abs(p - p_ref) <= 1e-6 * (np.abs(p_ref) + 1)).all(1)
    assert same.mean() >= 0.9
    np.testing.assert_allclose(jtj[same], jtj_ref[same], rtol=1e-4, atol=1e-8)


def test_rows_beyond_32_bit_offsets_are_fitted_in_parts(interpreter, monkeypatch):
    """Launches are split so that no offset overflows; the parts give the same fits."""
    y = torch.tensor(noisy(90, 0.05, seed=26, missing=0.0))[:, ::3].contiguous()
    x = torch.tensor(XS[::3])
    opts = FitOptions()
    lb, ub = (torch.tensor(b) for b in opts.bounds(XS[::3]))
    p0 = guess(y, x).clamp(lb, ub)
    args = (y, None, x, p0, lb, ub, opts.tolerances(y.dtype), opts.lambda0, 20,
            fit_module._rss_floor(y))
    whole = fit_triton.levenberg_marquardt(*args)
    monkeypatch.setattr(fit_triton, "MAX_OFFSET", 11 * 40)  # 40 rows per launch
    parts = fit_triton.levenberg_marquardt(*args)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b)


def test_fused_fits_like_the_torch_path_and_scipy(interpreter):
    """The whole fitter with the kernel (guess, rounds, restarts, standard errors) against the
    torch path and curve_fit, with noise-free and noisy trajectories and missing points. (On
    this coarse grid a few noisy fits end at max_iter slightly above scipy, on either path.)"""
    y = np.concatenate([noisy(40, 0.0, seed=22), noisy(40, 0.05, seed=23),
                        noisy(40, 0.15, seed=24)])
    opts = FitOptions(kernel="triton")
    fit = fit_sigmoids(y, XS, device="cpu", dtype=torch.float64, options=opts)
    reference = fit_sigmoids(y, XS, device="cpu", dtype=torch.float64,
                             options=FitOptions(kernel="torch"))
    assert (fit.status == reference.status).mean() >= 0.98
    assert (np.abs(fit.rss - reference.rss) <= 1e-6 * reference.rss + 1e-12).mean() >= 0.98
    p0 = guess(torch.tensor(y), torch.tensor(XS)).numpy()
    theirs = scipy_rss(y, p0, opts, XS)
    assert rss_no_worse(fit.rss, theirs, np.nan_to_num(y)).mean() >= 0.95

    clean = fit.status[:40] == "converged"
    truth_p = truth(40, np.random.default_rng(22))
    err = np.abs(fit.params[:40][clean] - truth_p[clean]) / np.maximum(np.abs(truth_p[clean]), 1)
    assert clean.mean() >= 0.85 and err.max() < 1e-4
    # standard errors of the noisy fits that reach the same optimum
    same = (np.abs(fit.params - reference.params) <= 1e-6 * (np.abs(reference.params) + 1)).all(1)
    same &= (fit.status == "converged") & (np.arange(len(y)) >= 40)
    same &= reference.tau_se < 1.0  # (near-singular J^T J amplifies rounding in the rest)
    assert same.sum() >= 30
    np.testing.assert_allclose(fit.tau_se[same], reference.tau_se[same], rtol=1e-3)


def test_fused_fit_on_a_bound_and_bad_rows(interpreter):
    """A step sharper than k_max ends converged on the bound; bad rows get the torch path's
    statuses; max_iter is honoured."""
    opts = FitOptions(k_max=5.0, kernel="triton")
    sharp = curves(np.array([[1.0, 4.0, X[60], 30.0]]))[:, GRID]
    fit = fit_sigmoids(sharp, XS, device="cpu", dtype=torch.float64, options=opts)
    assert fit.status[0] == "converged" and fit.k[0] == pytest.approx(5.0)

    good = sharp[0]
    rows = np.stack([np.full(len(XS), np.nan), np.full(len(XS), 2.5),
                     np.where(np.arange(len(XS)) % 2 == 0, good, np.inf), good])
    fused = fit_sigmoids(rows, XS, device="cpu", options=FitOptions(kernel="triton"))
    plain = fit_sigmoids(rows, XS, device="cpu", options=FitOptions(kernel="torch"))
    assert fused.status.tolist() == plain.status.tolist()
    assert np.isfinite(fused.params[1:]).all()

    few = FitOptions(max_iter=3, restarts=False)
    y = noisy(20, 0.1, seed=25)
    fused = fit_sigmoids(y, XS, device="cpu", options=replace(few, kernel="triton"))
    plain = fit_sigmoids(y, XS, device="cpu", options=few)
    assert (fused.n_iter <= 3).all() and "max_iter" in set(fused.status)
    assert (fused.status == plain.status).mean() >= 0.9


def test_kernel_choice():
    cpu = torch.device("cpu")
    assert fit_module._use_kernel("torch", cpu) is False
    assert fit_module._use_kernel("auto", cpu) is False  # the interpreter is never automatic
    if not fit_triton.interpreted():
        with pytest.raises(ValueError, match="cannot run on cpu"):
            fit_module._use_kernel("triton", cpu)
    with pytest.raises(ValueError, match="kernel must be"):
        fit_module._use_kernel("cuda", cpu)


COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from spectrum.fit import triton_kernel as fit_triton

dtype = sys.argv[1]
types = {"yt_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "state_ptr": f"*{dtype}",
         "floor_ptr": f"*{dtype}", "rss_ptr": f"*{dtype}", "jtj_ptr": f"*{dtype}",
         "iter_ptr": "*i32", "status_ptr": "*i8", "consts_ptr": f"*{dtype}", "n": "i32",
         "kk": "i32", "first_iter": "i32", "budget": "i32", "max_iter": "i32",
         "BLOCK": "constexpr"}
kernel = fit_triton._lm_kernel
source = ASTSource(kernel, {name: types[name] for name in kernel.arg_names},
                   constexprs={"BLOCK": fit_triton.BLOCK})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
assert len(compiled.asm["cubin"]) > 0
print([line for line in compiled.asm["ptx"].splitlines() if line.startswith(".target")][0])
"""


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernel_compiles_for_an_h100(dtype):
    """Triton's compiler (not the lenient interpreter) accepts the kernel and builds sm_90 code,
    without a GPU."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run([sys.executable, "-c", COMPILE, dtype], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ".target sm_90a"


@pytest.mark.gpu
def test_fused_kernel_on_a_gpu_matches_scipy_in_float32():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(6)
    y = curves(truth(2000, rng)) + 0.1 * rng.standard_normal((2000, len(X)))
    opts = FitOptions(kernel="triton")
    fit = fit_sigmoids(torch.tensor(y, dtype=torch.float32, device="cuda"), X, device="cuda",
                       options=opts)
    theirs = scipy_rss(y, guess(torch.tensor(y), torch.tensor(X)).numpy(), opts)
    ours = np.sum((y - curves(fit.params.astype(np.float64))) ** 2, axis=1)
    assert (ours <= theirs * (1 + 1e-4)).mean() >= 0.999
