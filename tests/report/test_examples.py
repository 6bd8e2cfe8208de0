"""The stratified, seeded examples: cells, caps, seeds, trajectories, contexts and other runs,
each checked against the artifacts read back independently."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from spectrum.analysis.runs.run_data import load_runs
from spectrum.errors import SpectrumError
from spectrum.report.examples import (DRAWN_KINDS, Sampling, band_of, draw_examples,
                                      examples_for, frequency_quartile)
from tests.examples_world import loaded_explorer_world
from tests.synthetic import DEFAULT_RUNS, TOKENS_PER_STEP

RUNS = [r for r in DEFAULT_RUNS if r[0] in ("m1-d1", "m3-d3", "m2-d2")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return loaded_explorer_world(tmp_path_factory.mktemp("examples"), n_seq=16, context=24,
                                 n_steps=12, runs=RUNS)


def _band_truth(tau, steps):
    """Band by hand: the run's measured range cut in three equal parts of ln T."""
    x = np.log(np.asarray(steps, float) * TOKENS_PER_STEP)
    a, b = x.min(), x.max()
    w = (b - a) / 3
    return np.select([tau < a, tau <= a + w, tau <= a + 2 * w, tau <= b], [0, 1, 2, 3], 4)


def test_cells_are_capped_and_counted(world):
    manifest, tokens, runs = world
    ex = draw_examples(manifest.out, runs, Sampling(per_cell=5))
    freq = tokens["target_freq"].to_numpy()
    q_edges = np.quantile(freq, [0.25, 0.5, 0.75])
    for r in runs:
        f = pl.read_parquet(manifest.out / "fits" / f"run={r.name}" / "part-0.parquet")
        f = f.join(tokens, on="token_idx").filter(pl.col("kind").is_in(DRAWN_KINDS))
        steps = [s for s in r.steps if s > 0]
        truth = f.with_columns(
            band=pl.Series(_band_truth(f["tau"].to_numpy(), steps)),
            fq=pl.Series(1 + (f["target_freq"].to_numpy()[:, None] > q_edges).sum(1)))
        sizes = truth.group_by("band", "kind", "fq", "word_start").len()
        mine = ex.filter(pl.col("run") == r.name)
        got = mine.group_by("band", "kind", "freq_quartile", "word_start").agg(
            n=pl.len(), size=pl.col("cell_size").first())
        joined = sizes.join(got, left_on=["band", "kind", "fq", "word_start"],
                            right_on=["band", "kind", "freq_quartile", "word_start"], how="left")
        assert joined["n"].null_count() == 0  # every cell is drawn from
        assert (joined["size"] == joined["len"]).all()
        assert (joined["n"] == joined["len"].clip(upper_bound=5)).all()
        assert mine.height == int(joined["n"].sum())
        # each example is in the cell its fit says
        check = mine.join(truth.select("token_idx", tb="band", tk="kind"), on="token_idx")
        assert (check["band"] == check["tb"]).all() and (check["kind"] == check["tk"]).all()


def test_draws_are_seeded_and_nested(world):
    manifest, tokens, runs = world
    a = draw_examples(manifest.out, runs, Sampling(per_cell=3, seed=1))
    b = draw_examples(manifest.out, runs, Sampling(per_cell=3, seed=1))
    c = draw_examples(manifest.out, runs, Sampling(per_cell=3, seed=2))
    big = draw_examples(manifest.out, runs, Sampling(per_cell=8, seed=1))
    key = ["run", "token_idx"]
    assert a.select(key).equals(b.select(key))
    assert not a.select(key).sort(key).equals(c.select(key).sort(key))
    assert a.select(key).join(big.select(key), on=key, how="anti").height == 0


