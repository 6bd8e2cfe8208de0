"""Reading loss shards back as a (tokens x checkpoints) matrix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spectrum.errors import SpectrumError
from spectrum.store import write_parquet
from spectrum.layout import loss_shard, shard_steps
from spectrum.losses.trajectories import iter_trajectories, load_losses, log_tokens, token_count


def write_shard(out, run, step, token_idx, loss):
    table = pa.table({"token_idx": pa.array(token_idx, pa.int64()),
                      "loss": pa.array(loss, pa.float32())})
    write_parquet(table, loss_shard(out, run, step), {"run": run, "step": step})


@pytest.fixture()
def shards(tmp_path):
    """Three checkpoints of run a; step 10 lacks token 2 (possible only where the evalset is
    unknown: shards are then not checked for completeness); run b has one shard."""
    rng = np.random.default_rng(0)
    truth = {}
    for step in (0, 10, 1000):
        toks = np.arange(7) if step != 10 else np.array([0, 1, 3, 4, 5, 6])
        loss = rng.random(len(toks)).astype(np.float32)
        write_shard(tmp_path, "a", step, toks, loss)
        truth[step] = dict(zip(toks.tolist(), loss.tolist()))
    write_shard(tmp_path, "b", 5, np.arange(3), np.ones(3))
    return tmp_path, truth


def test_run_steps_lists_shards(shards):
    out, _ = shards
    assert shard_steps(out, "a") == [0, 10, 1000]
    assert shard_steps(out, "b") == [5]
    assert shard_steps(out, "nope") == []


def test_log_tokens_drops_step_zero():
    x = log_tokens([0, 1, 2, 1000], 2048)
    np.testing.assert_allclose(x, np.log([2048.0, 4096.0, 2048000.0]))


def test_load_losses_matrix_matches_shards(shards):
    out, truth = shards
    tr = load_losses(out, "a")
    assert tr.steps.tolist() == [0, 10, 1000]
    assert tr.token_idx.tolist() == list(range(7))
    assert tr.losses.dtype == np.float32 and tr.losses.shape == (7, 3)
    for j, step in enumerate(tr.steps.tolist()):
        for i, tok in enumerate(tr.token_idx.tolist()):
            if tok in truth[step]:
                assert tr.losses[i, j] == np.float32(truth[step][tok])
            else:
                assert np.isnan(tr.losses[i, j])
    assert np.isnan(tr.losses[2, 1])


def test_load_losses_selects_steps_and_tokens(shards):
    out, truth = shards
    tr = load_losses(out, "a", steps=[1000, 10], token_range=(2, 5))
    assert tr.steps.tolist() == [10, 1000]
    assert tr.token_idx.tolist() == [2, 3, 4]
    assert tr.losses[1, 1] == np.float32(truth[1000][3])


def test_missing_step_or_run_is_a_user_error(shards):
    out, _ = shards
    with pytest.raises(SpectrumError, match="step"):
        load_losses(out, "a", steps=[10, 20])
    with pytest.raises(SpectrumError, match="nope"):
        load_losses(out, "nope")


def test_chunks_cover_all_tokens_once(shards):
    out, _ = shards
    assert token_count(out, "a") == 7
    whole = load_losses(out, "a")
    chunks = list(iter_trajectories(out, "a", chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([c.token_idx for c in chunks]), whole.token_idx)
    np.testing.assert_array_equal(np.concatenate([c.losses for c in chunks]), whole.losses)


def _evalset_of(out, n):
    """The part of an evalset the shard readers check against: meta.json's token count."""
    from spectrum.layout import evalset_meta

    evalset_meta(out).parent.mkdir(parents=True, exist_ok=True)
    evalset_meta(out).write_text(f'{{"counts": {{"tokens": {n}}}}}')


