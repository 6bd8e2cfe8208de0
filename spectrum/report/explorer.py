"""The token explorer: example tokens of every run inside the report's ``index.html``.

One HTML fragment, self-contained (inline data, script, style and SVG; nothing fetched): choose a
run, a learning-time band, a kind and a slice (frequency quartile, word start) and see the drawn
examples of that selection, each with its context decoded (target highlighted), its measured
trajectory and fitted sigmoid as a small chart, tau with its standard error, the step-versus-smooth
verdict, and the same token's tau in every other run, with the run's seed replicas marked and
their agreement (the spread of tau across the replicas against its standard error). Where tau
lies outside the fitted checkpoints the censored side is never printed as a number: a token
learned before the first checkpoint says so. The examples are those of
:func:`spectrum.report.examples.draw_examples`; the page states how they were drawn.

Hooks: the root element is ``id="token-explorer"``, every example has the class
``token-example`` (with ``data-run``, ``data-kind``, ``data-band``, ``data-token`` and
``data-censored``), and the URL fragment ``#run=<name>&kind=<kind>`` (also ``band=<key>``,
``freq=1..4``, ``ws=yes|no``) preselects a cell and scrolls to the explorer. The script is
``explorer.js`` beside this module, inlined when the page is built;
:mod:`spectrum.report.payload` writes the data it reads.

Size: the embedded examples are held under ``budget`` bytes (default 5 MB) by lowering the
number drawn per cell (a smaller draw is a subset of a larger one) and, if even one per cell is
too much, keeping a seeded share of the examples; the page says when that happened.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from spectrum import layout
from spectrum.analysis.runs.run_data import RunData
from spectrum.errors import SpectrumError
from spectrum.report.blocks import Block
from spectrum.report.examples import (DRAWN_KINDS, Sampling, band_keys, band_names, band_ranges,
                                      decode_pieces, draw_examples, load_evalset_tokenizer)
from spectrum.report.payload import Payload

BUDGET = 5_000_000  # bytes of embedded example data
MAX_POINTS = 64  # trajectory points embedded per example (evenly thinned beyond)


@dataclass(frozen=True)
class Decoding:
    """Token id -> text for the ids the page shows, or None and why the ids are shown instead."""

    pieces: dict[int, str] | None
    note: str


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def _thin(n: int) -> np.ndarray:
    """Indices of at most MAX_POINTS of ``n`` checkpoints, evenly spread, first and last kept."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, MAX_POINTS)).astype(int))


def seed_replicas(runs: list[RunData]) -> list[list[int]]:
    """Per run, the indices of the other runs of its point (M, D, tokens per step, warmup) with
    another training seed: its seed replicas (none where the seeds are not known)."""
    return [[j for j, o in enumerate(runs) if j != i and o.point == r.point
             and r.seed is not None and o.seed is not None and o.seed != r.seed]
            for i, r in enumerate(runs)]


def _fitted_window(r: RunData) -> list[float | None]:
    """ln T of the run's first and last fitted checkpoints (after the warmup)."""
    x = r.x[r.scored] if r.scored.any() else r.x
    return [_round(float(x.min()), 4), _round(float(x.max()), 4)] if len(x) else [None, None]


def _runs_meta(runs: list[RunData], n_bands: int) -> list[dict]:
    out = []
    for r, replicas in zip(runs, seed_replicas(runs)):
        keep = _thin(len(r.x))
        out.append({"name": r.name, "role": r.role, "x": [round(float(v), 4) for v in r.x[keep]],
                    "keep": keep.tolist(), "bands": [[_round(a, 3), _round(b, 3)]
                                                     for a, b in band_ranges(r.x, n_bands)],
                    "window": _fitted_window(r), "replicas": replicas})
    return out


def decoding_for(out: str | Path, ex: pl.DataFrame) -> Decoding:
    """The pieces of every token id the examples show, with the evalset's tokenizer."""
    tokenizer, note = load_evalset_tokenizer(out)
    if tokenizer is None:
        return Decoding(None, f"Token ids are shown instead of text: {note}.")
    ids = np.concatenate([ex[layout.TARGET_ID].cast(pl.Int64).to_numpy(),
                          ex["context_ids"].explode().drop_nulls().cast(pl.Int64).to_numpy()])
    return Decoding(decode_pieces(tokenizer, ids),
                    f"Tokens {note[0].lower()}{note[1:]}; each token is decoded alone.")


@dataclass(frozen=True)
class Embedded:
    """The page's JSON (``data``) of ``examples`` examples, drawn with ``sampling``; ``note``
    says when only a seeded share of them fit."""

    data: str
    sampling: Sampling
    note: str
    examples: int