def test_trajectories_contexts_and_other_runs_match_the_files(world):
    manifest, tokens, runs = world
    ex = draw_examples(manifest.out, runs, Sampling(per_cell=2, context=5))
    seqs = {s: np.asarray(i) for s, i in
            pl.read_parquet(manifest.out / "evalset" / "sequences.parquet").iter_rows()}
    fits = {r.name: pl.read_parquet(manifest.out / "fits" / f"run={r.name}" / "part-0.parquet")
            for r in runs}
    rows = ex.sample(12, seed=0).iter_rows(named=True)
    for row in rows:
        run = next(r for r in runs if r.name == row["run"])
        for j, step in enumerate(run.steps):
            shard = pq.read_table(manifest.out / "losses" / f"run={row['run']}" / f"step={step}"
                                  / "part-0.parquet").to_pydict()
            at = shard["token_idx"].index(row["token_idx"])
            assert row["loss"][j] == pytest.approx(shard["loss"][at])
        assert np.allclose(row["ln_T"], np.log(run.steps * TOKENS_PER_STEP))
        ids = seqs[row["seq_id"]]
        assert ids[row["pos"]] == row["target_id"]
        assert row["context_ids"] == ids[max(0, row["pos"] - 5):row["pos"]].tolist()
        assert {o["run"] for o in row["others"]} == set(fits)
        for o in row["others"]:
            f = fits[o["run"]].filter(pl.col("token_idx") == row["token_idx"])
            assert o["tau"] == pytest.approx(f["tau"][0]) and o["kind"] == f["kind"][0]
        assert row["step_preferred"] is None  # the synthetic fits hold no verdict


def test_step_verdict_is_carried_when_the_fits_hold_it(world, tmp_path):
    import dataclasses
    import shutil

    manifest, tokens, _ = world
    out = tmp_path / "artifacts"
    shutil.copytree(manifest.out, out)
    path = out / "fits" / "run=m3-d3" / "part-0.parquet"
    f = pl.read_parquet(path)
    f.with_columns(step_preferred=pl.col("token_idx") % 3 == 0).write_parquet(path)
    runs = load_runs(dataclasses.replace(manifest, out=out))
    ex = draw_examples(out, runs, Sampling(per_cell=2))
    mine = ex.filter(pl.col("run") == "m3-d3")
    assert (mine["step_preferred"] == (mine["token_idx"] % 3 == 0)).all()
    assert ex.filter(pl.col("run") != "m3-d3")["step_preferred"].null_count() == \
        ex.filter(pl.col("run") != "m3-d3").height


def test_a_sequence_that_disagrees_with_the_tokens_is_named(world, tmp_path):
    import shutil

    manifest, tokens, runs = world
    out = tmp_path / "artifacts"
    shutil.copytree(manifest.out, out)
    seqs = pl.read_parquet(out / "evalset" / "sequences.parquet")
    seqs.with_columns(pl.col("input_ids").list.eval(pl.element() + 1)).write_parquet(
        out / "evalset" / "sequences.parquet")
    with pytest.raises(SpectrumError, match="sequences.parquet: sequence .* does not hold"):
        draw_examples(out, runs, Sampling(per_cell=1))


def test_the_frame_for_the_notebook_decodes_its_text(world):
    manifest, _, _ = world
    import json

    from transformers import AutoTokenizer

    ex = examples_for(manifest, Sampling(per_cell=1, context=4))
    src = json.loads((manifest.out / "evalset" / "meta.json").read_text())["tokenizer"]["source"]
    tk = AutoTokenizer.from_pretrained(src, local_files_only=True)
    for row in ex.head(10).iter_rows(named=True):
        assert row["target_text"] == tk.decode([row["target_id"]])
        assert row["context_text"] == tk.decode(row["context_ids"])


def test_bands_and_quartiles():
    x = np.log([1e3, 1e4, 1e5, 1e6])
    tau = np.array([5.0, np.log(2e3), np.log(2e4), np.log(3e5), np.log(1e6), 20.0, np.nan])
    assert band_of(tau, x, 3).tolist() == [0, 1, 2, 3, 3, 4, -1]
    q = frequency_quartile(np.arange(100.0))
    assert np.bincount(q).tolist() == [0, 25, 25, 25, 25]
    with pytest.raises(SpectrumError, match="per_cell"):
        Sampling(per_cell=0)
