"""The loss-shard contract, checked on every read.

A loss shard (:func:`spectrum.layout.loss_shard`) holds one checkpoint's losses over
the whole evalset: a column ``token_idx`` (int64) holding every index ``0..N-1`` exactly once,
``N`` being the evalset's token count, in ascending order, and a column ``loss`` (float32, nats;
NaN or infinite where the checkpoint diverged). Its provenance records ``content_sha256``: the
SHA-256 of the two columns' bytes (``token_idx`` as little-endian int64, then ``loss`` as
little-endian float32) when it was written.

:func:`check_shard` refuses, naming the file, a shard that is unreadable, lacks a column, has
another type, holds another number of tokens than the evalset, repeats or skips a
``token_idx``, or whose content no longer matches its recorded checksum (rows dropped or values
changed after writing). A shard that records a checksum, and whose Parquet statistics show its
indices ``0..N-1`` without gap, is checked by decoding its losses alone: the checksum of
``0..N-1`` followed by those losses must be the recorded one, which vouches for the indices as
they were written (decoding the int64 indices costs twice the losses). Any other shard, and one
that fails this, has both columns read and checked one by one, so its problem is named.
:func:`check_run_shards` checks a run's shards on several threads; a shard already verified in
this process (same size and modification time) is not read again.

Where the evalset's token count is not known (no ``meta.json`` or ``tokens.parquet`` under the
output folder), the count and the completeness of ``token_idx`` cannot be checked: the shard is
then only required to have the columns and types, unique non-negative indices, and a matching
checksum.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spectrum.errors import SpectrumError
from spectrum.layout import LOSS, TOKEN_IDX, evalset_meta, evalset_tokens, loss_shard
from spectrum.store import numeric_encodings, read_provenance, write_parquet

CHECKSUM = "content_sha256"  # provenance key of the content checksum
TYPES = {TOKEN_IDX: pa.int64(), LOSS: pa.float32()}
# How shards are written (zstd on top; :func:`spectrum.store.numeric_encodings`). Beside the
# dictionary encoding Parquet uses by default, measured on an 8M-token shard of noisy losses:
# 27 MB instead of 43, the losses decoded in half the time and the indices in a quarter,
# written in a third of the time. Any encoding is read.
ENCODINGS = numeric_encodings(pa.schema(list(TYPES.items())), ascending=(TOKEN_IDX,))

# path -> ((size, mtime_ns, expected tokens), tokens held): shards verified in this process
_VERIFIED: dict[str, tuple[tuple[int, int, int | None], int]] = {}


class ShardError(SpectrumError):
    """A loss shard breaks its contract; the message names the file."""


def content_checksum(token_idx: np.ndarray, loss: np.ndarray) -> str:
    """SHA-256 of a shard's content: ``token_idx`` as <i8 bytes, then ``loss`` as <f4 bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(token_idx, dtype="<i8"))
    h.update(np.ascontiguousarray(loss, dtype="<f4"))
    return h.hexdigest()


def write_loss_shard(path: str | Path, losses: np.ndarray, provenance: dict[str, Any]) -> Path:
    """Write the losses of every evalset token (in ``token_idx`` order) as a shard whose
    provenance records its content checksum, in :data:`ENCODINGS`."""
    loss = np.asarray(losses, dtype=np.float32).reshape(-1)
    token_idx = np.arange(len(loss), dtype=np.int64)
    table = pa.table({TOKEN_IDX: pa.array(token_idx), LOSS: pa.array(loss)})
    return write_parquet(table, path, {**provenance, CHECKSUM: content_checksum(token_idx, loss)},
                         encodings=ENCODINGS)


def expected_tokens(out: str | Path) -> int | None:
    """The evalset's token count under ``out``: from ``meta.json``, else from the row count of
    ``tokens.parquet``; None when neither can be read."""
    try:
        n = json.loads(evalset_meta(out).read_text())["counts"]["tokens"]
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return n
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return pq.read_metadata(evalset_tokens(out)).num_rows
    except (OSError, pa.ArrowInvalid):
        return None


