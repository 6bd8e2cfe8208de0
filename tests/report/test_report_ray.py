"""The report's per-token passes cut into (pass, token range) units: run by an executor (in this
process, then by two Ray workers) they give the outputs of a run in one piece."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.cli import main as cli
from pipelines.executor import LocalExecutor
from pipelines.report import ExecutorMapper
from spectrum.analysis.evaluation import Options, run_spectra, run_tests
from spectrum.analysis.runs.run_data import load_runs
from spectrum.analysis.spectra.spectrum import log_time_grid
from spectrum.manifest import load_manifest
from tests.helpers import assert_close, assert_frames_close
from tests.synthetic import DEFAULT_RUNS, make_synthetic_artifacts

FAST = ["--bootstrap", "20", "--spectrum-bins", "16"]


def _outputs(out: Path) -> dict:
    return {"scores": json.loads((out / "reconstruction" / "scores.json").read_text()),
            "comparisons": json.loads((out / "spectra" / "comparisons.json").read_text()),
            "spectra": pl.read_parquet(out / "spectra" / "spectra.parquet"),
            "predictions": pl.read_parquet(out / "reconstruction" / "predictions.parquet")}


def assert_same_outputs(a: dict, b: dict) -> None:
    assert_close(a["scores"], b["scores"], "scores.json")
    assert_close(a["comparisons"], b["comparisons"], "comparisons.json")
    assert_frames_close(a["spectra"], b["spectra"], "spectra.parquet")
    assert_frames_close(a["predictions"], b["predictions"], "predictions.parquet")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Four synthetic runs (three fit, one held out) of 12 sequences x 24 tokens (288 tokens)."""
    runs = [r for r in DEFAULT_RUNS if r[0] in ("m1-d1", "m1-d3", "m3-d1", "m2-d2")]
    return make_synthetic_artifacts(tmp_path_factory.mktemp("report-ray"), n_seq=12, context=24,
                                    n_steps=12, runs=runs)


def _analyses(manifest, mapper=None) -> tuple:
    runs = load_runs(manifest, chunk=20)
    edges = log_time_grid([(r.x.min(), r.x.max()) for r in runs], 16)
    opts = Options(n_boot=20)
    kw = {} if mapper is None else {"mapper": mapper}
    sp = run_spectra(runs, edges, opts, **kw)
    scores, preds = run_tests(runs, sp.spectra, edges, opts, **kw)
    return (json.loads(json.dumps(scores)),
            {k: [c.as_dict() for c in v] for k, v in sp.comparisons.items()}, sp.table, preds)


def test_passes_cut_into_token_ranges_equal_one_pass_over_every_token(world):
    manifest = load_manifest(world)
    whole = _analyses(manifest)
    units = ExecutorMapper(LocalExecutor(retries=0), 50)  # 6 ranges of 50 tokens per pass
    cut = _analyses(manifest, units)
    assert_close(whole[0], cut[0], "scores")
    assert_close(whole[1], cut[1], "comparisons")
    assert_frames_close(whole[2], cut[2], "spectra")
    assert_frames_close(whole[3], cut[3], "predictions")
    assert set(cut[3]["test"]) >= {"in_sample", "heldout_runs", "leave_one_run_out"}


@pytest.mark.slow  # about a minute on 2 cores: a local Ray started for one report
def test_report_on_a_local_ray_with_two_workers_equals_a_local_report(world):
    pytest.importorskip("ray")
    out = Path(load_manifest(world).out)
    assert cli(["report", "--config", str(world), *FAST]) == 0
    local = _outputs(out)
    # 288 tokens in chunks of 20, units of 4 chunks: 4 units per pass, two workers
    assert cli(["report", "--config", str(world), *FAST, "--force", "--ray-address", "local",
                "--workers", "2", "--cpus-per-worker", "1", "--token-chunk", "20"]) == 0
    assert_same_outputs(local, _outputs(out))
    scores = local["scores"]
    assert scores["tests"]["heldout_runs"]["targets"]["L"]["predictions"]["param_model"]["r2"] \
        is not None
    assert local["spectra"]["slice_axis"].n_unique() == 4


def test_a_token_range_reads_exactly_those_tokens(world, tmp_path):
    """Ranges that start and stop inside row groups and chunks read those rows of the files."""
    import shutil

    import pyarrow.parquet as pq

    from spectrum.analysis.runs.run_data import load_run

    manifest = load_manifest(world)
    out = tmp_path / "artifacts"
    shutil.copytree(manifest.out, out)
    spec = manifest.runs[0]
    whole = pl.concat(list(load_run(out, spec, chunk=1 << 20, summarize=False)
                           .token_chunks(["tau", "pos"])))
    for path in (out / "evalset" / "tokens.parquet",
                 out / "fits" / f"run={spec.name}" / "part-0.parquet"):
        pq.write_table(pq.read_table(path), path, row_group_size=50)
        assert pq.ParquetFile(path).metadata.num_row_groups == 6
    run = load_run(out, spec, chunk=7, summarize=False)
    assert whole["token_idx"].to_list() == list(range(run.n_tokens))
    for start, stop in ((0, 5), (13, 101), (49, 50), (100, run.n_tokens), (287, 288)):
        got = pl.concat(list(run.token_chunks(["tau", "pos"], start=start, stop=stop)))
        assert_frames_close(whole.slice(start, stop - start), got, f"{start}-{stop}")
