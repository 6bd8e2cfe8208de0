"""Per-token loss trajectories: a run's loss shards read as a (tokens x checkpoints) matrix.

The losses stage writes one shard per checkpoint, ``losses/run=<run>/step=<step>/part-0.parquet``
with columns ``token_idx`` (int64) and ``loss`` (float32, nats). This module reads a run's shards
through :mod:`pyarrow.dataset` (hive partitioning gives the ``step`` column) and pivots them into
``losses[i, j]`` = loss of token ``token_idx[i]`` at checkpoint ``steps[j]``. Every shard read is
first checked against the shard contract (:func:`spectrum.losses.shards.check_run_shards`: columns,
types, token count against the evalset, ``token_idx`` complete and unique, content checksum), so
a bad shard is refused by path instead of read as missing values; a token absent from a shard
(possible only where the evalset's size is unknown) is NaN. For evaluation sets too large for
memory, :func:`iter_trajectories` yields the same matrix for consecutive ranges of ``token_idx``.

Time axis: ``x = ln T`` with ``T = step * tokens_per_step`` training tokens; step 0 (the initial
model) has no place on the log axis and is left out by :func:`log_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spectrum.errors import SpectrumError
from spectrum.layout import loss_run_dir, loss_shard, losses_dir, shard_steps
from spectrum.losses.shards import check_run_shards

@dataclass(frozen=True)
class Trajectories:
    """Losses of ``len(token_idx)`` tokens at ``len(steps)`` checkpoints (NaN = not measured)."""

    token_idx: np.ndarray  # (N,) int64, ascending
    steps: np.ndarray  # (K,) int64, ascending
    losses: np.ndarray  # (N, K) float32

    def __len__(self) -> int:
        return len(self.token_idx)


def log_tokens(steps: Sequence[int] | np.ndarray, tokens_per_step: int) -> np.ndarray:
    """``x = ln(step * tokens_per_step)`` for every step > 0 (step 0 is left out), float64."""
    steps = np.asarray(steps, dtype=np.int64)
    steps = steps[steps > 0]
    return np.log(steps.astype(np.float64) * float(tokens_per_step))


def _dataset(out: Path, run: str, steps: Sequence[int]) -> ds.Dataset:
    files = [str(loss_shard(out, run, s)) for s in steps]
    try:
        return ds.dataset(files, format="parquet", partitioning="hive",
                          partition_base_dir=str(losses_dir(out)))
    except (pa.ArrowInvalid, OSError) as e:
        raise SpectrumError(f"{loss_run_dir(out, run)}: cannot read the loss shards ({e})") from None


def _pivot(table: pa.Table, steps: np.ndarray) -> Trajectories:
    tok = table.column("token_idx").to_numpy().astype(np.int64, copy=False)
    step = table.column("step").to_numpy().astype(np.int64, copy=False)
    loss = table.column("loss").to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    token_idx = np.unique(tok)
    losses = np.full((len(token_idx), len(steps)), np.nan, dtype=np.float32)
    losses[np.searchsorted(token_idx, tok), np.searchsorted(steps, step)] = loss
    return Trajectories(token_idx=token_idx, steps=steps, losses=losses)


def _resolve_steps(out: Path, run: str, steps: Sequence[int] | None) -> np.ndarray:
    present = shard_steps(out, run)
    if steps is None:
        chosen = present
    else:
        chosen = sorted(set(int(s) for s in steps))
        missing = sorted(set(chosen) - set(present))
        if missing:
            raise SpectrumError(
                f"{loss_run_dir(out, run)}: no loss shard for step(s) {', '.join(map(str, missing))}")
    if not chosen:
        raise SpectrumError(f"{loss_run_dir(out, run)}: no loss shards for run {run!r}")
    return np.asarray(chosen, dtype=np.int64)


def load_losses(out: Path, run: str, *, steps: Sequence[int] | None = None,
                token_range: tuple[int, int] | None = None) -> Trajectories:
    """The losses of ``run`` as a (tokens x steps) matrix.

    ``steps`` selects checkpoints (default: every step with a shard, step 0 included);
    ``token_range = (start, stop)`` keeps tokens with ``start <= token_idx < stop``.
    """
    chosen = _resolve_steps(Path(out), run, steps)
    check_run_shards(out, run, chosen.tolist())
    dataset = _dataset(Path(out), run, chosen.tolist())
    flt = None
    if token_range is not None:
        lo, hi = token_range
        flt = (pc.field("token_idx") >= lo) & (pc.field("token_idx") < hi)
    try:
        table = dataset.to_table(columns=["token_idx", "loss", "step"], filter=flt)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise SpectrumError(f"{loss_run_dir(out, run)}: cannot read the loss shards ({e})") from None
    return _pivot(table, chosen)


def token_count(out: Path, run: str, steps: Sequence[int] | None = None) -> int:
    """The evalset's token count, once the shards of ``run`` are checked against it; where it is
    unknown, one past the largest ``token_idx`` in any shard (from the Parquet statistics)."""
    chosen = _resolve_steps(Path(out), run, steps)
    n = check_run_shards(out, run, chosen.tolist())
    if n is not None:
        return n
    top = -1
    for s in chosen.tolist():
        path = loss_shard(Path(out), run, s)
        try:
            meta = pq.read_metadata(path)
            col = meta.schema.to_arrow_schema().get_field_index("token_idx")
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(col).statistics
                if stats is None or not stats.has_min_max:
                    top = max(top, int(pc.max(pq.read_table(path, columns=["token_idx"])
                                              .column(0)).as_py() or -1))
                    break
                top = max(top, int(stats.max))
        except (pa.ArrowInvalid, OSError) as e:
            raise SpectrumError(f"{path}: not a readable loss shard ({e})") from None
    return top + 1


def iter_trajectories(out: Path, run: str, *, chunk_size: int,
                      steps: Sequence[int] | None = None) -> Iterator[Trajectories]:
    """:func:`load_losses` over consecutive ranges of ``chunk_size`` token indices.

    Chunks with no token are skipped; each chunk holds the tokens of its range present in any shard.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    chosen = _resolve_steps(Path(out), run, steps).tolist()
    n = token_count(out, run, chosen)
    for start in range(0, n, chunk_size):
        chunk = load_losses(out, run, steps=chosen, token_range=(start, min(n, start + chunk_size)))
        if len(chunk):
            yield chunk
