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
