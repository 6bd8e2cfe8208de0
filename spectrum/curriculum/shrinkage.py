"""Measured sheds shrunk toward the learnability model by their reliability.

An exported table mixes two sources: sequences that were scored (their shed per phase measured
from fitted trajectories) and sequences whose shed is predicted from their tokens
(:mod:`spectrum.curriculum.predict`). A measured shed is the sequence's shed in *the runs that
were measured*, with their run-to-run noise; a prediction is an average over similar tokens and
is smooth. Set side by side as they are, the measured sequences would carry most of the weight
spread only because they are noisy. Both are put on one scale as estimates of the same quantity,
the sequence's expected shed in a new run, by empirical Bayes, per phase ``p``:

- noise: ``sigma2_p``, the variance of a sequence's mean shed over the ``R`` measured runs
  around its expectation, ``mean_i var_r(shed_irp) / R`` (runs as replicates; with one run it
  cannot be measured and nothing is shrunk);
- signal: ``tau2_p = max(var_i(m_ip - pred_ip) - sigma2_p, 0)``, the spread of the true shed
  around the model's prediction, with ``pred`` the prediction made without the sequence's own
  document (out of fold);
- the shrunk shed ``pred + lambda_p (m - pred)`` with ``lambda_p = tau2_p / (tau2_p +
  sigma2_p)``, the posterior mean under a normal prior centred on the prediction.

``reliability_p = 1 - sigma2_p / var_i(m_ip)`` (the share of the measured spread that is not
run-to-run noise) is reported beside ``lambda_p``.

The runs that measure learnability are often of one seed; their spread then includes the
differences between sizes and data scales but not a seed's own variation, so ``sigma2`` is a
lower bound on the noise a new seed would see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Shrinkage:
    """Per phase: the noise and signal variances, the shrinkage factor and the reliability."""

    runs: int
    noise_var: tuple[float, ...] | None  # sigma2_p; None with one run
    signal_var: tuple[float, ...] | None  # tau2_p
    factor: tuple[float, ...]  # lambda_p (1: kept as measured)
    reliability: tuple[float, ...] | None

    def apply(self, measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """``pred + lambda (m - pred)`` per phase, never negative."""
        lam = np.asarray(self.factor)[None, :]
        return np.clip(predicted + lam * (measured - predicted), 0.0, None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_noise(run_shed: np.ndarray) -> np.ndarray | None:
    """``sigma2_p``: the mean over sequences of the variance across runs, over ``R`` (None for
    one run). ``run_shed`` is ``(R, S, P)``."""
    R = run_shed.shape[0]
    if R < 2:
        return None
    return run_shed.var(axis=0, ddof=1).mean(axis=0) / R


def shrinkage(measured: np.ndarray, predicted: np.ndarray, run_shed: np.ndarray) -> Shrinkage:
    """The empirical-Bayes shrinkage of the module doc. ``measured`` and ``predicted`` (out of
    fold) are ``(S, P)``; ``run_shed`` ``(R, S, P)``, whose mean over runs is ``measured``."""
    R, P = run_shed.shape[0], measured.shape[1]
    sigma2 = run_noise(run_shed)
    if sigma2 is None or measured.shape[0] < 3:
        return Shrinkage(R, None, None, (1.0,) * P, None)
    resid = (measured - predicted).var(axis=0, ddof=1)
    tau2 = np.clip(resid - sigma2, 0.0, None)
    lam = np.divide(tau2, tau2 + sigma2, out=np.ones(P), where=(tau2 + sigma2) > 0)
    total = measured.var(axis=0, ddof=1)
    rel = np.divide(total - sigma2, total, out=np.zeros(P), where=total > 0)
    return Shrinkage(R, tuple(map(float, sigma2)), tuple(map(float, tau2)), tuple(map(float, lam)),
                     tuple(float(v) for v in np.clip(rel, 0.0, 1.0)))