def test_shards_are_checked_against_the_evalset(tmp_path):
    from spectrum.losses.shards import write_loss_shard

    rng = np.random.default_rng(0)
    for step in (0, 10, 1000):
        write_loss_shard(loss_shard(tmp_path, "a", step), rng.random(7), {"run": "a"})
    _evalset_of(tmp_path, 7)
    assert load_losses(tmp_path, "a").losses.shape == (7, 3)
    assert token_count(tmp_path, "a") == 7
    # a shard missing a token is refused by path, whichever reader meets it
    write_shard(tmp_path, "a", 10, np.array([0, 1, 3, 4, 5, 6]), np.ones(6))
    bad = loss_shard(tmp_path, "a", 10)
    for read in (lambda: load_losses(tmp_path, "a"), lambda: token_count(tmp_path, "a"),
                 lambda: list(iter_trajectories(tmp_path, "a", chunk_size=3))):
        with pytest.raises(SpectrumError) as e:
            read()
        assert e.value.problems == [f"loss shard {bad}: holds 6 tokens, the evalset 7; rerun "
                                    "`spectrum losses` to rewrite it"]
    _evalset_of(tmp_path, 6)
    with pytest.raises(SpectrumError, match=r"token_idx is not 0..5 in order"):
        load_losses(tmp_path, "a", steps=[10])


def test_checksum_catches_values_changed_after_writing(tmp_path):
    import pyarrow.parquet as pq

    from spectrum.losses.shards import CHECKSUM, check_shard, write_loss_shard
    from spectrum.store import read_provenance

    path = write_loss_shard(tmp_path / "s.parquet", np.arange(5, dtype=np.float32), {"run": "a"})
    assert len(read_provenance(path)[CHECKSUM]) == 64
    group = pq.read_metadata(path).row_group(0)  # indices delta-packed, losses byte-split
    assert [e for c in range(2) for e in group.column(c).encodings if e != "RLE"] == [
        "DELTA_BINARY_PACKED", "BYTE_STREAM_SPLIT"]
    assert check_shard(path, 5) == 5
    table = pq.read_table(path)
    changed = table.set_column(1, "loss", pa.array(np.arange(5, dtype=np.float32)[::-1].copy()))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(SpectrumError, match="does not match the checksum"):
        check_shard(path, 5)

def test_a_checksummed_shard_is_checked_without_decoding_its_indices(tmp_path, monkeypatch):
    """The recorded checksum of 0..N-1 and the losses vouches for the indices; a shard whose
    statistics look complete but whose indices were written out of order (checksum and all)
    still goes to the full check, which names the problem."""
    from spectrum.losses import shards
    from spectrum.losses.shards import CHECKSUM, check_run_shards, content_checksum

    loss = np.arange(50, dtype=np.float32)
    write_loss_shard_rows = lambda step, tok: shards.write_parquet(  # noqa: E731
        pa.table({"token_idx": pa.array(tok), "loss": pa.array(loss)}),
        loss_shard(tmp_path, "r", step), {CHECKSUM: content_checksum(tok, loss)})
    write_loss_shard_rows(1, np.arange(50))
    swapped = np.arange(50)
    swapped[[3, 4]] = [4, 3]
    write_loss_shard_rows(2, swapped)
    read = []
    real = pq.read_table
    monkeypatch.setattr(shards.pq, "read_table",
                        lambda path, columns=None, **kw: read.append(columns) or real(
                            path, columns=columns, **kw))
    assert check_run_shards(tmp_path, "r", [1], n_tokens=50) == 50
    assert read == []  # the losses alone, through ParquetFile
    with pytest.raises(SpectrumError) as e:
        check_run_shards(tmp_path, "r", [1, 2], n_tokens=50)
    assert e.value.problems == [f"loss shard {loss_shard(tmp_path, 'r', 2)}: token_idx is not "
                                "0..49 in order; rerun `spectrum losses` to rewrite it"]
    assert read == [["token_idx", "loss"]]


# ---- range reads: row groups, gaps, and the shard contract --------------------------------------

from hypothesis import given, settings
from hypothesis import strategies as st
import pyarrow.parquet as pq

from concurrent.futures import ThreadPoolExecutor
from unittest import mock

from spectrum.losses import trajectories
from spectrum.losses.trajectories import LossShard, RunLosses


def write_raw(out, run, step, token_idx, loss, *, row_group_size=None, statistics=True):
    """A shard written by pyarrow directly, with chosen row groups (and statistics or none)."""
    path = loss_shard(out, run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"token_idx": pa.array(token_idx, pa.int64()),
                      "loss": pa.array(loss, pa.float32())})
    pq.write_table(table, path, row_group_size=row_group_size, write_statistics=statistics)
    return path


