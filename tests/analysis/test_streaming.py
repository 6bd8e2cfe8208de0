"""The report's analyses over token chunks: per-sequence loss sums against a direct group-by of the
shards, and every spectrum, score and example with chunks far smaller than the evaluation set
against the same with one chunk holding every token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from spectrum.analysis.evaluation import Options, run_spectra, run_tests
from spectrum.report.examples import Sampling, draw_examples
from spectrum.analysis.runs.run_data import load_runs
from spectrum.analysis.spectra.spectrum import log_time_grid
from spectrum.losses.shards import write_loss_shard
from spectrum.fit.kinds import STEP_KINDS
from spectrum.manifest import load_manifest
from tests.analysis.oracles import annotation_slices, compute_spectrum, slice_comparisons
from tests.helpers import assert_close
from tests.synthetic import make_synthetic_artifacts

TINY = 37  # tokens per chunk: several chunks, none aligned with a sequence or a row group


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A synthetic world where some tokens of every run have no finite fit (outside the
    population) and one checkpoint of one run has diverged losses (NaN)."""
    m = load_manifest(make_synthetic_artifacts(tmp_path_factory.mktemp("stream"), n_seq=12,
                                               context=24, n_steps=14))
    out = Path(m.out)
    for i, spec in enumerate(m.runs):
        path = out / "fits" / f"run={spec.name}" / "part-0.parquet"
        f = pl.read_parquet(path)
        f.with_columns(tau=pl.when(pl.col("token_idx") % 7 == i).then(float("nan"))
                       .otherwise(pl.col("tau"))).write_parquet(path)
    run = m.runs[0].name
    step = sorted(int(p.name.split("=")[1]) for p in (out / "losses" / f"run={run}").iterdir())[3]
    shard = out / "losses" / f"run={run}" / f"step={step}" / "part-0.parquet"
    table = pq.read_table(shard)
    loss = table.column("loss").to_numpy().copy()
    loss[::5] = np.nan
    write_loss_shard(shard, loss, {"run": run, "step": step})
    return m


def test_sequence_sums_match_a_group_by_of_the_shards(manifest):
    out = Path(manifest.out)
    runs = load_runs(manifest, chunk=TINY)
    tokens = pl.read_parquet(out / "evalset" / "tokens.parquet").select("token_idx", "seq_id")
    for run in runs:
        fits = pl.read_parquet(out / "fits" / f"run={run.name}" / "part-0.parquet")
        pop = fits.select("token_idx", in_pop=pl.all_horizontal(
            [pl.col(c).is_finite() for c in ("lo", "hi", "tau", "k")]))
        for j, step in enumerate(run.steps):
            shard = pl.read_parquet(out / "losses" / f"run={run.name}" / f"step={step}" /
                                    "part-0.parquet")
            long = (shard.filter(pl.col("loss").is_finite()).join(tokens, on="token_idx")
                    .join(pop, on="token_idx"))
            for sums, counts, frame in ((run.seq_sums, run.seq_counts, long),
                                        (run.pop_sums, run.pop_counts,
                                         long.filter(pl.col("in_pop")))):
                g = frame.group_by("seq_id").agg(s=pl.col("loss").cast(pl.Float64).sum(),
                                                 n=pl.len()).sort("seq_id")
                row = run.seq_code(g["seq_id"].to_numpy())
                np.testing.assert_allclose(sums[row, j], g["s"].to_numpy(), rtol=1e-12)
                np.testing.assert_array_equal(counts[row, j], g["n"].to_numpy())
                assert counts[:, j].sum() == frame.height
    assert runs[0].pop_counts.sum() < runs[0].seq_counts.sum()  # some tokens have no finite fit
    assert runs[0].seq_counts[:, 2].sum() < runs[0].seq_counts[:, 1].sum()  # NaN losses left out


def _everything(manifest, chunk: int) -> tuple[dict, pl.DataFrame, pl.DataFrame, dict]:
    runs = load_runs(manifest, chunk=chunk)
    edges = log_time_grid([(r.x.min(), r.x.max()) for r in runs], 16)
    opts = Options(n_boot=30)
    sp = run_spectra(runs, edges, opts)
    scores, preds = run_tests(runs, sp.spectra, edges, opts)
    comps = {k: [c.as_dict() for c in v] for k, v in sp.comparisons.items()}
    return json.loads(json.dumps(scores)), sp.table, preds, comps


