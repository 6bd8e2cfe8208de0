"""The spectra of every run and the named tests of ``reconstruction/scores.json``.

Tests (each scored against measured targets, beside baselines on exactly the same targets; every
score has a 95% bootstrap interval over sequences, :mod:`spectrum.analysis.heldout.scores`):

- ``in_sample``: the mean of each run's fitted sigmoids against its measured mean loss, and its
  finite differences against the measured ones. The sum of fitted sigmoids reproduces the loss
  by construction: an identity check of fit quality, not evidence.
- ``spectrum_only``: dL/dlnT from the run's spectrum alone (sharp limit ``-S``, and ``S``
  convolved with the mean sigmoid kernel) against the measured dL/dlnT. Baseline: the power law
  ``E + B*T^-beta`` fitted to the same run's curve (a smooth description of the very same curve).
- ``heldout_tokens``: the spectrum (and kernel) of one half of the sequences predicts dL/dlnT of
  the other half, both directions. Baselines: ``E + B*T^-beta`` fitted to the first half's curve,
  and, as a reference, the first half's own measured derivative.
- ``heldout_runs`` and ``leave_one_run_out``: :mod:`spectrum.analysis.heldout.heldout_runs`.

Derivatives are finite differences between neighbouring checkpoints, placed at their midpoints
(:func:`spectrum.analysis.runs.curves.finite_difference`); derivatives predicted directly (from a
spectrum) are read at the same midpoints. Checkpoints at or before a run's warmup are not scored.
A test that cannot run says why (``reason``) instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import polars as pl

from spectrum.analysis.heldout.baselines import run_power_laws
from spectrum.analysis.heldout.heldout_runs import heldout_runs_test, leave_one_run_out_test
from spectrum.analysis.heldout.prediction_table import prediction_rows, prediction_table
from spectrum.analysis.heldout.scaling import power_law_in_T
from spectrum.analysis.heldout.scores import null_score, score
from spectrum.analysis.heldout.verdicts import SCHEMA_VERSION
from spectrum.analysis.runs.curves import (SeqCurve, chunk_curve, finite_difference, midpoints,
                                           replicate_weights)
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.reliability import reliability_summary
from spectrum.analysis.runs.stepwise import stepwise_summary
from spectrum.analysis.runs.token_passes import Mapper, in_process
from spectrum.analysis.spectra.reconstruct import kernel_derivative, mean_kernel, sharp_derivative
from spectrum.analysis.spectra.slices import (SLICE_COLUMNS, Comparison, SliceRule, TauSums,
                                              compare_sums, compared_pairs, slice_rules)
from spectrum.analysis.spectra.spectrum import Spectrum, SpectrumSums, spectrum_rows
from spectrum.fit.kinds import STEP_KINDS
from spectrum.fit.model import PARAMS, token_curves

SMOOTHING = ("two-point finite differences between neighbouring scored checkpoints, placed at "
             "their midpoints in ln T, no further smoothing; predicted curves go through the same "
             "operator at the same points")
IN_SAMPLE_LABEL = "identity check of fit quality, not evidence"


@dataclass(frozen=True)
class Options:
    n_bins: int = 40
    n_boot: int = 200
    kinds: tuple[str, ...] = STEP_KINDS
    seed: int = 0
    ridge: float = 0.5
    freq_buckets: int = 4

    def as_dict(self) -> dict:
        return {"n_bins": self.n_bins, "n_boot": self.n_boot, "kinds": list(self.kinds),
                "seed": self.seed, "ridge": self.ridge, "freq_buckets": self.freq_buckets}


# ---------------------------------------------------------------------------------------------
# spectra

@dataclass
class SpectraResult:
    table: pl.DataFrame
    spectra: dict[str, Spectrum]  # run -> spectrum of all its population tokens
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)


def _arrays(df: pl.DataFrame) -> dict[str, np.ndarray]:
    lo, hi = df["lo"].to_numpy().astype(float), df["hi"].to_numpy().astype(float)
    return {"lo": lo, "hi": hi, "delta": hi - lo, "tau": df["tau"].to_numpy().astype(float),
            "k": df["k"].to_numpy().astype(float),
            "kind": df["kind"].fill_null("missing").to_numpy().astype(str)}


def _slice_rules(run: RunData, opts: Options) -> list[SliceRule]:
    """The run's annotation slices; the frequency buckets' edges and the largest position come
    from a first pass over the population's annotations."""
    cols = run.columns() & set(SLICE_COLUMNS)
    first = [c for c in ("target_freq", "pos") if c in cols]
    freqs, pos_max = [], None
    if first:
        for ch in run.token_chunks(first, population=True):
            if "target_freq" in first:
                freqs.append(ch["target_freq"].to_numpy().astype(float))
            if "pos" in first and ch.height:
                top = int(ch["pos"].max())
                pos_max = top if pos_max is None else max(pos_max, top)
    return slice_rules(cols, target_freq=np.concatenate(freqs) if freqs else None,
                       pos_max=pos_max, freq_buckets=opts.freq_buckets)


