"""Curriculum weights for every sequence and document of a training corpus, streamed.

The corpus is read document by document (:func:`spectrum.data.corpus.iter_documents`), each
document tokenized on its own and cut into windows of ``context`` tokens from its first token
(as the evalset cuts them), the shorter tail included when it holds a target (2 tokens or more).
Each window gets its shed per phase: measured where the window was scored (it is a sequence of
the learnability sample: same document, same tokens; shrunk toward the prediction by its
reliability, :mod:`spectrum.curriculum.shrinkage`), else predicted from its target tokens by a
:class:`~spectrum.curriculum.predict.ShedModel`. A document's shed is the token-weighted mean of
its windows'. Weights follow :func:`spectrum.curriculum.weights.phase_weights`:
``floor + (1 - floor) * shed / mean(shed)`` per phase, mean 1 over the exported items.

Two streaming passes keep memory independent of the corpus: the first writes the shed of every
window and document to temporary Parquet files (row groups of ``batch_rows``) and accumulates the
per-phase means; the second reads them back batch by batch and writes ``weights.parquet`` and
``documents.parquet`` with the weights. Files appear atomically (temporary name, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spectrum import console
from spectrum.curriculum.predict import ShedModel
from spectrum.curriculum.shrinkage import Shrinkage
from spectrum.curriculum.weights import DOCUMENTS_FILE, WEIGHTS_FILE, shed_columns, weight_columns
from spectrum.store import PROVENANCE_KEY


def window_key(doc_id: str, ids: np.ndarray) -> bytes:
    """Identity of a window: its document and its token ids."""
    return hashlib.sha1(str(doc_id).encode() + b"\0" + np.asarray(ids, dtype="<i4").tobytes()).digest()


@dataclass
class ExportCounts:
    """What an export wrote: items and how their shed was obtained."""

    documents: int = 0
    documents_weighted: int = 0  # with at least one target token (the rest get weight 1)
    sequences: int = 0
    sequences_measured: int = 0
    tokens: int = 0
    phase_mean_shed: list[float] = field(default_factory=list)
    spread: list[dict[str, Any]] = field(default_factory=list)  # SourceSpread.rows()

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _windows(ids: np.ndarray, context: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(ids), context):
        w = ids[start:start + context]
        if len(w) >= 2:
            yield start, w


def _encode(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(i, dtype=np.int32) for i in ids]


class _Spool:
    """Rows buffered and written to a Parquet file a row group at a time."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int) -> None:
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self.rows: dict[str, list] = {n: [] for n in schema.names}
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def add(self, **cols: Any) -> None:
        for k, v in cols.items():
            self.rows[k].append(v)
        if len(self.rows[self.schema.names[0]]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows[self.schema.names[0]]:
            self.writer.write_table(pa.table(self.rows, schema=self.schema))
            self.rows = {n: [] for n in self.schema.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _schemas(P: int) -> tuple[pa.Schema, pa.Schema]:
    shed = [pa.field(c, pa.float64()) for c in shed_columns(P)]
    seq = pa.schema([pa.field("seq_id", pa.int64()), pa.field("doc_id", pa.string()),
                     pa.field("window", pa.int32()), pa.field("token_start", pa.int64()),
                     pa.field("n_tokens", pa.int32()), pa.field("source", pa.string()),
                     pa.field("scored_seq_id", pa.int64()), *shed])
    doc = pa.schema([pa.field("doc_id", pa.string()), pa.field("n_sequences", pa.int32()),
                     pa.field("n_tokens", pa.int64()), pa.field("n_measured", pa.int32()), *shed])
    return seq, doc


def window_shed(doc_ids: Sequence[str], windows: Sequence[np.ndarray], model: ShedModel,
                measured: dict[bytes, tuple[int, np.ndarray]]
                ) -> tuple[np.ndarray, list[tuple[int, np.ndarray] | None]]:
    """The shed per phase ``(n, P)`` of windows of token ids (each of its document): the measured
    one where the window was scored (``measured``, keyed by :func:`window_key`), else the one
    ``model`` predicts from its target tokens (tokens 1.. of the window); and the hit of each
    (``(seq_id, shed)`` or None)."""
    targets = [np.asarray(w)[1:] for w in windows]
    n_t = np.array([len(t) for t in targets], dtype=np.int64)
    pred = model.predict(np.concatenate(targets) if targets else np.zeros(0, np.int64),
                         np.repeat(np.arange(len(windows)), n_t), len(windows))
    hits = [measured.get(window_key(d, w)) for d, w in zip(doc_ids, windows)]
    shed = np.array([h[1] if h is not None else pred[j] for j, h in enumerate(hits)]).reshape(
        len(windows), model.n_phases)
    return shed, hits


def _shed_pass(docs: Iterable[Any], tokenizer: Any, context: int, model: ShedModel,
               measured: dict[bytes, tuple[int, np.ndarray]], seq_spool: _Spool, doc_spool: _Spool,
               batch_docs: int, progress: bool) -> ExportCounts:
    P = model.n_phases
    counts = ExportCounts()
    sums = np.zeros(P)
    bar = console.progress(unit="doc", desc="curriculum weights", disable=not progress,
                           dynamic_ncols=True)

    def flush(batch: list[Any]) -> None:
        nonlocal sums
        windows = []  # (doc index, window index, start, ids)
        for d, ids in enumerate(_encode(tokenizer, [doc.text for doc in batch])):
            windows += [(d, i, s, w) for i, (s, w) in enumerate(_windows(ids, context))]
        n_t = np.array([len(w) - 1 for *_, w in windows], dtype=np.int64)
        sheds, hits = window_shed([batch[d].doc_id for d, *_ in windows], [w for *_, w in windows],
                                  model, measured)
        doc_shed, doc_tok = np.zeros((len(batch), P)), np.zeros(len(batch), dtype=np.int64)
        doc_nseq, doc_meas = np.zeros(len(batch), dtype=np.int64), np.zeros(len(batch), dtype=np.int64)
        for j, (d, i, start, w) in enumerate(windows):
            hit, shed = hits[j], sheds[j]
            seq_spool.add(seq_id=counts.sequences, doc_id=batch[d].doc_id, window=i,
                          token_start=start, n_tokens=len(w),
                          source="measured" if hit is not None else "predicted",
                          scored_seq_id=hit[0] if hit is not None else None,
                          **{c: float(v) for c, v in zip(shed_columns(P), shed)})
            counts.sequences += 1
            counts.sequences_measured += hit is not None
            sums += shed
            doc_shed[d] += shed * n_t[j]
            doc_tok[d] += n_t[j]
            doc_nseq[d] += 1
            doc_meas[d] += hit is not None
        for d, doc in enumerate(batch):
            mean = doc_shed[d] / doc_tok[d] if doc_tok[d] else np.full(P, np.nan)
            doc_spool.add(doc_id=doc.doc_id, n_sequences=int(doc_nseq[d]), n_tokens=int(doc_tok[d]),
                          n_measured=int(doc_meas[d]),
                          **{c: (float(v) if np.isfinite(v) else None)
                             for c, v in zip(shed_columns(P), mean)})
            counts.documents += 1
            counts.documents_weighted += bool(doc_tok[d])
            counts.tokens += int(doc_tok[d])
        bar.update(len(batch))

    batch: list[Any] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_docs:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    bar.close()
    counts.phase_mean_shed = (sums / max(counts.sequences, 1)).tolist()
    return counts


def _doc_means(path: Path, P: int) -> np.ndarray:
    """Per-phase mean shed over the documents that have one (nulls: documents without targets)."""
    total, n = np.zeros(P), 0
    for batch in pq.ParquetFile(path).iter_batches(columns=shed_columns(P)):
        arr = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(P)])
        arr = arr.astype(np.float64)
        ok = np.isfinite(arr).all(1)
        total += arr[ok].sum(0)
        n += int(ok.sum())
    return total / max(n, 1)


