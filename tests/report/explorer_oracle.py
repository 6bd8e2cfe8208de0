"""The explorer's JSON written the plain way, one number at a time, and its budget found by
writing every candidate draw in full: the oracle the sized, vectorised payload must equal byte for
byte."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from spectrum import layout
from spectrum.fit.kinds import CENSORED
from spectrum.report.examples import DRAWN_KINDS, Sampling, band_keys, band_names
from spectrum.report.explorer import Decoding, _runs_meta


def _round(v: Any, digits: int = 3) -> float | None:
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def _sequences(ex: pl.DataFrame) -> dict[str, list]:
    if ex["context_ids"].null_count() == ex.height:
        return {}
    spans: dict[str, list] = {}
    for seq, pos, ctx, target in ex.select(layout.SEQ_ID, layout.POS, "context_ids",
                                            layout.TARGET_ID).iter_rows():
        ids = [*ctx, target]
        start = pos - len(ctx)
        have = spans.get(str(seq))
        if have is None:
            spans[str(seq)] = [start, ids]
            continue
        lo = min(have[0], start)
        merged = {have[0] + i: t for i, t in enumerate(have[1])}
        merged.update({start + i: t for i, t in enumerate(ids)})
        hi = max(merged)
        spans[str(seq)] = [lo, [merged.get(p, -1) for p in range(lo, hi + 1)]]
    return spans


def _columns(ex: pl.DataFrame, runs: list[dict]) -> dict[str, list]:
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    kind_i = {k: i for i, k in enumerate(DRAWN_KINDS)}
    cols: dict[str, list] = {"run": [run_i[r] for r in ex["run"]], "band": ex["band"].to_list(),
                             "kind": [kind_i[k] for k in ex["kind"]],
                             "fq": ex["freq_quartile"].to_list(),
                             "ws": [None if w is None else int(w) for w in ex["word_start"]],
                             "tok": ex[layout.TOKEN_IDX].to_list(),
                             "seq": ex[layout.SEQ_ID].to_list(), "pos": ex[layout.POS].to_list(),
                             "tid": ex[layout.TARGET_ID].to_list(),
                             "step": [None if s is None else int(s)
                                      for s in ex[layout.STEP_PREFERRED]],
                             "cens": [CENSORED.index(c or "none") for c in ex["censored"]]}
    for c in ("lo", "hi", "tau", "k", "tau_se", "r2"):
        cols[c] = [_round(v) for v in ex[c]]
    keeps = [np.asarray(r["keep"]) for r in runs]
    cols["loss"] = [[_round(v, 2) for v in np.asarray(loss, dtype=np.float64)[keeps[ri]]]
                    for ri, loss in zip(cols["run"], ex["loss"].to_list())]
    others = []
    for row in ex["others"].to_list():
        by_run = {o["run"]: o for o in row or []}
        others.append([[_round(by_run[r["name"]]["tau"], 2), _round(by_run[r["name"]]["tau_se"], 2),
                        by_run[r["name"]]["kind"],
                        CENSORED.index(by_run[r["name"]].get("censored") or "none")]
                       if r["name"] in by_run else None for r in runs])
    cols["others"] = others
    return cols


def _cells(ex: pl.DataFrame, runs: list[dict]) -> list[list]:
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    kind_i = {k: i for i, k in enumerate(DRAWN_KINDS)}
    key = ["run", "band", "kind", "freq_quartile", "word_start"]
    cells = ex.select(*key, "cell_size").unique().sort([*key, "cell_size"], nulls_last=True)
    return [[run_i[r], b, kind_i[k], q, None if w is None else int(w), int(n)]
            for r, b, k, q, w, n in cells.iter_rows()]


def payload(ex, runs, sampling: Sampling, decoding: Decoding, note: str = "") -> dict:
    meta = _runs_meta([r for r in runs if r.has_fits], sampling.bands)
    return {"runs": meta, "kinds": list(DRAWN_KINDS), "bands": list(band_names(sampling.bands)),
            "band_keys": list(band_keys(sampling.bands)),
            "has_freq": ex["freq_quartile"].null_count() < ex.height,
            "has_ws": ex["word_start"].null_count() < ex.height,
            "has_step": ex[layout.STEP_PREFERRED].null_count() < ex.height,
            "has_context": ex["context_ids"].null_count() < ex.height,
            "ctx_n": sampling.context,
            "sampling": sampling.describe() + (f" {note}" if note else ""),
            "decoding": decoding.note, "pieces": decoding.pieces and
            {str(k): v for k, v in decoding.pieces.items()},
            "seqs": _sequences(ex), "cells": _cells(ex, meta), "ex": _columns(ex, meta)}


def to_json(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fit_to_budget(ex, runs, sampling: Sampling, decoding: Decoding,
                  budget: int) -> tuple[str, Sampling, str]:
    note = ""
    while True:
        data = to_json(payload(ex, runs, sampling, decoding, note))
        size = len(data.encode())
        if size <= budget or ex.height <= 1:
            return data, sampling, note
        if sampling.per_cell > 1:
            per_cell = max(1, min(sampling.per_cell - 1,
                                  int(sampling.per_cell * budget / size * 0.95)))
            sampling = replace(sampling, per_cell=per_cell)
            ex = ex.filter(pl.col("rank") < per_cell)
        else:
            keep = max(1, int(ex.height * budget / size * 0.95))
            ex = ex.head(keep)
            note = (f"To keep the page small, {keep} of the cells' examples are embedded, "
                    "chosen at random with the same seed.")
