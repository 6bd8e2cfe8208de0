"""The per-token models of the held-out-run tests, fitted and evaluated over token chunks.

Each token's model (:mod:`spectrum.analysis.heldout.param_model`; the token power law of
:mod:`spectrum.analysis.heldout.baselines`) depends on that token's fits in the fit runs and on the
population regression it is shrunk towards. The population regression needs only per-run sums (the
summed weights and weighted values of each quantity in each run), so a first pass over the fit runs'
tokens gathers them; a second pass reads the same chunk of every fit run, solves each token's
coefficients, predicts its curve in every target run and adds it to per-sequence sums. Memory: one
chunk of every fit run; the chunk shrinks as the fit runs grow in number.

A *job* is one set of fit runs with the runs it predicts: the held-out test is one job, and
leave-one-run-out one job per fit run, all evaluated in the same two passes (each pass reads every
fit run's tokens once). The two passes are token passes (:class:`PopulationPass`,
:class:`PredictionPass`; :mod:`spectrum.analysis.runs.token_passes`): a mapper may cut them into
token ranges, and the second is sent the population regressions fitted from the first's sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from spectrum.analysis.heldout import baselines
from spectrum.analysis.heldout.param_model import (PopulationModel, QUANTITIES, RunParams,
                                                   observations, step_k_range)
from spectrum.analysis.runs.curves import SeqCurve, midpoints, sequence_indicator
from spectrum.analysis.runs.run_data import RunData
from spectrum.analysis.runs.token_passes import Mapper, in_process
from spectrum.errors import SpectrumError
from spectrum.fit.kinds import STEP_KINDS
from spectrum.fit.model import PARAMS, token_curves, token_slopes

PREDICTION = "param_model"
ANALYTIC = "param_model_analytic"
SMOOTH = "token_power_law"
SE_COLUMNS = tuple(f"{q}_se" for q in PARAMS)


@dataclass(frozen=True)
class Job:
    fit: list[RunData]
    targets: list[RunData]


@dataclass
class TokenPredictions:
    """One job's per-token models: each target's predicted curves (model -> run -> (R, K)), the
    analytic derivatives (run -> (R, K_scored - 1)), what was fitted, why a target was not."""

    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    analytic: dict[str, np.ndarray] = field(default_factory=dict)
    fitted: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def _columns(run: RunData) -> tuple[list[str], bool, bool]:
    names = run.columns()
    se = set(SE_COLUMNS) <= names
    power = set(baselines.POWER_COLUMNS) <= names
    return ([*PARAMS, "kind", *(SE_COLUMNS if se else ()),
             *(baselines.POWER_COLUMNS if power else ())], se, power)


def _params(run: RunData, ch: pl.DataFrame, se: bool) -> RunParams:
    a = {c: ch[c].to_numpy().astype(float) for c in (*PARAMS, *(SE_COLUMNS if se else ()))}
    return RunParams(name=run.name, lnM=float(np.log(run.M)), lnD=float(np.log(run.D)),
                     lo=a["lo"], hi=a["hi"], tau=a["tau"], k=a["k"],
                     kind=ch["kind"].to_numpy().astype(str), x_first=float(run.x.min()),
                     x_last=float(run.x.max()),
                     se={c[:-3]: a[c] for c in SE_COLUMNS} if se else None)


class _Reader:
    """The same token chunk of every fit run, each run's fits as model observations."""

    def __init__(self, runs: list[RunData]) -> None:
        self.runs = runs
        self.cols = {r.name: _columns(r) for r in runs}
        base = min(r.chunk for r in runs)
        self.chunk = max(1, base * 8 // max(len(runs), 8))

    def chunks(self, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[np.ndarray, dict[str, pl.DataFrame], dict[str, dict]]]:
        """(seq_code, frames, observations) per chunk of the tokens ``start <= token_idx <
        stop``; observations: run -> quantity -> (y, w) of that run alone, each (n, 1)."""
        iters = [r.token_chunks(self.cols[r.name][0], chunk=self.chunk, start=start, stop=stop)
                 for r in self.runs]
        for parts in zip(*iters):
            frames = {r.name: p for r, p in zip(self.runs, parts)}
            obs = {r.name: observations([_params(r, frames[r.name], self.cols[r.name][1])],
                                        STEP_KINDS) for r in self.runs}
            yield parts[0]["seq_code"].to_numpy(), frames, obs


class _SeqSums:
    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], list] = {}

    def add(self, model: str, run: str, ind, values: np.ndarray) -> None:
        v = np.asarray(values, float)
        ok = np.isfinite(v)
        self._put((model, run), [ind @ np.where(ok, v, 0.0), ind @ ok.astype(float)])

    def _put(self, key: tuple[str, str], sc: list) -> None:
        got = self.sums.get(key)
        self.sums[key] = sc if got is None else [got[0] + sc[0], got[1] + sc[1]]

    def merge(self, other: "_SeqSums") -> "_SeqSums":
        for key, sc in other.sums.items():
            self._put(key, sc)
        return self

    def draw(self, model: str, run: str, weights: np.ndarray) -> np.ndarray | None:
        got = self.sums.get((model, run))
        return None if got is None else SeqCurve(np.asarray(got[0]),
                                                 np.asarray(got[1])).draw(weights)


