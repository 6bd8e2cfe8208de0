"""Per-token loss trajectories: a run's loss shards read as a (tokens x checkpoints) matrix.

The losses stage writes one shard per checkpoint (:func:`spectrum.layout.loss_shard`) with
columns ``token_idx`` (int64) and ``loss`` (float32, nats), sorted by ``token_idx``.
:class:`RunLosses` opens a run's shards once and reads any range of token indices straight into
``losses[i, j]`` = loss of token ``token_idx[i]`` at checkpoint ``steps[j]`` (float32); a token
missing from a shard is NaN.

How a range is read: only the row groups that overlap it (from the Parquet statistics of
``token_idx``). A row group whose statistics show it complete (``max - min + 1`` rows, no nulls)
holds ``token_idx = min, ..., max`` in order, by the shard contract (sorted, unique), so only its
``loss`` column is decoded and copied into the block as one row; the losses stage writes every
shard this way. (The order of the first rows read from each shard is verified, once.) Other
row groups (gaps, no statistics) are read with their ``token_idx`` and placed by position.
Each shard's losses are copied into its column of the (tokens x
checkpoints) block, a block of rows at a time, so the memory of a read is set by the range's
length. Reads can decode shards on several threads (:meth:`RunLosses.read`), write into a
reused buffer, and be announced to the OS ahead of time (:meth:`RunLosses.advise`).

Time axis: ``x = ln T`` with ``T = step * tokens_per_step`` training tokens; step 0 (the initial
model) has no place on the log axis and is left out by :func:`log_tokens`.

Opening a run's shards first checks them against the shard contract
(:func:`spectrum.losses.shards.check_run_shards`: columns, types, token count against the
evalset, ``token_idx`` complete and unique, content checksum), naming every bad shard; a shard
already verified in this process is not read again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spectrum.errors import SpectrumError
from spectrum.layout import LOSS, TOKEN_IDX, loss_run_dir, loss_shard, shard_steps
from spectrum.losses.shards import check_run_shards

CHECKED_ROWS = 1 << 14  # rows of each shard whose order is verified
TRANSPOSE_BLOCK = 1 << 16  # tokens per block of the copy of the shards' losses into the block


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


@dataclass(frozen=True)
class ShardSlice:
    """The losses of one shard over a token range: tokens ``first, first + 1, ...`` when
    ``token_idx`` is None (a complete range), else the tokens ``token_idx`` (ascending)."""

    loss: np.ndarray  # float32
    first: int = 0
    token_idx: np.ndarray | None = None

    def tokens(self) -> np.ndarray:
        if self.token_idx is not None:
            return self.token_idx
        return np.arange(self.first, self.first + len(self.loss), dtype=np.int64)


class LossShard:
    """One loss shard, opened once: its row groups' token ranges from the Parquet statistics."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.file = pq.ParquetFile(self.path)
            meta = self.file.metadata
            names = meta.schema.to_arrow_schema().names
        except (pa.ArrowInvalid, OSError) as e:
            raise SpectrumError(f"{self.path}: not a readable loss shard ({e})") from None
        missing = [c for c in (TOKEN_IDX, LOSS) if c not in names]
        if missing:
            raise SpectrumError(f"{self.path}: not a loss shard (no column "
                                f"{', '.join(missing)})")
        col = names.index(TOKEN_IDX)
        self.checked = False  # whether a complete row group's order was verified
        # per row group: (first token, last token, rows, complete); first = -1: no statistics
        self.groups: list[tuple[int, int, int, bool]] = []
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            stats = meta.row_group(g).column(col).statistics
            if stats is None or not stats.has_min_max or rows == 0:
                self.groups.append((-1, -1, rows, False))
                continue
            lo, hi = int(stats.min), int(stats.max)
            complete = stats.null_count == 0 and hi - lo + 1 == rows
            self.groups.append((lo, hi, rows, complete))

    def top(self) -> int:
        """The largest token index in the shard (-1 if empty)."""
        if any(g[0] < 0 and g[2] for g in self.groups):
            tok = self.file.read(columns=[TOKEN_IDX]).column(0)
            return int(pc.max(tok).as_py() if len(tok) else -1)
        return max((g[1] for g in self.groups if g[2]), default=-1)

    def _check_order(self, group: int) -> None:
        """Once per shard: the first rows of a complete row group are ``min, min + 1, ...``, so
        a shard written out of order is caught instead of read into the wrong rows. (Only the
        first batch is decoded: decoding a whole ``token_idx`` costs twice the losses' read.)"""
        lo = self.groups[group][0]
        try:
            batch = next(self.file.iter_batches(CHECKED_ROWS, row_groups=[group],
                                                columns=[TOKEN_IDX], use_threads=False))
        except (pa.ArrowInvalid, OSError) as e:
            raise SpectrumError(f"{self.path}: cannot read the loss shard ({e})") from None
        tok = batch.column(0).to_numpy()
        if not np.array_equal(tok, np.arange(lo, lo + len(tok))):
            raise SpectrumError(f"{self.path}: token_idx is not sorted and unique, as a loss "
                                "shard's must be")
        self.checked = True

    def _read(self, groups: list[int], columns: list[str]) -> pa.Table:
        try:
            return self.file.read_row_groups(groups, columns=columns, use_threads=False)
        except (pa.ArrowInvalid, OSError) as e:
            raise SpectrumError(f"{self.path}: cannot read the loss shard ({e})") from None

    def _groups_in(self, start: int, stop: int) -> list[int]:
        """The row groups that may hold tokens ``start <= token_idx < stop``."""
        return [g for g, (lo, hi, rows, _) in enumerate(self.groups)
                if rows and (lo < 0 or (hi >= start and lo < stop))]

    def advise(self, start: int, stop: int) -> None:
        """Ask the OS to read ahead the bytes of the row groups holding ``start <= token_idx <
        stop`` (``posix_fadvise(WILLNEED)``; nothing where the OS has no such call)."""
        if not hasattr(os, "posix_fadvise"):
            return
        meta = self.file.metadata
        spans = []
        for g in self._groups_in(start, stop):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                first = col.dictionary_page_offset if col.has_dictionary_page else None
                first = col.data_page_offset if first is None else min(first,
                                                                        col.data_page_offset)
                spans.append((first, col.total_compressed_size))
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # the read itself will name the problem
        try:
            for offset, length in spans:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def read(self, start: int, stop: int) -> ShardSlice:
        """The losses of the tokens ``start <= token_idx < stop`` held by this shard."""
        chosen = self._groups_in(start, stop)
        if not chosen:
            return ShardSlice(np.empty(0, np.float32), start)
        complete = all(self.groups[g][3] for g in chosen) and all(
            self.groups[b][0] == self.groups[a][1] + 1 for a, b in zip(chosen, chosen[1:]))
        if complete:  # token_idx = first, first + 1, ...: decode the losses alone
            first = self.groups[chosen[0]][0]
            if not self.checked:
                self._check_order(chosen[0])
            a, b = max(start, first) - first, min(stop, self.groups[chosen[-1]][1] + 1) - first
            loss = self._read(chosen, [LOSS]).column(0).slice(a, max(0, b - a))
            return ShardSlice(_float32(loss, self.path), first + a)
        table = self._read(chosen, [TOKEN_IDX, LOSS])
        tok = table.column(0).to_numpy().astype(np.int64, copy=False)
        if len(tok) > 1 and not bool(np.all(tok[1:] > tok[:-1])):
            raise SpectrumError(f"{self.path}: token_idx is not sorted and unique, as a loss "
                                "shard's must be")
        a, b = np.searchsorted(tok, [start, stop])
        return ShardSlice(_float32(table.column(1).slice(a, b - a), self.path), start, tok[a:b])


