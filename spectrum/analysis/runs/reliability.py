"""Test-retest reliability of per-token results across seed replicas.

Two runs of one configuration that differ only in their training seed (initialisation and data
order) see the same evaluation tokens. Where a per-token result is a property of the token, the
two runs agree on it; where it is a property of the seed, they do not. For a pair of replicas
this module measures, over the tokens of the evaluation set:

- ``tau_corr``: the Pearson correlation of the learning times ``tau``, over the tokens whose
  ``tau`` lies inside the checkpoints' window in both runs and whose kind is ``learned`` in both
  (outside the window ``tau`` is censored: the data bound it on one side only);
- ``kappa_step``: Cohen's kappa of the per-token call "step preferred" (tokens with a call in both);
- ``kappa_kind``: Cohen's kappa of the kinds (tokens fitted in both);
- ``se_coverage``: the share of those ``tau`` pairs whose difference lies within 1.96 of its
  combined standard error ``sqrt(se_a^2 + se_b^2)``: near 0.95 when the standard errors are right.

Standard errors from ``(J^T J)^-1`` assume independent residuals; real residuals are correlated
along a trajectory and shared by the tokens of a run, so they under-cover. :func:`se_factor`
estimates the factor ``c`` by which they must be scaled for 95% coverage, as the 95th percentile
of ``|z| / 1.96``. It is estimated on one replicated pair and checked on another, never on the
pair it is scored on (:func:`cross_checked`).

Everything accumulates over token chunks (:class:`PairCounts`), so memory does not grow with the
evaluation set; the ``|z|`` distribution is kept as a fine histogram for the percentile.

In the report (:func:`reliability_summary`), a *replicated point* is a configuration (M, D, tokens
per step, warmup) with fitted runs of two or more training seeds; it is named after its first run
in manifest order. Every pair of its runs with different seeds is read in aligned token chunks
(:class:`ReliabilityPass`, a token pass), the factor of each pair is estimated on the other pairs
of its point, and the point's figures pool its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
import polars as pl

from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.stepwise import COLUMNS as BIC_COLUMNS, step_preferred
from spectrum.analysis.runs.token_passes import Mapper, in_process
from spectrum.fit.kinds import KINDS, NOT_CENSORED, CENSORED, censoring

Z95 = 1.959963984540054
# |z| histogram: bins of 0.01 up to 50 (and one overflow bin); the percentile is read from it
_Z_EDGES = np.concatenate([np.arange(0.0, 50.0 + 1e-9, 0.01), [np.inf]])


def cohen_kappa(confusion: np.ndarray) -> float | None:
    """Cohen's kappa of a square confusion matrix of counts (None when it holds no pair, or when
    chance agreement is already complete: one category only)."""
    c = np.asarray(confusion, dtype=float)
    n = c.sum()
    if n <= 0:
        return None
    observed = np.trace(c) / n
    expected = float((c.sum(0) * c.sum(1)).sum()) / n**2
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


@dataclass
class PairCounts:
    """Sums over tokens for one pair of replicas ``a`` and ``b``."""

    n_kinds: int
    n_tau: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(5))  # a, b, a^2, b^2, ab
    step: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))
    kind: np.ndarray | None = None
    z_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(_Z_EDGES) - 1))

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = np.zeros((self.n_kinds, self.n_kinds))

    def add(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
        """One chunk of the same tokens in both runs: per run ``tau``, ``tau_se``, ``inside``
        (tau within the run's window, bool), ``learned`` (bool), ``kind`` (int codes, -1 where
        no fit) and ``step`` (1 step preferred, 0 not, -1 no call)."""
        both = a["inside"] & b["inside"] & a["learned"] & b["learned"] \
            & np.isfinite(a["tau"]) & np.isfinite(b["tau"])
        ta, tb = a["tau"][both].astype(float), b["tau"][both].astype(float)
        self.n_tau += int(both.sum())
        self.sums += [ta.sum(), tb.sum(), (ta * ta).sum(), (tb * tb).sum(), (ta * tb).sum()]
        se = np.hypot(a["tau_se"][both].astype(float), b["tau_se"][both].astype(float))
        ok = np.isfinite(se) & (se > 0)
        z = np.abs(ta[ok] - tb[ok]) / se[ok]
        self.z_hist += np.histogram(z, bins=_Z_EDGES)[0]
        call = (a["step"] >= 0) & (b["step"] >= 0)
        np.add.at(self.step, (a["step"][call].astype(int), b["step"][call].astype(int)), 1)
        fitted = (a["kind"] >= 0) & (b["kind"] >= 0)
        np.add.at(self.kind, (a["kind"][fitted].astype(int), b["kind"][fitted].astype(int)), 1)

    def tau_corr(self) -> float | None:
        n = self.n_tau
        if n < 3:
            return None
        sa, sb, saa, sbb, sab = self.sums
        va, vb = saa - sa * sa / n, sbb - sb * sb / n
        if va <= 0 or vb <= 0:
            return None
        return float((sab - sa * sb / n) / np.sqrt(va * vb))

    def coverage(self, factor: float = 1.0) -> float | None:
        """Share of ``|z| < 1.96 * factor``: the coverage of standard errors scaled by
        ``factor``."""
        total = self.z_hist.sum()
        if total == 0:
            return None
        edges = _Z_EDGES[1:]  # upper edge of each bin: a bin counts when it lies wholly inside
        return float(self.z_hist[edges <= Z95 * factor + 1e-12].sum() / total)

    def factor(self) -> float | None:
        """The factor that brings the coverage to 95% on this pair (the 95th percentile of
        ``|z| / 1.96``), or None without pairs."""
        total = self.z_hist.sum()
        if total == 0:
            return None
        cdf = np.cumsum(self.z_hist) / total
        i = int(np.searchsorted(cdf, 0.95))
        return float(_Z_EDGES[min(i + 1, len(_Z_EDGES) - 2)] / Z95)

    def summary(self) -> dict:
        return {"tau_corr": self.tau_corr(), "kappa_step": cohen_kappa(self.step),
                "kappa_kind": cohen_kappa(self.kind), "se_coverage_uncorrected": self.coverage(),
                "n_tokens": self.n_tau}


Pair = tuple[str, str]


def cross_checked(pairs: dict[Pair, PairCounts]) -> dict[Pair, dict]:
    """Per pair of replicas, its summary and the coverage of the standard errors corrected by a
    factor estimated on OTHER pairs, pooled: those that share no run with it where there are any
    (independent seeds), else the other pairs. With a single pair there is nothing to estimate the
    factor on, and ``se_coverage`` is None with a reason."""
    out = {}
    for pair, counts in pairs.items():
        entry = counts.summary()
        usable = {p: c for p, c in pairs.items() if p != pair and c.z_hist.sum() > 0}
        disjoint = {p: c for p, c in usable.items() if not set(p) & set(pair)}
        others = disjoint or usable
        if not others:
            entry.update(se_coverage=None, se_factor=None, se_factor_from=[],
                         se_reason="one replicated pair only: no other pair to estimate the "
                                   "standard errors' correction on")
        else:
            pooled = PairCounts(counts.n_kinds)
            pooled.z_hist = sum(c.z_hist for c in others.values())
            factor = pooled.factor()
            entry.update(se_factor=factor, se_factor_from=[list(p) for p in others],
                         se_coverage=counts.coverage(factor) if factor is not None else None)
        out[pair] = entry
    return out


# ---------------------------------------------------------------------------------------------
# the report's pass: replicated points, their pairs read in aligned token chunks

def replicated_points(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Fitted runs grouped by point, where the group holds two or more training seeds; each
    named after its first run (manifest order)."""
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        if r.has_fits and r.seed is not None:
            groups.setdefault(r.point, []).append(r)
    return {g[0].name: g for g in groups.values() if len({r.seed for r in g}) >= 2}


