"""The derivative of the loss curve predicted from a spectrum.

Notation: ``x = ln T`` (T: training tokens seen); token ``i`` follows
``l_i(x) = lo_i + delta_i * s_i(x)`` with ``s_i = sigmoid(-k_i (x - tau_i))``
(:func:`spectrum.fit.model.token_curves`), so the mean loss ``L(x) = (1/N) sum_i l_i(x)`` has

    dL/dx = -(1/N) * sum_i delta_i * k_i * s_i * (1 - s_i),

which in the sharp limit (k -> inf) is ``-S(x)``, the amplitude-weighted spectrum. Convolving the
spectrum with the mean sigmoid kernel ``g(u) = sum_i |delta_i| k_i s(1-s)(k_i u) / sum_i |delta_i|``
(which integrates to 1) gives the finite-width prediction ``dL/dx ~ -(S * g)(x)``.

Derivatives are taken with respect to ``ln T`` (``dL/dlnT = T dL/dT``), ``ln M`` and ``ln D``.

Measured derivatives, and the targets and scores of the tests, are in
:mod:`spectrum.analysis.runs.curves`, :mod:`spectrum.analysis.heldout.targets` and
:mod:`spectrum.analysis.heldout.scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectrum.analysis.spectra.spectrum import Spectrum
from spectrum.fit.model import token_slopes


def sharp_derivative(sp: Spectrum, x: np.ndarray) -> np.ndarray:
    """``-S(x)``: the spectrum read at x (linear between bin centres, 0 off the grid)."""
    return -np.interp(np.asarray(x, float), sp.centers, sp.S, left=0.0, right=0.0)


@dataclass(frozen=True)
class Kernel:
    """The mean sigmoid kernel, represented by |delta|-weighted quantiles of the sharpness k."""

    k: np.ndarray

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """``g(u)``: minus the slope of a unit step (hi 1, lo 0) centred at 0, mean over k."""
        u = np.asarray(u, float)
        return (-token_slopes(0.0, 1.0, 0.0, self.k, u.ravel())).mean(0).reshape(u.shape)


def mean_kernel(delta: np.ndarray, k: np.ndarray, *, n_quantiles: int = 64) -> Kernel:
    delta, k = np.asarray(delta, float), np.asarray(k, float)
    ok = np.isfinite(delta) & np.isfinite(k) & (k > 0) & (delta != 0)
    if not ok.any():
        return Kernel(np.array([1.0]))
    w = np.abs(delta[ok])
    order = np.argsort(k[ok])
    cw = np.cumsum(w[order]) / w.sum()
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    return Kernel(k[ok][order][np.minimum(np.searchsorted(cw, q), ok.sum() - 1)])


def kernel_derivative(sp: Spectrum, kernel: Kernel, x: np.ndarray) -> np.ndarray:
    """``-(S * g)(x) = -sum_b S_b width_b g(x - c_b)``."""
    x = np.asarray(x, float)
    g = kernel(x[:, None] - sp.centers[None, :])
    return -(g * (sp.S * sp.widths)[None, :]).sum(1)
