"""The spectra of every run and the named reconstruction tests of ``reconstruction/scores.json``.

Tests (each scored against measured targets, beside baselines on exactly the same targets):

- ``in_sample``: the mean of each run's fitted sigmoids against its measured mean loss, and the
  derivative formula against the measured dL/dlnT. The sum of fitted sigmoids reproduces the loss
  by construction: an identity check of fit quality, not evidence.
- ``spectrum_only``: dL/dlnT from the run's spectrum alone (sharp limit ``-S``, and ``S``
  convolved with the mean sigmoid kernel) against the measured dL/dlnT. Baseline: the power law
  ``E + B*T^-beta`` fitted to the same run's curve (a smooth description of the very same curve).
- ``heldout_tokens``: the spectrum (and kernel) of one half of the sequences predicts dL/dlnT of
  the other half, both directions. Baselines: ``E + B*T^-beta`` fitted to the first half's curve,
  and, as a reference, the first half's own measured derivative.
- ``heldout_runs``: :mod:`spectrum.analysis.param_model` fitted on the ``fit`` runs predicts every token's
  curve for each ``heldout`` run: L(T) and dL/dlnT there, and dL/dlnM, dL/dlnD at matched T (see
  :func:`spectrum.analysis.reconstruct.matched_gradient`). Baselines fitted on the same fit runs:
  ``E + A*M^-alpha + B*T^-beta`` (all checkpoints) and ``E + A*M^-alpha + B*D^-beta`` (final losses;
  with fewer than 5 distinct (M, D) fit runs its exponents are borrowed from the T form).

A test that cannot run says why (``reason``) instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from spectrum.errors import SpectrumError
from spectrum.analysis.param_model import RunParams, fit_param_model
from spectrum.analysis.reconstruct import (kernel_derivative, matched_gradient, mean_curve, mean_derivative,
                                  mean_kernel, measured_derivative, null_score, score,
                                  sharp_derivative)
from spectrum.analysis.run_data import RunData
from spectrum.analysis.scaling import PowerLaw, fit_power_law
from spectrum.analysis.spectra import (DEFAULT_KINDS, Comparison, Spectrum, annotation_slices,
                              bootstrap_weights, compute_spectrum, slice_comparisons,
                              spectrum_rows)

SMOOTHING = ("second-order centred finite differences of the measured mean loss on the "
             "checkpoints' own ln T grid (numpy.gradient), no further smoothing; the first and "
             "last checkpoints are not targets")
IN_SAMPLE_LABEL = "identity check of fit quality, not evidence"


@dataclass(frozen=True)
class Options:
    n_bins: int = 40
    n_boot: int = 200
    kinds: tuple[str, ...] = DEFAULT_KINDS
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
            "k": df["k"].to_numpy().astype(float), "seq": df["seq_id"].to_numpy(),
            "kind": df["kind"].fill_null("missing").to_numpy().astype(str)}


def run_spectra(runs: list[RunData], edges: np.ndarray, opts: Options) -> SpectraResult:
    """Spectra (all tokens and every annotation slice) with bands, and the slice comparisons."""
    rows, spectra, comps = [], {}, {}
    for run in runs:
        if not run.has_fits:
            continue
        pop = run.population()
        a = _arrays(pop)
        inc = np.isin(a["kind"], opts.kinds)
        ng = len(np.unique(a["seq"]))
        W = bootstrap_weights(ng, opts.n_boot, opts.seed) if ng else None
        sp = compute_spectrum(a["tau"], a["delta"], a["seq"], edges, include=inc, weights=W)
        spectra[run.name] = sp
        rows.append(spectrum_rows(run.name, "all", "all", sp))
        slices = annotation_slices(pop, freq_buckets=opts.freq_buckets)
        for s in slices:
            m = s.mask
            ssp = compute_spectrum(a["tau"][m], a["delta"][m], a["seq"][m], edges,
                                   include=inc[m], n_boot=opts.n_boot, seed=opts.seed)
            rows.append(spectrum_rows(run.name, s.axis, s.name, ssp))
        comps[run.name] = slice_comparisons(a["tau"], a["delta"], a["seq"], a["kind"] == "learned",
                                            slices, n_boot=opts.n_boot, seed=opts.seed)
    table = pl.concat(rows) if rows else pl.DataFrame()
    return SpectraResult(table=table, spectra=spectra, comparisons=comps)


# ---------------------------------------------------------------------------------------------
# reconstruction tests

class _Collector:
    """Accumulates (prediction, measurement) targets per test/target/model, and prediction rows."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self.rows: list[pl.DataFrame] = []
        self.kinds: dict[tuple[str, str, str], str] = {}

    def add(self, test: str, target: str, model: str, kind: str, run: str, x: np.ndarray,
            predicted: np.ndarray, measured: np.ndarray) -> None:
        x, p, m = (np.asarray(v, float).ravel() for v in (x, predicted, measured))
        self.pairs.setdefault((test, target, model), []).append((p, m))
        self.kinds[(test, target, model)] = kind
        n = len(x)
        self.rows.append(pl.DataFrame({
            "test": [test] * n, "target": [target] * n, "model": [model] * n,
            "model_kind": [kind] * n, "run": [run] * n, "x": x, "T": np.exp(x),
            "measured": m, "predicted": p}))

    def score(self, test: str, target: str, model: str) -> dict:
        got = self.pairs.get((test, target, model))
        if not got:
            return null_score("no targets")
        return score(np.concatenate([p for p, _ in got]), np.concatenate([m for _, m in got]))


