"""The explorer's fragment: self-contained, script-safe, within its size budget, and honest about
decoding."""

import json
import re
import shutil

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spectrum.report import explorer
from spectrum.report.examples import Sampling, draw_examples
from spectrum.report.explorer import (Decoding, _runs_meta, decoding_for, explorer_blocks,
                                      fit_to_budget, render)
from spectrum.report.payload import Payload
from tests.report import explorer_oracle as oracle
from tests.examples_world import loaded_explorer_world
from tests.synthetic import DEFAULT_RUNS

RUNS = [r for r in DEFAULT_RUNS if r[0] in ("m1-d1", "m3-d3")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return loaded_explorer_world(tmp_path_factory.mktemp("explorer"), n_seq=12, context=20,
                                 n_steps=10, runs=RUNS)


def _data(fragment: str) -> dict:
    m = re.search(r'<script type="application/json" id="token-explorer-data">(.*?)</script>',
                  fragment, re.S)
    assert m
    return json.loads(m.group(1))


def test_fragment_is_self_contained_and_carries_every_example(world):
    manifest, tokens, runs = world
    blocks = explorer_blocks(manifest.out, runs)
    assert [b.kind for b in blocks] == ["h2", "html"]
    frag = blocks[1].html
    assert frag.startswith('<section id="token-explorer">') and frag.endswith("</section>")
    for bad in ("src=", "href=", "<link", "url(", "@import", "fetch(", "XMLHttpRequest"):
        assert bad not in frag, bad
    data = _data(frag)
    ex = draw_examples(manifest.out, runs, Sampling())
    assert len(data["ex"]["tok"]) == ex.height
    assert sorted(zip(data["ex"]["tok"], data["ex"]["run"])) == sorted(
        zip(ex["token_idx"], [[r["name"] for r in data["runs"]].index(n) for n in ex["run"]]))
    assert "Up to 40 tokens per cell" in data["sampling"]
    assert "decoded with the evalset's tokenizer" in data["decoding"]
    assert data["has_step"] is False  # the synthetic fits hold no verdict: "not computed"
    assert "not computed" in frag
    assert "token explorer in index.html" in blocks[1].text  # what report.md says instead


def test_pieces_that_look_like_markup_stay_data(world):
    manifest, tokens, runs = world
    ex = draw_examples(manifest.out, runs, Sampling(per_cell=1))
    evil = "</script><script>alert(1)</script>"
    ids = set(ex["target_id"].to_list()) | set(ex["context_ids"].explode().drop_nulls().to_list())
    dec = Decoding({int(i): evil for i in ids}, "test")
    frag = render(fit_to_budget(ex, runs, Sampling(per_cell=1), dec).data)
    assert frag.count("</script>") == 2 and "alert(1)</script>" not in frag
    assert set(_data(frag)["pieces"].values()) == {evil}


def test_without_the_tokenizer_ids_are_shown_and_the_page_says_why(world, tmp_path):
    manifest, tokens, runs = world
    out = tmp_path / "artifacts"
    shutil.copytree(manifest.out, out)
    meta = json.loads((out / "evalset/meta.json").read_text())
    meta["tokenizer"]["source"] = str(tmp_path / "gone")
    (out / "evalset/meta.json").write_text(json.dumps(meta))
    ex = draw_examples(out, runs, Sampling(per_cell=1))
    dec = decoding_for(out, ex)
    assert dec.pieces is None
    assert dec.note.startswith("Token ids are shown instead of text") and "gone" in dec.note
    (out / "evalset/meta.json").unlink()
    assert "meta.json is missing" in decoding_for(out, ex).note


def test_the_budget_lowers_the_draw_and_says_so(world):
    manifest, tokens, runs = world
    ex = draw_examples(manifest.out, runs, Sampling())
    dec = Decoding(None, "ids")
    full = fit_to_budget(ex, runs, Sampling(), dec)
    assert full.sampling.per_cell == 40 and not full.note and full.examples == ex.height
    budget = len(full.data.encode()) // 3
    small = fit_to_budget(ex, runs, Sampling(), dec, budget)
    assert len(small.data.encode()) <= budget and small.sampling.per_cell < 40 and not small.note
    data = json.loads(small.data)
    assert f"Up to {small.sampling.per_cell} token" in data["sampling"]
    assert len(data["ex"]["tok"]) == small.examples == \
        ex.filter(pl.col("rank") < small.sampling.per_cell).height
    tiny = len(full.data.encode()) // 40
    small = fit_to_budget(ex, runs, Sampling(), dec, tiny)
    assert len(small.data.encode()) <= tiny and small.sampling.per_cell == 1
    assert small.note and small.note in json.loads(small.data)["sampling"]
    assert len(json.loads(small.data)["ex"]["tok"]) == small.examples


def _awkward(ex: pl.DataFrame) -> pl.DataFrame:
    """``ex`` with numbers that round the other way under numpy's scaling (ties such as 2.675),
    negative zeros, huge and missing values, and a gap in one sequence's known positions."""
    n = ex.height
    rng = np.random.default_rng(1)
    ties = np.round(rng.normal(0, 4, n), 3) + 0.0005
    tau_se = np.where(np.arange(n) % 7 == 0, 3e20, np.where(np.arange(n) % 5 == 0, np.nan, ties))
    loss = ex["loss"].to_list()
    for i, row in enumerate(loss):
        row[0] = -0.004 if i % 2 else 2.675
        row[-1] = 1.005 if i % 3 else None
    others = ex["others"].to_list()
    for i, row in enumerate(others):
        if i % 3 == 0:  # this token's fit missing from the first run: null in the page
            others[i] = [o for o in row if o["run"] != row[0]["run"]]
        elif i % 3 == 1:
            row[-1]["tau"] = None
    return ex.with_columns(hi=pl.Series(ties), tau_se=pl.Series(tau_se),
                           others=pl.Series(others, dtype=ex["others"].dtype),
                           lo=pl.Series(-ties / 1e4), k=pl.Series(ties * 1e9),
                           loss=pl.Series(loss, dtype=pl.List(pl.Float64)))


@pytest.mark.parametrize("share", [1, 3, 40])
def test_the_page_data_equals_the_plain_one_number_at_a_time_json(world, share):
    """Byte for byte what writing every value with Python's round gives (explorer_oracle), at
    the same draw the oracle finds by writing each candidate in full."""
    manifest, tokens, runs = world
    ex = _awkward(draw_examples(manifest.out, runs, Sampling()))
    dec = decoding_for(manifest.out, ex)
    full, _, _ = oracle.fit_to_budget(ex, runs, Sampling(), dec, 10**9)
    want, sampling, note = oracle.fit_to_budget(ex, runs, Sampling(), dec,
                                                len(full.encode()) // share)
    got = fit_to_budget(ex, runs, Sampling(), dec, len(full.encode()) // share)
    assert (got.sampling, got.note) == (sampling, note)
    assert got.data == want
    for s in ("-0.0", "2.67,", "3e+20", "null", "[null,"):
        assert s in got.data


def test_sizes_are_known_before_the_json_is_written(world):
    manifest, tokens, runs = world
    ex = _awkward(draw_examples(manifest.out, runs, Sampling()))
    dec = decoding_for(manifest.out, ex)
    meta = _runs_meta(runs, 3)
    head = {"runs": meta, "kinds": ["a"], "bands": ["b"], "band_keys": ["c"], "ctx_n": 20,
            "decoding": "<&>", "pieces": {str(k): v for k, v in dec.pieces.items()}}
    page = Payload(ex, meta, head)
    rng = np.random.default_rng(0)
    for p in (1.0, 0.5, 0.1, 0.0):
        rows = rng.random(ex.height) < p
        rows[rng.integers(ex.height)] = True
        text = page.json(rows, "sampled é <b>")  # bytes, not characters; escapes counted
        assert page.size(rows, "sampled é <b>") == len(text.encode())
        assert len(json.loads(text)["ex"]["tok"]) == rows.sum()


def test_the_script_is_the_package_file_inlined(world):
    manifest, tokens, runs = world
    js = (Path(explorer.__file__).parent / "explorer.js").read_text(encoding="utf-8")
    assert "function draw()" in js and js.count("\n") > 100  # readable, not one minified line
    frag = explorer_blocks(manifest.out, runs)[1].html
    assert js in frag and frag.count("<script") == 2
