"""Curriculum weights: reweight training data by *when* its tokens become learnable.

Three steps, each a pure function of tables:

1. :func:`phase_schedule` cuts a target run into ``P`` phases: equal bins of ``x = ln T``
   (``T`` = tokens seen = step x tokens per step) between step 1 (or the end of the warmup) and
   the last step. Phase ``p``
   covers the optimizer steps ``[step_start[p], step_end[p])``; phase 0 starts at step 0.
2. :func:`learnability` aggregates per-token sigmoid fits (``lo, hi, tau, k`` of
   ``l(x) = lo + (hi - lo) * sigmoid(-k (x - tau))``, measured on sequences of the *training*
   split) per sequence and per document. A token's loss curve starts at its measured loss at the
   run's first checkpoint (step 0), follows the fitted sigmoid from the first fitted checkpoint on,
   is held at the sigmoid's value there before it (nothing earlier was fitted) and never exceeds
   the measured start: the loss it sheds inside phase ``p`` is the fall of that curve across the
   phase (:func:`token_phase_shed`). The sigmoid's upper asymptote, an extrapolation, is never
   used, and the total shed is at most the measured initial loss. The first phase is open to the
   left, so what is learned before its right edge (the warmup included) counts in phase 0; loss
   still unlearned at the end of the run is reported as ``shed_beyond`` and in no phase. Per
   sequence: the mean shed per token in each phase (averaged over the fitted runs), the share of
   the sequence's shed loss in each phase, and the amplitude-weighted mean learning time
   ``tau_mean = sum(delta * tau) / sum(delta)`` (``delta``: a token's total shed).
3. :func:`phase_weights` turns the shed per phase into weights: ``w = floor + (1 - floor) *
   shed / mean(shed)`` per phase, a mixture of the learnability profile with uniform sampling.
   Weights are finite and ``>= floor`` (no item is ever excluded), and **each phase's weights
   have mean 1 over the exported items**: as sampling weights (probability proportional to ``w``)
   and as per-token loss multipliers they keep the loss on its usual scale. A phase in which no
   item sheds any loss gets uniform weights.

The export (``weights.parquet`` per sequence, keyed by ``doc_id`` and ``seq_id``;
``documents.parquet`` per document; ``phases.json`` and a README) is written by
:mod:`spectrum.curriculum.corpus_export` for every sequence of a corpus;
:class:`CurriculumWeights` reads it back and :meth:`CurriculumWeights.align` maps it onto a
target dataset, reporting ids the dataset lacks instead of dropping them silently.
:mod:`spectrum.curriculum.sampling` applies the weights in a training loop.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from spectrum.errors import SpectrumError

#: fit kinds whose sigmoid describes the trajectory; other kinds (forgotten, nonmonotone) shed nothing
USABLE_KINDS = ("learned", "flat", "unfinished")
WEIGHTS_FILE = "weights.parquet"
DOCUMENTS_FILE = "documents.parquet"
PHASES_FILE = "phases.json"


# --------------------------------------------------------------------------------------------
# phases of the target run


@dataclass(frozen=True)
class Phases:
    """The phases of a target run: equal bins of ``x = ln T`` over its schedule.

    ``x_edges`` (P+1) are in ln tokens; ``step_edges`` (P+1) are the optimizer steps at which each
    phase starts, with ``step_edges[0] = 0`` and ``step_edges[-1] = target_steps``.
    """

    target_steps: int
    tokens_per_step: int
    x_edges: tuple[float, ...]
    step_edges: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.step_edges) - 1

    @property
    def step_starts(self) -> np.ndarray:
        return np.asarray(self.step_edges[:-1], dtype=np.int64)

    def phase_of(self, step: int | np.ndarray) -> int | np.ndarray:
        """The phase that optimizer step ``step`` (0-based) belongs to; steps past the end are in the last."""
        p = np.searchsorted(np.asarray(self.step_edges[1:-1]), step, side="right")
        return int(p) if np.ndim(p) == 0 else p

    def rows(self) -> list[dict[str, Any]]:
        """One record per phase: steps, tokens and ln-token bounds (what phases.json holds)."""
        tps = self.tokens_per_step
        return [{"phase": p, "step_start": self.step_edges[p], "step_end": self.step_edges[p + 1],
                 "tokens_start": self.step_edges[p] * tps, "tokens_end": self.step_edges[p + 1] * tps,
                 "x_start": None if p == 0 else self.x_edges[p], "x_end": self.x_edges[p + 1]}
                for p in range(self.n)]

    def to_dict(self) -> dict[str, Any]:
        return {"target_steps": self.target_steps, "tokens_per_step": self.tokens_per_step,
                "x_edges": list(self.x_edges), "step_edges": list(self.step_edges),
                "phases": self.rows()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phases":
        return cls(int(d["target_steps"]), int(d["tokens_per_step"]),
                   tuple(float(v) for v in d["x_edges"]), tuple(int(v) for v in d["step_edges"]))


def phase_schedule(target_steps: int, tokens_per_step: int, n_phases: int,
                   first_step: int = 1) -> Phases:
    """Cut a run of ``target_steps`` steps into ``n_phases`` equal bins of ln T (see the module doc).

    The bins span ``ln T`` from step ``first_step`` (default 1; the end of the learning-rate
    warmup keeps the early phases out of it) to the last step; phase 0 also holds the steps before
    ``first_step``. Step edges are rounded to whole steps; where rounding would leave a phase empty (short runs)
    the edges are pushed apart so that every phase holds at least one step.
    """
    if target_steps < 1 or tokens_per_step < 1:
        raise SpectrumError(f"target steps ({target_steps}) and tokens per step ({tokens_per_step}) "
                            "must be positive")
    if not 1 <= n_phases <= target_steps:
        raise SpectrumError(f"--phases must be between 1 and the target steps ({target_steps}), "
                            f"got {n_phases}")
    if not 1 <= first_step < target_steps and n_phases > 1:
        raise SpectrumError(f"the first phase edge step must be between 1 and the target steps "
                            f"({target_steps}), got {first_step}")
    x_edges = np.linspace(math.log(first_step * tokens_per_step),
                          math.log(target_steps * tokens_per_step),
                          n_phases + 1)
    steps = np.rint(np.exp(x_edges) / tokens_per_step).astype(np.int64)
    steps[0], steps[-1] = 0, target_steps
    for i in range(1, n_phases):  # at least one step per phase, from the left ...
        steps[i] = max(steps[i], steps[i - 1] + 1)
    for i in range(n_phases - 1, 0, -1):  # ... and from the right
        steps[i] = min(steps[i], steps[i + 1] - 1)
    # the x edges follow the steps actually used (phase 0 stays open to the left)
    x = np.log(np.maximum(steps, 1) * float(tokens_per_step))
    x[0] = x_edges[0]
    return Phases(int(target_steps), int(tokens_per_step), tuple(float(v) for v in x),
                  tuple(int(v) for v in steps))


# --------------------------------------------------------------------------------------------
# learnability from sigmoid fits


def token_phase_shed(lo: np.ndarray, hi: np.ndarray, tau: np.ndarray, k: np.ndarray,
                     phases: Phases, *, x_first: float | None = None,
                     initial: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss shed by each token in each phase, ``(N, P)``, and the loss left after the run, ``(N,)``.

    The token's loss curve is the fitted sigmoid ``f(x) = lo + delta * s(x)``, ``delta =
    max(hi - lo, 0)``, ``s(x) = sigmoid(-k (x - tau))``, read only where it was measured:

    - ``x_first`` (ln T of the run's first fitted checkpoint): before it nothing was fitted, so
      the curve is held at ``f(x_first)`` there; the asymptote ``hi`` (an extrapolation whenever
      tau lies before the checkpoints or the slope is shallow) is never used;
    - ``initial`` (the token's measured loss at the run's first checkpoint, step 0 where there is
      one): the curve starts there (before phase 0) and never exceeds it, so what is shed before
      the first fitted checkpoint (the warmup) counts in phase 0 and the total shed is at most
      the initial loss.

    Without either, the curve starts at ``hi`` (the sigmoid as fitted). The shed in phase ``p``
    is ``c(x_p) - c(x_{p+1})`` of that curve ``c`` (never negative), with ``x_0 = -inf``.
    Non-finite parameters shed nothing (zeros).
    """
    from spectrum.fit.model import token_curves

    lo, hi, tau, k = (np.asarray(a, dtype=np.float64) for a in (lo, hi, tau, k))
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(tau) & np.isfinite(k)
    lo0, tt, kk = np.where(ok, lo, 0.0), np.where(ok, tau, 0.0), np.where(ok, k, 0.0)
    delta = np.where(ok, np.clip(hi - lo, 0.0, None), 0.0)
    x = np.asarray(phases.x_edges[1:], dtype=np.float64)  # right edges
    if x_first is not None:
        x = np.maximum(x, x_first)
    hi0 = lo0 + delta
    curve = token_curves(lo0, hi0, tt, kk, x)  # (N, P): the curve at each phase's right edge
    start = hi0 if x_first is None else token_curves(lo0, hi0, tt, kk, np.array([x_first]))[:, 0]
    if initial is not None:
        measured = np.asarray(initial, dtype=np.float64)
        start = np.where(np.isfinite(measured), measured, start)
    curve = np.minimum(curve, start[:, None])
    left = np.concatenate([start[:, None], curve[:, :-1]], axis=1)
    shed = np.where(ok[:, None], np.clip(left - curve, 0.0, None), 0.0)
    beyond = np.where(ok, np.clip(curve[:, -1] - np.minimum(lo0, start), 0.0, None), 0.0)
    return shed, beyond


