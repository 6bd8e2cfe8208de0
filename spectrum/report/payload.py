"""The token explorer's embedded data: the drawn examples as JSON, sized before it is written.

The page's script (``explorer.js``) reads one JSON object with the keys, in this order: ``runs``,
``kinds``, ``bands``, ``band_keys``, ``has_freq``, ``has_ws``, ``has_step``, ``has_context``,
``ctx_n``, ``sampling``, ``decoding``, ``pieces``, ``seqs`` (each sequence's known token ids from
its first drawn position), ``cells`` and ``ex`` (the examples as parallel columns, :data:`COLUMNS`).

:class:`Payload` rounds every example's numbers once, with numpy, and knows how many bytes the
JSON of any subset of the examples takes (:meth:`Payload.size`), so the explorer can choose the
largest draw under its budget from sizes alone and then write that draw's JSON once
(:meth:`Payload.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import polars as pl

from spectrum import layout
from spectrum.fit.kinds import CENSORED
from spectrum.report.examples import DRAWN_KINDS
from spectrum.report.jsonnum import as_objects, float_sizes, int_sizes, rounded

INTS = {"run": "run", "band": "band", "kind": "kind", "fq": "freq_quartile", "ws": "word_start",
        "tok": layout.TOKEN_IDX, "seq": layout.SEQ_ID, "pos": layout.POS,
        "tid": layout.TARGET_ID, "step": layout.STEP_PREFERRED,
        "cens": "censored"}  # page column -> example column (cens: index into CENSORED)
FLOATS = ("lo", "hi", "tau", "k", "tau_se", "r2")  # with 3 decimals
COLUMNS = (*INTS, *FLOATS, "loss", "others")
HEAD = ("runs", "kinds", "bands", "band_keys", "has_freq", "has_ws", "has_step", "has_context",
        "ctx_n", "sampling", "decoding", "pieces")  # the keys before seqs, cells and ex
LOSS_DIGITS = 2  # decimals of the trajectories' losses and of the other runs' tau
FLOAT_DIGITS = 3


def to_json(data: Any) -> str:
    """Compact JSON, safe inside a <script> element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_size(data: Any) -> int:
    """Bytes of :func:`to_json` of ``data``."""
    return len(to_json(data).encode())


@dataclass(frozen=True)
class Column:
    """One page column: the bytes of every example's JSON text (``sizes``), and ``values`` (a
    boolean row mask -> the JSON values of those examples, in order)."""

    sizes: np.ndarray
    values: Callable[[np.ndarray], list]


def _taker(objects: np.ndarray) -> Callable[[np.ndarray], list]:
    return lambda rows: objects[rows].tolist()


def _ints(s: pl.Series) -> Column:
    null = s.is_null().to_numpy()
    v = s.fill_null(0).cast(pl.Int64).to_numpy()
    values = v.astype(object)
    values[null] = None
    return Column(int_sizes(v, null), _taker(values))


def _floats(s: pl.Series, digits: int) -> Column:
    r = rounded(s.cast(pl.Float64).to_numpy(), digits)
    return Column(float_sizes(r, digits), _taker(as_objects(r)))


def _list_size(item_sizes: np.ndarray) -> np.ndarray:
    """Bytes of JSON lists (rows of ``item_sizes``): brackets, commas and items."""
    n = item_sizes.shape[1]
    return 2 + max(n - 1, 0) + item_sizes.sum(axis=1)


def _grid(lists: pl.Series) -> np.ndarray:
    """Equal-length lists (or arrays) of numbers as a 2-D float64 array, one row per list."""
    if isinstance(lists.dtype, pl.List):
        lists = lists.list.to_array(int(lists.list.len().max()))
    return lists.to_numpy().astype(np.float64).reshape(lists.len(), -1)


def _losses(ex: pl.DataFrame, run: np.ndarray, runs: list[dict]) -> Column:
    """Each example's measured loss at its run's embedded checkpoints (``keep``), 2 decimals."""
    values = np.empty(ex.height, dtype=object)
    sizes = np.zeros(ex.height, dtype=np.int64)
    for ri, r in enumerate(runs):
        rows = np.flatnonzero(run == ri)
        if not rows.size:
            continue
        grid = _grid(ex["loss"].gather(rows))[:, np.asarray(r["keep"])]
        grid = rounded(grid, LOSS_DIGITS)
        sizes[rows] = _list_size(float_sizes(grid, LOSS_DIGITS))
        for i, row in zip(rows, as_objects(grid).tolist()):
            values[i] = row
    return Column(sizes, _taker(values))


def censored_codes(s: pl.Series) -> pl.Series:
    """Indices into :data:`CENSORED` of a ``censored`` column (null reads ``none``)."""
    return s.fill_null(CENSORED[0]).replace_strict({c: i for i, c in enumerate(CENSORED)},
                                                   return_dtype=pl.Int64)