class SourceSpread:
    """Per source (measured, predicted) and phase: how many sequences, and the mean and standard
    deviation of their shed and of their weight, and the largest weight; accumulated batch by
    batch."""

    def __init__(self, P: int) -> None:
        self.P = P
        self.sums: dict[str, np.ndarray] = {}  # source -> (5, P): n, shed, shed^2, w, w^2
        self.max_w: dict[str, np.ndarray] = {}
        self.max_shed: dict[str, np.ndarray] = {}

    def add(self, source: np.ndarray, shed: np.ndarray, w: np.ndarray) -> None:
        for src in np.unique(source):
            m = source == src
            acc = self.sums.setdefault(str(src), np.zeros((5, self.P)))
            acc += np.stack([np.full(self.P, m.sum()), shed[m].sum(0), (shed[m] ** 2).sum(0),
                             w[m].sum(0), (w[m] ** 2).sum(0)])
            self.max_w[str(src)] = np.maximum(self.max_w.get(str(src), -np.inf), w[m].max(0))
            self.max_shed[str(src)] = np.maximum(self.max_shed.get(str(src), -np.inf),
                                                 shed[m].max(0))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for src in sorted(self.sums):
            n, s1, s2, w1, w2 = self.sums[src]
            for p in range(self.P):
                out.append({"source": src, "phase": p, "sequences": int(n[p]),
                            "shed_mean": float(s1[p] / n[p]), "shed_sd": _sd(s1[p], s2[p], n[p]),
                            "shed_max": float(self.max_shed[src][p]),
                            "weight_mean": float(w1[p] / n[p]), "weight_sd": _sd(w1[p], w2[p], n[p]),
                            "weight_max": float(self.max_w[src][p])})
        return out