def _float32(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    if not (pa.types.is_floating(column.type)):
        raise SpectrumError(f"{path}: column loss is {column.type}, not float32")
    return column.to_numpy().astype(np.float32, copy=False)


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


class RunLosses:
    """A run's loss shards (``steps``: default every step with a shard, step 0 included), opened
    once and read by token range."""

    def __init__(self, out: Path, run: str, steps: Sequence[int] | None = None, *,
                 checked: bool = False) -> None:
        """``checked``: the shards were already checked against their contract by the caller."""
        self.run = run
        self.steps = _resolve_steps(Path(out), run, steps)
        if not checked:
            check_run_shards(out, run, self.steps.tolist())
        self.shards = [LossShard(loss_shard(Path(out), run, s)) for s in self.steps.tolist()]

    def token_count(self) -> int:
        """One past the largest ``token_idx`` in any shard."""
        return max(s.top() for s in self.shards) + 1

    def read(self, start: int, stop: int, *, pool: Executor | None = None,
             into: np.ndarray | None = None) -> Trajectories:
        """The tokens ``start <= token_idx < stop`` present in any shard, as a matrix.

        ``pool``: threads that decode the shards and transpose the block (Arrow and numpy
        release the GIL), instead of this thread alone. ``into``: a float32 buffer of at least
        ``(stop - start) * checkpoints`` elements that the matrix is written into and returned
        as a view of (a reader that fits chunk after chunk reuses one, instead of having the
        memory of each new block mapped page by page)."""
        run = pool.map if pool is not None else map
        slices = list(run(lambda shard: shard.read(start, stop), self.shards))
        first = {s.first for s in slices if s.token_idx is None and len(s.loss)}
        lengths = {len(s.loss) for s in slices}
        if len(first) == 1 and len(lengths) == 1 and all(s.token_idx is None for s in slices):
            first_tok = first.pop()
            token_idx = np.arange(first_tok, first_tok + lengths.pop(), dtype=np.int64)
            columns = [s.loss for s in slices]
        else:  # gaps: the union of the shards' tokens, each shard's placed by position
            token_idx = _union([s.tokens() for s in slices])
            columns = []
            for s in slices:
                column = np.full(len(token_idx), np.nan, np.float32)
                column[np.searchsorted(token_idx, s.tokens())] = s.loss
                columns.append(column)
        shape = (len(token_idx), len(slices))
        if into is None:
            losses = np.empty(shape, np.float32)
        else:
            if into.dtype != np.float32 or into.size < shape[0] * shape[1]:
                raise ValueError(f"into must be float32 with room for {shape}")
            losses = into.reshape(-1)[:shape[0] * shape[1]].reshape(shape)
        # numpy, not torch: this may run on a reader thread beside the solver's OpenMP threads,
        # where a second torch thread team would oversubscribe the cores
        list(run(lambda a: _transpose_into(losses, columns, a, a + TRANSPOSE_BLOCK),
                 range(0, shape[0], TRANSPOSE_BLOCK)))
        return Trajectories(token_idx=token_idx, steps=self.steps, losses=losses)

    def advise(self, start: int, stop: int) -> None:
        """Ask the OS to start reading the shards' bytes for ``start <= token_idx < stop`` into
        its page cache (no decoding: costs no CPU), so that a later :meth:`read` of that range
        finds them in memory."""
        for shard in self.shards:
            shard.advise(start, stop)

    def ranges(self, chunk_size: int) -> list[tuple[int, int]]:
        """Consecutive ranges of ``chunk_size`` token indices covering every shard."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        n = self.token_count()
        return [(a, min(n, a + chunk_size)) for a in range(0, n, chunk_size)]


def _union(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.empty(0, np.int64)
    out = parts[0]
    for p in parts[1:]:
        if not np.array_equal(out, p):
            out = np.union1d(out, p)
    return out.astype(np.int64, copy=False)


def _transpose_into(losses: np.ndarray, columns: list[np.ndarray], a: int, b: int) -> None:
    """``losses[a:b, j] = columns[j][a:b]`` for every checkpoint j: the block of rows a..b stays
    in the cache while its columns are filled (a whole-matrix transposing copy does not)."""
    block = losses[a:b]
    for j, column in enumerate(columns):
        block[:, j] = column[a:b]


def load_losses(out: Path, run: str, *, steps: Sequence[int] | None = None,
                token_range: tuple[int, int] | None = None) -> Trajectories:
    """The losses of ``run`` as a (tokens x steps) matrix.

    ``steps`` selects checkpoints (default: every step with a shard, step 0 included);
    ``token_range = (start, stop)`` keeps tokens with ``start <= token_idx < stop``.
    """
    reader = RunLosses(out, run, steps)
    start, stop = token_range if token_range is not None else (0, reader.token_count())
    return reader.read(start, stop)


def token_count(out: Path, run: str, steps: Sequence[int] | None = None) -> int:
    """One past the largest ``token_idx`` in any shard of ``run`` (from the Parquet statistics)."""
    return RunLosses(out, run, steps).token_count()


def iter_trajectories(out: Path, run: str, *, chunk_size: int,
                      steps: Sequence[int] | None = None) -> Iterator[Trajectories]:
    """:func:`load_losses` over consecutive ranges of ``chunk_size`` token indices.

    Chunks with no token are skipped; each chunk holds the tokens of its range present in any shard.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    reader = RunLosses(out, run, steps)
    for start, stop in reader.ranges(chunk_size):
        chunk = reader.read(start, stop)
        if len(chunk):
            yield chunk