@dataclass
class _SliceSums:
    rule: SliceRule
    spectrum: SpectrumSums
    tau: TauSums

    @property
    def axis(self) -> str:
        return self.rule.axis

    @property
    def order(self) -> int:
        return self.rule.order


@dataclass(frozen=True)
class SpectraPass:
    """The spectrum's per-sequence sums of one run's population, and each slice's (a token pass,
    :mod:`spectrum.analysis.runs.token_passes`); combined: ``(total, non-empty slices)``."""

    run: RunData
    edges: np.ndarray
    kinds: tuple[str, ...]
    rules: tuple[SliceRule, ...]

    @property
    def n_tokens(self) -> int:
        return self.run.n_tokens

    def __call__(self, start: int, stop: int) -> tuple[SpectrumSums, list[_SliceSums]]:
        n_seq = len(self.run.seq_ids)
        total = SpectrumSums(n_seq, self.edges)
        slices = [_SliceSums(r, SpectrumSums(n_seq, self.edges), TauSums(n_seq))
                  for r in self.rules]
        for ch in self.run.token_chunks(["lo", "hi", "tau", "k", "kind",
                                         *{r.column for r in self.rules}],
                                        population=True, start=start, stop=stop):
            a = _arrays(ch)
            codes = ch["seq_code"].to_numpy()
            inc = np.isin(a["kind"], self.kinds)
            learned = a["kind"] == "learned"
            total.add(a["tau"], a["delta"], codes, inc)
            for s in slices:
                m = s.rule.mask(ch)
                s.spectrum.add(a["tau"][m], a["delta"][m], codes[m], inc[m])
                s.tau.add(a["tau"], a["delta"], codes, learned & m)
        return total, slices

    def combine(self, parts: Sequence[tuple[SpectrumSums, list[_SliceSums]]]
                ) -> tuple[SpectrumSums, list[_SliceSums]]:
        total, slices = parts[0]
        for t, ss in parts[1:]:
            total.merge(t)
            for s, o in zip(slices, ss):
                s.spectrum.merge(o.spectrum)
                s.tau.merge(o.tau)
        return total, [s for s in slices if s.spectrum.n > 0]


def run_spectra(runs: list[RunData], edges: np.ndarray, opts: Options,
                mapper: Mapper = in_process) -> SpectraResult:
    """Spectra (all tokens and every annotation slice) with bands, and the slice comparisons;
    each run in one pass over its tokens (``mapper``: how the passes run)."""
    rows, spectra, comps = [], {}, {}
    with_fits = [r for r in runs if r.has_fits]
    passes = [SpectraPass(r.light(), edges, opts.kinds, tuple(_slice_rules(r, opts)))
              for r in with_fits]
    for run, (total, slices) in zip(with_fits, mapper(passes)):
        sp = total.spectrum(n_boot=opts.n_boot, seed=opts.seed)
        spectra[run.name] = sp
        rows.append(spectrum_rows(run.name, "all", "all", sp))
        for s in slices:
            rows.append(spectrum_rows(run.name, s.rule.axis, s.rule.name,
                                      s.spectrum.spectrum(n_boot=opts.n_boot, seed=opts.seed)))
        present = total.per_group > 0
        comps[run.name] = [compare_sums(sa.tau, sb.tau, present, question=q, a=sa.rule.name,
                                        b=sb.rule.name, n_boot=opts.n_boot, seed=opts.seed)
                           for q, sa, sb in compared_pairs(slices)]
    table = pl.concat(rows) if rows else pl.DataFrame()
    return SpectraResult(table=table, spectra=spectra, comparisons=comps)


