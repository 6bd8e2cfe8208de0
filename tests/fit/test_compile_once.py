"""Compiled fits compile once: a batch size not seen before (one row included) adds no graph.

Compilation is observed through torch's public stance ``fail_on_recompile``
(:func:`torch.compiler.set_stance`): under it, any call that would compile a graph raises.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectrum.fit.solver import FitOptions, fit_sigmoids
from tests.fit.test_fit import X, curves, truth


def no_compiling():
    """Inside: a call that would compile (a first graph or a recompilation) raises."""
    return torch.compiler.set_stance("fail_on_recompile")


@pytest.mark.slow
def test_new_batch_sizes_reuse_the_compiled_graphs():
    rng = np.random.default_rng(3)
    y = curves(truth(400, rng)) + 0.1 * rng.standard_normal((400, len(X)))
    y[200:, 7] = np.nan  # the second batch has missing points (the masked graphs)
    y[5] = rng.standard_normal(len(X))  # noise: restarts
    warm = FitOptions(compile=True, batch_size=200)
    fit_sigmoids(y, X, device="cpu", dtype=torch.float64, options=warm)
    sizes = FitOptions(compile=True, batch_size=137)
    with no_compiling():  # raises if a new batch size compiles new graphs
        fits = fit_sigmoids(y[:275], X, device="cpu", dtype=torch.float64, options=sizes)
        one = fit_sigmoids(y[5:6], X, device="cpu", dtype=torch.float64, options=warm)
        masked_one = fit_sigmoids(y[300:301], X, device="cpu", dtype=torch.float64, options=warm)
    # a single row is fitted as in a batch (eager reference)
    eager = fit_sigmoids(y[[5, 300]], X, device="cpu", dtype=torch.float64,
                         options=FitOptions(compile=False))
    np.testing.assert_allclose(one.params[0], eager.params[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(masked_one.params[0], eager.params[1], rtol=1e-6, atol=1e-6)
    assert len(fits) == 275 and (fits.status == "converged").mean() > 0.9


@pytest.mark.slow
def test_warm_up_builds_the_graphs_a_large_fit_uses():
    """The fit stage compiles while it reads its first chunk: after ``warm_up`` on the grid, a
    compiled fit of complete trajectories adds no graph."""
    from spectrum.fit.solver import warm_up

    rng = np.random.default_rng(4)
    y = curves(truth(300, rng)) + 0.1 * rng.standard_normal((300, len(X)))
    torch.compiler.reset()
    with pytest.raises(RuntimeError, match="fail_on_recompile"), no_compiling():
        fit_sigmoids(y, X, device="cpu", options=FitOptions(compile=True))  # it does compile
    torch.compiler.reset()
    warm_up(X, device="cpu", dtype=torch.float32)
    with no_compiling():  # raises if the warm-up missed a graph of the fit
        fits = fit_sigmoids(y, X, device="cpu", options=FitOptions(compile=True))
    assert (fits.status == "converged").mean() > 0.9