def _own_power_law(x: np.ndarray, L: np.ndarray) -> PowerLaw | None:
    ok = np.isfinite(L)
    try:
        return fit_power_law(np.ones(ok.sum()), np.exp(x[ok]), L[ok], x_name="T",
                             fixed={"A": 0.0, "alpha": 0.0})
    except SpectrumError:
        return None


def _interior(d: np.ndarray) -> np.ndarray:
    return np.isfinite(d)


def _test_in_sample(runs: list[RunData], c: _Collector) -> None:
    for run in runs:
        if not run.has_fits:
            continue
        a = _arrays(run.population())
        Lh = mean_curve(a["lo"], a["hi"], a["tau"], a["k"], run.x)
        dLh = mean_derivative(a["lo"], a["hi"], a["tau"], a["k"], run.x)
        dL = measured_derivative(run.x, run.mean_loss)
        c.add("in_sample", "L", "fitted_sigmoids", "prediction", run.name, run.x, Lh, run.mean_loss)
        i = _interior(dL)
        c.add("in_sample", "dL/dlnT", "fitted_sigmoids", "prediction", run.name, run.x[i], dLh[i],
              dL[i])


def _test_spectrum_only(runs: list[RunData], spectra: dict[str, Spectrum], opts: Options,
                        c: _Collector) -> None:
    for run in runs:
        if run.name not in spectra:
            continue
        a = _arrays(run.population())
        inc = np.isin(a["kind"], opts.kinds)
        dL = measured_derivative(run.x, run.mean_loss)
        i = _interior(dL)
        sp = spectra[run.name]
        kern = mean_kernel(a["delta"][inc], a["k"][inc])
        c.add("spectrum_only", "dL/dlnT", "spectrum_sharp", "prediction", run.name, run.x[i],
              sharp_derivative(sp, run.x[i]), dL[i])
        c.add("spectrum_only", "dL/dlnT", "spectrum_kernel", "prediction", run.name, run.x[i],
              kernel_derivative(sp, kern, run.x[i]), dL[i])
        law = _own_power_law(run.x, run.mean_loss)
        if law is not None:
            c.add("spectrum_only", "dL/dlnT", "power_law_T_own_curve", "baseline", run.name,
                  run.x[i], law.dlnX(1.0, np.exp(run.x[i])), dL[i])


