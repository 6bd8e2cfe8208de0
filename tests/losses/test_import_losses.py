"""``spectrum import-losses``: losses computed elsewhere become shards that fit and report read.

The round trip: the shards written by the losses stage (tiny GPT-NeoX models in an offline hub
cache, under a preset's names) are read back, exported as .npy and as long and wide Parquet,
imported into fresh output folders, and fitted again: the fits equal the original ones. Every
bad input is refused in one line naming its file, with nothing written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.cli import main
from spectrum.layout import evalset_sequences, fits_file, loss_shard, shard_steps
from spectrum.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
STEPS = [0, 2000, 4000, 8000, 16000, 33000, 143000]


def _read_back(out: Path, run: str) -> tuple[list[int], np.ndarray]:
    steps = shard_steps(out, run)
    cols = []
    for s in steps:
        table = pq.read_table(loss_shard(out, run, s))
        assert table.column("token_idx").to_numpy().tolist() == list(range(table.num_rows))
        cols.append(table.column("loss").to_numpy())
    return steps, np.column_stack(cols).astype(np.float32)


def _export(folder: Path, fmt: str, steps: list[int], losses: np.ndarray) -> dict:
    """Write ``losses`` in format ``fmt``; the mapping entry that names it."""
    n, k = losses.shape
    if fmt == "npy":
        np.save(folder / "losses.npy", losses)
        return {"file": "losses.npy", "steps": steps}
    if fmt == "long":
        pq.write_table(pa.table({"token_idx": np.tile(np.arange(n), k),
                                 "step": np.repeat(steps, n), "loss": losses.T.reshape(-1)}),
                       folder / "long.parquet")
        return {"file": "long.parquet"}
    order = np.random.default_rng(0).permutation(n)  # rows in any order, given their token
    table = {"token_idx": order, **{f"step{s}": losses[order, j] for j, s in enumerate(steps)}}
    pq.write_table(pa.table(table), folder / "wide.parquet")
    return {"file": "wide.parquet"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A reduced Pythia preset of one run, its losses measured by the losses stage and fitted."""
    from tests.hub_world import reduced_preset

    folder = tmp_path_factory.mktemp("measured")
    path = reduced_preset(folder, ROOT / "configs" / "pythia.yaml", {"pythia-70m": 8}, STEPS)
    local = ["--executor", "local", "--device", "cpu"]
    for stage in ("evalset", "losses", "fit"):
        assert main([stage, "--config", str(path)] + (local if stage == "losses" else [])) == 0
    return path


@pytest.mark.parametrize("fmt", ["npy", "long", "wide"])
def test_round_trip_gives_the_same_fits(measured, fmt, tmp_path):
    data = yaml.safe_load(measured.read_text())
    out = measured.parent / data["out"]
    steps, losses = _read_back(out, "pythia-70m")
    assert steps == STEPS
    ids = np.array(pq.read_table(evalset_sequences(out)).column("input_ids").to_pylist())
    np.save(tmp_path / "ids.npy", ids)
    entry = _export(tmp_path, fmt, steps, losses)
    (tmp_path / "mapping.yaml").write_text(yaml.safe_dump(
        {"evalset": "ids.npy", "runs": [{"run": "pythia-70m", **entry}]}))
    # the manifest names the checkpoints as they were (not cached here: import and fit read
    # none of them), with M as a number
    data["runs"][0]["params"] = load_manifest(measured).runs[0].params
    manifest = tmp_path / "imported.yaml"
    manifest.write_text(yaml.safe_dump({**data, "out": str(tmp_path / "out")}))
    assert main(["import-losses", "--config", str(manifest),
                 "--mapping", str(tmp_path / "mapping.yaml")]) == 0
    assert main(["fit", "--config", str(manifest)]) == 0

    mine, theirs = (pl.read_parquet(fits_file(o, "pythia-70m")) for o in (tmp_path / "out", out))
    assert mine.columns == theirs.columns and mine.height == theirs.height == len(losses)
    for col in mine.columns:
        a, b = mine[col].to_numpy(), theirs[col].to_numpy()
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=col)
        else:
            assert (a == b).all(), col
    from spectrum.store import read_provenance

    prov = read_provenance(loss_shard(tmp_path / "out", "pythia-70m", 2000))
    assert prov["imported_from"].endswith(entry["file"]) and prov["tokens"] == 2000 * 2_097_152


# --- bad input ----------------------------------------------------------------------------------

SEQUENCES, CONTEXT = 10, 11  # 100 tokens


