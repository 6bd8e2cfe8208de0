"""In-memory twins of the streaming analyses, for the tests: each takes every token at once
(per-token arrays, or one frame of annotated tokens) where the library accumulates sums over token
chunks, so a test can check the chunked result against the same quantity computed in one piece."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from spectrum.analysis.spectra.slices import (Comparison, TauSums, compare_sums, compared_pairs,
                                              slice_rules)
from spectrum.analysis.spectra.spectrum import Spectrum, SpectrumSums
from spectrum.analysis.stats import LEVEL
from spectrum.fit.model import token_curves, token_slopes

CHUNK = 1 << 16


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1 if codes.size else 0


def compute_spectrum(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray, edges: np.ndarray,
                     *, include: np.ndarray | None = None, n_boot: int = 200,
                     level: float = LEVEL, seed: int = 0,
                     weights: np.ndarray | None = None) -> Spectrum:
    """The amplitude-weighted spectrum and count density of one population of tokens.

    ``tau``, ``delta``, ``groups`` (sequence ids) are per token; ``include`` marks the tokens that
    enter (default: all with finite tau and delta); the others count in N only. ``weights``, if
    given, are precomputed bootstrap multiplicities (n_boot, n_groups) over ``np.unique(groups)``.
    """
    codes, ng = _group_codes(groups)
    sums = SpectrumSums(ng, edges)
    sums.add(tau, delta, codes, include)
    return sums.spectrum(n_boot=n_boot, level=level, seed=seed, weights=weights)


@dataclass(frozen=True)
class Slice:
    axis: str  # frequency | position | word_start
    name: str
    order: int  # position along its axis (0 = rarest / earliest in context / word start)
    mask: np.ndarray


def annotation_slices(tokens: pl.DataFrame, *, freq_buckets: int = 4,
                      pos_edges: Sequence[int] | None = None) -> list[Slice]:
    """Slices of the tokens by target frequency (quantile buckets), position in the context
    (buckets ``[0,4), [4,16), [16,64), ...`` by default) and word start, for the annotation
    columns that exist (``target_freq``, ``pos``, ``word_start``)."""
    cols = set(tokens.columns)
    f = tokens["target_freq"].to_numpy().astype(float) if "target_freq" in cols else None
    pos_max = int(tokens["pos"].max()) if "pos" in cols and tokens.height else None
    rules = slice_rules(cols, target_freq=f, pos_max=pos_max, freq_buckets=freq_buckets,
                        pos_edges=pos_edges)
    out = [Slice(r.axis, r.name, r.order, r.mask(tokens)) for r in rules]
    return [s for s in out if s.mask.any()]


def compare_mean_tau(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray,
                     mask_a: np.ndarray, mask_b: np.ndarray, *, question: str, a: str, b: str,
                     n_boot: int = 200, level: float = LEVEL, seed: int = 0) -> Comparison:
    """Difference of delta-weighted mean tau between two token sets, with a sequence bootstrap.

    Only tokens with positive delta and finite tau count (pass learned tokens in the masks)."""
    codes, ng = _group_codes(groups)
    sums = []
    for m in (mask_a, mask_b):
        s = TauSums(ng)
        s.add(tau, delta, codes, m)
        sums.append(s)
    return compare_sums(*sums, np.ones(ng, bool), question=question, a=a, b=b, n_boot=n_boot,
                        level=level, seed=seed)


def slice_comparisons(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray, learned: np.ndarray,
                      slices: list[Slice], *, n_boot: int = 200, seed: int = 0) -> list[Comparison]:
    """The report's questions: are frequent targets, short-range predictions (early positions)
    and word starts learned earlier than rare targets, long-range ones and word continuations?"""
    return [compare_mean_tau(tau, delta, groups, learned & sa.mask, learned & sb.mask,
                             question=q, a=sa.name, b=sb.name, n_boot=n_boot, seed=seed)
            for q, sa, sb in compared_pairs(slices)]


def _token_mean(per_token, lo, hi, tau, k, x, chunk: int) -> np.ndarray:
    """``(1/N) sum_i per_token(token i)(x)``, a chunk of tokens at a time (bounded memory)."""
    x = np.asarray(x, float)
    lo, hi, tau, k = (np.asarray(a, float) for a in (lo, hi, tau, k))
    total = np.zeros_like(x)
    for a in range(0, len(lo), chunk):
        sl = slice(a, a + chunk)
        total += per_token(lo[sl], hi[sl], tau[sl], k[sl], x).sum(0)
    return total / max(len(lo), 1)


def mean_curve(lo, hi, tau, k, x, *, chunk: int = CHUNK) -> np.ndarray:
    """``L(x) = (1/N) sum_i l_i(x)``."""
    return _token_mean(token_curves, lo, hi, tau, k, x, chunk)


def mean_derivative(lo, hi, tau, k, x, *, chunk: int = CHUNK) -> np.ndarray:
    """``dL/dx = -(1/N) sum_i delta_i k_i s_i (1 - s_i)``."""
    return _token_mean(token_slopes, lo, hi, tau, k, x, chunk)