def naive(tokens_by_step):
    """The expected matrix by plain dictionaries: {step: {token: loss}} -> (token_idx, losses)."""
    steps = sorted(tokens_by_step)
    toks = sorted(set().union(*[set(d) for d in tokens_by_step.values()]))
    m = np.full((len(toks), len(steps)), np.nan, np.float32)
    for j, s in enumerate(steps):
        for i, t in enumerate(toks):
            if t in tokens_by_step[s]:
                m[i, j] = tokens_by_step[s][t]
    return np.array(toks, dtype=np.int64), m


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_range_reads_match_a_plain_pivot(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("shards")
    n = data.draw(st.integers(1, 60))
    truth = {}
    for step in data.draw(st.lists(st.integers(0, 50), min_size=1, max_size=4, unique=True)):
        if data.draw(st.booleans()):
            toks = np.arange(n)  # complete, as the losses stage writes them
        else:
            # gaps, never empty: an empty shard breaks the shard contract and is refused
            toks = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1,
                                                     max_size=n))), dtype=np.int64)
        loss = np.arange(len(toks), dtype=np.float32) + 1000 * step
        write_raw(out, "r", step, toks, loss, row_group_size=data.draw(st.integers(1, 25)),
                  statistics=data.draw(st.booleans()))
        truth[step] = dict(zip(toks.tolist(), loss.tolist()))
    expect_tok, expect = naive(truth)
    reader = RunLosses(out, "r")
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n + 3))
    reader.advise(start, stop)  # a hint to the OS: changes nothing read
    got = reader.read(start, stop)
    keep = (expect_tok >= start) & (expect_tok < stop)
    np.testing.assert_array_equal(got.token_idx, expect_tok[keep])
    np.testing.assert_array_equal(got.losses, expect[keep])
    assert got.losses.dtype == np.float32 and got.losses.flags.c_contiguous
    # decoded on several threads, into a reused buffer (stale values in it), one block at a time
    buffer = np.full((stop - start + 5) * len(truth), -7.0, np.float32)
    with ThreadPoolExecutor(2) as pool, mock.patch.object(trajectories, "TRANSPOSE_BLOCK", 7):
        again = reader.read(start, stop, pool=pool, into=buffer)
    np.testing.assert_array_equal(again.losses, expect[keep])
    assert again.losses.flags.c_contiguous
    assert np.shares_memory(again.losses, buffer) or not again.losses.size
    chunk = data.draw(st.integers(1, 30))
    parts = list(iter_trajectories(out, "r", chunk_size=chunk))
    joined = (np.concatenate([p.token_idx for p in parts]) if parts else np.empty(0, np.int64))
    np.testing.assert_array_equal(joined, expect_tok)


def test_complete_row_groups_are_read_without_decoding_token_idx(tmp_path, monkeypatch):
    """A complete shard's range read decodes only the loss column of the overlapping groups."""
    write_raw(tmp_path, "r", 1, np.arange(100), np.arange(100, dtype=np.float32),
              row_group_size=10)
    shard = LossShard(loss_shard(tmp_path, "r", 1))
    calls = []
    real = shard.file.read_row_groups

    def spy(groups, columns=None, **kw):
        calls.append((list(groups), list(columns)))
        return real(groups, columns=columns, **kw)

    monkeypatch.setattr(shard.file, "read_row_groups", spy)
    got = shard.read(25, 47)
    assert got.token_idx is None and got.first == 25
    np.testing.assert_array_equal(got.loss, np.arange(25, 47, dtype=np.float32))
    assert calls == [([2, 3, 4], ["loss"])] and shard.checked  # order verified once, apart
    calls.clear()
    np.testing.assert_array_equal(shard.read(60, 70).loss, np.arange(60, 70, dtype=np.float32))
    assert calls == [([6], ["loss"])]


def test_a_shard_out_of_order_or_without_columns_is_named(tmp_path):
    write_raw(tmp_path, "r", 1, np.array([0, 2, 1, 3]), np.ones(4, np.float32))
    with pytest.raises(SpectrumError, match=r"step=1.*not sorted"):
        load_losses(tmp_path, "r")
    path = loss_shard(tmp_path, "s", 1)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"token_idx": pa.array([0, 1], pa.int64())}), path)
    with pytest.raises(SpectrumError, match=r"step=1.*no column 'loss'"):
        load_losses(tmp_path, "s")
    path = loss_shard(tmp_path, "t", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(SpectrumError, match=r"step=1.*not a readable Parquet file"):
        load_losses(tmp_path, "t")