def replica_pairs(group: Sequence[RunData]) -> list[Pair]:
    """Every pair of the group's runs with different seeds, in manifest order."""
    return [(a.name, b.name) for a, b in combinations(group, 2) if a.seed != b.seed]


def token_inputs(run: RunData, chunk: pl.DataFrame) -> dict[str, np.ndarray]:
    """What :meth:`PairCounts.add` takes of one run's chunk (``tau``, ``tau_se``, ``kind`` and,
    where the fits hold them, ``censored`` and the BIC columns)."""
    tau = chunk["tau"].to_numpy().astype(float)
    kind_name = chunk["kind"].to_numpy().astype(str)
    codes = {k: i for i, k in enumerate(KINDS)}
    kind = np.array([codes.get(k, -1) for k in kind_name], dtype=int)
    if "censored" in chunk.columns:
        inside = chunk["censored"].fill_null("none").to_numpy().astype(str) == CENSORED[0]
    else:  # fits written before the column: the same rule on the fitted window
        x = run.x[run.scored] if run.scored.any() else run.x
        inside = censoring(tau, float(x.min()), float(x.max())) == NOT_CENSORED
    step = np.full(len(tau), -1)
    if set(BIC_COLUMNS) <= set(chunk.columns):
        call = chunk.select(step_preferred()).to_series()
        changes = ~np.isin(kind_name, ("flat", "unfit", "missing"))
        has = call.is_not_null().to_numpy() & changes
        step[has] = call.fill_null(False).to_numpy()[has].astype(int)
    return {"tau": tau, "tau_se": chunk["tau_se"].to_numpy().astype(float),
            "inside": inside & np.isfinite(tau), "learned": kind == KINDS.index("learned"),
            "kind": kind, "step": step}


