"""What the spectra, reconstruction and report stages read of one run: its measured losses summed
per sequence and checkpoint, a few per-run aggregates of its fits, and a reader of its per-token
columns in token chunks.

Losses are kept as per-sequence sums and counts (``seq_sums``, ``seq_counts``: sequences x
checkpoints), over every token with a finite loss and over the run's *population* (the tokens whose
fit has finite parameters). Any mean curve is a ratio of sums over sequences, so a bootstrap over
sequences draws it without rereading a shard (:mod:`spectrum.analysis.runs.curves`). The sums are
made shard by shard: a shard holds every ``token_idx`` 0..N-1 in order (its contract, checked
before it is read), so its ``loss`` column alone is summed by sequence with ``np.bincount``. The
in-sample and spectrum tests compare against the population's mean loss; the held-out-run tests
against the mean over every token with a finite loss. Tokens are also split in two halves by
sequence (``half``: a seeded random half of the sequence ids) for the held-out-tokens test. Step 0
is not on the log axis and is dropped; checkpoints at or before the run's warmup are not *scored*
(``scored``), though they stay in the fits.

Nothing per token is held: :meth:`RunData.token_chunks` reads the evalset's annotations and the
run's fits (both one row per ``token_idx`` 0..N-1, in order) in chunks of ``chunk`` tokens, with
the columns asked for, so every analysis accumulates over chunks and its memory is set by the chunk
size, not by the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from spectrum.analysis.runs.fit_summary import FitSummary, summarize_fits
from spectrum.analysis.runs.schedule import Schedule, run_schedule
from spectrum.errors import SpectrumError
from spectrum.fit.model import PARAMS
from spectrum.layout import LOSS, evalset_tokens, fits_file, loss_shard, shard_steps
from spectrum.losses.shards import check_run_shards
from spectrum.losses.trajectories import log_tokens
from spectrum.manifest import Manifest, RunSpec

FIT_COLUMNS = (*PARAMS, "kind")
CHUNK = 1 << 16  # tokens per chunk read by :meth:`RunData.token_chunks` (a chunk of
# per-token curves, tokens x checkpoints in float64, stays near 50 MB at 100 checkpoints)
DERIVED = ("seq_code", "half", "in_pop")  # columns the reader adds


@dataclass(frozen=True)
class RunData:
    name: str
    role: str
    M: float
    D: float
    tokens_per_step: int
    warmup_steps: int
    steps: np.ndarray  # (K,) checkpoints with T > 0
    x: np.ndarray  # (K,) ln T
    seq_ids: np.ndarray  # (S,) the evalset's sequence ids, ascending; rows of the sums below
    seq_half: np.ndarray  # (S,) 0/1: the sequence's half
    seq_sums: np.ndarray  # (S, K) summed loss of every token with a finite loss
    seq_counts: np.ndarray  # (S, K) how many
    pop_sums: np.ndarray  # (S, K) ... of the population tokens only
    pop_counts: np.ndarray  # (S, K)
    out: Path | None = None  # the output folder (its evalset is read by the chunk reader)
    fits_path: Path | None = None  # the run's fits file; None: no fits
    summary: FitSummary | None = None  # of its fits, made by :func:`load_run`
    n_tokens: int = 0  # N: the evalset's tokens
    chunk: int = CHUNK  # tokens per chunk of :meth:`token_chunks`
    seed: int | None = None  # the training seed (RunSpec.seed): runs of one point are replicas
    schedule: Schedule | str | None = None  # its learning rates, or why they are unknown

    @property
    def has_fits(self) -> bool:
        return self.fits_path is not None

    @property
    def point(self) -> tuple[float, float, int, int]:
        """The configuration its seed replicas share (as :attr:`spectrum.manifest.RunSpec.point`):
        M, D, tokens per step, warmup."""
        return (self.M, self.D, self.tokens_per_step, self.warmup_steps)

    @property
    def scored(self) -> np.ndarray:
        """(K,) bool: checkpoints after the warmup (the scored range)."""
        return self.steps > self.warmup_steps

    @property
    def mean_loss_all(self) -> np.ndarray:
        """(K,) mean loss over every token with a finite loss."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.seq_sums.sum(0) / self.seq_counts.sum(0)

    @property
    def mean_loss(self) -> np.ndarray:
        """(K,) mean loss over the population (every token when there are no fits)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.pop_sums.sum(0) / self.pop_counts.sum(0)

    @property
    def half_loss(self) -> np.ndarray:
        """(2, K) mean loss over the population tokens of each sequence half."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.stack([self.pop_sums[self.seq_half == h].sum(0)
                             / self.pop_counts[self.seq_half == h].sum(0) for h in (0, 1)])

    def seq_code(self, seq_id: np.ndarray) -> np.ndarray:
        """Row of ``seq_sums`` of each given sequence id."""
        return np.searchsorted(self.seq_ids, np.asarray(seq_id))

    def columns(self) -> set[str]:
        """The per-token columns :meth:`token_chunks` can read (annotations and fits)."""
        assert self.out is not None
        names = set(_schema(evalset_tokens(self.out)))
        return names | (set(_schema(self.fits_path)) if self.fits_path is not None else set())

    def token_chunks(self, columns: Sequence[str], *, population: bool = False,
                     chunk: int | None = None, start: int = 0,
                     stop: int | None = None) -> Iterator[pl.DataFrame]:
        """The run's tokens ``start <= token_idx < stop`` (None: to the last) in order, ``chunk``
        at a time, as frames with ``token_idx``, the ``columns`` asked for (from the evalset's
        annotations, else from the fits) and the derived ``seq_code`` (row of ``seq_sums``),
        ``half`` and ``in_pop``; ``population``: the population's tokens only. A fits ``kind``
        that is null reads ``missing``."""
        assert self.out is not None, "a run built without its output folder has no token reader"
        yield from read_token_chunks(self.out, self.fits_path, columns, self.seq_ids,
                                     self.seq_half, chunk or self.chunk, population=population,
                                     start=start, stop=stop)

    def light(self) -> "RunData":
        """This run without its per-sequence loss sums and fit summary: what a worker that reads
        the run's tokens needs (its token reader, axes and scale), small to send."""
        empty = np.zeros((0, len(self.x)))
        return replace(self, seq_sums=empty, seq_counts=empty, pop_sums=empty, pop_counts=empty,
                       summary=None)