# ---------------------------------------------------------------------------------------------
# reconstruction tests

class _Collector:
    """Accumulates (prediction, measurement) targets per test/target/model, and prediction rows.
    Values are (R, n) arrays over bootstrap replicates (row 0: the estimate)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self.rows: list[pl.DataFrame] = []
        self.kinds: dict[tuple[str, str, str], str] = {}

    def add(self, test: str, target: str, model: str, kind: str, run: str, x: np.ndarray,
            predicted: np.ndarray, measured: np.ndarray) -> None:
        p, m = np.atleast_2d(predicted), np.atleast_2d(measured)
        p = np.broadcast_to(p, m.shape) if p.shape[0] == 1 else p
        self.pairs.setdefault((test, target, model), []).append((p, m))
        self.kinds[(test, target, model)] = kind
        self.rows.append(prediction_rows(test=test, target=target, model=model, model_kind=kind,
                                         run=run, regime=None, x=x, measured=m[0],
                                         predicted=p[0]))

    def score(self, test: str, target: str, model: str) -> dict:
        got = self.pairs.get((test, target, model))
        if not got:
            return null_score("no targets")
        return score(np.concatenate([p for p, _ in got], 1), np.concatenate([m for _, m in got], 1))


def _population_curve(run: RunData, W: np.ndarray, half: int | None = None) -> np.ndarray:
    """(R, K) measured mean loss over the run's population (or one half of its sequences)."""
    keep = np.ones(len(run.seq_ids)) if half is None else (run.seq_half == half).astype(float)
    return SeqCurve(run.pop_sums * keep[:, None], run.pop_counts * keep[:, None]).draw(W)


@dataclass(frozen=True)
class InSamplePass:
    """Per-sequence sums of the fitted sigmoids of one run's population at its scored checkpoints
    (a token pass); combined: the :class:`SeqCurve`."""

    run: RunData

    @property
    def n_tokens(self) -> int:
        return self.run.n_tokens

    def __call__(self, start: int, stop: int) -> SeqCurve:
        x = self.run.x[self.run.scored]
        return chunk_curve(self.run.token_chunks(PARAMS, population=True, start=start, stop=stop),
                           lambda ch: token_curves(*(ch[p].to_numpy().astype(float)
                                                     for p in PARAMS), x),
                           len(self.run.seq_ids))

    def combine(self, parts: Sequence[SeqCurve]) -> SeqCurve:
        parts = [p for p in parts if p.sums.shape[1]] or list(parts[:1])
        return SeqCurve(sum(p.sums for p in parts[1:]) + parts[0].sums,
                        sum(p.counts for p in parts[1:]) + parts[0].counts)


def _test_in_sample(runs: list[RunData], W: np.ndarray, c: _Collector, mapper: Mapper) -> None:
    with_fits = [r for r in runs if r.has_fits]
    for run, curve in zip(with_fits, mapper([InSamplePass(r.light()) for r in with_fits])):
        sc = run.scored
        Lh = curve.draw(W)
        L = _population_curve(run, W)[:, sc]
        c.add("in_sample", "L", "fitted_sigmoids", "prediction", run.name, run.x[sc], Lh, L)
        if sc.sum() >= 2:
            c.add("in_sample", "dL/dlnT", "fitted_sigmoids", "prediction", run.name,
                  midpoints(run.x[sc]), finite_difference(Lh, run.x[sc]),
                  finite_difference(L, run.x[sc]))


@dataclass
class _RunKernels:
    """The mean sigmoid kernels of a run's included tokens (``None``: all; 0, 1: each half) and
    the spectrum of each half of its sequences (no bands)."""

    kernels: dict
    halves: dict


