"""The Levenberg-Marquardt iterations of :mod:`spectrum.fit.solver` as one fused Triton kernel.

The torch solver launches a dozen kernels per iteration and keeps its state in global memory;
on a GPU that bounds it near 10^6 fits/s, far under what the arithmetic allows. Here one program
fits ``BLOCK`` trajectories, one per lane, from start to finish: the state (parameters, ``J^T J``,
``J^T r``, damping) lives in registers, each iteration is one pass over the K points that
accumulates the fifteen sums of :func:`spectrum.fit.model.normal_equations` at the trial point,
and the damped 4x4 system is solved in registers by a diagonally scaled Cholesky factorisation.
A launch ends when every lane has finished or its iteration budget is spent; the rows still
iterating then carry their state into the next launch (:func:`levenberg_marquardt`).

The algorithm is the torch solver's, step for step (:func:`spectrum.fit.solver._levenberg_marquardt`):
Marquardt scaling, Nielsen's damping update, step boosting, the active set at the bounds of
``tau`` and ``k``, MINPACK's convergence tests, and the same scaled Cholesky solve
(:func:`spectrum.fit.solver._solve_spd4`). Sums are accumulated in another order, so results agree
with the torch path to rounding, not bit for bit. ``lo`` and ``hi`` must be unbounded (as
:meth:`FitOptions.bounds` makes them).

The losses are read transposed, (K, N), so that the lanes of a program load consecutive
addresses at each point; missing points are NaN.

Without a CUDA device the kernel still runs under Triton's interpreter
(``TRITON_INTERPRET=1`` before this module is imported), which is how the tests check it
against the torch path on a CPU.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch; CPU builds fit with torch
    triton = None

BLOCK = 128  # trajectories per program on a GPU: one per lane of four warps
INTERPRETER_BLOCK = 1024  # the interpreter pays per operation, not per lane: wide programs
CONVERGED, MAX_ITER = 0, 1  # spectrum.fit.solver.STATUSES
PENDING = 2  # still iterating at the end of a launch
MAX_OFFSET = 2**31 - 1  # the largest element offset (point x rows + row) a launch may use


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device) -> bool:
    """Whether the fused kernel can fit on ``device``: CUDA with Triton, or the interpreter."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreted())


