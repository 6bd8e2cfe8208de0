"""Compiled fits compile once: a batch size not seen before (one row included) adds no graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectrum.fit.solver import FitOptions, fit_sigmoids
from tests.fit.test_fit import X, curves, truth


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_new_batch_sizes_reuse_the_compiled_graphs():
    rng = np.random.default_rng(3)
    y = curves(truth(400, rng)) + 0.1 * rng.standard_normal((400, len(X)))
    y[200:, 7] = np.nan  # the second batch has missing points (the masked graphs)
    y[5] = rng.standard_normal(len(X))  # noise: restarts
    warm = FitOptions(compile=True, batch_size=200)
    fit_sigmoids(y, X, device="cpu", dtype=torch.float64, options=warm)
    before = _graphs()
    assert before > 0
    sizes = FitOptions(compile=True, batch_size=137)
    fits = fit_sigmoids(y[:275], X, device="cpu", dtype=torch.float64, options=sizes)
    one = fit_sigmoids(y[5:6], X, device="cpu", dtype=torch.float64, options=warm)
    masked_one = fit_sigmoids(y[300:301], X, device="cpu", dtype=torch.float64, options=warm)
    assert _graphs() == before, "a new batch size compiled new graphs"
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

    torch._dynamo.reset()
    warm_up(X, device="cpu", dtype=torch.float32)
    before = _graphs()
    assert before > 0
    rng = np.random.default_rng(4)
    y = curves(truth(300, rng)) + 0.1 * rng.standard_normal((300, len(X)))
    fits = fit_sigmoids(y, X, device="cpu", options=FitOptions(compile=True))
    assert _graphs() == before, "the warm-up missed a graph of the fit"
    assert (fits.status == "converged").mean() > 0.9