@dataclass
class Learnability:
    """Per-sequence and per-document learnability of training data (see the module doc)."""

    phases: Phases
    sequences: pl.DataFrame  # seq_id, doc_id, n_tokens, n_fitted, delta_mean, tau_mean, shed_p*, share_p*, shed_beyond
    documents: pl.DataFrame  # doc_id, n_sequences, n_tokens, ... same columns
    runs: tuple[str, ...] = ()
    run_shed: np.ndarray | None = None  # (runs, sequences, P): each run's mean shed per sequence
    per_token: pl.DataFrame | None = None  # token_shed's table, which the sequences aggregate

    def shed(self, level: str = "sequences") -> np.ndarray:
        df = self.sequences if level == "sequences" else self.documents
        return df.select(shed_columns(self.phases.n)).to_numpy().astype(np.float64)


def shed_columns(n: int) -> list[str]:
    return [f"shed_p{p}" for p in range(n)]


def weight_columns(n: int) -> list[str]:
    return [f"w_phase{p}" for p in range(n)]


def run_token_shed(tokens: pl.DataFrame, fit: pl.DataFrame, phases: Phases, *,
                   usable_kinds: Sequence[str] = USABLE_KINDS, x_first: float | None = None,
                   initial: pl.DataFrame | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One run's :func:`token_phase_shed` for the tokens of ``tokens`` (in their row order):
    ``shed (N, P)``, ``beyond``, ``delta`` (the total shed), ``ok`` (a usable fit) and ``tau``.
    ``initial``: the run's measured loss per token at its first checkpoint (``token_idx, loss``)."""
    f = tokens.select("token_idx").join(fit, on="token_idx", how="left", maintain_order="left")
    lo, hi, tau, k = (f[c].to_numpy().astype(np.float64) for c in ("lo", "hi", "tau", "k"))
    if "kind" in f.columns:
        usable = f["kind"].is_in(list(usable_kinds)).fill_null(False).to_numpy()
        lo, hi, tau, k = (np.where(usable, a, np.nan) for a in (lo, hi, tau, k))
    start = None
    if initial is not None:
        start = (tokens.select("token_idx").join(initial, on="token_idx", how="left",
                                                 maintain_order="left")["loss"]
                 .cast(pl.Float64).fill_null(np.nan).to_numpy())
    shed, beyond = token_phase_shed(lo, hi, tau, k, phases, x_first=x_first, initial=start)
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(tau) & np.isfinite(k)
    return shed, beyond, shed.sum(1) + beyond, ok, tau


def token_shed(tokens: pl.DataFrame, fits: dict[str, pl.DataFrame], phases: Phases, *,
               usable_kinds: Sequence[str] = USABLE_KINDS,
               x_first: dict[str, float] | None = None,
               initial: dict[str, pl.DataFrame] | None = None,
               per_run: list[np.ndarray] | None = None) -> pl.DataFrame:
    """Per token (in ``token_idx`` order): ``token_idx, seq_id, doc_id``, the shed per phase ``s0..s{P-1}``,
    ``beyond``, ``delta`` (the total shed), ``dtau`` (delta * tau) and ``fitted`` (runs with a
    usable fit), each averaged over the runs of ``fits`` (see :func:`learnability`).
    ``x_first`` (per run, ln T of its first fitted checkpoint) and ``initial`` (per run, the
    measured loss of each token at its first checkpoint): see :func:`token_phase_shed`.
    ``per_run``: a list that receives each run's ``(N, P)`` shed, in the order of ``fits``."""
    if not fits:
        raise SpectrumError("curriculum: no fitted runs to measure learnability from")
    tokens = tokens.select("token_idx", "seq_id", "doc_id").sort("token_idx")
    n, P = tokens.height, phases.n
    shed_sum, beyond_sum, dtau_sum, delta_sum = np.zeros((n, P)), np.zeros(n), np.zeros(n), np.zeros(n)
    fitted = np.zeros(n, dtype=np.int64)
    for run, f in fits.items():
        shed, beyond, delta, ok, tau = run_token_shed(
            tokens, f, phases, usable_kinds=usable_kinds, x_first=(x_first or {}).get(run),
            initial=(initial or {}).get(run))
        if per_run is not None:
            per_run.append(shed)
        shed_sum += shed
        beyond_sum += beyond
        dtau_sum += np.where(ok, delta * np.nan_to_num(tau), 0.0)
        delta_sum += delta
        fitted += ok
    R = len(fits)
    cols = {"token_idx": tokens["token_idx"], "seq_id": tokens["seq_id"], "doc_id": tokens["doc_id"],
            "fitted": pl.Series(fitted), "delta": pl.Series(delta_sum / R),
            "dtau": pl.Series(dtau_sum / R), "beyond": pl.Series(beyond_sum / R)}
    for p in range(P):
        cols[f"s{p}"] = pl.Series(shed_sum[:, p] / R)
    return pl.DataFrame(cols)


def learnability(tokens: pl.DataFrame, fits: dict[str, pl.DataFrame], phases: Phases, *,
                 usable_kinds: Sequence[str] = USABLE_KINDS,
                 x_first: dict[str, float] | None = None,
                 initial: dict[str, pl.DataFrame] | None = None) -> Learnability:
    """Aggregate per-token fits of one or more runs into per-sequence and per-document learnability.

    ``tokens`` holds ``token_idx, seq_id, doc_id`` (the evalset's tokens.parquet); each of ``fits``
    (run name -> table) holds ``token_idx, lo, hi, tau, k`` and optionally ``kind``. A token's shed
    per phase is averaged over the runs; tokens without a usable fit count as shedding nothing (but
    still count in ``n_tokens``, so sequences are compared per token). ``x_first`` and
    ``initial``: see :func:`token_shed`. ``Learnability.run_shed`` keeps each run's mean shed per
    sequence (what the measurement's run-to-run noise is estimated from).
    """
    per_run: list[np.ndarray] = []
    per_token = token_shed(tokens, fits, phases, usable_kinds=usable_kinds, x_first=x_first,
                           initial=initial, per_run=per_run)
    P = phases.n
    seq = _aggregate(per_token, ["seq_id", "doc_id"], P).sort("seq_id")
    doc = _aggregate(per_token, ["doc_id"], P).sort("doc_id")
    doc = doc.join(seq.group_by("doc_id").agg(pl.len().alias("n_sequences")), on="doc_id",
                   maintain_order="left")
    index = np.searchsorted(seq["seq_id"].to_numpy(), per_token["seq_id"].to_numpy())
    run_shed = np.stack([sequence_means(s, index, seq.height) for s in per_run])
    return Learnability(phases, seq, doc, tuple(fits), run_shed, per_token)


def sequence_means(values: np.ndarray, seq_index: np.ndarray, n_seq: int) -> np.ndarray:
    """``(n_seq, P)``: the mean of the rows of ``values`` (N, P) over each sequence (``seq_index``,
    0..n_seq-1, per row); 0 for a sequence without rows."""
    out = np.zeros((n_seq, values.shape[1]))
    np.add.at(out, seq_index, values)
    return out / np.maximum(np.bincount(seq_index, minlength=n_seq), 1)[:, None]


def weights_hash(weights: np.ndarray) -> str:
    """A short hash of a weight matrix (float64, row-major): what results quote to name it."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float64).tobytes()).hexdigest()[:16]


def _aggregate(per_token: pl.DataFrame, keys: list[str], P: int) -> pl.DataFrame:
    total = pl.sum_horizontal([pl.col(f"shed_p{p}") for p in range(P)])
    agg = per_token.group_by(keys).agg(
        pl.len().alias("n_tokens"),
        pl.col("fitted").sum().alias("n_fitted"),
        pl.col("delta").mean().alias("delta_mean"),
        (pl.col("dtau").sum() / pl.col("delta").sum()).alias("tau_mean"),
        *[pl.col(f"s{p}").mean().alias(f"shed_p{p}") for p in range(P)],
        pl.col("beyond").mean().alias("shed_beyond"),
    )
    return agg.with_columns(
        pl.when(pl.col("delta_mean") > 0).then(pl.col("tau_mean")).otherwise(None).alias("tau_mean"),
        *[pl.when(total > 0).then(pl.col(f"shed_p{p}") / total).otherwise(0.0).alias(f"share_p{p}")
          for p in range(P)],
    )


# --------------------------------------------------------------------------------------------
# weights


def phase_weights(shed: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """Weights ``(n, P)`` from the loss shed per phase: ``floor + (1 - floor) * shed / mean(shed)``.

    Each column has mean 1; every weight is finite and ``>= floor``. A column with no shed loss
    (or non-finite entries only) is uniform.
    """
    if not 0.0 < floor <= 1.0:
        raise SpectrumError(f"the weight floor must be in (0, 1], got {floor}")
    shed = np.nan_to_num(np.asarray(shed, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    shed = np.clip(shed, 0.0, None)
    if shed.ndim != 2 or shed.shape[0] == 0:
        raise SpectrumError("curriculum: no items to weight")
    mean = shed.mean(axis=0)
    rel = np.divide(shed, mean, out=np.ones_like(shed), where=mean > 0)
    w = floor + (1.0 - floor) * rel
    return w / w.mean(axis=0)  # exact mean 1 in floating point too


# --------------------------------------------------------------------------------------------
# the export: reading it back and aligning it to a dataset


@dataclass
class Alignment:
    """Export weights mapped onto the items of a target dataset.

    ``weights`` is ``(n_items, P)``. Items the export has no weight for get weight 1 (the mean) and
    are counted in ``unweighted_items``; export ids that the dataset lacks are listed in
    ``missing_ids`` (they are reported, not silently dropped).
    """

    weights: np.ndarray
    matched_items: int
    unweighted_items: int
    missing_ids: list[str]
    level: str
    export_ids: int = 0

    def report(self, examples: int = 10) -> dict[str, Any]:
        return {"level": self.level, "export_ids": self.export_ids,
                "matched_items": self.matched_items, "unweighted_items": self.unweighted_items,
                "missing_ids": len(self.missing_ids), "missing_examples": self.missing_ids[:examples]}

    def summary(self) -> str:
        r = self.report(5)
        line = (f"{r['matched_items']} dataset items weighted by {self.level} id, "
                f"{r['unweighted_items']} without a weight (weight 1)")
        if r["missing_ids"]:
            line += (f"; {r['missing_ids']} of the {r['export_ids']} exported {self.level} ids are not "
                     f"in the target dataset, e.g. {', '.join(map(str, r['missing_examples']))}")
        return line


@dataclass
class CurriculumWeights:
    """A curriculum export read back: phases and weights per sequence and per document."""

    phases: Phases
    sequences: pl.DataFrame
    documents: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> "CurriculumWeights":
        folder = Path(folder)
        paths = [folder / WEIGHTS_FILE, folder / DOCUMENTS_FILE, folder / PHASES_FILE]
        for p in paths:
            if not p.is_file():
                raise SpectrumError(f"{p}: curriculum export not found "
                                    "(run `spectrum export-curriculum` first)")
        phases = Phases.from_dict(json.loads(paths[2].read_text()))
        seq, doc = pl.read_parquet(paths[0]), pl.read_parquet(paths[1])
        cols = weight_columns(phases.n)
        for p, df in zip(paths, (seq, doc)):
            if missing := [c for c in cols if c not in df.columns]:
                raise SpectrumError(f"{p}: missing weight columns {missing} for the {phases.n} phases "
                                    f"of {paths[2]}")
        meta = json.loads((pq.read_schema(paths[0]).metadata or {}).get(
            b"token_spectrum.provenance", b"{}"))
        return cls(phases, seq, doc, meta)

    def weight_matrix(self, level: str = "sequences") -> np.ndarray:
        df = self.sequences if level == "sequences" else self.documents
        return df.select(weight_columns(self.phases.n)).to_numpy().astype(np.float64)

    def align(self, doc_ids: Sequence[Any], seq_ids: Sequence[Any] | None = None) -> Alignment:
        """Weights for the items of a target dataset, matched by ``seq_id`` (with its ``doc_id``)
        when ``seq_ids`` is given, else by ``doc_id`` (every item of a document gets its weights).
        """
        P = self.phases.n
        if seq_ids is not None:
            if len(seq_ids) != len(doc_ids):
                raise SpectrumError("curriculum: doc_ids and seq_ids of the target dataset differ "
                                    f"in length ({len(doc_ids)} vs {len(seq_ids)})")
            keys = list(zip(map(str, doc_ids), map(int, seq_ids)))
            table = self.sequences
            export_keys = list(zip(table["doc_id"].cast(pl.String).to_list(),
                                   table["seq_id"].to_list()))
            level = "sequence"
        else:
            keys = [str(d) for d in doc_ids]
            table = self.documents
            export_keys = table["doc_id"].cast(pl.String).to_list()
            level = "document"
        w_export = table.select(weight_columns(P)).to_numpy().astype(np.float64)
        row = {k: i for i, k in enumerate(export_keys)}
        pos = np.array([row.get(k, -1) for k in keys], dtype=np.int64)
        w = np.ones((len(keys), P))
        hit = pos >= 0
        w[hit] = w_export[pos[hit]]
        present = set(keys)
        missing = [k if isinstance(k, str) else f"{k[0]}#{k[1]}" for k in export_keys
                   if k not in present]
        return Alignment(w, int(hit.sum()), int((~hit).sum()), missing, level, len(export_keys))


# --------------------------------------------------------------------------------------------
# README of the export


def _fmt_x(x: float | None) -> str:
    return "-inf" if x is None else f"{x:.3f}"


def readme_text(learn: Learnability, floor: float, extra: str = "") -> str:
    """The export's README; ``extra`` is a section on how items outside the scored sample were
    weighted (empty when only the sample is exported)."""
    ph = learn.phases
    rows = "\n".join(
        f"| {r['phase']} | {r['step_start']} | {r['step_end']} | {r['tokens_start']:.3g} | "
        f"{r['tokens_end']:.3g} | {_fmt_x(r['x_start'])} | {_fmt_x(r['x_end'])} |" for r in ph.rows())
    cols = ", ".join(weight_columns(ph.n))
    return f"""# Curriculum weights

Weights that reshape the training distribution of a target run by *when* the loss of its data
becomes learnable. The target run has {ph.target_steps} optimizer steps of {ph.tokens_per_step}
tokens each, cut into {ph.n} phases of equal width in ln T (T = tokens seen):

| phase | first step | end step (excl.) | tokens from | tokens to | ln T from | ln T to |
|---|---|---|---|---|---|---|
{rows}

## How they were made

1. Sequences of the **training** split ({learn.sequences.height} sequences from
   {learn.documents.height} documents) were evaluated at every checkpoint of the run(s)
   {', '.join(learn.runs)}, and a sigmoid in ln T, `l(x) = lo + (hi - lo) * sigmoid(-k (x - tau))`,
   was fitted to every token's loss trajectory.
2. Each token's loss curve starts at its measured loss at the run's first checkpoint (step 0),
   follows the fitted sigmoid from the first fitted checkpoint on (held at its value there before
   it) and never exceeds that measured start; the loss shed inside phase p is the fall of this
   curve across the phase, so no token sheds more than its measured initial loss and the
   sigmoid's extrapolated upper asymptote is never used. Phase 0 also holds what is learned
   before its right edge, the warmup included. Tokens whose fit is not a usable sigmoid (forgotten,
   nonmonotone, failed fits) shed nothing. The shed loss is averaged over tokens (per sequence or document) and
   over the runs (`shed_p<p>` columns; `share_p<p>` is each phase's share of the item's shed
   loss, `shed_beyond` what is still unlearned at the end, `tau_mean` the amplitude-weighted mean
   learning time in ln tokens).
3. Weights: `w = {floor} + (1 - {floor}) * shed / mean(shed)` per phase, i.e. a mixture of the
   learnability profile with uniform sampling. **Every phase's weights have mean 1** over the
   items of the table; every weight is finite and at least {floor}.
{extra}
## Files

- `weights.parquet`: one row per sequence, keyed by `doc_id` and `seq_id`, columns {cols}
  (and `input_ids`, the sequence's tokens, where the export was made from an evalset).
- `documents.parquet`: the same per document (`doc_id`), for datasets that are chunked differently.
- `phases.json`: the phase boundaries in steps, tokens and ln tokens.

## How to apply them

- **Sampling**: at optimizer step `s`, find its phase (`step_start <= s < step_end`) and draw
  training items with probability proportional to that phase's weight:
  `spectrum.curriculum.sampling.PhaseSampler` does this (deterministic for a seed, resumable
  at any step).
- **Loss weighting** (keep the data order, reweight the loss): multiply every token's loss by its
  item's weight for the current phase and divide by the number of tokens:
  `spectrum.curriculum.sampling.weighted_token_loss`. With mean-1 weights this has the same
  expected gradient as weighted sampling.
- Map the table onto your dataset with `spectrum.curriculum.weights.CurriculumWeights.read(folder).align(
  doc_ids, seq_ids)`: items without a weight get weight 1, and exported ids that your dataset lacks
  are listed (`missing_ids.json` for the dataset named at export time).
"""