def _test_heldout_tokens(runs: list[RunData], edges: np.ndarray, opts: Options,
                         c: _Collector) -> None:
    for run in runs:
        if not run.has_fits:
            continue
        pop = run.population()
        a = _arrays(pop)
        half = pop["half"].to_numpy()
        inc = np.isin(a["kind"], opts.kinds)
        for src in (0, 1):
            m = half == src
            if not m.any() or not (~m).any():
                continue
            sp = compute_spectrum(a["tau"][m], a["delta"][m], a["seq"][m], edges,
                                  include=inc[m], n_boot=0)
            kern = mean_kernel(a["delta"][m & inc], a["k"][m & inc])
            dL = measured_derivative(run.x, run.half_loss[1 - src])
            i = _interior(dL)
            tag = f"{run.name}/half{src}->half{1 - src}"
            c.add("heldout_tokens", "dL/dlnT", "spectrum_sharp", "prediction", tag, run.x[i],
                  sharp_derivative(sp, run.x[i]), dL[i])
            c.add("heldout_tokens", "dL/dlnT", "spectrum_kernel", "prediction", tag, run.x[i],
                  kernel_derivative(sp, kern, run.x[i]), dL[i])
            law = _own_power_law(run.x, run.half_loss[src])
            if law is not None:
                c.add("heldout_tokens", "dL/dlnT", "power_law_T_other_half", "baseline", tag,
                      run.x[i], law.dlnX(1.0, np.exp(run.x[i])), dL[i])
            c.add("heldout_tokens", "dL/dlnT", "measured_other_half", "reference", tag, run.x[i],
                  measured_derivative(run.x, run.half_loss[src])[i], dL[i])


def _run_params(run: RunData) -> RunParams:
    t = run.tokens
    se_cols = [f"{q}_se" for q in ("lo", "hi", "tau", "k")]
    se = {c[:-3]: t[c].to_numpy().astype(float) for c in se_cols} \
        if all(c in t.columns for c in se_cols) else None
    return RunParams(name=run.name, lnM=float(np.log(run.M)), lnD=float(np.log(run.D)),
                     lo=t["lo"].to_numpy().astype(float), hi=t["hi"].to_numpy().astype(float),
                     tau=t["tau"].to_numpy().astype(float), k=t["k"].to_numpy().astype(float),
                     kind=t["kind"].fill_null("missing").to_numpy().astype(str),
                     x_first=float(run.x.min()), x_last=float(run.x.max()), se=se)


