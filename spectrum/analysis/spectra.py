"""Learning-time spectra: where on the log-time axis the loss is shed.

For a run with N evaluated tokens, of which the tokens in ``kinds`` enter the spectrum,

    S(x)     = (1/N) * sum_i delta_i * [tau_i in bin(x)] / width(bin)      (amplitude-weighted)
    count(x) = (1/N) * sum_i           [tau_i in bin(x)] / width(bin)      (count density)

on one fixed grid in ``x = ln T`` shared by all runs. Both are densities per unit ln T, so that
in the sharp limit ``dL/dx ~ -S(x)`` and ``count`` integrates to the fraction of tokens whose
learning time falls on the grid. N counts *every* token of the run (those outside ``kinds`` or off
the grid add zero), so spectra of different runs and slices are on the same scale as the loss.

Which tokens enter: by default the kinds a sigmoid step describes, ``learned``, ``forgotten``
(negative delta: loss gained) and ``unfinished`` (midpoint past the last checkpoint; usually off the
grid). ``flat`` tokens shed nothing and have no meaningful midpoint; ``nonmonotone`` ones are not
described by a sigmoid. The set is the ``kinds`` parameter.

Bands are percentile bootstrap intervals over *sequences* (tokens of one sequence share a context,
so they are resampled together): each replicate draws sequences with replacement, computed without
looping over tokens as one matrix product of replicate weights with per-sequence bin sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import polars as pl

DEFAULT_KINDS: tuple[str, ...] = ("learned", "forgotten", "unfinished")


def log_time_grid(x_ranges: Iterable[tuple[float, float]], n_bins: int = 40) -> np.ndarray:
    """Bin edges spanning the union of the runs' checkpoint ranges in ln T (T > 0)."""
    ranges = [(float(a), float(b)) for a, b in x_ranges if np.isfinite(a) and np.isfinite(b)]
    if not ranges:
        raise ValueError("no run has a checkpoint with T > 0: there is no log-time axis")
    lo, hi = min(a for a, _ in ranges), max(b for _, b in ranges)
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n_bins + 1)


def centers(edges: np.ndarray) -> np.ndarray:
    return 0.5 * (edges[1:] + edges[:-1])


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (last bin closed on the right); -1 off the grid or not finite."""
    x = np.asarray(x, float)
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[x == edges[-1]] = len(edges) - 2
    idx[~np.isfinite(x) | (idx < 0) | (idx > len(edges) - 2)] = -1
    return idx


def bootstrap_weights(n_groups: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_groups) multiplicities of a resampling of groups with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(float)


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1 if codes.size else 0


@dataclass(frozen=True)
class Spectrum:
    """A spectrum on ``edges`` with bootstrap bands (``level`` two-sided)."""

    edges: np.ndarray
    S: np.ndarray
    S_lo: np.ndarray
    S_hi: np.ndarray
    count: np.ndarray
    count_lo: np.ndarray
    count_hi: np.ndarray
    n_tokens: int  # N: every token of the population
    n_in: int  # tokens of the selected kinds with tau on the grid
    n_off_grid: int  # tokens of the selected kinds with tau off the grid

    @property
    def centers(self) -> np.ndarray:
        return centers(self.edges)

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)


class SpectrumSums:
    """Per-sequence bin sums of one population of tokens, accumulated over token chunks: what a
    spectrum and its bootstrap bands are computed from. ``by_seq`` False keeps the totals only
    (no bands)."""

    def __init__(self, n_seq: int, edges: np.ndarray, *, by_seq: bool = True) -> None:
        self.edges = np.asarray(edges, float)
        self.by_seq = by_seq
        rows, nb = (n_seq if by_seq else 1), len(self.edges) - 1
        self.amp = np.zeros((rows, nb))
        self.cnt = np.zeros((rows, nb))
        self.per_group = np.zeros(rows)
        self.n = self.n_in = self.n_off = 0

    def add(self, tau: np.ndarray, delta: np.ndarray, codes: np.ndarray,
            include: np.ndarray | None = None) -> None:
        """Tokens with their sequence's row ``codes``; ``include`` as :func:`compute_spectrum`."""
        tau, delta = np.asarray(tau, float), np.asarray(delta, float)
        codes = np.asarray(codes, np.int64) if self.by_seq else np.zeros(tau.size, np.int64)
        ok = np.isfinite(tau) & np.isfinite(delta)
        inc = ok if include is None else (np.asarray(include, bool) & ok)
        b = bin_index(tau, self.edges)
        on = inc & (b >= 0)
        rows, nb = self.amp.shape
        flat = codes[on] * nb + b[on]
        self.amp += np.bincount(flat, weights=delta[on], minlength=rows * nb).reshape(rows, nb)
        self.cnt += np.bincount(flat, minlength=rows * nb).reshape(rows, nb)
        self.per_group += np.bincount(codes, minlength=rows)
        self.n += tau.size
        self.n_in += int(on.sum())
        self.n_off += int((inc & (b < 0)).sum())

    def merge(self, other: "SpectrumSums") -> "SpectrumSums":
        """Add the sums of another set of tokens (another token range) on the same grid (new
        arrays: either side's may be read-only, as arrays sent between processes are)."""
        self.amp = self.amp + other.amp
        self.cnt = self.cnt + other.cnt
        self.per_group = self.per_group + other.per_group
        self.n += other.n
        self.n_in += other.n_in
        self.n_off += other.n_off
        return self

    def spectrum(self, *, n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 weights: np.ndarray | None = None) -> Spectrum:
        """The spectrum, with bands from a bootstrap over the sequences that hold a token
        (``weights``: precomputed multiplicities over those, in order)."""
        present = self.per_group > 0
        amp, cnt, per_group = self.amp[present], self.cnt[present], self.per_group[present]
        ng = int(present.sum()) if self.by_seq else 0
        width = np.diff(self.edges)
        N = max(self.n, 1)
        S = amp.sum(0) / N / width
        C = cnt.sum(0) / N / width
        if weights is None:
            weights = bootstrap_weights(ng, n_boot, seed) if ng > 0 and n_boot > 0 else None
        if weights is not None and weights.shape[0] > 0:
            denom = np.maximum(weights @ per_group, 1.0)[:, None] * width
            q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
            S_lo, S_hi = np.percentile((weights @ amp) / denom, q, axis=0)
            C_lo, C_hi = np.percentile((weights @ cnt) / denom, q, axis=0)
        else:
            S_lo = S_hi = S
            C_lo = C_hi = C
        return Spectrum(edges=self.edges, S=S, S_lo=S_lo, S_hi=S_hi, count=C, count_lo=C_lo,
                        count_hi=C_hi, n_tokens=self.n, n_in=self.n_in, n_off_grid=self.n_off)


