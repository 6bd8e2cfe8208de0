"""What kind of trajectory a fitted sigmoid describes: learned, flat, forgotten,
nonmonotone, unfinished, or unfit (no fit made).

Rules, applied in this order to each fit (``delta = hi - lo``, the loss the token sheds):

1. ``unfit``: no fit was made (fewer than the minimum number of finite points);
2. ``flat``: ``|delta| < min_delta`` nats, or the trajectory is constant: nothing learned;
3. ``nonmonotone``: ``r2 < min_r2``: a single sigmoid does not describe the trajectory
   (double descent, a bump, noise much larger than the step);
4. ``forgotten``: ``delta < 0``: the loss rises;
5. ``unfinished``: ``tau`` lies beyond the last checkpoint: the step is not yet half done;
6. ``learned``: everything else.

Censoring. Where ``tau`` lies outside the fitted checkpoints, the data constrain one side of the
step only: with ``tau`` before the first checkpoint the loss before the step, ``hi``, is an
extrapolation of the sigmoid's tail (it may read hundreds of nats); with ``tau`` after the last,
``lo`` is. :func:`censoring` flags that side (``censored``: ``none``, ``hi`` or ``lo``, a column of
the fits), and such a parameter is never shown or used as a number of its own. The rules above
then measure ``delta`` within the window: from the fitted curve at the first checkpoint
(``hi`` censored) or at the last (``lo`` censored) instead of the censored asymptote. A token
learned before the first checkpoint keeps the kind ``learned`` with ``censored = hi`` (a flag, not
a kind of its own: its trajectory is a step like any other, only its start was not measured);
readers say "learned before the first checkpoint". ``unfinished`` is the kind of ``censored =
lo`` fits that shed loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CENSORED = ("none", "hi", "lo")  # values of the fits' ``censored`` column
NOT_CENSORED, HI_CENSORED, LO_CENSORED = range(len(CENSORED))
KINDS = ("learned", "flat", "forgotten", "nonmonotone", "unfinished", "unfit")
LEARNED, FLAT, FORGOTTEN, NONMONOTONE, UNFINISHED, UNFIT = range(len(KINDS))
# the kinds whose trajectory a sigmoid step describes, so that tau is a learning time: what the
# spectra and the per-token parameter model use by default
STEP_KINDS = ("learned", "forgotten", "unfinished")


@dataclass(frozen=True)
class KindThresholds:
    """Thresholds of :func:`classify`: ``min_delta`` in nats, ``min_r2`` a fraction."""

    min_delta: float = 0.1
    min_r2: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        """One sentence for reports."""
        return (f"flat: |hi - lo| < {self.min_delta:g} nats; nonmonotone: R^2 < {self.min_r2:g}; "
                f"forgotten: hi < lo; unfinished: tau beyond the last checkpoint; "
                f"learned: the rest (with tau before the first checkpoint: learned before the "
                f"first checkpoint); unfit: too few finite points to fit. Where tau lies outside "
                f"the checkpoints, delta is measured from the fitted curve at the window's edge, "
                f"never from the censored asymptote")


def censoring(tau, x_first: float, x_last: float) -> np.ndarray:
    """Codes (int8, indices into :data:`CENSORED`) of fits' ``tau`` against the fitted window
    ``[x_first, x_last]``: ``hi`` before it, ``lo`` after it, ``none`` inside (or not finite)."""
    tau = np.asarray(tau, dtype=np.float64)
    code = np.full(tau.shape, NOT_CENSORED, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        code[tau < x_first] = HI_CENSORED
        code[tau > x_last] = LO_CENSORED
    return code


def seen_delta(lo, hi, tau, k, x_first: float, x_last: float):
    """``hi - lo`` measured within the window: where ``tau`` is before ``x_first`` the censored
    ``hi`` is replaced by the fitted curve at ``x_first``, where it is after ``x_last`` the
    censored ``lo`` by the curve at ``x_last`` (numpy arrays or torch tensors)."""
    from spectrum.fit.model import token_curves

    torch_in = not isinstance(lo, np.ndarray) and hasattr(lo, "device")
    xp = _torch() if torch_in else np
    edges = xp.tensor([x_first, x_last], dtype=lo.dtype, device=lo.device) if torch_in \
        else np.array([x_first, x_last], float)
    with np.errstate(invalid="ignore", over="ignore"):
        at = token_curves(lo, hi, tau, k, edges)
        seen_hi = xp.where(tau < x_first, at[..., 0], hi)
        seen_lo = xp.where(tau > x_last, at[..., 1], lo)
    return seen_hi - seen_lo


def _torch():
    import torch

    return torch


def classify(lo, hi, tau, r2, fitted, constant, x_last: float,
             thresholds: KindThresholds = KindThresholds(), *, k=None,
             x_first: float | None = None):
    """Kind codes (int8, indices into :data:`KINDS`) of fits given as arrays of equal length:
    numpy arrays, or torch tensors (the codes are then a tensor on the same device, so fits
    made on a GPU are classified there).

    ``fitted`` is False where no fit was made; ``constant`` is True for constant trajectories.
    With ``k`` and ``x_first`` given, ``delta`` of a censored fit is measured within the window
    (:func:`seen_delta`); without them, from the asymptotes.
    """
    if isinstance(lo, np.ndarray) or not hasattr(lo, "device"):
        xp, lo, hi = np, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        r2, tau = np.asarray(r2), np.asarray(tau)
        code = np.full(lo.shape, LEARNED, dtype=np.int8)
    else:
        import torch

        xp, lo, hi = torch, lo.double(), hi.double()
        code = torch.full(lo.shape, LEARNED, dtype=torch.int8, device=lo.device)
    delta = hi - lo if k is None or x_first is None else seen_delta(
        lo, hi, tau, k.double() if hasattr(k, "double") else np.asarray(k, np.float64),
        x_first, x_last)
    rules = [(~fitted, UNFIT), (constant | (abs(delta) < thresholds.min_delta), FLAT),
             (r2 < thresholds.min_r2, NONMONOTONE), (delta < 0, FORGOTTEN),
             (tau > x_last, UNFINISHED)]
    with np.errstate(invalid="ignore"):
        for condition, kind in reversed(rules):  # the first rule that holds decides
            code = xp.where(condition, xp.asarray(kind, dtype=code.dtype), code)
    return code