if triton is not None:
    _CONVERGED = tl.constexpr(CONVERGED)
    _MAX_ITER = tl.constexpr(MAX_ITER)
    _PENDING = tl.constexpr(PENDING)

    @triton.jit
    def _solve4(a00, a01, a02, a03, a11, a12, a13, a22, a23, a33, b0, b1, b2, b3, tiny):
        """Solve the symmetric 4x4 system A s = b per lane; ``ok`` is False where A is not
        positive definite. A is scaled to unit diagonal first, so the pivots measure the
        correlation of the parameters, not their units."""
        ok = (a00 > 0) & (a11 > 0) & (a22 > 0) & (a33 > 0)
        d0 = 1.0 / tl.sqrt(tl.maximum(a00, tiny))
        d1 = 1.0 / tl.sqrt(tl.maximum(a11, tiny))
        d2 = 1.0 / tl.sqrt(tl.maximum(a22, tiny))
        d3 = 1.0 / tl.sqrt(tl.maximum(a33, tiny))
        c01 = a01 * d0 * d1
        c02 = a02 * d0 * d2
        c03 = a03 * d0 * d3
        c12 = a12 * d1 * d2
        c13 = a13 * d1 * d3
        c23 = a23 * d2 * d3
        e0 = b0 * d0
        e1 = b1 * d1
        e2 = b2 * d2
        e3 = b3 * d3
        # Cholesky of the unit-diagonal matrix: L L^T with L[0, 0] = 1
        l10 = c01
        l20 = c02
        l30 = c03
        p1 = 1.0 - l10 * l10
        ok = ok & (p1 > 0)
        l11 = tl.sqrt(tl.maximum(p1, tiny))
        l21 = (c12 - l20 * l10) / l11
        l31 = (c13 - l30 * l10) / l11
        p2 = 1.0 - l20 * l20 - l21 * l21
        ok = ok & (p2 > 0)
        l22 = tl.sqrt(tl.maximum(p2, tiny))
        l32 = (c23 - l30 * l20 - l31 * l21) / l22
        p3 = 1.0 - l30 * l30 - l31 * l31 - l32 * l32
        ok = ok & (p3 > 0)
        l33 = tl.sqrt(tl.maximum(p3, tiny))
        z0 = e0
        z1 = (e1 - l10 * z0) / l11
        z2 = (e2 - l20 * z0 - l21 * z1) / l22
        z3 = (e3 - l30 * z0 - l31 * z1 - l32 * z2) / l33
        s3 = z3 / l33
        s2 = (z2 - l32 * s3) / l22
        s1 = (z1 - l21 * s2 - l31 * s3) / l11
        s0 = z0 - l10 * s1 - l20 * s2 - l30 * s3
        return s0 * d0, s1 * d1, s2 * d2, s3 * d3, ok

    @triton.jit
    def _normal_equations(yt_ptr, x_ptr, rows, inside, n, kk, lo, hi, tau, k):
        """RSS, the ten entries of J^T J and the four of J^T r at (lo, hi, tau, k), per lane."""
        zero = tl.zeros_like(lo)
        qq = zero
        qs = zero
        qa = zero
        qua = zero
        ss = zero
        sa = zero
        sua = zero
        aa = zero
        aua = zero
        uaua = zero
        rq = zero
        rs = zero
        ra = zero
        rua = zero
        rr = zero
        for j in range(kk):
            xj = tl.load(x_ptr + j)
            v = tl.load(yt_ptr + j * n + rows, mask=inside, other=0.0)
            present = v == v
            v = tl.where(present, v, 0.0)
            u = xj - tau
            z = -k * u
            e = tl.exp(-tl.abs(z))
            big = 1.0 / (1.0 + e)
            small = e * big
            s = tl.where(z >= 0, big, small)
            q = tl.where(z >= 0, small, big)
            s = tl.where(present, s, 0.0)
            q = tl.where(present, q, 0.0)
            a = s * q
            ua = u * a
            r = v - (lo * q + hi * s)
            qq += q * q
            qs += a
            qa += q * a
            qua += q * ua
            ss += s * s
            sa += s * a
            sua += s * ua
            aa += a * a
            aua += a * ua
            uaua += ua * ua
            rq += r * q
            rs += r * s
            ra += r * a
            rua += r * ua
            rr += r * r
        ct = (hi - lo) * k  # the tau column is ct * a
        ck = lo - hi  # the k column is ck * u * a
        return (rr, qq, qs, ct * qa, ck * qua, ss, ct * sa, ck * sua, ct * ct * aa,
                ct * ck * aua, ck * ck * uaua, rq, rs, ct * ra, ck * rua)

    @triton.jit
    def _lm_kernel(yt_ptr, x_ptr, state_ptr, floor_ptr, rss_ptr, jtj_ptr, iter_ptr, status_ptr,
                   consts_ptr, n, kk, first_iter, budget, max_iter, BLOCK: tl.constexpr):
        """Up to ``budget`` iterations for each of ``BLOCK`` trajectories, from and back to the
        state rows lo, hi, tau, k, lambda, nu, boost, dscale (4) of ``state`` (11, n)."""
        # scalars in the fitting dtype (a Python float argument would arrive as float32)
        tau_lb = tl.load(consts_ptr)
        tau_ub = tl.load(consts_ptr + 1)
        k_lb = tl.load(consts_ptr + 2)
        k_ub = tl.load(consts_ptr + 3)
        ftol = tl.load(consts_ptr + 4)
        xtol = tl.load(consts_ptr + 5)
        gtol = tl.load(consts_ptr + 6)
        tiny = tl.load(consts_ptr + 7)
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = rows < n
        lo = tl.load(state_ptr + rows, mask=inside, other=0.0)
        hi = tl.load(state_ptr + n + rows, mask=inside, other=1.0)
        tau = tl.load(state_ptr + 2 * n + rows, mask=inside, other=0.0)
        k = tl.load(state_ptr + 3 * n + rows, mask=inside, other=1.0)
        lam = tl.load(state_ptr + 4 * n + rows, mask=inside, other=1.0)
        nu = tl.load(state_ptr + 5 * n + rows, mask=inside, other=2.0)
        boost = tl.load(state_ptr + 6 * n + rows, mask=inside, other=1.0)
        ds0 = tl.load(state_ptr + 7 * n + rows, mask=inside, other=1.0)
        ds1 = tl.load(state_ptr + 8 * n + rows, mask=inside, other=1.0)
        ds2 = tl.load(state_ptr + 9 * n + rows, mask=inside, other=1.0)
        ds3 = tl.load(state_ptr + 10 * n + rows, mask=inside, other=1.0)
        floor = tl.load(floor_ptr + rows, mask=inside, other=0.0)
        tau = tl.minimum(tl.maximum(tau, tau_lb), tau_ub)
        k = tl.minimum(tl.maximum(k, k_lb), k_ub)

        (rss, j00, j01, j02, j03, j11, j12, j13, j22, j23, j33,
         g0, g1, g2, g3) = _normal_equations(yt_ptr, x_ptr, rows, inside, n, kk, lo, hi, tau, k)
        live = inside
        conv = rows < 0
        n_iter = rows * 0 + first_iter + budget

        it = first_iter * 0
        while (it < budget) & (tl.max(live.to(tl.int32), 0) > 0):
            it += 1
            # the damped system, with bound-active parameters held (their rows made identity)
            ds0 = tl.maximum(ds0, j00)
            ds1 = tl.maximum(ds1, j11)
            ds2 = tl.maximum(ds2, j22)
            ds3 = tl.maximum(ds3, j33)
            f2 = ~(((tau <= tau_lb) & (g2 < 0)) | ((tau >= tau_ub) & (g2 > 0)))
            f3 = ~(((k <= k_lb) & (g3 < 0)) | ((k >= k_ub) & (g3 > 0)))
            h2 = tl.where(f2, g2, 0.0)
            h3 = tl.where(f3, g3, 0.0)
            cos0 = tl.abs(g0) / tl.maximum(tl.sqrt(j00 * rss), tiny)
            cos1 = tl.abs(g1) / tl.maximum(tl.sqrt(j11 * rss), tiny)
            cos2 = tl.abs(h2) / tl.maximum(tl.sqrt(j22 * rss), tiny)
            cos3 = tl.abs(h3) / tl.maximum(tl.sqrt(j33 * rss), tiny)
            small_g = (tl.maximum(tl.maximum(cos0, cos1), tl.maximum(cos2, cos3)) <= gtol) | (
                rss <= floor)
            s0, s1, s2, s3, ok = _solve4(
                j00 + lam * ds0, j01, tl.where(f2, j02, 0.0), tl.where(f3, j03, 0.0),
                j11 + lam * ds1, tl.where(f2, j12, 0.0), tl.where(f3, j13, 0.0),
                tl.where(f2, j22 + lam * ds2, 1.0), tl.where(f2 & f3, j23, 0.0),
                tl.where(f3, j33 + lam * ds3, 1.0),
                g0, g1, h2, h3, tiny)
            s2 = tl.where(f2, s2, 0.0)
            s3 = tl.where(f3, s3, 0.0)
            finite = (tl.abs(s0) < float("inf")) & (tl.abs(s1) < float("inf")) & (
                tl.abs(s2) < float("inf")) & (tl.abs(s3) < float("inf"))
            ok = ok & finite

            # the trial point, clamped to the bounds
            s0 = tl.where(ok, s0 * boost, 0.0)
            s1 = tl.where(ok, s1 * boost, 0.0)
            s2 = tl.where(ok, s2 * boost, 0.0)
            s3 = tl.where(ok, s3 * boost, 0.0)
            lo_n = lo + s0
            hi_n = hi + s1
            tau_n = tl.minimum(tl.maximum(tau + s2, tau_lb), tau_ub)
            k_n = tl.minimum(tl.maximum(k + s3, k_lb), k_ub)
            s2 = tau_n - tau
            s3 = k_n - k
            quad = (s0 * (j00 * s0 + j01 * s1 + j02 * s2 + j03 * s3)
                    + s1 * (j01 * s0 + j11 * s1 + j12 * s2 + j13 * s3)
                    + s2 * (j02 * s0 + j12 * s1 + j22 * s2 + j23 * s3)
                    + s3 * (j03 * s0 + j13 * s1 + j23 * s2 + j33 * s3))
            pred = 2 * (s0 * g0 + s1 * g1 + s2 * g2 + s3 * g3) - quad
            (rss_n, n00, n01, n02, n03, n11, n12, n13, n22, n23, n33,
             m0, m1, m2, m3) = _normal_equations(yt_ptr, x_ptr, rows, inside, n, kk,
                                                 lo_n, hi_n, tau_n, k_n)
            actual = rss - rss_n
            accept = live & ok & (tl.abs(rss_n) < float("inf")) & (actual > 0) & ~small_g
            rho = actual / tl.where(pred > 0, pred, tiny)

            small_f = accept & (actual <= ftol * rss) & (pred <= ftol * rss)
            small_x = ((tl.abs(s0) <= xtol * (tl.abs(lo) + xtol))
                       & (tl.abs(s1) <= xtol * (tl.abs(hi) + xtol))
                       & (tl.abs(s2) <= xtol * (tl.abs(tau) + xtol))
                       & (tl.abs(s3) <= xtol * (tl.abs(k) + xtol)))
            converged = live & (small_g | small_f | small_x | (lam > 1e16))
            done = converged | (live & (first_iter + it >= max_iter))

            lo = tl.where(accept, lo_n, lo)
            hi = tl.where(accept, hi_n, hi)
            tau = tl.where(accept, tau_n, tau)
            k = tl.where(accept, k_n, k)
            rss = tl.where(accept, rss_n, rss)
            j00 = tl.where(accept, n00, j00)
            j01 = tl.where(accept, n01, j01)
            j02 = tl.where(accept, n02, j02)
            j03 = tl.where(accept, n03, j03)
            j11 = tl.where(accept, n11, j11)
            j12 = tl.where(accept, n12, j12)
            j13 = tl.where(accept, n13, j13)
            j22 = tl.where(accept, n22, j22)
            j23 = tl.where(accept, n23, j23)
            j33 = tl.where(accept, n33, j33)
            g0 = tl.where(accept, m0, g0)
            g1 = tl.where(accept, m1, g1)
            g2 = tl.where(accept, m2, g2)
            g3 = tl.where(accept, m3, g3)

            # Nielsen's damping update; a boosted step that fails only resets the boost
            plain = boost == 1.0
            t = 2 * rho - 1
            lam = tl.where(accept, lam * tl.maximum(1 - t * t * t, 1.0 / 3.0),
                           tl.where(plain, lam * nu, lam))
            nu = tl.where(accept | ~plain, 2.0, nu * 2)
            boost = tl.where(accept & (rho > 1.25), tl.minimum(boost * 2, 64.0),
                             tl.where(accept & (rho > 0.75), boost, 1.0))
            n_iter = tl.where(done, first_iter + it, n_iter)
            conv = conv | converged
            live = live & ~done

        tl.store(state_ptr + rows, lo, mask=inside)
        tl.store(state_ptr + n + rows, hi, mask=inside)
        tl.store(state_ptr + 2 * n + rows, tau, mask=inside)
        tl.store(state_ptr + 3 * n + rows, k, mask=inside)
        tl.store(state_ptr + 4 * n + rows, lam, mask=inside)
        tl.store(state_ptr + 5 * n + rows, nu, mask=inside)
        tl.store(state_ptr + 6 * n + rows, boost, mask=inside)
        tl.store(state_ptr + 7 * n + rows, ds0, mask=inside)
        tl.store(state_ptr + 8 * n + rows, ds1, mask=inside)
        tl.store(state_ptr + 9 * n + rows, ds2, mask=inside)
        tl.store(state_ptr + 10 * n + rows, ds3, mask=inside)
        tl.store(rss_ptr + rows, rss, mask=inside)
        tl.store(jtj_ptr + rows, j00, mask=inside)
        tl.store(jtj_ptr + n + rows, j01, mask=inside)
        tl.store(jtj_ptr + 2 * n + rows, j02, mask=inside)
        tl.store(jtj_ptr + 3 * n + rows, j03, mask=inside)
        tl.store(jtj_ptr + 4 * n + rows, j11, mask=inside)
        tl.store(jtj_ptr + 5 * n + rows, j12, mask=inside)
        tl.store(jtj_ptr + 6 * n + rows, j13, mask=inside)
        tl.store(jtj_ptr + 7 * n + rows, j22, mask=inside)
        tl.store(jtj_ptr + 8 * n + rows, j23, mask=inside)
        tl.store(jtj_ptr + 9 * n + rows, j33, mask=inside)
        tl.store(iter_ptr + rows, n_iter, mask=inside)
        status = tl.where(conv, _CONVERGED, tl.where(live, _PENDING, _MAX_ITER))
        tl.store(status_ptr + rows, status.to(tl.int8), mask=inside)