def _stack(obs: dict[str, dict], fit: list[RunData]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {q: (np.concatenate([obs[r.name][q][0] for r in fit], 1),
                np.concatenate([obs[r.name][q][1] for r in fit], 1)) for q in QUANTITIES}


def _power_obs(frames: dict[str, pl.DataFrame], fit: list[RunData], anchors: np.ndarray) -> dict:
    per = [baselines.power_law_observations(
        {c: frames[r.name][c].to_numpy() for c in baselines.POWER_COLUMNS}, anchors) for r in fit]
    return {q: (np.stack([o[q][0] for o in per], 1), np.stack([o[q][1] for o in per], 1))
            for q in per[0]}


@dataclass
class _Fitted:
    job: Job
    params: PopulationModel
    smooth: PopulationModel | None
    anchors: np.ndarray
    targets: list[RunData]


@dataclass
class _PopulationSums:
    """Per fit run: the summed weights and weighted values of every quantity, those of each
    job's power-law anchors (job index, run) and the range of k of its step tokens."""

    sums: dict[str, dict[str, np.ndarray]]
    psums: dict[tuple[int, str], dict[str, np.ndarray]]
    k_ext: dict[str, list[float]]

    def merge(self, other: "_PopulationSums") -> "_PopulationSums":
        for mine, theirs in ((self.sums, other.sums), (self.psums, other.psums)):
            for key, qs in theirs.items():
                for q, v in qs.items():
                    mine[key][q] = mine[key][q] + v
        for run, (lo, hi) in other.k_ext.items():
            a, b = self.k_ext.get(run, [np.inf, -np.inf])
            self.k_ext[run] = [min(a, lo), max(b, hi)]
        return self


@dataclass(frozen=True)
class PopulationPass:
    """The first pass of the token models (a token pass, :mod:`spectrum.analysis.runs.token_passes`): the per-run sums
    their population regressions are fitted on."""

    jobs: list[Job]
    n_tokens: int

    def __call__(self, start: int, stop: int) -> _PopulationSums:
        reader = _Reader(_fit_runs(self.jobs))
        power = [_has_power(j) for j in self.jobs]
        anchors = [_anchors(j) for j in self.jobs]
        sums = {r.name: {q: np.zeros(2) for q in QUANTITIES} for r in reader.runs}
        psums = {(i, r.name): {f"v{j}": np.zeros(2) for j in range(3)}
                 for i, job in enumerate(self.jobs) if power[i] for r in job.fit}
        k_ext: dict[str, list[float]] = {}
        for _, frames, obs in reader.chunks(start, stop):
            for r in reader.runs:
                for q, (y, w) in obs[r.name].items():
                    sums[r.name][q] += (w.sum(), (w * y).sum())
                kr = step_k_range([_params(r, frames[r.name], False)])
                if kr is not None:
                    lo, hi = k_ext.get(r.name, [np.inf, -np.inf])
                    k_ext[r.name] = [min(lo, kr[0]), max(hi, kr[1])]
            for i, job in enumerate(self.jobs):
                if power[i]:
                    for r in job.fit:
                        for q, (y, w) in _power_obs(frames, [r], anchors[i]).items():
                            psums[(i, r.name)][q] += (w.sum(), (w * y).sum())
        return _PopulationSums(sums, psums, k_ext)

    def combine(self, parts: Sequence[_PopulationSums]) -> _PopulationSums:
        total = parts[0]
        for p in parts[1:]:
            total.merge(p)
        return total


def _fit_runs(jobs: list[Job]) -> list[RunData]:
    return list({r.name: r for j in jobs for r in j.fit}.values())


def _has_power(job: Job) -> bool:
    """Whether every fit run's fits hold the columns of the token power law."""
    return all(_columns(r)[2] for r in job.fit)


def _anchors(job: Job) -> np.ndarray:
    return baselines.power_law_anchors(job.fit) if _has_power(job) else np.zeros(0)


def _fit_populations(jobs: list[Job], got: _PopulationSums, ridge: float) -> list[_Fitted]:
    """Each job's population regressions from the first pass's sums."""
    out = []
    for i, job in enumerate(jobs):
        power = _has_power(job)
        lnM = np.array([np.log(r.M) for r in job.fit])
        lnD = np.array([np.log(r.D) for r in job.fit])
        ext = [got.k_ext[r.name] for r in job.fit if r.name in got.k_ext]
        k_range = (min(e[0] for e in ext), max(e[1] for e in ext)) if ext else (1e-3, 1e3)
        params = PopulationModel.from_sums(
            lnM, lnD, {q: (np.array([got.sums[r.name][q][0] for r in job.fit]),
                           np.array([got.sums[r.name][q][1] for r in job.fit])) for q in QUANTITIES},
            ridge=ridge, k_range=k_range)
        smooth = PopulationModel.from_sums(
            lnM, lnD, {q: (np.array([got.psums[(i, r.name)][q][0] for r in job.fit]),
                           np.array([got.psums[(i, r.name)][q][1] for r in job.fit]))
                       for q in ("v0", "v1", "v2")}, ridge=ridge) if power else None
        out.append(_Fitted(job, params, smooth, _anchors(job), []))
    return out


@dataclass(frozen=True)
class PredictionPass:
    """The second pass of the token models (a token pass): each token's coefficients solved
    against its job's population regression (``fitted``, from the first pass), its predicted
    curves in every target run added to per-sequence sums; one :class:`_SeqSums` per job."""

    fitted: list[_Fitted]
    n_tokens: int

    def __call__(self, start: int, stop: int) -> list[_SeqSums]:
        reader = _Reader(_fit_runs([f.job for f in self.fitted]))
        n_seq = len(reader.runs[0].seq_ids)
        acc = [_SeqSums() for _ in self.fitted]
        for codes, frames, obs in reader.chunks(start, stop):
            ind = sequence_indicator(codes, n_seq)
            for f, sums in zip(self.fitted, acc):
                if f.targets:
                    _predict_chunk(f, sums, ind, frames, obs)
        return acc

    def combine(self, parts: Sequence[list[_SeqSums]]) -> list[_SeqSums]:
        total = parts[0]
        for p in parts[1:]:
            for mine, theirs in zip(total, p):
                mine.merge(theirs)
        return total


def _predict_chunk(f: _Fitted, sums: _SeqSums, ind, frames: dict[str, pl.DataFrame],
                   obs: dict[str, dict]) -> None:
    model = f.params.model(_stack(obs, f.job.fit))
    smooth = f.smooth.model(_power_obs(frames, f.job.fit, f.anchors)) \
        if f.smooth is not None else None
    for h in f.targets:
        p = model.predict(np.log(h.M), np.log(h.D), h.name)
        sums.add(PREDICTION, h.name, ind, token_curves(p["lo"], p["hi"], p["tau"], p["k"], h.x))
        xm = midpoints(h.x[h.scored])
        if len(xm):
            sums.add(ANALYTIC, h.name, ind,
                     token_slopes(p["lo"], p["hi"], p["tau"], p["k"], xm))
        if smooth is not None:
            q = smooth.predict_quantities(np.log(h.M), np.log(h.D), h.name)
            sums.add(SMOOTH, h.name, ind, baselines.token_power_law_values(q, f.anchors, h.x))


def _describe(f: _Fitted, pred: TokenPredictions) -> None:
    d = f.params.design
    pred.fitted["param_model"] = {
        "axes": list(d.axes), "center": d.center,
        "fixed": {k: float(np.exp(v)) for k, v in d.fixed.items()},
        "population_coefficients": {q: [float(v) for v in b] for q, b in f.params.population.items()},
        "fit_runs": [r.name for r in f.job.fit]}
    if f.smooth is None:
        pred.fitted[SMOOTH] = {"reason": "the fits lack the power-law columns "
                                         "(refit with `spectrum fit --force`)"}
    empty = f.params.model({})
    for h in f.job.targets:
        try:
            empty._design(np.log(h.M), np.log(h.D), h.name)
        except SpectrumError as e:
            pred.reasons.append(str(e))
            continue
        f.targets.append(h)


def _light(jobs: list[Job]) -> list[Job]:
    return [Job([r.light() for r in j.fit], [r.light() for r in j.targets]) for j in jobs]


def token_model_predictions(jobs: list[Job], weights: np.ndarray, ridge: float,
                            mapper: Mapper = in_process) -> list[TokenPredictions]:
    """Every job's per-token model curves of its targets (module docstring); the two passes run
    through ``mapper`` (:mod:`spectrum.analysis.runs.token_passes`)."""
    runs = _fit_runs(jobs)
    if not runs:
        raise SpectrumError("no fit runs to model token parameters on")
    light = _light(jobs)
    [got] = mapper([PopulationPass(light, runs[0].n_tokens)])
    fitted = _fit_populations(light, got, ridge)
    preds = [TokenPredictions() for _ in jobs]
    for f, pred in zip(fitted, preds):
        _describe(f, pred)
    [acc] = mapper([PredictionPass(fitted, runs[0].n_tokens)])
    for f, sums, pred in zip(fitted, acc, preds):
        for h in f.targets:
            for model in (PREDICTION, SMOOTH):
                drawn = sums.draw(model, h.name, weights)
                if drawn is not None:
                    pred.curves.setdefault(model, {})[h.name] = drawn
            drawn = sums.draw(ANALYTIC, h.name, weights)
            if drawn is not None:
                pred.analytic[h.name] = drawn
    return preds