def _heldout_runs(runs: list[RunData], opts: Options, c: _Collector) -> tuple[str | None, dict]:
    """Runs the held-out-runs test; returns (reason it could not run or None, fitted models)."""
    fit = [r for r in runs if r.role == "fit" and r.has_fits]
    held = [r for r in runs if r.role == "heldout"]
    info: dict = {}
    if not held:
        return "the manifest has no heldout run with measured losses", info
    if not fit:
        return "no fit run has fits", info
    model = fit_param_model([_run_params(r) for r in fit], ridge=opts.ridge)
    info["param_model"] = {
        "axes": list(model.axes), "center": model.center,
        "fixed": {k: float(np.exp(v)) for k, v in model.fixed_values.items()},
        "population_coefficients": {q: [float(v) for v in b] for q, b in model.population.items()},
        "fit_runs": [r.name for r in fit]}
    # baselines fitted on the fit runs' aggregate curves
    Ms = np.concatenate([np.full(len(r.x), r.M) for r in fit])
    Ts = np.concatenate([np.exp(r.x) for r in fit])
    Ls = np.concatenate([r.mean_loss_all for r in fit])
    law_T = law_D = None
    try:
        law_T = fit_power_law(Ms, Ts, Ls, x_name="T")
        info["power_law_T"] = law_T.as_dict()
    except SpectrumError as e:
        info["power_law_T"] = {"reason": str(e)}
    finals = [(r.M, r.D, r.mean_loss_all[np.isfinite(r.mean_loss_all)][-1]) for r in fit
              if np.isfinite(r.mean_loss_all).any()]
    fM, fD, fL = (np.array(v) for v in zip(*finals)) if finals else (np.array([]),) * 3
    try:
        law_D = fit_power_law(fM, fD, fL, x_name="D")
    except SpectrumError as e:
        if law_T is not None:
            try:
                law_D = fit_power_law(fM, fD, fL, x_name="D",
                                      fixed={"alpha": law_T.alpha, "beta": law_T.beta})
            except SpectrumError as e2:
                info["power_law_D"] = {"reason": f"{e}; with exponents from the T form: {e2}"}
        else:
            info["power_law_D"] = {"reason": str(e)}
    if law_D is not None:
        info["power_law_D"] = law_D.as_dict()

    predicted: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def model_curve(r: RunData, x: np.ndarray) -> np.ndarray | None:
        try:
            p = model.predict(np.log(r.M), np.log(r.D), r.name)
        except SpectrumError:
            return None
        return mean_curve(p["lo"], p["hi"], p["tau"], p["k"], x)

    reasons = []
    for h in held:
        try:
            p = model.predict(np.log(h.M), np.log(h.D), h.name)
        except SpectrumError as e:
            reasons.append(str(e))
            continue
        Lh = mean_curve(p["lo"], p["hi"], p["tau"], p["k"], h.x)
        dLh = mean_derivative(p["lo"], p["hi"], p["tau"], p["k"], h.x)
        predicted[h.name] = (Lh, dLh)
        dL = measured_derivative(h.x, h.mean_loss_all)
        i = _interior(dL)
        c.add("heldout_runs", "L", "param_model", "prediction", h.name, h.x, Lh, h.mean_loss_all)
        c.add("heldout_runs", "dL/dlnT", "param_model", "prediction", h.name, h.x[i], dLh[i], dL[i])
        T = np.exp(h.x)
        if law_T is not None:
            c.add("heldout_runs", "L", "power_law_T", "baseline", h.name, h.x, law_T(h.M, T),
                  h.mean_loss_all)
            c.add("heldout_runs", "dL/dlnT", "power_law_T", "baseline", h.name, h.x[i],
                  law_T.dlnX(h.M, T[i]), dL[i])
        # derivatives across runs at matched T
        others = [r for r in runs if r.name != h.name and np.isfinite(r.mean_loss_all).sum() >= 2]
        if not others:
            continue
        lo_x = max(r.x.min() for r in others)
        hi_x = min(r.x.max() for r in others)
        xm = h.x[i & (h.x >= lo_x) & (h.x <= hi_x)]
        if xm.size == 0:
            reasons.append(f"run {h.name}: no checkpoint in the ln T range shared by all runs")
            continue
        meas = matched_gradient(xm, np.interp(xm, h.x, h.mean_loss_all),
                                [(np.interp(xm, r.x, r.mean_loss_all), np.log(r.M), np.log(r.D))
                                 for r in others], np.log(h.M), np.log(h.D))
        mc = [(model_curve(r, xm), np.log(r.M), np.log(r.D)) for r in others]
        mc = [t for t in mc if t[0] is not None]
        pred = matched_gradient(xm, mean_curve(p["lo"], p["hi"], p["tau"], p["k"], xm), mc,
                                np.log(h.M), np.log(h.D))
        preds = {"param_model": ("prediction", pred)}
        Tm = np.exp(xm)
        if law_T is not None:
            preds["power_law_T"] = ("baseline", matched_gradient(
                xm, law_T(h.M, Tm), [(law_T(r.M, Tm), np.log(r.M), np.log(r.D)) for r in others],
                np.log(h.M), np.log(h.D)))
        if law_D is not None:
            preds["power_law_D"] = ("baseline", matched_gradient(
                xm, np.full_like(xm, law_D(h.M, h.D)),
                [(np.full_like(xm, law_D(r.M, r.D)), np.log(r.M), np.log(r.D)) for r in others],
                np.log(h.M), np.log(h.D)))
        for axis, target in (("lnM", "dL/dlnM"), ("lnD", "dL/dlnD")):
            if meas[axis] is None:
                reasons.append(f"{target} at run {h.name}: no other run differs in "
                               f"{'M' if axis == 'lnM' else 'D'} independently of the other axis")
                continue
            for name, (kind, g) in preds.items():
                if g[axis] is not None:
                    c.add("heldout_runs", target, name, kind, h.name, xm, g[axis], meas[axis])
    return ("; ".join(reasons) if reasons else None), info


