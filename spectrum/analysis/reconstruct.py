"""Reconstruction of the loss curve and its derivatives from per-token sigmoids and spectra.

Notation: ``x = ln T`` (T: training tokens seen); token ``i`` follows ``l_i(x) = lo_i + delta_i * s_i(x)``
with ``s_i = sigmoid(-k_i (x - tau_i))``, so the mean loss ``L(x) = (1/N) sum_i l_i(x)`` has

    dL/dx = -(1/N) * sum_i delta_i * k_i * s_i * (1 - s_i),

which in the sharp limit (k -> inf) is ``-S(x)``, the amplitude-weighted spectrum. Convolving the
spectrum with the mean sigmoid kernel ``g(u) = sum_i |delta_i| k_i s(1-s)(k_i u) / sum_i |delta_i|``
(which integrates to 1) gives the finite-width prediction ``dL/dx ~ -(S * g)(x)``.

Derivatives are taken with respect to ``ln T`` (``dL/dlnT = T dL/dT``), ``ln M`` and ``ln D``.

**Measured derivatives** are finite differences of the measured mean loss on the checkpoints'
own, irregular ln T grid: second-order centred differences (``numpy.gradient`` with the actual
spacing), no further smoothing; the first and last checkpoints (one-sided differences) are not
used as targets. Derivatives across runs (M, D) are estimated at matched T by least squares of the
loss differences between a held-out run and every other run on their differences in ln M and ln D
(runs' curves linearly interpolated in ln T); predictions are put through the same estimator.

**Scores**: over a test's targets, ``R^2 = 1 - sum (p - m)^2 / sum (m - mean m)^2`` and the median
of ``|p - m| / |m|`` (the relative error of the derivative), with the number of targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectrum.analysis.spectra import Spectrum

CHUNK = 1 << 16


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def token_curves(lo, hi, tau, k, x) -> np.ndarray:
    """(N, K) sigmoid losses of each token at each x."""
    lo, hi, tau, k = (np.asarray(a, float)[:, None] for a in (lo, hi, tau, k))
    return lo + (hi - lo) * _sig(-k * (np.asarray(x, float)[None, :] - tau))


def mean_curve(lo, hi, tau, k, x, *, chunk: int = CHUNK) -> np.ndarray:
    """``L(x) = (1/N) sum_i l_i(x)`` (token chunks bound the memory)."""
    x = np.asarray(x, float)
    lo, hi, tau, k = (np.asarray(a, float) for a in (lo, hi, tau, k))
    total = np.zeros_like(x)
    for a in range(0, len(lo), chunk):
        total += token_curves(lo[a:a + chunk], hi[a:a + chunk], tau[a:a + chunk], k[a:a + chunk],
                              x).sum(0)
    return total / max(len(lo), 1)


def mean_derivative(lo, hi, tau, k, x, *, chunk: int = CHUNK) -> np.ndarray:
    """``dL/dx = -(1/N) sum_i delta_i k_i s_i (1 - s_i)``."""
    x = np.asarray(x, float)
    lo, hi, tau, k = (np.asarray(a, float) for a in (lo, hi, tau, k))
    total = np.zeros_like(x)
    for a in range(0, len(lo), chunk):
        sl = slice(a, a + chunk)
        s = _sig(-k[sl, None] * (x[None, :] - tau[sl, None]))
        total -= ((hi[sl] - lo[sl])[:, None] * k[sl, None] * s * (1 - s)).sum(0)
    return total / max(len(lo), 1)


def measured_derivative(x: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Centred finite differences of ``L`` on the irregular grid ``x``; NaN at both ends
    (and everywhere if fewer than 3 points)."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    out = np.full_like(L, np.nan)
    if len(x) >= 3:
        out[1:-1] = np.gradient(L, x, edge_order=2)[1:-1]
    return out


def sharp_derivative(sp: Spectrum, x: np.ndarray) -> np.ndarray:
    """``-S(x)``: the spectrum read at x (linear between bin centres, 0 off the grid)."""
    return -np.interp(np.asarray(x, float), sp.centers, sp.S, left=0.0, right=0.0)


@dataclass(frozen=True)
class Kernel:
    """The mean sigmoid kernel, represented by |delta|-weighted quantiles of the sharpness k."""

    k: np.ndarray

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, float)
        s = _sig(-self.k[:, None] * u.ravel()[None, :])
        return (self.k[:, None] * s * (1 - s)).mean(0).reshape(u.shape)


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


def score(predicted, measured) -> dict:
    """R^2, median relative error and the number of (finite) targets."""
    p, m = np.asarray(predicted, float).ravel(), np.asarray(measured, float).ravel()
    ok = np.isfinite(p) & np.isfinite(m)
    p, m = p[ok], m[ok]
    n = int(ok.sum())
    if n < 2:
        return null_score(f"only {n} finite target(s)")
    ss_tot = float(((m - m.mean()) ** 2).sum())
    ss_res = float(((p - m) ** 2).sum())
    nz = m != 0
    rel = np.abs(p[nz] - m[nz]) / np.abs(m[nz])
    return {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
            "median_rel_err": float(np.median(rel)) if rel.size else None,
            "n_targets": n, "reason": None if ss_tot > 0 else "targets are constant: R^2 undefined"}


def null_score(reason: str) -> dict:
    return {"r2": None, "median_rel_err": None, "n_targets": 0, "reason": reason}


def matched_gradient(x: np.ndarray, curve_h: np.ndarray, others: list[tuple[np.ndarray, float, float]],
                     lnM_h: float, lnD_h: float) -> dict[str, np.ndarray | None]:
    """dL/dlnM and dL/dlnD at (M_h, D_h) for each matched x, from loss differences to other runs.

    ``others`` holds (curve at ``x``, ln M, ln D) per other run. An axis along which no other run
    differs gets ``None``; with both axes present but collinear differences, both are ``None``.
    """
    if not others:
        return {"lnM": None, "lnD": None}
    dX = np.array([[m - lnM_h, d - lnD_h] for _, m, d in others])
    dL = np.stack([c for c, _, _ in others], 1) - np.asarray(curve_h)[:, None]  # (K, J)
    cols = [j for j in range(2) if np.abs(dX[:, j]).max() > 1e-9]
    out: dict[str, np.ndarray | None] = {"lnM": None, "lnD": None}
    if not cols or np.linalg.matrix_rank(dX[:, cols]) < len(cols):
        return out
    g = np.linalg.lstsq(dX[:, cols], dL.T, rcond=None)[0]  # (len(cols), K)
    for row, j in enumerate(cols):
        out[("lnM", "lnD")[j]] = g[row]
    return out
