"""Atomic writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import pytest

from spectrum.store import atomic_file, atomic_folder, write_text


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text("old", path)
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_a_folder_replaces_the_previous_one_only_when_complete(tmp_path):
    final = tmp_path / "checkpoint-3"
    with atomic_folder(final, prefix=".partial-3-") as tmp:
        assert tmp.name.startswith(".partial-3-") and not final.exists()
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    with atomic_folder(final) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]


def test_numeric_encodings_keep_every_value(tmp_path):
    """Floats byte-split, indices delta-packed, strings by dictionary: the table reads back
    exactly (NaN, infinities, nulls and all)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spectrum.store import numeric_encodings, write_parquet

    rng = np.random.default_rng(0)
    loss = rng.normal(size=1000).astype(np.float32)
    loss[[3, 7, 9]] = [np.nan, np.inf, -np.inf]
    table = pa.table({"token_idx": np.arange(5, 1005, dtype=np.int64),
                      "loss": pa.array(loss, mask=np.arange(1000) == 11),
                      "rss": rng.exponential(size=1000),
                      "kind": pa.array(rng.choice(["flat", "learned"], 1000))})
    encodings = numeric_encodings(table, ascending=("token_idx",))
    assert encodings == {"loss": "BYTE_STREAM_SPLIT", "rss": "BYTE_STREAM_SPLIT",
                         "token_idx": "DELTA_BINARY_PACKED"}
    path = write_parquet(table, tmp_path / "t.parquet", {"stage": "test"}, encodings=encodings)
    back = pq.read_table(path)
    assert back.schema.remove_metadata() == table.schema
    for name in ("token_idx", "rss", "kind"):
        assert back[name].to_pylist() == table[name].to_pylist()
    assert back["loss"].null_count == 1 and not back["loss"][11].is_valid
    np.testing.assert_array_equal(back["loss"].to_numpy(zero_copy_only=False),
                                  table["loss"].to_numpy(zero_copy_only=False))  # NaN = NaN
    group = pq.read_metadata(path).row_group(0)
    assert "BYTE_STREAM_SPLIT" in group.column(1).encodings
    assert "RLE_DICTIONARY" in group.column(3).encodings