TESTS = {
    "in_sample": ("the mean of each run's fitted sigmoids (all its tokens with a finite fit) and the "
                  "derivative formula", "that run's measured mean loss L and dL/dlnT"),
    "spectrum_only": ("the run's amplitude-weighted spectrum S alone: sharp limit -S(x), and S "
                      "convolved with the mean sigmoid kernel",
                      "that run's measured dL/dlnT"),
    "heldout_tokens": ("the spectrum of one half of the sequences (random half by sequence id)",
                       "the measured dL/dlnT of the other half's tokens, both directions"),
    "heldout_runs": ("a per-token model of (lo, hi, tau, ln k) as linear functions of ln M and "
                     "ln D with shrinkage, fitted on the fit runs only",
                     "each heldout run's measured L(T) and dL/dlnT, and dL/dlnM, dL/dlnD at "
                     "matched T"),
}


def run_tests(runs: list[RunData], spectra: dict[str, Spectrum], edges: np.ndarray,
              opts: Options) -> tuple[dict, pl.DataFrame]:
    """Every named test: (scores, predictions table)."""
    c = _Collector()
    has_fits = any(r.has_fits for r in runs)
    _test_in_sample(runs, c)
    _test_spectrum_only(runs, spectra, opts, c)
    _test_heldout_tokens(runs, edges, opts, c)
    hr_reason, models = _heldout_runs(runs, opts, c)
    test_reason = {
        "in_sample": None if has_fits else "no run has fits",
        "spectrum_only": None if spectra else "no run has a spectrum (no fits)",
        "heldout_tokens": None if has_fits else "no run has fits",
        "heldout_runs": hr_reason,
    }
    targets = {"in_sample": ("L", "dL/dlnT"), "spectrum_only": ("dL/dlnT",),
               "heldout_tokens": ("dL/dlnT",),
               "heldout_runs": ("L", "dL/dlnT", "dL/dlnM", "dL/dlnD")}
    tests = {}
    for test, (frm, tgt) in TESTS.items():
        entry: dict = {"predicted_from": frm, "targets_described": tgt, "targets": {}}
        if test == "in_sample":
            entry["label"] = IN_SAMPLE_LABEL
        for target in targets[test]:
            models_here = sorted((m, k) for (t, g, m), k in c.kinds.items()
                                 if t == test and g == target)
            block: dict = {"predictions": {}, "baselines": {}, "references": {}}
            for m, k in models_here:
                group = {"prediction": "predictions", "baseline": "baselines"}.get(k, "references")
                block[group][m] = c.score(test, target, m)
            if not block["predictions"]:
                why = test_reason[test] or hr_reason or "no targets"
                block["predictions"]["param_model" if test == "heldout_runs" else "-"] = \
                    null_score(why)
            entry["targets"][target] = block
        entry["reason"] = test_reason[test]
        tests[test] = entry
    scores = {"tests": tests, "settings": {**opts.as_dict(), "measured_derivative": SMOOTHING,
                                           "derivatives": "with respect to ln T, ln M, ln D"},
              "fitted": models}
    preds = pl.concat(c.rows) if c.rows else pl.DataFrame(
        schema={"test": pl.Utf8, "target": pl.Utf8, "model": pl.Utf8, "model_kind": pl.Utf8,
                "run": pl.Utf8, "x": pl.Float64, "T": pl.Float64, "measured": pl.Float64,
                "predicted": pl.Float64})
    return scores, preds

