"""What the spectra, reconstruction and report stages read of one run: its per-token fits joined
with the evalset's annotations, and its measured losses summed per sequence and checkpoint.

Losses are kept as per-sequence sums and counts (``seq_sums``, ``seq_counts``: sequences x
checkpoints), over every token with a finite loss and over the run's *population* (the tokens whose
fit has finite parameters). Any mean curve is a ratio of sums over sequences, so a bootstrap over
sequences draws it without rereading a shard (:mod:`spectrum.analysis.curves`). The in-sample and
spectrum tests compare against the population's mean loss; the held-out-run tests against the
mean over every token with a finite loss. Tokens are also split in two halves by sequence
(``half``: a seeded random half of the sequence ids) for the held-out-tokens test. Step 0 is not on
the log axis and is dropped; checkpoints at or before the run's warmup are not *scored*
(``scored``), though they stay in the fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest, RunSpec
from spectrum.layout import evalset_tokens, fits_file, loss_run_dir, loss_shard, shard_steps
from spectrum.losses.shards import check_run_shards
from spectrum.losses.trajectories import log_tokens

FIT_COLUMNS = ("lo", "hi", "tau", "k", "kind")


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
    tokens: pl.DataFrame | None  # fits joined with annotations, one row per token_idx; None: no fits
    fits: pl.DataFrame | None = None  # the run's fits file as read; None: no fits

    @property
    def has_fits(self) -> bool:
        return self.tokens is not None

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

    def population(self) -> pl.DataFrame:
        assert self.tokens is not None
        return self.tokens.filter(pl.col("in_pop"))


def sequence_halves(seq_id: np.ndarray, seed: int = 0) -> np.ndarray:
    """0/1 per token: a seeded random half of the distinct sequence ids is half 1."""
    ids = np.unique(seq_id)
    rng = np.random.default_rng(seed)
    ones = rng.permutation(ids)[: len(ids) // 2]
    return np.isin(seq_id, ones).astype(np.int8)


def read_tokens(out: Path) -> pl.DataFrame:
    path = evalset_tokens(out)
    if not path.is_file():
        raise SpectrumError(f"{path}: the evaluation set is missing; run `spectrum evalset` first")
    try:
        tokens = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise SpectrumError(f"{path}: not a readable Parquet file ({e})") from None
    missing = {"token_idx", "seq_id"} - set(tokens.columns)
    if missing:
        raise SpectrumError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return tokens.sort("token_idx")


def read_fits(out: Path, run: str) -> pl.DataFrame | None:
    path = fits_file(out, run)
    if not path.is_file():
        return None
    try:
        fits = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{path}: not a readable Parquet file ({e})") from None
    missing = {"token_idx", *FIT_COLUMNS} - set(fits.columns)
    if missing:
        raise SpectrumError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return fits


def load_run(out: Path, spec: RunSpec, tokens: pl.DataFrame, *, half_seed: int = 0) -> RunData | None:
    """The run's data, or None if it has no loss shards with T > 0."""
    out = Path(out)
    shards = [(s, loss_shard(out, spec.name, s)) for s in shard_steps(out, spec.name) if s > 0]
    if not shards:
        return None
    check_run_shards(out, spec.name, [s for s, _ in shards], n_tokens=tokens.height)
    fits = read_fits(out, spec.name)
    tok = tokens.with_columns(half=pl.Series(sequence_halves(tokens["seq_id"].to_numpy(),
                                                             half_seed)))
    if fits is not None:
        tok = tok.join(fits.drop([c for c in fits.columns if c in tok.columns and c != "token_idx"]),
                       on="token_idx", how="left")
        tok = tok.with_columns(in_pop=pl.all_horizontal(
            [pl.col(c).is_not_null() & pl.col(c).is_finite() for c in ("lo", "hi", "tau", "k")]))
    else:
        tok = tok.with_columns(in_pop=pl.lit(True))
    frames = [pl.scan_parquet(p).select("token_idx", "loss").with_columns(step=pl.lit(s, pl.Int64))
              for s, p in shards]
    key = tok.lazy().select("token_idx", "seq_id", "in_pop")
    try:
        agg = (pl.concat(frames).filter(pl.col("loss").is_finite())
               .join(key, on="token_idx", how="inner")
               .group_by("step", "seq_id", "in_pop")
               .agg(s=pl.col("loss").cast(pl.Float64).sum(), n=pl.len())
               .collect())
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{loss_run_dir(out, spec.name)}: unreadable loss shards ({e})") from None
    steps = np.array([s for s, _ in shards], dtype=np.int64)
    seq_ids = np.unique(tokens["seq_id"].to_numpy())
    sums = np.zeros((2, len(seq_ids), len(steps)))
    counts = np.zeros_like(sums)
    col = np.searchsorted(steps, agg["step"].to_numpy())
    row = np.searchsorted(seq_ids, agg["seq_id"].to_numpy())
    pop = agg["in_pop"].to_numpy().astype(int)
    np.add.at(sums, (pop, row, col), agg["s"].to_numpy())
    np.add.at(counts, (pop, row, col), agg["n"].to_numpy().astype(float))
    halves = tok.group_by("seq_id").agg(pl.col("half").first()).sort("seq_id")
    return RunData(name=spec.name, role=spec.role, M=spec.params, D=spec.tokens,
                   tokens_per_step=spec.tokens_per_step,
                   warmup_steps=int(getattr(spec, "warmup_steps", 0) or 0), steps=steps,
                   x=log_tokens(steps, spec.tokens_per_step), seq_ids=seq_ids,
                   seq_half=halves["half"].to_numpy().astype(np.int8),
                   seq_sums=sums.sum(0), seq_counts=counts.sum(0), pop_sums=sums[1],
                   pop_counts=counts[1], tokens=tok if fits is not None else None, fits=fits)


def load_runs(manifest: Manifest, *, half_seed: int = 0) -> tuple[pl.DataFrame, list[RunData]]:
    """The evalset tokens and every manifest run that has loss shards."""
    tokens = read_tokens(manifest.out)
    runs = [load_run(manifest.out, spec, tokens, half_seed=half_seed) for spec in manifest.runs]
    return tokens, [r for r in runs if r is not None]