def fit_to_budget(ex: pl.DataFrame, runs: list[RunData], sampling: Sampling,
                  decoding: Decoding, budget: int = BUDGET) -> Embedded:
    """The JSON of the largest draw (per cell, then share) under ``budget`` bytes.

    Every example is rounded and measured once; each smaller draw is sized from those sizes and
    only the chosen one is written.
    """
    meta = _runs_meta([r for r in runs if r.has_fits], sampling.bands)
    head = {"runs": meta, "kinds": list(DRAWN_KINDS), "bands": list(band_names(sampling.bands)),
            "band_keys": list(band_keys(sampling.bands)), "ctx_n": sampling.context,
            "decoding": decoding.note,
            "pieces": decoding.pieces and {str(k): v for k, v in decoding.pieces.items()}}
    page = Payload(ex, meta, head)
    rows = np.ones(ex.height, dtype=bool)
    rank = ex["rank"].to_numpy()
    note = ""
    while True:
        text = sampling.describe() + (f" {note}" if note else "")
        size = page.size(rows, text)
        n = int(rows.sum())
        if size <= budget or n <= 1:
            return Embedded(page.json(rows, text), sampling, note, n)
        if sampling.per_cell > 1:
            per_cell = max(1, min(sampling.per_cell - 1,
                                  int(sampling.per_cell * budget / size * 0.95)))
            sampling = replace(sampling, per_cell=per_cell)
            rows &= rank < per_cell
        else:
            keep = max(1, int(n * budget / size * 0.95))
            rows[np.flatnonzero(rows)[keep:]] = False  # rows are in the order of the seeded key
            note = (f"To keep the page small, {keep} of the cells' examples are embedded, "
                    "chosen at random with the same seed.")


@functools.cache
def script() -> str:
    """The page's script, ``explorer.js`` beside this module."""
    text = resources.files(__package__).joinpath("explorer.js").read_text(encoding="utf-8")
    if re.search(r"</script|<!--", text, re.IGNORECASE):  # would end the <script> element early
        raise SpectrumError("explorer.js must not contain '</script' or '<!--'")
    return text


def render(data_json: str) -> str:
    """The explorer's HTML fragment around its JSON data."""
    return (f'<section id="token-explorer"><style>{_CSS}</style>'
            '<p class="te-intro"></p><form class="te-controls"></form>'
            '<p class="te-status"></p><div class="te-list"></div>'
            '<button type="button" class="te-more">show more</button>'
            '<noscript>The token explorer needs JavaScript.</noscript>'
            f'<script type="application/json" id="token-explorer-data">{data_json}</script>'
            f'<script>\n{script()}</script></section>')


def explorer_blocks(out: str | Path, runs: list[RunData], *,
                    sampling: Sampling = Sampling(), budget: int = BUDGET) -> list[Block]:
    """The report's token-explorer section: a heading and the fragment (with a sentence for the
    Markdown report, which cannot hold it)."""
    ex = draw_examples(out, runs, sampling)
    if not ex.height:
        return [Block("h2", "Token explorer"),
                Block("p", "No run has fits, so there are no example tokens to show.")]
    decoding = decoding_for(out, ex)
    page = fit_to_budget(ex, runs, sampling, decoding, budget)
    md = (f"The token explorer in index.html shows {page.examples} example tokens of "
          f"{ex['run'].n_unique()} runs. {page.sampling.describe()} {page.note} {decoding.note} "
          "The same examples, as a polars frame: spectrum.report.examples.draw_examples.")
    return [Block("h2", "Token explorer"),
            Block("html", " ".join(md.split()), html=render(page.data))]


_CSS = """#token-explorer{border-top:1px solid #ccc;padding-top:.5em}
#token-explorer form{display:flex;flex-wrap:wrap;gap:.4em 1.2em;margin:.6em 0}
#token-explorer label{font-size:.9em}
#token-explorer .token-example{display:flex;gap:1em;border:1px solid #ddd;border-radius:4px;
padding:.4em .6em;margin:.5em 0;font-size:.85em}
#token-explorer .te-ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;
word-break:break-all;background:#f7f7f7;padding:.2em .4em;margin-bottom:.3em}
#token-explorer .te-ctx .te-id{color:#555;margin-right:.25em}
#token-explorer mark{background:#ffd54f;outline:1px solid #c9a100}
#token-explorer .te-ws{color:#aaa}
#token-explorer .te-facts div{margin:.1em 0}
#token-explorer .te-body{flex:1;min-width:0}
#token-explorer svg{flex:none;background:#fff}"""

