"""The explorer's fragment: self-contained, script-safe, within its size budget, and honest about
decoding."""

import json
import re
import shutil

import polars as pl
import pytest

from spectrum.report.examples import Sampling, draw_examples
from spectrum.report.explorer import (Decoding, decoding_for, explorer_blocks, fit_to_budget,
                                      render)
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
    data, _, _ = fit_to_budget(ex, runs, Sampling(per_cell=1), dec)
    frag = render(data)
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
    full, used, note = fit_to_budget(ex, runs, Sampling(), dec)
    assert used.per_cell == 40 and not note
    budget = len(full.encode()) // 3
    small, used, note = fit_to_budget(ex, runs, Sampling(), dec, budget)
    assert len(small.encode()) <= budget and used.per_cell < 40 and not note
    data = json.loads(small)
    assert f"Up to {used.per_cell} tokens per cell" in data["sampling"]
    assert len(data["ex"]["tok"]) == ex.filter(pl.col("rank") < used.per_cell).height
    tiny = len(full.encode()) // 40
    small, used, note = fit_to_budget(ex, runs, Sampling(), dec, tiny)
    assert len(small.encode()) <= tiny and used.per_cell == 1
    assert note and note in json.loads(small)["sampling"]
