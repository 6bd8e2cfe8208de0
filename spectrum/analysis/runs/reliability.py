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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
        """Share of ``|z| < 1.96 * factor``: the coverage of standard errors scaled by ``factor``."""
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