def compute_spectrum(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray, edges: np.ndarray,
                     *, include: np.ndarray | None = None, n_boot: int = 200,
                     level: float = 0.95, seed: int = 0,
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


# ---------------------------------------------------------------------------------------------
# slices by the evalset's annotations

@dataclass(frozen=True)
class Slice:
    axis: str  # frequency | position | word_start
    name: str
    order: int  # position along its axis (0 = rarest / earliest in context / word start)
    mask: np.ndarray


@dataclass(frozen=True)
class SliceRule:
    """How to find one slice's tokens in a chunk of annotated tokens."""

    axis: str
    name: str
    order: int
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
    """The slices of :func:`annotation_slices` for tokens with ``columns``: frequency buckets from
    the quantiles of ``target_freq`` (every token of the population), position buckets up to
    ``pos_max`` (the population's largest position)."""
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
                 b: str, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Comparison:
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
                lo, hi = np.percentile(d, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Comparison(question, a, b, float(means[0]), float(means[1]), float(diff), float(lo),
                      float(hi), sums[0][2], sums[1][2])


def compare_mean_tau(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray,
                     mask_a: np.ndarray, mask_b: np.ndarray, *, question: str, a: str, b: str,
                     n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Comparison:
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


def slice_comparisons(tau: np.ndarray, delta: np.ndarray, groups: np.ndarray, learned: np.ndarray,
                      slices: list[Slice], *, n_boot: int = 200, seed: int = 0) -> list[Comparison]:
    """The report's questions: are frequent targets, short-range predictions (early positions)
    and word starts learned earlier than rare targets, long-range ones and word continuations?"""
    return [compare_mean_tau(tau, delta, groups, learned & sa.mask, learned & sb.mask,
                             question=q, a=sa.name, b=sb.name, n_boot=n_boot, seed=seed)
            for q, sa, sb in compared_pairs(slices)]


def spectrum_rows(run: str, slice_axis: str, slice_name: str, sp: Spectrum) -> pl.DataFrame:
    """One row per bin, in the layout of ``spectra/spectra.parquet``."""
    n = len(sp.S)
    return pl.DataFrame({
        "run": [run] * n, "slice_axis": [slice_axis] * n, "slice": [slice_name] * n,
        "bin": np.arange(n, dtype=np.int32), "bin_lo": sp.edges[:-1], "bin_hi": sp.edges[1:],
        "center": sp.centers, "S": sp.S, "S_lo": sp.S_lo, "S_hi": sp.S_hi,
        "count_density": sp.count, "count_lo": sp.count_lo, "count_hi": sp.count_hi,
        "n_tokens": np.full(n, sp.n_tokens, np.int64), "n_in": np.full(n, sp.n_in, np.int64),
    })
