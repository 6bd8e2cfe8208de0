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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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
                f"learned: the rest; unfit: too few finite points to fit")


def classify(lo, hi, tau, r2, fitted, constant, x_last: float,
             thresholds: KindThresholds = KindThresholds()):
    """Kind codes (int8, indices into :data:`KINDS`) of fits given as arrays of equal length:
    numpy arrays, or torch tensors (the codes are then a tensor on the same device, so fits
    made on a GPU are classified there).

    ``fitted`` is False where no fit was made; ``constant`` is True for constant trajectories.
    """
    if isinstance(lo, np.ndarray) or not hasattr(lo, "device"):
        xp, lo, hi = np, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        r2, tau = np.asarray(r2), np.asarray(tau)
        code = np.full(lo.shape, LEARNED, dtype=np.int8)
    else:
        import torch

        xp, lo, hi = torch, lo.double(), hi.double()
        code = torch.full(lo.shape, LEARNED, dtype=torch.int8, device=lo.device)
    delta = hi - lo
    rules = [(~fitted, UNFIT), (constant | (abs(delta) < thresholds.min_delta), FLAT),
             (r2 < thresholds.min_r2, NONMONOTONE), (delta < 0, FORGOTTEN),
             (tau > x_last, UNFINISHED)]
    with np.errstate(invalid="ignore"):
        for condition, kind in reversed(rules):  # the first rule that holds decides
            code = xp.where(condition, xp.asarray(kind, dtype=code.dtype), code)
    return code
