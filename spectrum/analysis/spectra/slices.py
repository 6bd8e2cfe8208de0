"""Slices of a run's tokens by the evalset's annotations, and comparisons of their learning times.

A slice is a set of tokens found chunk by chunk (:class:`SliceRule`): a quantile bucket of the
target frequency, a range of positions in the context, word starts or continuations. Each slice has
its own spectrum (:mod:`spectrum.analysis.spectra.spectrum`); the report asks of the slices of one
axis whether one set is learned earlier than another (:data:`QUESTIONS`): the difference of their
amplitude-weighted mean learning times, with a bootstrap interval over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from spectrum.analysis.stats import LEVEL, bootstrap_weights, percentile_interval


@dataclass(frozen=True)
class SliceRule:
    """How to find one slice's tokens in a chunk of annotated tokens."""

    axis: str  # frequency | position | word_start
    name: str
    order: int  # position along its axis (0 = rarest / earliest in context / word start)
    column: str
    lo: float = 0.0  # frequency: the bucket's index; position: [lo, hi)
    hi: float = 0.0
    edges: tuple[float, ...] = ()  # frequency: the quantile edges

    def mask(self, tokens: pl.DataFrame) -> np.ndarray:
        if self.axis == "frequency":
            f = tokens[self.column].to_numpy().astype(float)
            bucket = np.searchsorted(np.asarray(self.edges, float), f, side="right")
            return (bucket == self.lo) & np.isfinite(f)
        if self.axis == "position":
            pos = tokens[self.column].to_numpy().astype(np.int64)
            return (pos >= self.lo) & (pos < self.hi)
        ws = tokens[self.column].fill_null(False).to_numpy().astype(bool)
        return ws if self.order == 0 else ~ws


SLICE_COLUMNS = ("target_freq", "pos", "word_start")


def slice_rules(columns: Iterable[str], *, target_freq: np.ndarray | None = None,
                pos_max: int | None = None, freq_buckets: int = 4,
                pos_edges: Sequence[int] | None = None) -> list[SliceRule]:
    """The slices for tokens with the annotation ``columns`` that exist: target frequency
    (``freq_buckets`` buckets between the quantiles of ``target_freq``, every token of the
    population), position in the context (buckets ``[0,4), [4,16), [16,64), ...`` up to
    ``pos_max``, the population's largest position, unless ``pos_edges`` are given) and word
    start."""
    out: list[SliceRule] = []
    cols = set(columns)
    if "target_freq" in cols and freq_buckets >= 2:
        f = np.asarray(target_freq if target_freq is not None else [], float)
        qs = np.quantile(f[np.isfinite(f)], np.linspace(0, 1, freq_buckets + 1)[1:-1]) \
            if np.isfinite(f).any() else np.array([])
        qs = np.unique(qs)
        n = len(qs) + 1
        for j in range(n):
            tag = " (rarest)" if j == 0 else " (most frequent)" if j == n - 1 else ""
            out.append(SliceRule("frequency", f"freq Q{j + 1}/{n}{tag}", j, "target_freq", j,
                                 edges=tuple(float(q) for q in qs)))
    if "pos" in cols:
        top = int(pos_max) + 1 if pos_max is not None else 1
        edges = list(pos_edges) if pos_edges is not None else \
            [0] + [4 ** j for j in range(1, 12) if 4 ** j < top]
        edges = sorted(set(e for e in edges if e < top)) + [top]
        for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            out.append(SliceRule("position", f"pos {a}-{b - 1}", j, "pos", a, b))
    if "word_start" in cols:
        out.append(SliceRule("word_start", "word start", 0, "word_start"))
        out.append(SliceRule("word_start", "inside word", 1, "word_start"))
    return out


