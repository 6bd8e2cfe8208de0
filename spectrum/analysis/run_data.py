"""What the spectra, reconstruction and report stages read of one run: its per-token fits joined
with the evalset's annotations, and its measured mean loss per checkpoint.

The *population* of a run is the set of tokens whose fit has finite parameters; the in-sample and
spectrum tests compare against the measured mean loss over exactly these tokens. The held-out-run
test compares against the mean over every token with a finite loss (``mean_loss_all``). Tokens are
also split in two halves by sequence (``half``: a seeded random half of the sequence ids) for the
held-out-tokens test. Step 0 is not on the log axis and is dropped.
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
    steps: np.ndarray  # (K,) checkpoints with T > 0
    x: np.ndarray  # (K,) ln T
    mean_loss: np.ndarray  # (K,) over the population (or every token when there are no fits)
    mean_loss_all: np.ndarray  # (K,) over every token with a finite loss
    half_loss: np.ndarray  # (2, K) over the population tokens of each sequence half
    tokens: pl.DataFrame | None  # fits joined with annotations, one row per token_idx; None: no fits
    fits: pl.DataFrame | None = None  # the run's fits file as read; None: no fits

    @property
    def has_fits(self) -> bool:
        return self.tokens is not None

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
    key = tok.lazy().select("token_idx", "half", "in_pop")
    try:
        agg = (pl.concat(frames).filter(pl.col("loss").is_finite())
               .join(key, on="token_idx", how="inner")
               .group_by("step", "half", "in_pop")
               .agg(s=pl.col("loss").cast(pl.Float64).sum(), n=pl.len())
               .collect())
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{loss_run_dir(out, spec.name)}: unreadable loss shards ({e})") from None
    steps = np.array([s for s, _ in shards], dtype=np.int64)
    K = len(steps)
    pos = {int(s): j for j, s in enumerate(steps)}
    S = np.zeros((2, 2, K))
    N = np.zeros((2, 2, K))
    for st, h, ip, s, n in agg.iter_rows():
        S[int(h), int(ip), pos[int(st)]] += s
        N[int(h), int(ip), pos[int(st)]] += n
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_all = S.sum((0, 1)) / N.sum((0, 1))
        mean_pop = S[:, 1].sum(0) / N[:, 1].sum(0)
        half_loss = S[:, 1] / N[:, 1]
    x = log_tokens(steps, spec.tokens_per_step)
    return RunData(name=spec.name, role=spec.role, M=spec.params, D=spec.tokens, steps=steps, x=x,
                   mean_loss=mean_pop, mean_loss_all=mean_all, half_loss=half_loss,
                   tokens=tok if fits is not None else None, fits=fits)


def load_runs(manifest: Manifest, *, half_seed: int = 0) -> tuple[pl.DataFrame, list[RunData]]:
    """The evalset tokens and every manifest run that has loss shards."""
    tokens = read_tokens(manifest.out)
    runs = [load_run(manifest.out, spec, tokens, half_seed=half_seed) for spec in manifest.runs]
    return tokens, [r for r in runs if r is not None]
