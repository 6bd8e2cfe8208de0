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
    assert check_shard(path, 5) == 5
    table = pq.read_table(path)
    changed = table.set_column(1, "loss", pa.array(np.arange(5, dtype=np.float32)[::-1].copy()))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(SpectrumError, match="does not match the checksum"):
        check_shard(path, 5)
