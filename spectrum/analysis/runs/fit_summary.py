"""What the report says of one run's fits as a whole, counted once when the run is loaded, in token
chunks: tokens by kind, the population's size, the step-versus-smooth shares
(:class:`spectrum.analysis.runs.stepwise.ShareCounts`, inside and outside the run's fit grid), and
the fit-quality table's medians and the histograms of its figure (R^2 of every fit, clipped at
-0.5; log10 standard error of tau of the learned tokens). The medians need each value once: the
two columns are gathered for the run being loaded and dropped after (8 bytes a token, one run at a
time).

The summary is made by :func:`spectrum.analysis.runs.run_data.load_run` from the run's token reader,
and carried by the run it describes (:attr:`RunData.summary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from spectrum.analysis.runs import stepwise
from spectrum.store import read_provenance

HIST_BINS = 40


@dataclass(frozen=True)
class Histogram:
    counts: np.ndarray
    edges: np.ndarray


@dataclass(frozen=True)
class FitSummary:
    n_tokens: int
    n_pop: int  # tokens with finite lo, hi, tau, k
    kind_counts: dict[str, int]  # kind -> tokens (a null kind reads "missing")
    r2_median: float | None  # over every token with an R^2 (NaN ignored)
    tau_se_median: float | None  # over the learned tokens with a standard error of tau
    r2_hist: Histogram | None  # finite R^2 clipped to [-0.5, 1], 40 bins
    tau_se_hist: Histogram | None  # log10 of finite positive tau_se of learned tokens, 40 bins
    shares: dict = field(default_factory=dict)  # stepwise.run_shares of the run

    @property
    def kinds(self) -> list[str]:
        return sorted(k for k in self.kind_counts if k != "missing")


def _hist(values: np.ndarray) -> Histogram | None:
    if not values.size:
        return None
    counts, edges = np.histogram(values, bins=HIST_BINS)
    return Histogram(counts, edges)


def fit_window(fits_path: Path) -> stepwise.Window | None:
    """The run's fit grid and bound of ``k`` from its fits' provenance (None where it records
    no grid)."""
    prov = read_provenance(fits_path) or {}
    x = prov.get("x")
    if not x:
        return None
    return stepwise.Window(x, (prov.get("options") or {}).get("k_max"))


def summarize_fits(fits_path: Path,
                   token_chunks: Callable[[Sequence[str]], Iterable[pl.DataFrame]]) -> FitSummary:
    """One pass over a run's fits (see the module docstring): ``fits_path`` tells which columns
    they hold, ``token_chunks(columns)`` reads them with the derived ``in_pop``
    (:meth:`RunData.token_chunks`)."""
    names = set(pq.read_schema(fits_path).names)
    has_se = "tau_se" in names
    has_r2 = "r2" in names
    has_bic = set(stepwise.COLUMNS) <= names
    window = fit_window(fits_path) if set(stepwise.WINDOW_COLUMNS) <= names else None
    cols = ["kind", "lo", "hi", *(["r2"] if has_r2 else []), *(["tau_se"] if has_se else []),
            *(stepwise.COLUMNS if has_bic else ()),
            *(stepwise.WINDOW_COLUMNS if has_bic and window is not None else ())]
    kinds: dict[str, int] = {}
    r2s, ses = [], []
    n = n_pop = 0
    shares = stepwise.ShareCounts(window)
    for chunk in token_chunks(cols):
        n += chunk.height
        n_pop += int(chunk["in_pop"].sum())
        for k, c in chunk.group_by("kind").len().iter_rows():
            kinds[k] = kinds.get(k, 0) + int(c)
        if has_r2:
            r2s.append(chunk["r2"].drop_nulls().to_numpy().astype(float))
        if has_se:
            ses.append(chunk.filter(chunk["kind"] == "learned")["tau_se"].drop_nulls()
                       .to_numpy().astype(float))
        if has_bic:
            shares.add(chunk)
    r2 = np.concatenate(r2s) if r2s else np.zeros(0)
    se = np.concatenate(ses) if ses else np.zeros(0)
    with np.errstate(invalid="ignore"):
        r2_med = float(np.nanmedian(r2)) if r2.size else None
        se_med = float(np.nanmedian(se)) if se.size else None
    r2_fin = r2[np.isfinite(r2)]
    se_pos = se[np.isfinite(se) & (se > 0)]
    return FitSummary(n_tokens=n, n_pop=n_pop, kind_counts=kinds, r2_median=r2_med,
                      tau_se_median=se_med, r2_hist=_hist(np.clip(r2_fin, -0.5, 1)),
                      tau_se_hist=_hist(np.log10(se_pos)),
                      shares=shares.shares() if has_bic else
                      {"share_step": None, "share_step_shed": None, "reason": stepwise.NO_COLUMNS})