def _read_columns(path: Path) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ShardError(f"loss shard {path}: not a readable Parquet file "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    problems = []
    for name, want in TYPES.items():
        i = schema.get_field_index(name)
        if i < 0:
            problems.append(f"no column {name!r}")
        elif schema.field(i).type != want:
            problems.append(f"column {name!r} is {schema.field(i).type}, not {want}")
    if problems:
        raise ShardError(f"loss shard {path}: {'; '.join(problems)} (a loss shard holds "
                         f"{TOKEN_IDX} int64 and {LOSS} float32)")
    try:
        return pq.read_table(path, columns=list(TYPES))
    except (OSError, pa.ArrowInvalid) as e:
        raise ShardError(f"loss shard {path}: cannot be read "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None


def _index_problem(token_idx: np.ndarray, n_tokens: int | None) -> str | None:
    n = len(token_idx)
    if n_tokens is not None and n != n_tokens:
        return f"holds {n} tokens, the evalset {n_tokens}"
    if n == 0:
        return "holds no tokens"
    if n_tokens is not None:
        if not np.array_equal(token_idx, np.arange(n, dtype=np.int64)):
            dup = n - len(np.unique(token_idx))
            return (f"{TOKEN_IDX} repeats {dup} indices" if dup else
                    f"{TOKEN_IDX} is not 0..{n - 1} in order")
        return None
    if token_idx.min() < 0:
        return f"{TOKEN_IDX} holds negative indices"
    dup = n - len(np.unique(token_idx))
    return f"{TOKEN_IDX} repeats {dup} indices" if dup else None


@functools.lru_cache(maxsize=4)
def _index_digest(n: int) -> "hashlib._Hash":
    """SHA-256 after the bytes of ``token_idx = 0..n-1`` (copied, then fed a shard's losses)."""
    h = hashlib.sha256()
    for a in range(0, n, 1 << 20):
        h.update(np.arange(a, min(n, a + (1 << 20)), dtype="<i8"))
    return h


def _vouched_by_checksum(path: Path, recorded: str, n_tokens: int) -> bool:
    """Whether the shard has both columns with their types, its Parquet statistics show
    ``token_idx`` in ``0..n_tokens-1`` with no gap or null, and its recorded checksum equals that
    of ``token_idx = 0..n_tokens-1`` followed by the losses it holds now. The checksum was
    computed from the indices as they were written, so then they were exactly
    ``0..n_tokens-1``, and the losses are the ones written beside them: the index column need
    not be decoded. False sends the shard to the full check, which names its problem."""
    try:
        file = pq.ParquetFile(path)
        meta = file.metadata
        schema = meta.schema.to_arrow_schema()
        if meta.num_rows != n_tokens or any(
                schema.get_field_index(name) < 0 or schema.field(name).type != want
                for name, want in TYPES.items()):
            return False
        col = schema.get_field_index(TOKEN_IDX)
        expect = 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(col).statistics
            if group.num_rows == 0:
                continue
            if (stats is None or not stats.has_min_max or stats.null_count != 0
                    or stats.min != expect or stats.max != expect + group.num_rows - 1):
                return False
            expect += group.num_rows
        loss = file.read(columns=[LOSS], use_threads=False).column(0)
    except (OSError, pa.ArrowInvalid):
        return False
    h = _index_digest(n_tokens).copy()
    for chunk in loss.chunks:
        h.update(np.ascontiguousarray(chunk.to_numpy(zero_copy_only=False), dtype="<f4"))
    return h.hexdigest() == recorded


def check_shard(path: str | Path, n_tokens: int | None = None) -> int:
    """Check one shard against the contract (see the module doc); returns its number of tokens.

    Raises :class:`ShardError` naming ``path`` at the first problem.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ShardError(f"loss shard {path}: cannot be read ({e.strerror})") from None
    stamp = (st.st_size, st.st_mtime_ns, n_tokens)
    seen = _VERIFIED.get(str(path))
    if seen is not None and seen[0] == stamp:
        return seen[1]
    recorded = (read_provenance(path) or {}).get(CHECKSUM)
    if recorded is not None and n_tokens is not None and _vouched_by_checksum(path, recorded,
                                                                               n_tokens):
        _VERIFIED[str(path)] = (stamp, n_tokens)
        return n_tokens
    table = _read_columns(path)
    token_idx = table.column(TOKEN_IDX).to_numpy()
    loss = table.column(LOSS).to_numpy(zero_copy_only=False)
    problem = _index_problem(token_idx, n_tokens)
    if problem:
        raise ShardError(f"loss shard {path}: {problem}; rerun `spectrum losses` to rewrite it")
    if recorded is not None and recorded != content_checksum(token_idx, loss):
        raise ShardError(f"loss shard {path}: its content does not match the checksum recorded "
                         "when it was written (rows changed after writing); rerun "
                         "`spectrum losses` to rewrite it")
    _VERIFIED[str(path)] = (stamp, len(token_idx))
    return len(token_idx)


def shard_problem(path: str | Path, n_tokens: int | None = None) -> str | None:
    """The reason ``path`` breaks the contract, or None if it keeps it (no exception)."""
    try:
        check_shard(path, n_tokens)
    except ShardError as e:
        return str(e).removeprefix(f"loss shard {path}: ")
    return None


def check_run_shards(out: str | Path, run: str, steps: Sequence[int],
                     n_tokens: int | None = None) -> int | None:
    """Check the shards of ``run`` at ``steps`` (``n_tokens``: default the evalset's count under
    ``out``). Raises :class:`ShardError` naming every bad shard; returns the token count when it
    is known."""
    if n_tokens is None:
        n_tokens = expected_tokens(out)

    def problems_of(step: int) -> list[str]:
        try:
            check_shard(loss_shard(out, run, int(step)), n_tokens)
        except ShardError as e:
            return list(e.problems)
        return []

    # shards are checked side by side: decoding and hashing release the GIL
    with ThreadPoolExecutor(max_workers=max(1, min(len(steps), os.cpu_count() or 1))) as pool:
        problems = [p for found in pool.map(problems_of, steps) for p in found]
    if problems:
        raise ShardError(*problems)
    return n_tokens