def _others(ex: pl.DataFrame, runs: list[dict]) -> Column:
    """Each example's token in every run: [tau, tau_se (2 decimals), kind, censored (index into
    :data:`CENSORED`)], or null where the run is missing from the example's ``others`` (which
    names each run at most once)."""
    n, m = ex.height, len(runs)
    long = (ex.select(pl.int_range(pl.len()).alias("_row"), "others").explode("others")
            .filter(pl.col("others").is_not_null()).unnest("others")
            .filter(pl.col("run").is_in([r["name"] for r in runs])))
    if "censored" not in long.columns:
        long = long.with_columns(censored=pl.lit(None, pl.String))
    cell = (long["_row"].to_numpy() * m
            + long["run"].replace_strict({r["name"]: j for j, r in enumerate(runs)},
                                         return_dtype=pl.Int64).to_numpy())
    kinds = long["kind"].unique(maintain_order=True).to_list()
    tau, se = np.full(n * m, np.nan), np.full(n * m, np.nan)
    kind = np.full(n * m, -1, dtype=np.int64)  # -1: no entry
    cens = np.zeros(n * m, dtype=np.int64)
    cens[cell] = censored_codes(long["censored"]).to_numpy()
    tau[cell] = rounded(long["tau"].cast(pl.Float64).to_numpy(), LOSS_DIGITS)
    se[cell] = rounded(long["tau_se"].cast(pl.Float64).to_numpy(), LOSS_DIGITS)
    kind[cell] = long["kind"].replace_strict({k: i for i, k in enumerate(kinds)},
                                             return_dtype=pl.Int64).to_numpy()
    kind_size = np.array([json_size(k) for k in kinds] + [0], dtype=np.int64)
    sizes = np.where(kind >= 0, 6 + float_sizes(tau, LOSS_DIGITS) + float_sizes(se, LOSS_DIGITS)
                     + kind_size[kind], 4)  # [t,s,"kind",c]: brackets, 3 commas, a digit
    names = np.array([*kinds, None], dtype=object)  # index -1: None, unused

    def values(rows: np.ndarray) -> list:
        at = (np.flatnonzero(rows)[:, None] * m + np.arange(m)).ravel()
        entries = [*map(list, zip(as_objects(tau[at]).tolist(), as_objects(se[at]).tolist(),
                                  names[kind[at]].tolist(), cens[at].tolist()))]
        for i in np.flatnonzero(kind[at] < 0):
            entries[i] = None
        return [entries[i:i + m] for i in range(0, len(entries), m)]

    return Column(_list_size(sizes.reshape(n, m)), values)


def example_columns(ex: pl.DataFrame, runs: list[dict]) -> dict[str, Column]:
    """Every page column of the examples ``ex`` (as drawn), for the ``runs`` of the page."""
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    if "censored" not in ex.columns:
        ex = ex.with_columns(censored=pl.lit(None, pl.String))
    coded = ex.with_columns(censored=censored_codes(ex["censored"]),
                            run=pl.col("run").replace_strict(run_i, return_dtype=pl.Int64),
                            kind=pl.col("kind").replace_strict(
                                {k: i for i, k in enumerate(DRAWN_KINDS)}, return_dtype=pl.Int64))
    cols = {name: _ints(coded[source]) for name, source in INTS.items()}
    cols.update({c: _floats(ex[c], FLOAT_DIGITS) for c in FLOATS})
    cols["loss"] = _losses(ex, coded["run"].to_numpy(), runs)
    cols["others"] = _others(ex, runs)
    return cols


def _positions(ex: pl.DataFrame) -> pl.DataFrame:
    """seq, p (position), t (token id) of every context token and target of ``ex``, one row per
    (seq, p): the token of the last example that shows it."""
    f = ex.select(seq=pl.col(layout.SEQ_ID).cast(pl.Int64), pos=pl.col(layout.POS).cast(pl.Int64),
                  ctx=pl.col("context_ids").fill_null([]).cast(pl.List(pl.Int64)),
                  tid=pl.col(layout.TARGET_ID).cast(pl.Int64))
    f = f.unique(["seq", "pos"], keep="last")  # a token drawn in several runs: one context
    first = pl.col("pos") - pl.col("ctx").list.len()
    f = f.select("seq", p=pl.int_ranges(first, pl.col("pos") + 1),
                 t=pl.concat_list("ctx", "tid")).explode("p", "t")
    return f.group_by("seq", "p", maintain_order=True).agg(pl.col("t").last())