def test_tiny_chunks_give_the_same_spectra_scores_and_predictions(manifest):
    whole = _everything(manifest, 1 << 20)
    tiny = _everything(manifest, TINY)
    scores, table, preds, comps = tiny
    assert_close(whole[0], scores)
    assert_close(whole[3], comps)
    assert whole[1].columns == table.columns and whole[2].columns == preds.columns
    assert_close(whole[1].to_dict(as_series=False), table.to_dict(as_series=False))
    assert_close(whole[2].to_dict(as_series=False), preds.to_dict(as_series=False))
    # the tests did run: slices, the held-out runs' per-token model, leave-one-run-out
    assert table["slice_axis"].n_unique() == 4
    assert scores["tests"]["heldout_runs"]["targets"]["L"]["predictions"]["param_model"]["r2"] \
        is not None
    assert "leave_one_run_out" in set(preds["test"])


def test_tiny_chunks_draw_the_same_examples(manifest):
    whole = draw_examples(manifest.out, load_runs(manifest, chunk=1 << 20), Sampling(per_cell=2))
    tiny = draw_examples(manifest.out, load_runs(manifest, chunk=TINY), Sampling(per_cell=2))
    assert whole.height > 10
    assert_frame_equal(whole, tiny, check_exact=True)  # NaN losses equal where both are NaN


def test_a_fits_file_out_of_token_order_is_named(manifest, tmp_path):
    import shutil

    out = tmp_path / "artifacts"
    shutil.copytree(manifest.out, out)
    run = manifest.runs[0].name
    path = out / "fits" / f"run={run}" / "part-0.parquet"
    pl.read_parquet(path).reverse().write_parquet(path)
    from spectrum.analysis.runs.run_data import load_run
    from spectrum.errors import SpectrumError

    with pytest.raises(SpectrumError, match=f"run={run}.*token_idx is not 0..N-1 in order"):
        load_run(out, manifest.runs[0], chunk=TINY)


def test_chunked_spectra_equal_the_spectra_of_the_whole_population(manifest):
    """Against the in-memory functions on every population token at once (a polars join)."""
    runs = load_runs(manifest, chunk=TINY)
    edges = log_time_grid([(r.x.min(), r.x.max()) for r in runs], 16)
    opts = Options(n_boot=30)
    got = run_spectra(runs, edges, opts)
    out = Path(manifest.out)
    tokens = pl.read_parquet(out / "evalset" / "tokens.parquet")
    for run in runs:
        fits = pl.read_parquet(out / "fits" / f"run={run.name}" / "part-0.parquet")
        pop = tokens.join(fits.drop("pos", strict=False), on="token_idx").filter(
            pl.all_horizontal([pl.col(c).is_finite() for c in ("lo", "hi", "tau", "k")]))
        tau, delta = pop["tau"].to_numpy(), (pop["hi"] - pop["lo"]).to_numpy().astype(float)
        seq, kind = pop["seq_id"].to_numpy(), pop["kind"].to_numpy().astype(str)
        inc = np.isin(kind, STEP_KINDS)
        want = compute_spectrum(tau, delta, seq, edges, include=inc, n_boot=30, seed=0)
        mine = got.table.filter((pl.col("run") == run.name) & (pl.col("slice") == "all"))
        np.testing.assert_allclose(mine["S"].to_numpy(), want.S, rtol=1e-10)
        np.testing.assert_allclose(mine["S_hi"].to_numpy(), want.S_hi, rtol=1e-10)
        slices = annotation_slices(pop)
        for s in slices:
            sp = compute_spectrum(tau[s.mask], delta[s.mask], seq[s.mask], edges,
                                  include=inc[s.mask], n_boot=30, seed=0)
            row = got.table.filter((pl.col("run") == run.name) & (pl.col("slice") == s.name))
            np.testing.assert_allclose(row["count_lo"].to_numpy(), sp.count_lo, rtol=1e-10)
            assert row["n_tokens"][0] == s.mask.sum()
        comps = slice_comparisons(tau, delta, seq, kind == "learned", slices, n_boot=30)
        assert len(comps) == 3
        assert_close([c.as_dict() for c in comps],
                     [c.as_dict() for c in got.comparisons[run.name]])