def _sd(total: float, squares: float, n: float) -> float:
    """The standard deviation of ``n`` values from their sum and sum of squares."""
    return float(np.sqrt(max(squares / n - (total / n) ** 2, 0.0)))


def _weigh(src: Path, dst: Path, P: int, mean: np.ndarray, floor: float, meta: dict[bytes, bytes],
           spread: SourceSpread | None = None) -> None:
    """Second pass: ``src`` batch by batch, with the weight columns, into ``dst`` (atomically);
    ``spread`` accumulates each source's spread (tables with a ``source`` column)."""
    reader = pq.ParquetFile(src)
    schema = reader.schema_arrow
    for c in weight_columns(P):
        schema = schema.append(pa.field(c, pa.float64()))
    schema = schema.with_metadata(meta)
    tmp = dst.with_name(f".{dst.name}.partial")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for g in range(reader.num_row_groups):  # one row group at a time, as written
            batch = reader.read_row_group(g)
            shed = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False)
                                    for c in shed_columns(P)]).astype(np.float64)
            rel = np.divide(shed, mean, out=np.ones_like(shed), where=mean > 0)
            w = np.where(np.isfinite(rel), floor + (1.0 - floor) * rel, 1.0)
            if spread is not None and len(shed):
                spread.add(batch.column("source").to_numpy(zero_copy_only=False), shed, w)
            cols = list(batch.columns) + [pa.array(w[:, p]) for p in range(P)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=len(shed))
    os.replace(tmp, dst)