def _world(tmp_path: Path) -> tuple[Path, np.ndarray]:
    run = {"params": 1e6, "tokens": 1e9, "tokens_per_step": 1000, "role": "fit"}
    manifest = {"out": "out", "runs": [{"name": "a", "checkpoints": "runs/a", **run},
                                       {"name": "b", "checkpoints": "runs/b", **run}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    np.save(tmp_path / "ids.npy", np.arange(SEQUENCES * CONTEXT).reshape(SEQUENCES, CONTEXT) % 7)
    losses = np.random.default_rng(0).random((SEQUENCES * (CONTEXT - 1), 6)).astype(np.float32)
    return tmp_path / "m.yaml", losses


def _refused(tmp_path: Path, capsys, runs: list[dict], **mapping) -> str:
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"evalset": "ids.npy", "runs": runs,
                                                       **mapping}))
    capsys.readouterr()
    code = main(["import-losses", "--config", str(tmp_path / "m.yaml"),
                 "--mapping", str(tmp_path / "map.yaml")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert not (tmp_path / "out").exists()  # nothing written
    return lines[0]


STEPS6 = [10, 20, 30, 40, 50, 60]


def test_bad_shape_is_refused_in_one_line(tmp_path, capsys):
    _, losses = _world(tmp_path)
    np.save(tmp_path / "short.npy", losses[:-1])
    line = _refused(tmp_path, capsys, [{"run": "a", "file": "short.npy", "steps": STEPS6}])
    assert "short.npy: holds 99 tokens (rows), the evalset 100" in line


@pytest.mark.parametrize("steps,says", [
    ([10, 30, 20, 40, 50, 60], "steps out of order: 30 before 20"),
    ([10, 20, 20, 40, 50, 60], "step 20 is repeated")])
def test_steps_out_of_order_or_repeated_are_refused(tmp_path, capsys, steps, says):
    _, losses = _world(tmp_path)
    np.save(tmp_path / "l.npy", losses)
    line = _refused(tmp_path, capsys, [{"run": "a", "file": "l.npy", "steps": steps}])
    assert "l.npy: " + says in line


def test_wide_columns_out_of_order_and_long_pairs_repeated_are_refused(tmp_path, capsys):
    _, losses = _world(tmp_path)
    pq.write_table(pa.table({"step20": losses[:, 0], "step10": losses[:, 1]}),
                   tmp_path / "wide.parquet")
    assert "wide.parquet: steps out of order: 20 before 10" in _refused(
        tmp_path, capsys, [{"run": "a", "file": "wide.parquet"}])
    n = len(losses)
    token = np.concatenate([np.arange(n), np.arange(n)])
    token[-1] = 0  # token 0 twice at step 20, the last token never
    pq.write_table(pa.table({"token_idx": token, "step": np.repeat([10, 20], n),
                             "loss": losses[:, :2].T.reshape(-1)}), tmp_path / "long.parquet")
    assert "long.parquet: repeats a (token_idx, step) pair" in _refused(
        tmp_path, capsys, [{"run": "a", "file": "long.parquet"}])


def test_non_finite_losses_beyond_the_stated_share_are_refused(tmp_path, capsys):
    path, losses = _world(tmp_path)
    losses[:2, 3] = np.nan  # 2% of step 40
    np.save(tmp_path / "l.npy", losses)
    line = _refused(tmp_path, capsys, [{"run": "a", "file": "l.npy", "steps": STEPS6}])
    assert "l.npy: step 40 has 2.0% non-finite losses, more than the 1.0% allowed" in line
    # within the share: imported, the non-finite loss kept as it is
    losses[1, 3] = 0.5
    np.save(tmp_path / "l.npy", losses)
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(
        {"evalset": "ids.npy", "runs": [{"run": "a", "file": "l.npy", "steps": STEPS6}]}))
    assert main(["import-losses", "--config", str(path),
                 "--mapping", str(tmp_path / "map.yaml")]) == 0
    got = pq.read_table(loss_shard(tmp_path / "out", "a", 40)).column("loss").to_numpy()
    assert np.isnan(got[0]) and np.array_equal(got[1:], losses[1:, 3])


def test_a_run_named_twice_is_refused(tmp_path, capsys):
    _, losses = _world(tmp_path)
    np.save(tmp_path / "l.npy", losses)
    np.save(tmp_path / "k.npy", losses)
    line = _refused(tmp_path, capsys, [{"run": "a", "file": "l.npy", "steps": STEPS6},
                                       {"run": "a", "file": "k.npy", "steps": STEPS6}])
    assert "map.yaml: run a is named twice" in line and "k.npy" in line


def test_an_npz_carries_its_steps_and_its_evalset(tmp_path):
    path, losses = _world(tmp_path)
    ids = np.load(tmp_path / "ids.npy")
    np.savez(tmp_path / "a.npz", losses=losses, steps=np.array(STEPS6), input_ids=ids)
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"runs": [{"run": "a", "file": "a.npz"}]}))
    assert main(["import-losses", "--config", str(path),
                 "--mapping", str(tmp_path / "map.yaml")]) == 0
    out = tmp_path / "out"
    assert shard_steps(out, "a") == STEPS6 and shard_steps(out, "b") == []
    got = np.array(pq.read_table(evalset_sequences(out)).column("input_ids").to_pylist())
    assert np.array_equal(got, ids)
    tokens = pq.read_table(out / "evalset" / "tokens.parquet")
    # token i is the target at position pos of sequence seq_id: i = seq_id * (context - 1) + pos - 1
    i = 57
    seq, pos = tokens.column("seq_id")[i].as_py(), tokens.column("pos")[i].as_py()
    assert i == seq * (CONTEXT - 1) + pos - 1
    assert tokens.column("target_id")[i].as_py() == ids[seq, pos]
    for j, step in enumerate(STEPS6):
        col = pq.read_table(loss_shard(out, "a", step)).column("loss").to_numpy()
        assert np.array_equal(col, losses[:, j])


def test_shards_of_steps_the_import_lacks_are_kept_unless_forced(tmp_path, capsys):
    path, losses = _world(tmp_path)
    np.save(tmp_path / "l.npy", losses)
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(
        {"evalset": "ids.npy", "runs": [{"run": "a", "file": "l.npy", "steps": STEPS6}]}))
    args = ["import-losses", "--config", str(path), "--mapping", str(tmp_path / "map.yaml")]
    assert main(args) == 0
    np.save(tmp_path / "l.npy", losses[:, :5])
    later = [15, 20, 30, 40, 50]
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(
        {"evalset": "ids.npy", "runs": [{"run": "a", "file": "l.npy", "steps": later}]}))
    capsys.readouterr()
    assert main(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "holds shards of steps 10, 60" in lines[0]
    assert shard_steps(tmp_path / "out", "a") == STEPS6  # nothing changed
    assert main(args + ["--force"]) == 0
    assert shard_steps(tmp_path / "out", "a") == later
