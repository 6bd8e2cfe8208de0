"""Censored fits and seed replicas in the token explorer: a token planted with tau before the
first checkpoint (and an extrapolated hi of hundreds of nats) is said to be learned before the
first checkpoint and its hi is never printed; the example's seed replicas are marked and their
agreement given."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from spectrum.analysis.runs.run_data import load_runs
from spectrum.manifest import load_manifest
from spectrum.report.examples import draw_examples
from spectrum.report.explorer import explorer_blocks, seed_replicas
from spectrum.store import write_parquet
from spectrum.tools.screenshot import dump_dom, find_chromium, screenshot
from tests.examples_world import explorer_world

RUNS = [("m1-d1", 1e5, 1e6, "fit", 0), ("m1-d1-s1", 1e5, 1e6, "fit", 1),
        ("m1-d1-s2", 1e5, 1e6, "fit", 2), ("m3-d3", 1e6, 1e7, "fit", 0)]
HI = 563.4  # the extrapolated asymptote the page must never print


def _plant(out: Path, run: str, token: int, tau: float, *, with_column: bool) -> None:
    """Token ``token`` of ``run`` learned at ``tau``, hi extrapolated to HI; ``with_column``:
    the fits carry ``censored`` (as the fit stage writes them), else they predate it."""
    path = out / "fits" / f"run={run}" / "part-0.parquet"
    f = pl.read_parquet(path)
    at = pl.col("token_idx") == token
    f = f.with_columns(tau=pl.when(at).then(tau).otherwise(pl.col("tau")),
                       hi=pl.when(at).then(HI).otherwise(pl.col("hi")),
                       lo=pl.when(at).then(1.82).otherwise(pl.col("lo")),
                       kind=pl.when(at).then(pl.lit("learned")).otherwise(pl.col("kind")))
    if with_column:
        f = f.with_columns(censored=pl.when(at).then(pl.lit("hi")).otherwise(pl.lit("none")))
    write_parquet(f.to_arrow(), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("censored")
    path = explorer_world(root, None, n_seq=8, context=16, n_steps=10, runs=RUNS)
    manifest = yaml.safe_load(path.read_text())
    for spec, run in zip(manifest["runs"], RUNS):
        spec["seed"] = run[4]
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = root / "artifacts"
    x_first = float(np.log(1 * 1000))  # step 1, 1000 tokens per step: the first checkpoint
    _plant(out, "m1-d1", 5, x_first - 1.5, with_column=False)
    _plant(out, "m1-d1-s1", 5, x_first - 1.0, with_column=True)
    runs = load_runs(load_manifest(path))
    return out, runs, x_first


def test_the_examples_carry_the_censored_side(world):
    out, runs, x_first = world
    ex = draw_examples(out, runs)
    row = ex.filter((pl.col("run") == "m1-d1") & (pl.col("token_idx") == 5))
    assert row["censored"].to_list() == ["hi"] and row["band_name"][0] == "before first checkpoint"
    others = {o["run"]: o for o in row["others"][0]}
    assert others["m1-d1-s1"]["censored"] == "hi" and others["m1-d1-s2"]["censored"] == "none"
    # every other token: censored exactly where tau lies outside the run's fitted checkpoints
    for r in runs:
        mine = ex.filter(pl.col("run") == r.name)
        x = r.x[r.scored]
        tau = mine["tau"].to_numpy()
        expect = np.where(tau < x.min(), "hi", np.where(tau > x.max(), "lo", "none"))
        assert mine["censored"].to_list() == expect.tolist()


def test_seed_replicas_are_the_runs_of_the_point_with_another_seed(world):
    _, runs, _ = world
    names = [r.name for r in runs]
    reps = {names[i]: {names[j] for j in js} for i, js in enumerate(seed_replicas(runs))}
    assert reps == {"m1-d1": {"m1-d1-s1", "m1-d1-s2"}, "m1-d1-s1": {"m1-d1", "m1-d1-s2"},
                    "m1-d1-s2": {"m1-d1", "m1-d1-s1"}, "m3-d3": set()}


def _page(out: Path, runs, path: Path) -> Path:
    html = next(b.html for b in explorer_blocks(out, runs) if b.kind == "html")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{html}"
                    "</body></html>", encoding="utf-8")
    return path


def _card(dom: str, run: str, token: int) -> str:
    m = re.search(rf'<div class="token-example" data-run="{run}"[^>]*data-token="{token}"'
                  rf'[^>]*>(.*?)</svg>(.*?)</div></div></div>', dom, re.S)
    assert m, f"no card of token {token} in {run}"
    return re.sub(r"<[^>]+>", " ", m.group(2))


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed")
def test_the_page_says_learned_before_the_first_checkpoint(world, tmp_path):
    out, runs, _ = world
    page = _page(out, runs, tmp_path / "explorer.html")
    dom = dump_dom(page, "run=m1-d1&kind=learned&band=before")
    assert 'data-censored="hi"' in dom
    text = _card(dom, "m1-d1", 5)
    assert "learned before the first checkpoint" in text
    assert "563" not in dom.split('id="token-explorer-data"')[0] + text  # never printed
    assert "m1-d1-s1 [seed replica] before the first checkpoint (learned)" in text
    assert "m1-d1-s2 [seed replica]" in text and "m3-d3 [seed replica]" not in text
    assert "seed replicas (m1-d1, m1-d1-s1, m1-d1-s2)" in text
    assert "2 with tau outside the checkpoints" in text
    # an uncensored token: the spread of tau across the three replicas against its error
    dom = dump_dom(page, "run=m1-d1-s2&kind=learned&band=middle")
    m = re.search(r"spread of tau ([\d.]+) \(SD over 3 runs\) against a standard error of "
                  r"([\d.]+) \(([\d.]+)×\)", dom)
    assert m and float(m.group(2)) == pytest.approx(0.05, abs=0.006)
    screenshot(page, tmp_path / "censored.png", "run=m1-d1&kind=learned&band=before",
               size=(1000, 500))
