"""Learning-time spectra: where on the log-time axis the loss is shed.

For a run with N evaluated tokens, of which the tokens in ``kinds`` enter the spectrum,

    S(x)     = (1/N) * sum_i delta_i * [tau_i in bin(x)] / width(bin)      (amplitude-weighted)
    count(x) = (1/N) * sum_i           [tau_i in bin(x)] / width(bin)      (count density)

on one fixed grid in ``x = ln T`` shared by all runs. Both are densities per unit ln T, so that
in the sharp limit ``dL/dx ~ -S(x)`` and ``count`` integrates to the fraction of tokens whose
learning time falls on the grid. N counts *every* token of the run (those outside ``kinds`` or off
the grid add zero), so spectra of different runs and slices are on the same scale as the loss.

Which tokens enter: by default the kinds a sigmoid step describes
(:data:`spectrum.fit.kinds.STEP_KINDS`), ``learned``, ``forgotten`` (negative delta: loss gained)
and ``unfinished`` (midpoint past the last checkpoint; usually off the grid). ``flat`` tokens shed
nothing and have no meaningful midpoint; ``nonmonotone`` ones are not described by a sigmoid. The
set is the ``kinds`` parameter.

Bands are percentile bootstrap intervals over *sequences* (tokens of one sequence share a context,
so they are resampled together; :mod:`spectrum.analysis.stats`): each replicate draws sequences
with replacement, computed without looping over tokens as one matrix product of replicate weights
with per-sequence bin sums. The sums are accumulated over token chunks (:class:`SpectrumSums`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import polars as pl

from spectrum.analysis.stats import LEVEL, bootstrap_weights, percentile_interval


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
        """Tokens with their sequence's row ``codes``; ``include`` marks the tokens that enter
        (default: all with finite tau and delta); the others count in N only."""
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

    def spectrum(self, *, n_boot: int = 200, level: float = LEVEL, seed: int = 0,
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
            S_lo, S_hi = percentile_interval((weights @ amp) / denom, level, axis=0)
            C_lo, C_hi = percentile_interval((weights @ cnt) / denom, level, axis=0)
        else:
            S_lo = S_hi = S
            C_lo = C_hi = C
        return Spectrum(edges=self.edges, S=S, S_lo=S_lo, S_hi=S_hi, count=C, count_lo=C_lo,
                        count_hi=C_hi, n_tokens=self.n, n_in=self.n_in, n_off_grid=self.n_off)


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