@dataclass
class ReliabilityPass:
    """A token pass (:mod:`spectrum.analysis.runs.token_passes`): per replicated point, the
    :class:`PairCounts` of each of its pairs."""

    points: dict[str, list[RunData]]  # light runs
    n_tokens: int

    def __call__(self, start: int, stop: int) -> dict[str, dict[Pair, PairCounts]]:
        out = {}
        for name, group in self.points.items():
            out[name] = {pair: PairCounts(len(KINDS)) for pair in replica_pairs(group)}
            readers = {r.name: r.token_chunks(self._columns(r), start=start, stop=stop)
                       for r in group}
            for chunks in zip(*readers.values()):
                inputs = {r.name: token_inputs(r, c) for r, c in zip(group, chunks)}
                for (a, b), counts in out[name].items():
                    counts.add(inputs[a], inputs[b])
        return out

    @staticmethod
    def _columns(run: RunData) -> list[str]:
        have = run.columns()
        extra = [c for c in ("censored", *BIC_COLUMNS) if c in have]
        return ["tau", "tau_se", "kind", *extra]

    def combine(self, parts: Sequence[dict]) -> dict[str, dict[Pair, PairCounts]]:
        total = parts[0]
        for part in parts[1:]:
            for name, pairs in part.items():
                for pair, c in pairs.items():
                    total[name][pair] = _summed(total[name][pair], c)
        return total


def _summed(a: PairCounts, b: PairCounts) -> PairCounts:
    assert a.kind is not None and b.kind is not None
    return PairCounts(a.n_kinds, a.n_tau + b.n_tau, a.sums + b.sums, a.step + b.step,
                      a.kind + b.kind, a.z_hist + b.z_hist)


def point_summary(pairs: dict[Pair, PairCounts]) -> dict:
    """One replicated point: its pairs' figures (:func:`cross_checked`) and, pooled over them,
    ``tau_corr``, the kappas, ``n_tokens`` (token pairs), ``se_coverage_uncorrected`` and
    ``se_coverage`` (each pair's corrected coverage, weighted by its number of tau pairs; None
    where a pair's correction cannot be estimated)."""
    checked = cross_checked(pairs)
    pooled = PairCounts(next(iter(pairs.values())).n_kinds)
    for c in pairs.values():
        pooled = _summed(pooled, c)
    entry = pooled.summary()
    weights = {p: float(c.z_hist.sum()) for p, c in pairs.items()}
    corrected = [(checked[p]["se_coverage"], w) for p, w in weights.items() if w > 0]
    if corrected and all(v is not None for v, _ in corrected):
        entry["se_coverage"] = sum(v * w for v, w in corrected) / sum(w for _, w in corrected)
    else:
        entry["se_coverage"] = None
        reasons = {checked[p].get("se_reason") for p in pairs} - {None}
        entry["se_reason"] = "; ".join(sorted(reasons)) or "no pair of tau within the window"
    entry["pairs"] = [{"runs": list(p), **checked[p]} for p in pairs]
    return entry


def correction_words(entry: dict) -> str:
    """One sentence: how the point's standard errors were corrected."""
    pairs = [p for p in entry["pairs"] if p.get("se_factor") is not None]
    if not pairs:
        return ("The standard errors' correction cannot be estimated here: "
                f"{entry.get('se_reason', 'no pair to estimate it on')}; only the uncorrected "
                "coverage is given.")
    factors = [p["se_factor"] for p in pairs]
    disjoint = all(not set(p["runs"]) & set(q) for p in pairs for q in p["se_factor_from"])
    source = ("the pairs of its point that share no run with it" if disjoint
              else "the other pairs of its point")
    where = "; ".join(f"{' vs '.join(p['runs'])} from "
                      f"{', '.join(' vs '.join(q) for q in p['se_factor_from'])}" for p in pairs)
    spread = (f"c = {factors[0]:.2f}" if len(factors) == 1
              else f"c from {min(factors):.2f} to {max(factors):.2f}")
    return ("The fitted standard errors of tau were scaled by a factor c, the 95th percentile of "
            "|tau_a - tau_b| / (1.96 sqrt(se_a^2 + se_b^2)), estimated for each pair on "
            f"{source}, never on the pair it is scored on: {spread} ({where}).")


def reliability_summary(runs: Sequence[RunData], mapper: Mapper = in_process) -> dict:
    """``stepwise.reliability`` of scores.json: per replicated point, :func:`point_summary`
    with its runs and the sentence of :func:`correction_words`."""
    points = replicated_points(runs)
    if not points:
        return {}
    light = {name: [r.light() for r in group] for name, group in points.items()}
    counts = mapper([ReliabilityPass(light, min(r.n_tokens for r in runs if r.has_fits))])[0]
    out = {}
    for name, group in points.items():
        entry = point_summary(counts[name])
        entry.update(runs=[r.name for r in group], seeds=[r.seed for r in group])
        entry["se_correction"] = correction_words(entry)
        out[name] = entry
    return out
