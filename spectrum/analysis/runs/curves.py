"""Mean-loss curves as sums over sequences, drawn under a bootstrap over sequences, and the one
finite-difference operator every derivative target goes through.

A curve that is a mean over tokens (measured, or predicted token by token) is kept as per-sequence
sums and counts; a bootstrap replicate draws sequences with replacement (the multiplicities ``W``)
and the curve is ``(W @ sums) / (W @ counts)``. Every run shares the same evaluation sequences, so
one replicate resamples the same sequences in every run and in every model's prediction: measured
and predicted curves stay together and nothing is refitted. Row 0 of the weights is all ones: the
estimate itself. A curve that does not depend on the tokens (a scaling law's) is the same in every
replicate.

Derivatives: :func:`finite_difference` is the one operator, a two-point difference quotient
between neighbouring points, placed at their midpoint. Measured and predicted curves go through it
at the same points, so their errors of discretisation are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import polars as pl
from scipy import sparse

from spectrum.analysis.stats import bootstrap_weights


def replicate_weights(n_seq: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(1 + n_boot, n_seq): row 0 all ones (the estimate), then bootstrap multiplicities."""
    ones = np.ones((1, n_seq))
    if n_boot <= 0 or n_seq == 0:
        return ones
    return np.concatenate([ones, bootstrap_weights(n_seq, n_boot, seed)])


@dataclass(frozen=True)
class SeqCurve:
    """A mean curve over tokens kept as sums and counts per sequence (S, K)."""

    sums: np.ndarray
    counts: np.ndarray

    def draw(self, weights: np.ndarray) -> np.ndarray:
        """(R, K): the curve under each replicate's sequence multiplicities ``weights`` (R, S)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ self.sums) / (weights @ self.counts)


def fixed(values: np.ndarray, n_rep: int) -> np.ndarray:
    """(R, K): a curve that does not depend on the sequences, in every replicate."""
    return np.broadcast_to(np.asarray(values, float)[None, :], (n_rep, len(values))).copy()


def sequence_indicator(seq_code: np.ndarray, n_seq: int) -> sparse.csr_matrix:
    """(S, N) 0/1 matrix: token n belongs to sequence ``seq_code[n]``."""
    n = len(seq_code)
    return sparse.csr_matrix((np.ones(n), (np.asarray(seq_code), np.arange(n))), shape=(n_seq, n))


def chunk_curve(chunks: Iterable[pl.DataFrame], values_of: Callable[[pl.DataFrame], np.ndarray],
                n_seq: int) -> SeqCurve:
    """The per-sequence sums of per-token curves over token chunks (frames with ``seq_code``):
    ``values_of(chunk)`` returns the (n, K) values of the chunk's tokens. Tokens whose value is
    not finite do not count."""
    sums = counts = None
    for ch in chunks:
        v = np.asarray(values_of(ch), float)
        ok = np.isfinite(v)
        ind = sequence_indicator(ch["seq_code"].to_numpy(), n_seq)
        s, c = ind @ np.where(ok, v, 0.0), ind @ ok.astype(float)
        sums = s if sums is None else sums + s
        counts = c if counts is None else counts + c
    if sums is None:
        return SeqCurve(np.zeros((n_seq, 0)), np.zeros((n_seq, 0)))
    return SeqCurve(np.asarray(sums), np.asarray(counts))


def finite_difference(values: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Difference quotients between neighbouring points along the last axis: (..., K - 1)."""
    return np.diff(values, axis=-1) / np.diff(np.asarray(coords, float))


def midpoints(coords: np.ndarray) -> np.ndarray:
    """Where :func:`finite_difference` places its values."""
    coords = np.asarray(coords, float)
    return 0.5 * (coords[1:] + coords[:-1])