def _run_kernels(run: RunData, edges: np.ndarray, opts: Options) -> _RunKernels:
    """One pass over the run's population. The kernels are weighted quantiles of k, so the
    included tokens' k and delta are gathered (16 bytes a token, one run at a time)."""
    halves = {h: SpectrumSums(1, edges, by_seq=False) for h in (0, 1)}
    ks, ds, hs = [], [], []
    for ch in run.token_chunks(["lo", "hi", "tau", "k", "kind"], population=True):
        a = _arrays(ch)
        half = ch["half"].to_numpy()
        inc = np.isin(a["kind"], opts.kinds)
        for h in (0, 1):
            m = half == h
            halves[h].add(a["tau"][m], a["delta"][m], None, inc[m])
        ks.append(a["k"][inc])
        ds.append(a["delta"][inc])
        hs.append(half[inc])
    k, d, h = (np.concatenate(v) for v in (ks, ds, hs))
    kernels = {None: mean_kernel(d, k), 0: mean_kernel(d[h == 0], k[h == 0]),
               1: mean_kernel(d[h == 1], k[h == 1])}
    return _RunKernels(kernels, halves)


def _test_spectrum_only(runs: list[RunData], spectra: dict[str, Spectrum], W: np.ndarray,
                        kernels: dict[str, _RunKernels], c: _Collector) -> None:
    for run in runs:
        sc = run.scored
        if run.name not in spectra or sc.sum() < 2:
            continue
        xm = midpoints(run.x[sc])
        dL = finite_difference(_population_curve(run, W)[:, sc], run.x[sc])
        sp = spectra[run.name]
        kern = kernels[run.name].kernels[None]
        c.add("spectrum_only", "dL/dlnT", "spectrum_sharp", "prediction", run.name, xm,
              sharp_derivative(sp, xm), dL)
        c.add("spectrum_only", "dL/dlnT", "spectrum_kernel", "prediction", run.name, xm,
              kernel_derivative(sp, kern, xm), dL)
        law = power_law_in_T(run.x[sc], run.mean_loss[sc])
        if law is not None:
            c.add("spectrum_only", "dL/dlnT", "power_law_T_own_curve", "baseline", run.name, xm,
                  law.dlnX(1.0, np.exp(xm)), dL)


def _test_heldout_tokens(runs: list[RunData], W: np.ndarray, kernels: dict[str, _RunKernels],
                         c: _Collector) -> None:
    for run in runs:
        sc = run.scored
        if not run.has_fits or sc.sum() < 2:
            continue
        k = kernels[run.name]
        xm = midpoints(run.x[sc])
        for src in (0, 1):
            if not k.halves[src].n or not k.halves[1 - src].n:
                continue
            sp = k.halves[src].spectrum(n_boot=0)
            kern = k.kernels[src]
            dL = finite_difference(_population_curve(run, W, 1 - src)[:, sc], run.x[sc])
            tag = f"{run.name}/half{src}->half{1 - src}"
            c.add("heldout_tokens", "dL/dlnT", "spectrum_sharp", "prediction", tag, xm,
                  sharp_derivative(sp, xm), dL)
            c.add("heldout_tokens", "dL/dlnT", "spectrum_kernel", "prediction", tag, xm,
                  kernel_derivative(sp, kern, xm), dL)
            own = run.half_loss[src]
            law = power_law_in_T(run.x[sc], own[sc])
            if law is not None:
                c.add("heldout_tokens", "dL/dlnT", "power_law_T_other_half", "baseline", tag, xm,
                      law.dlnX(1.0, np.exp(xm)), dL)
            c.add("heldout_tokens", "dL/dlnT", "measured_other_half", "reference", tag, xm,
                  finite_difference(_population_curve(run, W, src)[:, sc], run.x[sc]), dL)