@dataclass(frozen=True)
class Comparison:
    """Amplitude-weighted mean learning time of slice ``a`` minus that of slice ``b``."""

    question: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float
    lo: float
    hi: float
    n_a: int
    n_b: int

    @property
    def verdict(self) -> str:
        if not np.isfinite(self.diff):
            return "not measurable"
        if self.hi < 0:
            return f"{self.a} earlier"
        if self.lo > 0:
            return f"{self.a} later"
        return "no clear difference (interval includes 0)"

    def as_dict(self) -> dict:
        return {"question": self.question, "a": self.a, "b": self.b, "mean_tau_a": self.mean_a,
                "mean_tau_b": self.mean_b, "diff": self.diff, "ci_lo": self.lo, "ci_hi": self.hi,
                "n_a": self.n_a, "n_b": self.n_b, "verdict": self.verdict}


class TauSums:
    """Per-sequence sums of delta and delta * tau over learned tokens of one set (positive delta,
    finite tau), accumulated over token chunks: what :func:`compare_sums` compares."""

    def __init__(self, n_seq: int) -> None:
        self.sw = np.zeros(n_seq)
        self.swt = np.zeros(n_seq)
        self.n = 0

    def add(self, tau: np.ndarray, delta: np.ndarray, codes: np.ndarray, mask: np.ndarray) -> None:
        tau, delta = np.asarray(tau, float), np.asarray(delta, float)
        ok = np.isfinite(tau) & np.isfinite(delta) & (delta > 0)
        sel = ok & np.asarray(mask, bool)
        n = len(self.sw)
        self.sw += np.bincount(codes[sel], weights=delta[sel], minlength=n)
        self.swt += np.bincount(codes[sel], weights=(delta * tau)[sel], minlength=n)
        self.n += int(sel.sum())

    def merge(self, other: "TauSums") -> "TauSums":
        """Add the sums of another set of tokens (another token range), in new arrays."""
        self.sw = self.sw + other.sw
        self.swt = self.swt + other.swt
        self.n += other.n
        return self


def compare_sums(sa: TauSums, sb: TauSums, present: np.ndarray, *, question: str, a: str,
                 b: str, n_boot: int = 200, level: float = LEVEL, seed: int = 0) -> Comparison:
    """Difference of delta-weighted mean tau between two token sets, with a bootstrap over the
    ``present`` sequences (those holding a token of the population)."""
    present = np.asarray(present, bool)
    ng = int(present.sum())
    sums = [(s.sw[present], s.swt[present], s.n) for s in (sa, sb)]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = [swt.sum() / sw.sum() for sw, swt, _ in sums]
        diff = means[0] - means[1]
        lo = hi = float("nan")
        if ng > 1 and n_boot > 0 and all(n > 0 for *_, n in sums):
            W = bootstrap_weights(ng, n_boot, seed)
            boot = [(W @ swt) / (W @ sw) for sw, swt, _ in sums]
            d = boot[0] - boot[1]
            d = d[np.isfinite(d)]
            if d.size:
                lo, hi = percentile_interval(d, level)
    return Comparison(question, a, b, float(means[0]), float(means[1]), float(diff), float(lo),
                      float(hi), sums[0][2], sums[1][2])


QUESTIONS = {"frequency": ("are frequent targets learned earlier than rare ones?", -1, 0),
             "position": ("are short-range predictions (early positions) learned earlier "
                          "than long-range ones?", 0, -1),
             "word_start": ("are word starts learned earlier than word continuations?", 0, -1)}


def compared_pairs(slices: Sequence) -> list[tuple[str, object, object]]:
    """(question, slice a, slice b) of every axis with two slices or more (``slices``: anything
    with ``axis`` and ``order``, the non-empty ones)."""
    by_axis: dict[str, list] = {}
    for s in slices:
        by_axis.setdefault(s.axis, []).append(s)
    out = []
    for axis, (q, ia, ib) in QUESTIONS.items():
        ss = sorted(by_axis.get(axis, []), key=lambda s: s.order)
        if len(ss) >= 2:
            out.append((q, ss[ia], ss[ib]))
    return out
