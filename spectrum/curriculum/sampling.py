"""Applying curriculum weights in a training loop: a phase-aware sampler and a loss-weight helper.

- :class:`PhaseSampler` draws, at every optimizer step, a batch of item indices with probability
  proportional to the weights of the phase that step belongs to (with replacement). The draw of
  step ``s`` depends only on ``(seed, s)``, so a run resumed at step ``s`` sees exactly the
  batches an uninterrupted run would have seen. Equal weights give uniform sampling through the
  same code path, which is what a controlled comparison needs.
- :func:`weighted_token_loss` weights per-token losses by their item's weight for the current
  phase: ``sum(w_b * loss_bt) / n_tokens`` (the unbiased counterpart of weighted sampling when the
  weights have mean 1 over the dataset), or self-normalised by ``sum(w_b)`` on request.
"""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

_SEED_STRIDE = 0x9E3779B1  # mixes (seed, step) into one generator seed


class PhaseSampler(Sampler[int]):
    """Indices into a dataset of ``n`` items, batch by batch, with per-phase weights.

    ``weights`` is ``(n, P)`` (or ``(n,)`` for one phase), non-negative with a positive sum per
    phase; ``phase_starts`` (P) the first step of each phase (``phase_starts[0] == 0``). Iterating
    yields ``batch_size`` indices per step for steps ``start_step .. num_steps - 1``; use it as a
    DataLoader ``sampler`` with the same ``batch_size``, or call :meth:`batch` in a hand-written loop.
    """

    def __init__(self, weights: np.ndarray | torch.Tensor, phase_starts: Sequence[int], *,
                 batch_size: int, num_steps: int, seed: int = 0, start_step: int = 0) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim == 1:
            w = w[:, None]
        starts = [int(s) for s in phase_starts]
        if w.ndim != 2 or w.shape[0] == 0:
            raise ValueError("weights must be (n_items, n_phases) with at least one item")
        if w.shape[1] != len(starts) or starts[0] != 0 or sorted(set(starts)) != starts:
            raise ValueError(f"phase_starts must be {w.shape[1]} increasing steps starting at 0, "
                             f"got {starts}")
        if not torch.isfinite(w).all() or (w < 0).any() or (w.sum(0) <= 0).any():
            raise ValueError("weights must be finite, non-negative, with a positive sum per phase")
        # inverse-CDF sampling (searchsorted) instead of torch.multinomial, which is limited to
        # 2**24 categories: training sets often hold more sequences than that
        cdf = torch.cumsum(w, 0)
        self._cdf = (cdf / cdf[-1]).T.contiguous()  # (P, n)
        self.probs = (w / w.sum(0)).T.contiguous()  # (P, n), for inspection and tests
        self.phase_starts = torch.tensor(starts, dtype=torch.int64)
        self.batch_size, self.num_steps = int(batch_size), int(num_steps)
        self.seed, self.start_step = int(seed), int(start_step)

    @property
    def n_items(self) -> int:
        return self._cdf.shape[1]

    def phase(self, step: int) -> int:
        return int(torch.searchsorted(self.phase_starts, torch.tensor(step), right=True)) - 1

    def batch(self, step: int) -> torch.Tensor:
        """The ``batch_size`` item indices (int64) drawn for optimizer step ``step``."""
        g = torch.Generator().manual_seed((self.seed * _SEED_STRIDE + step) % (2**63 - 1))
        u = torch.rand(self.batch_size, generator=g, dtype=torch.float64)
        idx = torch.searchsorted(self._cdf[self.phase(step)], u, right=True)
        return idx.clamp_(max=self.n_items - 1)

    def set_start_step(self, step: int) -> None:
        """Resume: the next iteration starts at ``step``."""
        self.start_step = int(step)

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.num_steps):
            yield from self.batch(step).tolist()

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step) * self.batch_size


def token_loss_weights(item_weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights ``(B, L)``: each token gets its item's weight; masked tokens get 0."""
    return item_weights.to(torch.float32)[:, None] * mask.to(torch.float32)


def weighted_token_loss(token_losses: torch.Tensor, item_weights: torch.Tensor,
                        mask: torch.Tensor | None = None, *,
                        normalize: Literal["tokens", "weights"] = "tokens") -> torch.Tensor:
    """The curriculum-weighted mean of per-token losses ``(B, L)``.

    ``item_weights`` (B) are the batch items' weights for the current phase; ``mask`` (B, L) marks
    the tokens that count (default: all). ``normalize="tokens"`` divides by the number of counted
    tokens (with mean-1 weights over the dataset, the expected gradient equals weighted sampling's);
    ``"weights"`` divides by the summed token weights (a weighted average, lower variance).
    """
    if normalize not in ("tokens", "weights"):
        raise ValueError(f"normalize must be 'tokens' or 'weights', got {normalize!r}")
    if mask is None:
        mask = torch.ones_like(token_losses, dtype=torch.bool)
    tw = token_loss_weights(item_weights.to(token_losses.device), mask).to(token_losses.dtype)
    losses = torch.where(mask.bool(), token_losses, torch.zeros_like(token_losses))
    total = (tw * losses).sum()
    denom = mask.to(token_losses.dtype).sum() if normalize == "tokens" else tw.sum()
    return total / denom.clamp_min(torch.finfo(token_losses.dtype).tiny)