TESTS = {
    "in_sample": ("the mean of each run's fitted sigmoids (all its tokens with a finite fit)",
                  "that run's measured mean loss L and dL/dlnT"),
    "spectrum_only": ("the run's amplitude-weighted spectrum S alone: sharp limit -S(x), and S "
                      "convolved with the mean sigmoid kernel",
                      "that run's measured dL/dlnT"),
    "heldout_tokens": ("the spectrum of one half of the sequences (random half by sequence id)",
                       "the measured dL/dlnT of the other half's tokens, both directions"),
    "heldout_runs": ("a per-token model of (lo, hi, tau, ln k) as linear functions of ln M and "
                     "ln D with shrinkage, fitted on the fit runs only",
                     "each held-out run's L(T) and dL/dlnT; dL/dlnM between held-out runs of "
                     "neighbouring sizes at one data scale (matched T); dL/dlnD between the "
                     "end-of-run losses of held-out runs of one size at neighbouring data scales"),
    "leave_one_run_out": ("the same per-token model, fitted on all fit runs but one",
                          "the left-out fit run's L(T) and dL/dlnT"),
}
_SIMPLE_TARGETS = {"in_sample": ("L", "dL/dlnT"), "spectrum_only": ("dL/dlnT",),
                   "heldout_tokens": ("dL/dlnT",)}


def _simple_entry(test: str, c: _Collector, reason: str | None) -> dict:
    entry: dict = {"targets": {}, "reason": reason}
    for target in _SIMPLE_TARGETS[test]:
        block: dict = {"predictions": {}, "baselines": {}, "references": {}}
        for (t, g, m), k in sorted(c.kinds.items()):
            if t == test and g == target:
                group = {"prediction": "predictions", "baseline": "baselines"}.get(k, "references")
                block[group][m] = c.score(test, target, m)
        if not block["predictions"]:
            block["predictions"]["-"] = null_score(reason or "no targets")
        entry["targets"][target] = block
    if test == "in_sample":
        entry["label"] = IN_SAMPLE_LABEL
    return entry


def run_tests(runs: list[RunData], spectra: dict[str, Spectrum], edges: np.ndarray,
              opts: Options, mapper: Mapper = in_process) -> tuple[dict, pl.DataFrame]:
    """Every named test and the step-vs-smooth summary: (scores, predictions table). The
    in-sample curves and the token models' two passes run through ``mapper``
    (:mod:`spectrum.analysis.runs.token_passes`); the kernels' pass (weighted quantiles of k, which
    are not sums) runs here."""
    c = _Collector()
    has_fits = any(r.has_fits for r in runs)
    W = replicate_weights(len(runs[0].seq_ids), opts.n_boot, opts.seed) if runs else np.ones((1, 0))
    kernels = {r.name: _run_kernels(r, edges, opts) for r in runs
               if r.has_fits and r.scored.sum() >= 2}
    _test_in_sample(runs, W, c, mapper)
    _test_spectrum_only(runs, spectra, W, kernels, c)
    _test_heldout_tokens(runs, W, kernels, c)
    laws = run_power_laws([r for r in runs if r.role == "fit"])
    tests = {
        "in_sample": _simple_entry("in_sample", c, None if has_fits else "no run has fits"),
        "spectrum_only": _simple_entry("spectrum_only", c,
                                       None if spectra else "no run has a spectrum (no fits)"),
        "heldout_tokens": _simple_entry("heldout_tokens", c,
                                        None if has_fits else "no run has fits"),
        "heldout_runs": heldout_runs_test(runs, W, opts.ridge, c.rows, laws, mapper),
        "leave_one_run_out": leave_one_run_out_test(runs, W, opts.ridge, c.rows, laws, mapper),
    }
    for test, (frm, tgt) in TESTS.items():
        tests[test].update(predicted_from=frm, targets_described=tgt)
    fitted = tests["heldout_runs"].pop("fitted", {})
    scores = {"schema_version": SCHEMA_VERSION, "tests": tests, "stepwise": stepwise_summary(runs),
              "settings": {**opts.as_dict(), "measured_derivative": SMOOTHING,
                           "derivatives": "with respect to ln T, ln M, ln D",
                           "interval": "95% percentile bootstrap over sequences (predicted and "
                                       "measured curves resampled together; aggregate_curve, "
                                       "power_law_T_interp, schedule_law refitted on each)"},
              "fitted": fitted}
    scores["stepwise"]["reliability"] = reliability_summary(runs, mapper)
    return scores, prediction_table(c.rows)
