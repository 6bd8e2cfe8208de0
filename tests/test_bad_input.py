"""Bad input, built on the spot: each case ends in one line naming the file, run, checkpoint or
option at fault, a non-zero exit and no traceback, and leaves what was already written as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipelines.cli import main as cli
from spectrum.layout import fits_file, loss_shard

ROOT = Path(__file__).resolve().parents[1]


def _copy(manifest: Path, dst: Path, *, losses: bool = True) -> Path:
    shutil.copytree(manifest.parent, dst, symlinks=True,
                    ignore=None if losses else shutil.ignore_patterns("losses"))
    return dst / manifest.name


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden caches aside), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.parts}


def errors(err: str) -> list[str]:
    """The error lines of a command's stderr; a traceback fails the test."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def measured(micro_suite, tmp_path_factory) -> Path:
    """A copy of the micro suite with its evalset, loss shards and fits."""
    path = _copy(micro_suite, tmp_path_factory.mktemp("measured") / "suite")
    assert cli(["evalset", "--config", str(path)]) == 0
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    assert cli(["fit", "--config", str(path), "--device", "cpu"]) == 0
    return path


@pytest.fixture()
def suite(measured, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """(manifest, out folder, snapshot of out) of a fresh copy of the measured suite."""
    path = _copy(measured, tmp_path / "suite")
    out = path.parent / "artifacts"
    return path, out, snapshot(out)


def _edit_manifest(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# 1. two runs reading the same checkpoints
def test_two_runs_with_one_checkpoint_folder_are_refused_naming_both(suite, capfd):
    path, out, before = suite
    _edit_manifest(path, lambda d: d["runs"][1].update(checkpoints=d["runs"][0]["checkpoints"]))
    for argv in (["losses", "--executor", "local"], ["fit"]):
        assert cli([*argv, "--config", str(path)]) == 2
        [line] = errors(capfd.readouterr().err)
        assert "runs[1] (m2-d1).checkpoints: folder" in line
        assert "also the checkpoint source of runs[0] (m1-d1)" in line
    assert snapshot(out) == before


def test_a_run_folder_that_is_a_file_is_called_a_file(write_micro_manifest, tmp_path, capfd):
    path = write_micro_manifest(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "m1-d1").write_text("not a folder")
    assert cli(["losses", "--config", str(path)]) == 2
    lines = errors(capfd.readouterr().err)
    assert any("runs[0] (m1-d1).checkpoints: folder runs/m1-d1 is a file, not a folder" in line
               for line in lines), lines


# 2. config.json that does not fit the weights
@pytest.mark.parametrize("change, says", [(+1, "weights of the model are missing"),
                                          (-1, "weights of the checkpoint have no place")])
def test_a_config_that_does_not_fit_the_weights_fails_its_checkpoint(suite, capfd, change, says):
    path, out, before = suite
    ckpt = path.parent / "runs" / "m2-d1" / "checkpoint-24"
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] += change
    (ckpt / "config.json").write_text(json.dumps(config))
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 1
    err = capfd.readouterr().err
    lines = errors(err)
    assert lines[0].startswith(f"error: checkpoint {ckpt}: its weights do not fit its "
                               f"config.json: ") and says in lines[0]
    # shown as it happens, then again above the summary
    assert "1 checkpoints failed" in lines[-1] and set(lines[:-1]) == {lines[0]}
    assert snapshot(out) == before  # the old shard is kept, not overwritten


# 3. and 4. loss shards that break the contract
def _rewrite(shard: Path, edit) -> None:
    """Rewrite ``shard`` through ``edit(table) -> table``, keeping its provenance."""
    table = pq.read_table(shard)
    meta = table.schema.metadata
    pq.write_table(edit(table).replace_schema_metadata(meta), shard)


BAD_SHARDS = {
    "loss renamed": (lambda t: t.rename_columns(["token_idx", "losses"]), "no column 'loss'"),
    "empty": (lambda t: t.slice(0, 0), "holds 0 tokens, the evalset 496"),
    "string loss": (lambda t: t.set_column(1, "loss", pa.array([str(v) for v in
                                                                t["loss"].to_pylist()])),
                    "column 'loss' is string, not float"),
    "float token_idx": (lambda t: t.set_column(0, "token_idx", t["token_idx"].cast(pa.float64())),
                        "column 'token_idx' is double, not int64"),
    "repeated token_idx": (lambda t: t.set_column(0, "token_idx", pa.array(
        np.minimum(np.arange(t.num_rows), t.num_rows - 2), pa.int64())),
        "token_idx repeats 1 indices"),
    "rows dropped": (lambda t: t.slice(0, t.num_rows - 3), "holds 493 tokens, the evalset 496"),
    "value changed": (lambda t: t.set_column(1, "loss", pa.array(
        t["loss"].to_numpy() + np.float32(0.5))), "does not match the checksum"),
    "not parquet": (None, "not a readable Parquet file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_a_bad_shard_fails_its_run_alone_in_fit_and_is_recomputed_by_losses(measured, suite, capfd,
                                                                            case):
    path, out, before = suite
    edit, says = BAD_SHARDS[case]
    shard = loss_shard(out, "m2-d1", 24)
    if edit is None:
        shard.write_bytes(b"garbage " * 100)
    else:
        _rewrite(shard, edit)
    for run in ("m1-d1", "m2-d1", "m2-d2"):
        fits_file(out, run).unlink()
    assert cli(["fit", "--config", str(path), "--device", "cpu"]) == 1
    lines = errors(capfd.readouterr().err)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"error: loss shard {shard}: ") and says in lines[0], lines
    assert "fit: 2 run(s) fitted, 0 current run(s) skipped, 1 run(s) failed" in lines[1]
    assert fits_file(out, "m1-d1").is_file() and fits_file(out, "m2-d2").is_file()
    assert not fits_file(out, "m2-d1").exists()
    # the losses stage notices the shard is not what it wrote, and rewrites it
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 0
    err = capfd.readouterr().err
    assert f"warning: {shard} is stale (" in err and "1 shards written" in err
    after = snapshot(out)
    others = {k for k in before if k.startswith("losses/")} - {str(shard.relative_to(out))}
    assert {k: after[k] for k in others} == {k: before[k] for k in others}
    original = pq.read_table(loss_shard(measured.parent / "artifacts", "m2-d1", 24))
    assert pq.read_table(shard).equals(original)  # the same losses (the provenance names the copy)


def test_report_names_a_shard_changed_after_the_fits(suite, capfd):
    path, out, _ = suite
    shard = loss_shard(out, "m2-d2", 48)
    _rewrite(shard, BAD_SHARDS["value changed"][0])
    report = out / "report"
    assert cli(["report", "--config", str(path), "--bootstrap", "0"]) == 2
    lines = errors(capfd.readouterr().err)
    assert lines == [f"error: loss shard {shard}: its content does not match the checksum "
                     "recorded when it was written (rows changed after writing); rerun "
                     "`spectrum losses` to rewrite it"]
    assert not report.exists() and not (out / "spectra").exists()


# 5. and 6. evalset files that lack what the later stages read
@pytest.mark.parametrize("case, says", [
    ("meta without tokenizer", "meta.json: no tokenizer (source, vocab_size, vocab_hash)"),
    ("meta not json", "meta.json: not a JSON object"),
    ("sequences garbage", "sequences.parquet: not a readable sequences file"),
    ("sequences shortened", "sequences.parquet: does not hold 16 sequences"),
    ("sequences changed", "sequences.parquet: its token ids do not match the hash in meta.json"),
])
def test_a_broken_evalset_is_refused_in_one_line(suite, capfd, case, says):
    path, out, before = suite
    folder = out / "evalset"
    if case == "meta without tokenizer":
        meta = json.loads((folder / "meta.json").read_text())
        del meta["tokenizer"]
        (folder / "meta.json").write_text(json.dumps(meta))
    elif case == "meta not json":
        (folder / "meta.json").write_text("{ not json")
    elif case == "sequences garbage":
        (folder / "sequences.parquet").write_bytes(b"\x00garbage" * 50)
    else:
        t = pq.read_table(folder / "sequences.parquet")
        if case == "sequences shortened":
            t = t.slice(0, 15)
        else:
            ids = t["input_ids"].to_pylist()
            ids[3][5] = (ids[3][5] + 1) % 320
            t = t.set_column(1, "input_ids", pa.array(ids, pa.list_(pa.int32())))
        pq.write_table(t, folder / "sequences.parquet")
    changed = snapshot(out)
    assert cli(["losses", "--config", str(path), "--executor", "local", "--force"]) == 2
    lines = errors(capfd.readouterr().err)
    assert len(lines) == 1 and f"error: evalset {folder}" in lines[0] and says in lines[0], lines
    assert snapshot(out) == changed


# 7. an evalset drawn with other settings
def test_a_stale_evalset_is_refused_not_reused(suite, capfd):
    path, out, before = suite
    _edit_manifest(path, lambda d: d["evalset"].update(seed=1))
    assert cli(["losses", "--config", str(path), "--executor", "local"]) == 2
    [line] = errors(capfd.readouterr().err)
    assert line == (f"error: evalset {out / 'evalset'} is stale: it was drawn with other settings "
                    f"than {path} (seed changed); rebuild it with `spectrum evalset --config "
                    f"{path}`")
    assert snapshot(out) == before


# 6. options and devices
@pytest.mark.parametrize("argv, line", [
    (["--cpus-per-worker", "0"], "error: --cpus-per-worker must be at least 1, got 0"),
    (["--workers", "0"], "error: --workers must be at least 1, got 0"),
    (["--device", "foo"], "error: --device foo: not a device (expected auto, cpu, cuda or cuda:N)"),
    (["--device", "cuda:99"], "error: --device cuda:99: this machine has "),
    (["--executor", "local", "--device", "cuda:99"], "error: --device cuda:99: this machine has "),
])
def test_bad_options_are_refused_by_name(suite, capfd, argv, line):
    path, out, before = suite
    assert cli(["losses", "--config", str(path), *argv]) == 2
    [found] = errors(capfd.readouterr().err)
    assert found.startswith(line), found
    assert snapshot(out) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_where_there_is_none(suite, capfd, device):
    path, out, before = suite
    for stage in (["losses", "--executor", "local"], ["losses"], ["fit", "--force"]):
        assert cli([*stage, "--config", str(path), "--device", device]) == 2
        [line] = errors(capfd.readouterr().err)
        assert line == (f"error: --device {device}: this machine has no CUDA device; "
                        "use --device cpu (or auto)")
    assert snapshot(out) == before


def test_missing_gpus_are_refused_before_stale_shards_are_announced(suite, capfd):
    path, out, before = suite
    # another dtype makes every shard stale
    assert cli(["losses", "--config", str(path), "--num-gpus", "64", "--dtype", "bfloat16"]) == 2
    err = capfd.readouterr().err
    [line] = errors(err)
    assert line.startswith("error: --num-gpus 64 per worker, but this machine has ")
    assert "stale" not in err
    assert snapshot(out) == before


# 6. the output folder: a file where a folder is needed, read-only, full
def test_a_file_where_an_output_folder_is_needed(suite, capfd):
    path, out, before = suite
    shutil.rmtree(out / "fits")
    (out / "fits").write_text("in the way")
    assert cli(["fit", "--config", str(path), "--device", "cpu"]) == 2
    [line] = errors(capfd.readouterr().err)
    assert line.startswith(f"error: {out / 'fits'}") and "a file stands where a folder" in line
    assert (out / "fits").read_text() == "in the way"


def test_out_that_is_a_file(suite, capfd):
    path, out, _ = suite
    _edit_manifest(path, lambda d: d.update(out="checkpoints.yaml"))
    assert cli(["fit", "--config", str(path)]) == 2
    [line] = errors(capfd.readouterr().err)
    assert line == f"error: {path}: out: {path} is a file, not a folder"


def _spectrum(argv: list[str], *, prefix: list[str] = (), **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*prefix, sys.executable, "-m", "pipelines.cli", *argv],
                          capture_output=True, text=True, env=env, timeout=300, **kw)