def export_corpus(docs: Iterable[Any], tokenizer: Any, context: int, model: ShedModel,
                  measured: dict[bytes, tuple[int, np.ndarray]], folder: str | Path, *,
                  floor: float = 0.25, provenance: dict[str, Any] | None = None,
                  batch_docs: int = 256, batch_rows: int = 8192, progress: bool = True) -> ExportCounts:
    """Write ``weights.parquet`` and ``documents.parquet`` for every window and document of ``docs``.

    ``measured`` maps :func:`window_key` of each scored window to ``(seq_id, shed (P,))``.
    ``progress``: a bar over the documents (:func:`spectrum.console.progress`: none when quiet).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    P = model.n_phases
    seq_schema, doc_schema = _schemas(P)
    tmp_seq, tmp_doc = folder / ".sequences-shed.partial", folder / ".documents-shed.partial"
    try:
        seq_spool = _Spool(tmp_seq, seq_schema, batch_rows)
        doc_spool = _Spool(tmp_doc, doc_schema, batch_rows)
        try:
            counts = _shed_pass(docs, tokenizer, context, model, measured, seq_spool, doc_spool,
                                batch_docs, progress)
        finally:
            seq_spool.close()
            doc_spool.close()
        meta = {PROVENANCE_KEY: json.dumps({**(provenance or {}), "floor": floor,
                                            "counts": counts.to_dict()},
                                           sort_keys=True, default=str).encode()}
        spread = SourceSpread(P)
        _weigh(tmp_seq, folder / WEIGHTS_FILE, P, np.asarray(counts.phase_mean_shed), floor, meta,
               spread)
        counts.spread = spread.rows()
        _weigh(tmp_doc, folder / DOCUMENTS_FILE, P, _doc_means(tmp_doc, P), floor, meta)
    finally:
        tmp_seq.unlink(missing_ok=True)
        tmp_doc.unlink(missing_ok=True)
    return counts


def coverage_paragraph(counts: ExportCounts, model: ShedModel, source: str) -> str:
    """The README section on the whole corpus: coverage and the learnability model's accuracy."""
    r2 = ", ".join(f"{v:.3f}" for v in model.cv_r2)
    raw = ", ".join(f"{v:.3f}" for v in model.cv_r2_raw)
    return f"""
## Every sequence of the corpus

The table covers {source}: {counts.documents} documents ({counts.documents_weighted} with at least
one target token; the others get weight 1), {counts.sequences} sequences (windows of the context
from each document's first token, the shorter tail included) and {counts.tokens} target tokens.
{counts.sequences_measured} sequences were scored (`source = measured`, `scored_seq_id`: their
measured shed, shrunk toward the prediction as the next section says); the
others (`source = predicted`) get the shed predicted from their target tokens: the mean shed of
each target type over the scored tokens, shrunk towards the mean with a prior of {model.prior:g}
tokens, averaged over the sequence and calibrated by a line per phase. Accuracy on held-out
documents ({model.folds}-fold, {model.n_sequences} scored sequences from {model.n_documents}
documents), R^2 of predicted against measured shed per sequence, per phase: **{r2}**
(uncalibrated: {raw}). Where R^2 is low, the predicted weights are close to uniform in that phase
and reweight little. A document's shed is the token-weighted mean of its sequences'.
"""


def spread_paragraph(counts: ExportCounts, shrink: Shrinkage) -> str:
    """The README section on the two sources of shed: the shrinkage of the measured sequences
    and each source's spread per phase."""
    if shrink.noise_var is None:
        how = (f"The learnability was measured on {shrink.runs} run: its run-to-run noise cannot "
               "be estimated, so measured sheds are used as measured (not shrunk).")
    else:
        fac = ", ".join(f"{v:.2f}" for v in shrink.factor)
        rel = ", ".join(f"{v:.2f}" for v in shrink.reliability)
        how = (f"A measured shed is the mean over {shrink.runs} runs, with their run-to-run noise; "
               "before it sits beside predicted ones it is shrunk toward the model's prediction "
               "for that sequence (made without its document) by empirical Bayes: "
               "`pred + lambda (measured - pred)`, lambda = signal / (signal + noise) per phase, "
               f"the noise being the variance across runs over {shrink.runs}. Reliability of the "
               f"measured shed (share of its spread that is not run-to-run noise) per phase: "
               f"**{rel}**; lambda: **{fac}**. The runs share their seed where the suite does, so "
               "this noise is a lower bound on what a new seed would add.")
    rows = "\n".join(f"| {r['phase']} | {r['source']} | {r['sequences']} | {r['shed_mean']:.3f} | "
                     f"{r['shed_sd']:.3f} | {r['weight_sd']:.3f} | {r['weight_max']:.2f} |"
                     for r in sorted(counts.spread, key=lambda r: (r["phase"], r["source"])))
    return f"""
## Measured and predicted sequences on one scale

{how}

Spread of each source per phase (shed in nats per target token):

| phase | source | sequences | mean shed | sd of shed | sd of weight | largest weight |
|---|---|---|---|---|---|---|
{rows}
"""