def sequence_halves(seq_id: np.ndarray, seed: int = 0) -> np.ndarray:
    """0/1 per token: a seeded random half of the distinct sequence ids is half 1."""
    ids = np.unique(seq_id)
    rng = np.random.default_rng(seed)
    ones = rng.permutation(ids)[: len(ids) // 2]
    return np.isin(seq_id, ones).astype(np.int8)


def _schema(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise SpectrumError(f"{path}: not a readable Parquet file ({e})") from None


def check_tokens(out: Path) -> Path:
    """The evalset's tokens file, checked to exist with ``token_idx`` and ``seq_id``."""
    path = evalset_tokens(out)
    if not path.is_file():
        raise SpectrumError(f"{path}: the evaluation set is missing; run `spectrum evalset` first")
    missing = {"token_idx", "seq_id"} - set(_schema(path))
    if missing:
        raise SpectrumError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return path


def read_token_column(out: Path, column: str) -> np.ndarray:
    """One column of the evalset's tokens, whole (in token order)."""
    path = check_tokens(out)
    try:
        return pq.read_table(path, columns=[column]).column(0).to_numpy(zero_copy_only=False)
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{path}: cannot read column {column} ({e})") from None


def read_tokens(out: Path) -> pl.DataFrame:
    """The whole evalset tokens file (small evalsets, tests and notebooks; the report streams)."""
    path = check_tokens(out)
    try:
        tokens = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{path}: not a readable Parquet file ({e})") from None
    return tokens.sort("token_idx")


def check_fits(out: Path, run: str) -> Path | None:
    """The run's fits file checked for the fit columns, or None if it has none."""
    path = fits_file(out, run)
    if not path.is_file():
        return None
    missing = {"token_idx", *FIT_COLUMNS} - set(_schema(path))
    if missing:
        raise SpectrumError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return path


def _row_groups(file: pq.ParquetFile, start: int, stop: int | None) -> tuple[list[int], int]:
    """The row groups that hold rows ``start <= row < stop``, and the first one's first row."""
    groups, first, offset = [], start, 0
    for g in range(file.metadata.num_row_groups):
        n = file.metadata.row_group(g).num_rows
        if offset + n > start and (stop is None or offset < stop):
            first = offset if not groups else first
            groups.append(g)
        offset += n
    return groups, first


def _batches(path: Path, columns: list[str], chunk: int, start: int = 0,
             stop: int | None = None) -> Iterator[pa.Table]:
    """The file's ``columns`` of rows ``start <= row < stop`` (None: to the end) in consecutive
    tables of exactly ``chunk`` rows (the last shorter); only the row groups holding the range
    are read."""
    try:
        file = pq.ParquetFile(path)
        groups, first = _row_groups(file, start, stop)
        if not groups:
            return
        reader = file.iter_batches(batch_size=chunk, columns=columns, row_groups=groups,
                                   use_threads=False)
        skip, left = start - first, (None if stop is None else stop - start)
        held: list[pa.RecordBatch] = []
        n = 0
        for batch in reader:
            if skip:
                cut = min(skip, batch.num_rows)
                batch, skip = batch.slice(cut), skip - cut
            if left is not None:
                batch = batch.slice(0, left)
                left -= batch.num_rows
            if not batch.num_rows:
                continue
            held.append(batch)
            n += batch.num_rows
            while n >= chunk:
                table = pa.Table.from_batches(held)
                yield table.slice(0, chunk)
                rest = table.slice(chunk)
                held, n = rest.to_batches(), rest.num_rows
        if n:
            yield pa.Table.from_batches(held)
    except (pa.ArrowInvalid, OSError) as e:
        raise SpectrumError(f"{path}: cannot be read ({e})") from None


def _ordered(table: pa.Table, start: int, path: Path) -> None:
    tok = table.column("token_idx").to_numpy()
    if not np.array_equal(tok, np.arange(start, start + len(tok))):
        raise SpectrumError(f"{path}: token_idx is not 0..N-1 in order (one row per evaluated "
                            "token, sorted); rewrite it")


def read_token_chunks(out: Path, fits_path: Path | None, columns: Sequence[str],
                      seq_ids: np.ndarray, seq_half: np.ndarray, chunk: int, *,
                      population: bool = False, start: int = 0,
                      stop: int | None = None) -> Iterator[pl.DataFrame]:
    """See :meth:`RunData.token_chunks`."""
    tok_path = check_tokens(out)
    tok_names = set(_schema(tok_path))
    fit_names = set(_schema(fits_path)) if fits_path is not None else set()
    want = [c for c in dict.fromkeys(columns) if c not in ("token_idx", *DERIVED)]
    from_tok = ["token_idx", "seq_id", *(c for c in want if c in tok_names and c != "seq_id")]
    from_fit = [c for c in want if c not in tok_names and c in fit_names]
    pop_cols = [c for c in PARAMS if c not in from_fit] if fits_path is not None else []
    missing = [c for c in want if c not in tok_names and c not in fit_names]
    if missing:
        raise SpectrumError(f"{fits_path or tok_path}: missing column(s) {', '.join(missing)}")
    fit_iter = (_batches(fits_path, ["token_idx", *from_fit, *pop_cols], chunk, start, stop)
                if fits_path is not None else None)
    for tok in _batches(tok_path, from_tok, chunk, start, stop):
        _ordered(tok, start, tok_path)
        frame = pl.from_arrow(tok)
        assert isinstance(frame, pl.DataFrame)
        code = np.searchsorted(seq_ids, frame["seq_id"].to_numpy())
        frame = frame.with_columns(seq_code=pl.Series(code), half=pl.Series(seq_half[code]))
        if fit_iter is not None:
            fit = next(fit_iter, None)
            if fit is None or fit.num_rows != tok.num_rows:
                raise SpectrumError(f"{fits_path}: holds another number of tokens than "
                                    f"{tok_path}; rerun `spectrum fit --force`")
            _ordered(fit, start, fits_path)
            f = pl.from_arrow(fit.drop_columns(["token_idx"]))
            assert isinstance(f, pl.DataFrame)
            if "kind" in f.columns:
                f = f.with_columns(pl.col("kind").fill_null("missing"))
            frame = pl.concat([frame, f], how="horizontal").with_columns(in_pop=pl.all_horizontal(
                [pl.col(c).is_not_null() & pl.col(c).is_finite() for c in PARAMS]))
            frame = frame.drop([c for c in pop_cols if c not in want])
        else:
            frame = frame.with_columns(in_pop=pl.lit(True))
        if "seq_id" not in want:
            frame = frame.drop("seq_id")
        if population:
            frame = frame.filter(pl.col("in_pop"))
        start += tok.num_rows
        yield frame
    if fit_iter is not None and next(fit_iter, None) is not None:
        raise SpectrumError(f"{fits_path}: holds another number of tokens than {tok_path}; "
                            "rerun `spectrum fit --force`")


def _population_mask(out: Path, fits_path: Path | None, n: int, chunk: int) -> np.ndarray:
    """(N,) bool: the tokens whose fit has finite lo, hi, tau and k (all when no fits)."""
    if fits_path is None:
        return np.ones(n, bool)
    parts = []
    for start, table in enumerate(_batches(fits_path, ["token_idx", *PARAMS], chunk)):
        _ordered(table, start * chunk, fits_path)
        ok = np.ones(table.num_rows, bool)
        for c in PARAMS:
            v = table.column(c).to_numpy(zero_copy_only=False)
            ok &= np.isfinite(np.asarray(v, float))
        parts.append(ok)
    mask = np.concatenate(parts) if parts else np.zeros(0, bool)
    if len(mask) != n:
        raise SpectrumError(f"{fits_path}: holds {len(mask)} tokens, the evalset {n}; rerun "
                            "`spectrum fit --force`")
    return mask


def shard_sums(path: Path, seq_code: np.ndarray, n_seq: int,
               masks: Sequence[np.ndarray | None]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence, the summed finite losses of one shard and how many, for each token mask
    (None: every token). The shard holds ``token_idx`` 0..N-1 in order (checked beforehand), so
    its ``loss`` column alone is read."""
    try:
        loss = pq.read_table(path, columns=[LOSS]).column(0).to_numpy(zero_copy_only=False)
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{path}: unreadable loss shard ({e})") from None
    loss = np.asarray(loss, np.float64)
    finite = np.isfinite(loss)
    out = []
    for mask in masks:
        ok = finite if mask is None else finite & mask
        out.append((np.bincount(seq_code[ok], weights=loss[ok], minlength=n_seq),
                    np.bincount(seq_code[ok], minlength=n_seq).astype(float)))
    return out


def load_run(out: Path, spec: RunSpec, *, half_seed: int = 0, chunk: int = CHUNK,
             summarize: bool = True) -> RunData | None:
    """The run's data, or None if it has no loss shards with T > 0. ``summarize``: also compute
    the per-run aggregates of its fits (:mod:`spectrum.analysis.runs.fit_summary`) in one pass."""
    out = Path(out)
    shards = [(s, loss_shard(out, spec.name, s)) for s in shard_steps(out, spec.name) if s > 0]
    if not shards:
        return None
    seq_id = read_token_column(out, "seq_id")
    n = len(seq_id)
    check_run_shards(out, spec.name, [s for s, _ in shards], n_tokens=n)
    fits_path = check_fits(out, spec.name)
    seq_ids, seq_code = np.unique(seq_id, return_inverse=True)
    seq_code = seq_code.ravel().astype(np.int64)
    halves = sequence_halves(seq_ids, half_seed)  # each id once: its half
    del seq_id
    pop = _population_mask(out, fits_path, n, chunk)
    steps = np.array([s for s, _ in shards], dtype=np.int64)
    S, K = len(seq_ids), len(steps)
    sums, counts = np.zeros((2, S, K)), np.zeros((2, S, K))
    for j, (_, path) in enumerate(shards):
        for i, (s, c) in enumerate(shard_sums(path, seq_code, S, [None, pop])):
            sums[i, :, j], counts[i, :, j] = s, c
    del seq_code, pop
    run = RunData(name=spec.name, role=spec.role, M=spec.params, D=spec.tokens,
                  tokens_per_step=spec.tokens_per_step,
                  warmup_steps=int(getattr(spec, "warmup_steps", 0) or 0), steps=steps,
                  x=log_tokens(steps, spec.tokens_per_step), seq_ids=seq_ids,
                  seq_half=halves.astype(np.int8), seq_sums=sums[0], seq_counts=counts[0],
                  pop_sums=sums[1], pop_counts=counts[1], out=out, fits_path=fits_path,
                  n_tokens=n, chunk=chunk, seed=spec.seed, schedule=run_schedule(spec))
    if summarize and fits_path is not None:
        run = replace(run, summary=summarize_fits(fits_path, run.token_chunks))
    return run


def load_runs(manifest: Manifest, *, half_seed: int = 0, chunk: int = CHUNK) -> list[RunData]:
    """Every manifest run that has loss shards."""
    runs = [load_run(manifest.out, spec, half_seed=half_seed, chunk=chunk)
            for spec in manifest.runs]
    return [r for r in runs if r is not None]