def _without_root_powers() -> list[str]:
    """A command prefix under which permissions apply (root ignores them unless it drops
    CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def test_a_read_only_output_folder(suite):
    path, out, before = suite
    (out / "evalset").chmod(0o555)
    try:
        proc = _spectrum(["evalset", "--config", str(path), "--force"],
                         prefix=_without_root_powers())
    finally:
        (out / "evalset").chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    [line] = errors(proc.stderr)
    assert line.startswith(f"error: {out / 'evalset'}") and "read-only" in line, line
    assert snapshot(out) == before


def test_a_full_output_folder(suite):
    """A file-size limit stands in for a full disk: the write fails midway, as on a full disk."""
    import resource
    import signal

    path, out, before = suite

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    proc = _spectrum(["evalset", "--config", str(path), "--force"], preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    [line] = errors(proc.stderr)
    assert line.startswith(f"error: {out / 'evalset'}/") and "larger than" in line, line
    assert snapshot(out) == before
    assert not [p for p in (out / "evalset").iterdir() if p.name.endswith(".tmp")]


# --debug
def test_debug_shows_the_traceback(suite, capfd):
    path, _, _ = suite
    assert cli(["losses", "--config", str(path), "--device", "foo", "--debug"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" in err and "error: --device foo: not a device" in err


def test_an_unexpected_error_is_one_line_and_debug_shows_it(suite, capfd, monkeypatch):
    import pipelines.fit

    path, _, _ = suite

    def broken(manifest, args):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(pipelines.fit, "main", broken)
    assert cli(["fit", "--config", str(path)]) == 3
    assert errors(capfd.readouterr().err) == [
        "error: unexpected RuntimeError: a bug (rerun with --debug to see the traceback, and "
        "report it)"]
    with pytest.raises(RuntimeError, match="a bug"):
        cli(["fit", "--config", str(path), "--debug"])


def test_a_full_disk_is_named_by_path():
    import errno

    from pipelines.cli import os_error_line

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/fits")
    assert os_error_line(full) == "/data/out/fits: no space left on the device"