@dataclass(frozen=True)
class Spans:
    """Each sequence's span of known positions: ``seqs`` in the order the examples first show
    them, its first position ``lo``, its length ``n``; ``tokens`` position-ordered with ``at``
    (offset of each token in the concatenated spans)."""

    seqs: np.ndarray
    lo: np.ndarray
    n: np.ndarray
    tokens: np.ndarray
    at: np.ndarray

    @classmethod
    def of(cls, ex: pl.DataFrame) -> Spans:
        if ex["context_ids"].null_count() == ex.height:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, empty)
        pos = _positions(ex)
        order = ex[layout.SEQ_ID].cast(pl.Int64).unique(maintain_order=True)
        span = (pos.group_by("seq").agg(lo=pl.col("p").min(), hi=pl.col("p").max())
                .with_columns(n=pl.col("hi") - pl.col("lo") + 1))
        span = pl.DataFrame({"seq": order}).join(span, on="seq", how="left", maintain_order="left")
        start = np.concatenate([[0], np.cumsum(span["n"].to_numpy())[:-1]])
        span = span.with_columns(start=pl.Series(start, dtype=pl.Int64))
        placed = pos.join(span.select("seq", "lo", "start"), on="seq", how="left")
        at = (placed["start"] + placed["p"] - placed["lo"]).to_numpy()
        return cls(span["seq"].to_numpy(), span["lo"].to_numpy(), span["n"].to_numpy(),
                   placed["t"].to_numpy(), at)

    def size(self) -> int:
        """Bytes of the JSON object ``{"<seq>": [lo, [ids]]}``, gaps written as -1."""
        if not self.seqs.size:
            return 2
        per_seq = (int_sizes(self.seqs) + 2 + 1 + 1 + int_sizes(self.lo) + 1 + 2
                   + np.maximum(self.n - 1, 0) + 1)
        gaps = int(self.n.sum()) - self.tokens.size
        return int(2 + self.seqs.size - 1 + per_seq.sum() + int_sizes(self.tokens).sum()
                   + 2 * gaps)

    def value(self) -> dict[str, list]:
        flat = np.full(int(self.n.sum()), -1, dtype=np.int64)
        flat[self.at] = self.tokens
        start = np.concatenate([[0], np.cumsum(self.n)[:-1]]).astype(np.int64)
        return {str(s): [int(lo), flat[a:a + n].tolist()]
                for s, lo, a, n in zip(self.seqs.tolist(), self.lo.tolist(), start.tolist(),
                                       self.n.tolist())}


def cells(ex: pl.DataFrame, runs: list[dict]) -> list[list]:
    """[run, band, kind, freq quartile, word start, tokens in the cell] of every drawn cell,
    sorted by all of them (the same page from the same data)."""
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    kind_i = {k: i for i, k in enumerate(DRAWN_KINDS)}
    key = ["run", "band", "kind", "freq_quartile", "word_start"]
    found = ex.select(*key, "cell_size").unique().sort([*key, "cell_size"], nulls_last=True)
    return [[run_i[r], b, kind_i[k], q, None if w is None else int(w), int(n)]
            for r, b, k, q, w, n in found.iter_rows()]


class Payload:
    """The examples ``ex`` of the ``runs`` (the page's run records), rounded once; ``head`` the
    page's other keys (``runs`` .. ``pieces``) but the flags and the sampling sentence, which
    depend on the examples embedded."""

    def __init__(self, ex: pl.DataFrame, runs: list[dict], head: dict[str, Any]) -> None:
        self.ex = ex
        self.runs = runs
        self.head = head
        self.columns = example_columns(ex, runs)
        self.row_sizes = sum(c.sizes for c in self.columns.values())
        self.flags = {name: ex[c].is_not_null().to_numpy() for name, c in
                      (("has_freq", "freq_quartile"), ("has_ws", "word_start"),
                       ("has_step", layout.STEP_PREFERRED), ("has_context", "context_ids"))}

    def _head(self, rows: np.ndarray, sampling: str) -> dict[str, Any]:
        flags = {name: bool(v[rows].any()) for name, v in self.flags.items()}
        h = {**self.head, **flags, "sampling": sampling}
        return {k: h[k] for k in HEAD}

    def _ex_size(self, rows: np.ndarray) -> int:
        k = int(rows.sum())
        keys = sum(json_size(c) + 1 + 2 for c in COLUMNS)  # "name":[]
        return int(2 + len(COLUMNS) - 1 + keys + len(COLUMNS) * max(k - 1, 0)
                   + self.row_sizes[rows].sum())

    def size(self, rows: np.ndarray, sampling: str) -> int:
        """Bytes of :meth:`json` of the examples where ``rows`` is true."""
        sub = self.ex.filter(pl.Series(rows))
        head = json_size(self._head(rows, sampling))
        return (head - 1 + len(',"seqs":') + Spans.of(sub).size()
                + len(',"cells":') + json_size(cells(sub, self.runs))
                + len(',"ex":') + self._ex_size(rows) + 1)

    def json(self, rows: np.ndarray, sampling: str) -> str:
        """The page's JSON with the examples where ``rows`` is true."""
        sub = self.ex.filter(pl.Series(rows))
        ex = {c: col.values(rows) for c, col in self.columns.items()}
        return to_json({**self._head(rows, sampling), "seqs": Spans.of(sub).value(),
                        "cells": cells(sub, self.runs), "ex": ex})
