"""The per-token model: a sigmoid step in log-time, its Jacobian, and an initial guess.

``l(x) = lo + (hi - lo) * sigmoid(-k * (x - tau))`` with ``x = ln T`` (T: training tokens seen):
``hi`` is the loss before the step, ``lo`` the loss after, ``tau`` the learning time (midpoint, in
ln tokens), ``k > 0`` the sharpness (the 10%-90% transition takes ``ln(81) / k`` in x). A token
whose loss rises has ``hi < lo``.

Parameters are stacked in the order :data:`PARAMS` along the last axis of a ``(..., 4)`` tensor.
:func:`token_curves` and :func:`token_slopes` are the curve and its derivative in ``x`` for
parameters given one array each, numpy or torch: every other module that evaluates the model calls
them. :func:`normal_equations` is the inner kernel of the fitter: the residual sum of squares,
``J^T J`` and ``J^T r`` of many trajectories, accumulated without materialising the ``(N, K, 4)``
Jacobian.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import expit

PARAMS = ("lo", "hi", "tau", "k")
WIDTH_10_90 = math.log(81.0)  # x-width of the 10%-90% transition is WIDTH_10_90 / k
Array = np.ndarray | torch.Tensor


def _halves(z: Array) -> tuple[Array, Array]:
    """``sigmoid(z)`` and ``sigmoid(-z) = 1 - sigmoid(z)``, both to full relative precision: numpy
    arrays (by scipy's ``expit``) or torch tensors (one ``exp`` for both)."""
    if not isinstance(z, torch.Tensor):
        return expit(z), expit(-z)
    e = torch.exp(-z.abs())
    big = 1.0 / (1.0 + e)
    small = e * big
    pos = z >= 0
    return torch.where(pos, big, small), torch.where(pos, small, big)


def _sigmoid(z: Array) -> Array:
    """``sigmoid(z)`` alone, as :func:`_halves` computes it."""
    return _halves(z)[0] if isinstance(z, torch.Tensor) else expit(z)


def _per_token(lo, hi, tau, k, x) -> tuple[Array, ...]:
    """The parameters (...) as columns (..., 1) against the points ``x`` (K,): torch tensors as
    they are, anything else as float64 numpy."""
    if isinstance(x, torch.Tensor):
        return (*(a[..., None] for a in (lo, hi, tau, k)), x)
    return (*(np.asarray(a, float)[..., None] for a in (lo, hi, tau, k)), np.asarray(x, float))


def token_curves(lo, hi, tau, k, x) -> Array:
    """``l(x)`` of every token: parameters of shape (...) each, points ``x`` (K,): (..., K)."""
    lo, hi, tau, k, x = _per_token(lo, hi, tau, k, x)
    return lo + (hi - lo) * _sigmoid(-k * (x - tau))


def token_slopes(lo, hi, tau, k, x) -> Array:
    """``dl/dx = -(hi - lo) k s (1 - s)`` of every token, shapes as :func:`token_curves`."""
    lo, hi, tau, k, x = _per_token(lo, hi, tau, k, x)
    s, q = _halves(-k * (x - tau))
    return -((hi - lo) * k * s * q)


def model(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``l(x)`` for parameters ``p`` (..., 4) at points ``x`` (K,): shape (..., K)."""
    return token_curves(*p.unbind(-1), x)


def jacobian(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``d l(x) / d (lo, hi, tau, k)``: shape (..., K, 4). Materialised; for checks, not the fitter."""
    lo, hi, tau, k = (p[..., i, None] for i in range(4))
    u = x - tau
    s, q = _halves(-k * u)
    a = s * q
    d = hi - lo
    return torch.stack([q, s, d * k * a, -d * u * a], dim=-1)


def normal_equations(y: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor,
                     p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RSS (N,), ``J^T J`` (N, 4, 4) and ``J^T r`` (N, 4) at ``p`` (N, 4), with ``r = y - l(x)``.

    ``y`` (N, K) holds finite values, 0 at missing points; ``mask`` (N, K) is 1 where a point
    counts and 0 where it is missing (None: every point counts). The Jacobian columns are ``q = 1 - s``, ``s``,
    ``d k a`` and ``-d u a`` with ``s = sigmoid(-k u)``, ``u = x - tau``, ``a = s q`` and
    ``d = hi - lo``: the fifteen sums below are formed pointwise and reduced over K, so only
    (N, K) elementwise work is done (a compiler fuses it into one pass).
    """
    lo, hi, tau, k = p.unbind(-1)
    u = x - tau[:, None]
    s, q = _halves(-k[:, None] * u)
    if mask is not None:
        s = s * mask
        q = q * mask
    a = s * q
    ua = u * a
    r = y - (lo[:, None] * q + hi[:, None] * s)
    sums = torch.stack([
        (q * q).sum(1), a.sum(1), (q * a).sum(1), (q * ua).sum(1),
        (s * s).sum(1), (s * a).sum(1), (s * ua).sum(1),
        (a * a).sum(1), (a * ua).sum(1), (ua * ua).sum(1),
        (r * q).sum(1), (r * s).sum(1), (r * a).sum(1), (r * ua).sum(1), (r * r).sum(1),
    ], dim=1)
    return assemble(sums, p)


def assemble(sums: torch.Tensor, p: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RSS, ``J^T J`` and ``J^T r`` from the fifteen sums of :func:`normal_equations`."""
    qq, qs, qa, qua, ss, sa, sua, aa, aua, uaua, rq, rs, ra, rua, rr = sums.unbind(1)
    lo, hi, tau, k = p.unbind(-1)
    d = hi - lo
    ct = d * k  # the tau column is ct * a
    ck = -d  # the k column is ck * u * a
    rows = [
        [qq, qs, ct * qa, ck * qua],
        [qs, ss, ct * sa, ck * sua],
        [ct * qa, ct * sa, ct * ct * aa, ct * ck * aua],
        [ck * qua, ck * sua, ct * ck * aua, ck * ck * uaua],
    ]
    jtj = torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)
    jtr = torch.stack([rq, rs, ct * ra, ck * rua], dim=-1)
    return rr, jtj, jtr


def linear_lohi(y: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, tau: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The least-squares ``lo`` and ``hi`` for fixed ``tau`` and ``k`` (the model is linear in
    them), and the RSS they leave. ``y`` is 0 where ``mask`` is 0.

    Where the 2x2 system is degenerate (the sigmoid is flat over the data) both are the mean.
    """
    s, q = _halves(-k[:, None] * (x - tau[:, None]))
    s, q = s * mask, q * mask
    a11, a12, a22 = (q * q).sum(1), (q * s).sum(1), (s * s).sum(1)
    b1, b2 = (q * y).sum(1), (s * y).sum(1)
    det = a11 * a22 - a12 * a12
    ok = det > 1e-6 * (a11 * a22).clamp_min(torch.finfo(y.dtype).tiny)
    safe = torch.where(ok, det, 1.0)
    mean = (y * mask).sum(1) / mask.sum(1).clamp_min(1)
    lo = torch.where(ok, (a22 * b1 - a12 * b2) / safe, mean)
    hi = torch.where(ok, (a11 * b2 - a12 * b1) / safe, mean)
    rss = (y - lo[:, None] * q - hi[:, None] * s).square().sum(1)
    return lo, hi, rss


def _forward_fill(y: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Each missing value replaced by the previous finite one (leading gaps by the first)."""
    kk = y.shape[1]
    pos = torch.arange(kk, device=y.device).expand_as(y)
    idx = torch.where(finite, pos, -1).cummax(dim=1).values
    first = finite.to(torch.int8).argmax(dim=1, keepdim=True).expand_as(idx)
    idx = torch.where(idx < 0, first, idx)
    return torch.gather(torch.where(finite, y, 0), 1, idx)


def guess(y: torch.Tensor, x: torch.Tensor, *, edge: int = 3,
          complete: bool | None = None) -> torch.Tensor:
    """Starting parameters (N, 4) for each trajectory of ``y`` (N, K; NaN = missing), from its data.

    ``hi`` and ``lo`` are the means of the first and last ``edge`` finite points; on the curve
    normalised to run from 1 (at ``hi``) to 0 (at ``lo``) and clipped to [0, 1], ``tau`` is
    ``x_first + integral(y_n dx)`` and ``1/k`` is ``integral(y_n (1 - y_n) dx)``, both exact for a
    sigmoid that completes inside the data (``k`` is capped at the sharpest step that the grid
    resolves around ``tau``, a 10%-90% rise over two spacings). Rows without finite points give NaN; the fitter
    does not use them. ``complete=True`` promises that every value is finite (a faster path).
    """
    finite = torch.isfinite(y)
    if complete is None:
        complete = bool(finite.all())
    if complete:
        hi, lo = y[:, :edge].mean(1), y[:, -edge:].mean(1)
        filled = y
    else:
        rank = finite.cumsum(dim=1)
        count = rank[:, -1:]
        head = finite & (rank <= edge)
        tail = finite & (rank > count - edge)
        y0 = torch.where(finite, y, 0)
        hi = (y0 * head).sum(1) / head.sum(1)
        lo = (y0 * tail).sum(1) / tail.sum(1)
        filled = _forward_fill(y, finite)
    d = hi - lo
    tiny = torch.finfo(y.dtype).eps * (hi.abs() + lo.abs() + 1)
    safe_d = torch.where(d.abs() > tiny, d, 1.0)
    yn = ((filled - lo[:, None]) / safe_d[:, None]).clamp(0, 1)
    yn = torch.where((d.abs() > tiny)[:, None], yn, 0.5)
    tau = x[0] + torch.trapezoid(yn, x, dim=1)
    width = torch.trapezoid(yn * (1 - yn), x, dim=1)
    # no sharper than the grid can resolve around tau: a 10%-90% step over two spacings there
    at = torch.searchsorted(x, tau.clamp(x[0], x[-1]).contiguous()).clamp(1, len(x) - 1)
    spacing = x[at] - x[at - 1]
    k = torch.minimum(1.0 / width.clamp_min(torch.finfo(y.dtype).tiny),
                      WIDTH_10_90 / (2 * spacing))
    return torch.stack([lo, hi, tau, k], dim=1)
