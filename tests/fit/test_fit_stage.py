"""The fit stage end to end on loss shards written here: fits, skip-if-current, stale refits."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
import yaml

from pipelines import fit as stage
from spectrum.fit import worker as worker_module
from spectrum.fit.runs import fit_steps
from pipelines.cli import main as cli
from spectrum.errors import SpectrumError
from spectrum.manifest import load_manifest
from spectrum.fit.model import model
from spectrum.store import read_provenance, write_parquet
from spectrum.layout import fits_file, loss_shard
from spectrum.losses.trajectories import log_tokens

TPS = 1024
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def write_manifest(folder, runs):
    data = {"out": "artifacts",
            "runs": [{"name": name, "params": 1e6, "tokens": 1e9, "tokens_per_step": TPS,
                      "role": "fit", "checkpoints": f"runs/{name}"} for name in runs]}
    path = folder / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_manifest(path)


def write_shards(out, run, steps, losses, token_idx, *, tag="ck"):
    for j, step in enumerate(steps):
        keep = np.isfinite(losses[:, j])
        table = pa.table({"token_idx": pa.array(token_idx[keep], pa.int64()),
                          "loss": pa.array(losses[keep, j], pa.float32())})
        write_parquet(table, loss_shard(out, run, step),
                      {"run": run, "step": step, "tokens": step * TPS,
                       "checkpoint_hash": f"{tag}-{step}", "evalset_hash": "e"})


@pytest.fixture()
def setup(tmp_path):
    manifest = write_manifest(tmp_path, ["a"])
    rng = np.random.default_rng(0)
    n = 60
    x = log_tokens(STEPS, TPS)
    p = np.stack([rng.uniform(0.5, 2, n), rng.uniform(3, 5, n),
                  rng.uniform(x[2], x[-3], n), rng.uniform(1, 3, n)], axis=1)
    clean = model(torch.tensor(x), torch.tensor(p)).numpy()
    losses = np.concatenate([np.full((n, 1), 10.0), clean], axis=1)  # step 0: the initial loss
    losses = (losses + 0.01 * rng.standard_normal(losses.shape)).astype(np.float32)
    losses[5, 3] = np.nan  # token 5 missing from one shard
    token_idx = np.arange(n) * 2  # not contiguous
    write_shards(manifest.out, "a", STEPS, losses, token_idx)
    return manifest, p, token_idx


def args(**kw):
    return stage.FitStageOptions(**{"device": "cpu", "fit_dtype": "float64", "chunk_size": 25,
                                    **kw})


def test_fits_every_token_and_records_provenance(setup, capsys):
    manifest, truth, token_idx = setup
    stage.main(manifest, args())
    path = fits_file(manifest.out, "a")
    df = pl.read_parquet(path)
    assert df["token_idx"].to_list() == token_idx.tolist()
    assert df.columns[:5] == ["token_idx", "lo", "hi", "tau", "k"]
    assert {"lo_se", "hi_se", "tau_se", "k_se", "rss", "r2", "n_iter", "status",
            "kind"} <= set(df.columns)
    assert (df["status"] == "converged").all()
    assert (df["kind"] == "learned").sum() >= 55
    np.testing.assert_allclose(df["tau"].to_numpy(), truth[:, 2], atol=0.1)
    prov = read_provenance(path)
    assert prov["steps"] == STEPS[1:]  # step 0 is not on the log axis
    np.testing.assert_allclose(prov["x"], log_tokens(STEPS, TPS))
    assert prov["options"]["k_max"] > 0 and prov["thresholds"]["min_delta"] > 0


def test_current_fits_are_skipped_and_stale_ones_refitted(setup, capsys):
    manifest, _, token_idx = setup
    path = fits_file(manifest.out, "a")
    stage.main(manifest, args())
    first = path.stat().st_mtime_ns
    capsys.readouterr()
    stage.main(manifest, args())
    assert path.stat().st_mtime_ns == first
    assert "1 current run(s) skipped" in capsys.readouterr().err
    # a shard recomputed from another checkpoint makes the fits stale
    losses = np.full((len(token_idx), 1), 1.5, dtype=np.float32)
    write_shards(manifest.out, "a", [64], losses, token_idx, tag="other")
    stage.main(manifest, args())
    assert "stale" in capsys.readouterr().err
    assert path.stat().st_mtime_ns != first
    # other options make them stale too; --force refits current ones
    stage.main(manifest, args(fit_dtype="float32"))
    assert read_provenance(path)["dtype"] == "float32"
    before = path.stat().st_mtime_ns
    stage.main(manifest, args(fit_dtype="float32", force=True))
    assert path.stat().st_mtime_ns != before


def test_too_few_checkpoints_is_a_user_error_naming_the_run(tmp_path):
    manifest = write_manifest(tmp_path, ["ok", "short", "none"])
    rng = np.random.default_rng(1)
    write_shards(manifest.out, "ok", STEPS, rng.random((4, len(STEPS))).astype(np.float32),
                 np.arange(4))
    write_shards(manifest.out, "short", [0, 1, 2, 4, 8], rng.random((4, 5)).astype(np.float32),
                 np.arange(4))
    with pytest.raises(SpectrumError) as e:
        stage.main(manifest, args())
    text = str(e.value)
    assert "run short: 4 checkpoint(s)" in text and "run none: no loss shards" in text
    assert "run ok" not in text


def test_command_line(setup, capsys):
    manifest, _, _ = setup
    assert cli(["fit", "--config", str(manifest.path), "--device", "cpu",
                "--chunk-size", "1000"]) == 0
    assert fits_file(manifest.out, "a").is_file()
    assert cli(["fit", "--config", str(manifest.path), "--chunk-size", "0"]) == 2
    assert "--chunk-size must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_real_trajectories_of_the_micro_suite_against_scipy(micro_suite, tmp_path):
    """The fit stage on the micro suite's real loss shards: RSS no worse than scipy's."""
    import shutil
    import warnings

    from scipy.optimize import curve_fit
    from scipy.special import expit

    from spectrum.fit.solver import FitOptions
    from spectrum.fit.model import guess
    from spectrum.losses.trajectories import load_losses

    path = tmp_path / "suite" / micro_suite.name
    shutil.copytree(micro_suite.parent, path.parent, symlinks=True)
    assert cli(["evalset", "--config", str(path)]) == 0
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    assert cli(["fit", "--config", str(path), "--device", "cpu", "--fit-dtype", "float64"]) == 0
    manifest = load_manifest(path)
    opts = FitOptions()
    ok, total = 0, 0
    for run in manifest.runs:
        steps = fit_steps(manifest.out, run)
        x = log_tokens(steps, run.tokens_per_step)
        y = load_losses(manifest.out, run.name, steps=steps).losses.astype(np.float64)
        fits = pl.read_parquet(fits_file(manifest.out, run.name))
        lb, ub = opts.bounds(x)
        p0 = guess(torch.tensor(y), torch.tensor(x)).numpy()
        for i in range(len(y)):
            if fits["status"][i] in ("too_few_points", "constant"):
                continue
            start = p0[i].copy()
            start[2:] = np.clip(start[2:], lb[2:] + 1e-9, ub[2:] - 1e-9)

            def f(xx, lo, hi, tau, k):
                return lo + (hi - lo) * expit(-k * (xx - tau))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    p, _ = curve_fit(f, x, y[i], p0=start, bounds=(lb, ub), method="trf",
                                     ftol=1e-14, xtol=1e-14, gtol=1e-14, max_nfev=5000)
                except RuntimeError:
                    p = start
            theirs = np.sum((y[i] - f(x, *p)) ** 2)
            total += 1
            ok += fits["rss"][i] <= theirs * (1 + 1e-6) + 1e-20 * np.sum(y[i] ** 2)
    assert total >= 1000 and ok / total >= 0.999


def test_messages_go_to_stderr_and_follow_quiet_and_verbose(setup, capsys):
    manifest, _, _ = setup
    base = ["--config", str(manifest.path), "--device", "cpu", "--chunk-size", "1000"]
    assert cli(["-q", "fit", *base]) == 0  # fits the run: no message, no bar
    assert capsys.readouterr() == ("", "")
    assert cli(["fit", *base]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "1 current run(s) skipped" in err and "is current" not in err
    assert cli(["fit", *base, "--verbose"]) == 0
    assert "fit: run a: " in capsys.readouterr().err  # the debug line of the skipped run
    assert cli(["fit", *base, "--chunk-size", "0", "-q"]) == 2  # errors are said even when quiet
    assert capsys.readouterr().err.startswith("error: --chunk-size")

def test_units_on_a_local_ray_with_two_workers_equal_a_local_run(setup, tmp_path, capsys):
    """(run, token chunk) units fitted by two Ray workers give the fits of a run in this process,
    for two runs whose chunks interleave between the workers."""
    pytest.importorskip("ray")
    import shutil

    manifest, _, _ = setup
    shutil.copytree(manifest.out / "losses" / "run=a", manifest.out / "losses" / "run=b")
    manifest = write_manifest(manifest.path.parent, ["a", "b"])
    stage.main(manifest, args(chunk_size=16))
    local = {r: pl.read_parquet(fits_file(manifest.out, r)) for r in ("a", "b")}
    stage.main(manifest, args(chunk_size=16, force=True, ray_address="local", workers=2,
                              cpus_per_worker=1))
    assert "2 run(s) fitted" in capsys.readouterr().err
    for r in ("a", "b"):
        ray_fits = pl.read_parquet(fits_file(manifest.out, r))
        assert ray_fits["token_idx"].to_list() == local[r]["token_idx"].to_list()
        assert ray_fits["status"].to_list() == local[r]["status"].to_list()
        for col in ("lo", "hi", "tau", "k", "rss", "tau_se"):
            np.testing.assert_allclose(ray_fits[col].to_numpy(), local[r][col].to_numpy(),
                                       rtol=1e-9, atol=1e-12)


def test_a_shard_out_of_order_fails_its_run_and_names_the_file(setup):
    manifest, _, token_idx = setup
    bad = loss_shard(manifest.out, "a", 64)
    table = pa.table({"token_idx": pa.array(token_idx[::-1].copy(), pa.int64()),
                      "loss": pa.array(np.ones(len(token_idx), np.float32))})
    write_parquet(table, bad, {"run": "a", "step": 64})
    with pytest.raises(SpectrumError) as e:
        stage.main(manifest, args())
    assert str(bad) in str(e.value) and "not sorted" in str(e.value)
    assert not fits_file(manifest.out, "a").exists()


def test_the_worker_reads_the_next_unit_while_it_fits_this_one(setup, monkeypatch):
    """Reads happen in order on the reader thread, the next unit's before this one's fit ends."""
    import threading

    manifest, _, _ = setup
    plan = stage.check_runs(manifest)
    settings = worker_module.FitSettings(str(manifest.out), plan,
                                         {"a": log_tokens(plan["a"], TPS).tolist()}, "cpu",
                                         "float64", stage.FitOptions(), stage.KindThresholds())
    worker = worker_module.FitWorker(settings)
    events, real_read, real_fit = [], worker._read, worker_module.fit_chunk

    def read(unit):
        events.append(("read", unit.start, threading.current_thread() is threading.main_thread()))
        return real_read(unit)

    def fit(chunk, *a):
        worker.pending[units[1]].result()  # the next unit's read is under way: it finishes
        events.append(("fit", int(chunk.token_idx[0]), True))
        return real_fit(chunk, *a)

    monkeypatch.setattr(worker, "_read", read)
    monkeypatch.setattr(worker_module, "fit_chunk", fit)
    units = [worker_module.FitUnit("a", 0, 50), worker_module.FitUnit("a", 50, 100)]
    worker.prefetch(units[1])
    part = worker.process(units[0])
    assert events == [("read", 0, False), ("read", 50, False), ("fit", 0, True)]
    assert part.token_idx.tolist() == list(range(0, 50, 2))


def test_the_worker_waits_for_the_warm_up_it_is_given_before_its_first_fit(setup, monkeypatch):
    """The driver's warm-up thread is handed to the in-process worker, which joins it once,
    before its first fit (and not before the next ones)."""
    manifest, _, _ = setup
    plan = stage.check_runs(manifest)
    settings = worker_module.FitSettings(str(manifest.out), plan,
                                         {"a": log_tokens(plan["a"], TPS).tolist()}, "cpu",
                                         "float64", stage.FitOptions(), stage.KindThresholds())
    events = []

    class WarmUp:
        def join(self):
            events.append("joined")

    worker = worker_module.FitWorker(settings, WarmUp())
    worker.warm = False  # as in a process whose solver has not compiled yet
    real_fit = worker_module.fit_chunk

    def fit(chunk, *a):
        events.append("fit")
        return real_fit(chunk, *a)

    monkeypatch.setattr(worker_module, "fit_chunk", fit)
    worker.process(worker_module.FitUnit("a", 0, 50))
    worker.process(worker_module.FitUnit("a", 50, 100))
    assert events == ["joined", "fit", "fit"]