_UPPER = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3))


def _budgets(max_iter: int):
    """(iterations done before, iterations in) each launch: 16, 16, 32, 64, ... iterations,
    ``max_iter`` in all."""
    used, size = 0, 16
    while used < max_iter:
        step = min(size, max_iter - used)
        yield used, step
        used += step
        size = max(size, used)


def levenberg_marquardt(y: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor,
                        p: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor,
                        tolerances: tuple[float, float, float], lambda0: float, max_iter: int,
                        floor: torch.Tensor):
    """The fused-kernel counterpart of :func:`spectrum.fit.solver._levenberg_marquardt` (same
    arguments, with the options unpacked; same results: p, rss, J^T J, n_iter, status).

    A program's loop runs until its slowest lane finishes, so a few trajectories that take
    100 iterations would hold whole programs for that long. The iterations are therefore
    launched in rounds of growing length (:func:`_budgets`); after each round the unfinished
    rows, with their complete solver state, are gathered and carried into the next.
    """
    if triton is None:
        raise RuntimeError("the fused fit kernel needs Triton")
    lb_, ub_ = lb.tolist(), ub.tolist()
    if lb_[0] > -math.inf or lb_[1] > -math.inf or ub_[0] < math.inf or ub_[1] < math.inf:
        raise ValueError("the fused fit kernel takes lo and hi unbounded")
    n, kk = y.shape
    most = MAX_OFFSET // max(kk, 11)  # rows per launch: the kernel's offsets are 32-bit
    if n > most:
        parts = [levenberg_marquardt(y[s:s + most], None if mask is None else mask[s:s + most],
                                     x, p[s:s + most], lb, ub, tolerances, lambda0, max_iter,
                                     floor[s:s + most]) for s in range(0, n, most)]
        return tuple(torch.cat(column) for column in zip(*parts))
    dt, dev = y.dtype, y.device
    tiny = torch.finfo(dt).tiny
    consts = torch.tensor([lb_[2], ub_[2], lb_[3], ub_[3], *tolerances, tiny], dtype=dt,
                          device=dev)
    y = y if mask is None else torch.where(mask > 0, y, torch.nan)
    x = x.contiguous()
    state = torch.empty(11, n, dtype=dt, device=dev)
    state[:4] = p.t()
    state[4], state[5], state[6] = lambda0, 2.0, 1.0
    state[7:] = tiny
    out_rss = torch.empty(n, dtype=dt, device=dev)
    out_jtj = torch.empty(10, n, dtype=dt, device=dev)
    out_iter = torch.empty(n, dtype=torch.int32, device=dev)
    out_status = torch.empty(n, dtype=torch.int8, device=dev)
    block = INTERPRETER_BLOCK if interpreted() else BLOCK

    def launch(yt, sub, fl, rss, jtj, n_iter, status, first: int, budget: int) -> None:
        m = yt.shape[1]
        if m:
            _lm_kernel[(triton.cdiv(m, block),)](
                yt, x, sub, fl, rss, jtj, n_iter, status, consts, m, kk, first, budget,
                max_iter, BLOCK=block)

    rounds = _budgets(max_iter)
    first, budget = next(rounds, (0, 0))  # every row, written in place
    launch(y.t().contiguous(), state, floor.contiguous(), out_rss, out_jtj, out_iter,
           out_status, first, budget)
    pending = (out_status == PENDING).nonzero()[:, 0]
    for first, budget in rounds:  # the rows still iterating, gathered and scattered back
        if pending.numel() == 0:
            break
        m = pending.numel()
        sub = state[:, pending]
        rss = torch.empty(m, dtype=dt, device=dev)
        jtj = torch.empty(10, m, dtype=dt, device=dev)
        n_iter = torch.empty(m, dtype=torch.int32, device=dev)
        status = torch.empty(m, dtype=torch.int8, device=dev)
        launch(y[pending].t().contiguous(), sub, floor[pending], rss, jtj, n_iter, status,
               first, budget)
        state[:, pending] = sub
        out_rss[pending], out_jtj[:, pending] = rss, jtj
        out_iter[pending], out_status[pending] = n_iter, status
        pending = pending[status == PENDING]
    out_status[pending] = MAX_ITER  # only with max_iter = 0: no round ran

    jtj = torch.empty(n, 4, 4, dtype=dt, device=dev)
    for e, (i, j) in enumerate(_UPPER):
        jtj[:, i, j] = out_jtj[e]
        jtj[:, j, i] = out_jtj[e]
    return state[:4].t(), out_rss, jtj, out_iter, out_status
