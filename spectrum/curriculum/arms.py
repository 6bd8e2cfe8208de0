"""The arms of the controlled curriculum test: the curriculum and the controls a sceptic would pick.

Every arm trains the same model with the same compute and seeds and differs only in the per-phase
sampling weights ``(n_items, P)`` of the training sequences (all drawn by the same
:class:`~spectrum.curriculum.sampling.PhaseSampler`):

- ``uniform``: every weight 1;
- ``curriculum``: the learnability weights of :mod:`spectrum.curriculum.weights`;
- ``freq_shuffled``: the curriculum's weight rows shuffled among sequences with a similar
  token-frequency profile (sequences bucketed by the mean log unigram frequency of their tokens,
  rows permuted within each bucket): if the curriculum only helps by favouring frequent (or rare)
  tokens, this control helps as much;
- ``random``: the weight rows permuted across all sequences: the same weight distribution (the
  same concentration of sampling, hence the same repetition of data) with no link to anything;
- ``timing_flat``: each sequence's weight constant over the phases, equal to its mean weight over
  the training *steps* (phases weighted by their number of steps). Every sequence is then drawn
  as often in expectation as under the curriculum, over the whole run; only *when* it is drawn
  differs. If the curriculum helps through a static reweighting of the data rather than through
  its timing, this control helps as much.
- ``exported``: what a user applies: the weights of ``spectrum export-curriculum`` for the pool
  (learnability measured by the suite's fit runs on the export's own scored sample; pool
  sequences outside it get predicted sheds, scored ones their measured sheds shrunk toward the
  prediction), not derived from the curriculum arm; trained like every other arm.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spectrum.curriculum.settings import ARMS  # noqa: E402,F401  (re-exported)
ARM_DESCRIPTIONS = {
    "uniform": "every weight 1",
    "curriculum": "learnability weights per phase",
    "freq_shuffled": "curriculum rows shuffled within token-frequency buckets",
    "random": "curriculum rows permuted across all sequences",
    "timing_flat": "each sequence's step-averaged curriculum weight, constant over phases",
    "exported": "the weights `spectrum export-curriculum` gives the pool, as a user applies them",
}


def frequency_buckets(mean_log_freq: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids (0..B-1) of equal-count quantile bins of each sequence's mean log frequency."""
    v = np.asarray(mean_log_freq, dtype=np.float64)
    n_buckets = max(1, min(int(n_buckets), len(v)))
    rank = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return (rank * n_buckets // len(v)).astype(np.int64)


def shuffle_within(weights: np.ndarray, buckets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weights`` (n, P) with whole rows permuted among the items of each bucket."""
    out = np.array(weights, copy=True)
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        out[rows] = weights[rng.permutation(rows)]
    return out


def timing_control(weights: np.ndarray, phase_steps: Sequence[int]) -> np.ndarray:
    """Each row replaced by its mean over training steps: ``sum_p steps_p w_ip / sum_p steps_p``.

    ``phase_steps`` (P) are the numbers of optimizer steps of the phases. The expected number of
    draws of every item over the run is the curriculum's; columns keep mean 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    steps = np.asarray(phase_steps, dtype=np.float64)
    if steps.shape != (w.shape[1],) or (steps <= 0).any():
        raise ValueError(f"phase_steps must be {w.shape[1]} positive step counts, got {list(steps)}")
    mean = w @ steps / steps.sum()
    return np.repeat(mean[:, None], w.shape[1], axis=1)


def arm_weights(curriculum: np.ndarray, buckets: np.ndarray, seed: int,
                phase_steps: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The (n, P) sampling weights of every arm for one seed (controls use a seeded permutation).

    ``phase_steps`` (steps per phase) defines the timing control; without it phases count equally.
    """
    rng = np.random.default_rng([seed, 7919])
    steps = phase_steps if phase_steps is not None else np.ones(curriculum.shape[1])
    return {"uniform": np.ones_like(curriculum),
            "curriculum": curriculum,
            "freq_shuffled": shuffle_within(curriculum, buckets, rng),
            "random": curriculum[rng.permutation(len(curriculum))],
            "timing_flat": timing_control(curriculum, steps)}


def weight_diagnostics(weights: np.ndarray, mean_log_freq: np.ndarray) -> list[dict[str, float]]:
    """Per phase: the weights' range, their effective sample size as a fraction of the items
    (``(sum w)^2 / (n sum w^2)``: 1 = uniform), and their Spearman correlation with each
    sequence's mean log token frequency (how much of the weighting is a frequency preference)."""
    from scipy.stats import spearmanr

    out = []
    for p in range(weights.shape[1]):
        w = weights[:, p]
        rho = spearmanr(w, mean_log_freq)[0] if np.ptp(w) > 0 and np.ptp(mean_log_freq) > 0 else 0.0
        out.append({"phase": p, "min": float(w.min()), "max": float(w.max()),
                    "ess_fraction": float(w.sum() ** 2 / (len(w) * (w ** 2).sum())),
                    "spearman_freq": float(rho)})
    return out


def arm_order(names) -> list[str]:
    """The arms in the canonical order (``ARMS``), others after them alphabetically."""
    names = list(names)
    return [a for a in ARMS if a in names] + sorted(set(names) - set(ARMS))
