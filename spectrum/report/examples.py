"""Example tokens, drawn stratified and seeded: what the token explorer shows, as a polars frame.

Every token with a fit in a run falls in one *cell*: (run, learning-time band, kind, frequency
quartile, word start). From each cell at most ``per_cell`` tokens are drawn, those with the
smallest value of one seeded random key per token. The key is shared by all runs, so where a token
sits in the same cell in two runs, both draws tend to pick it, and a smaller ``per_cell`` draws a
subset of a larger one.

- Band: where ``tau`` lies in the run's own measured range of ``x = ln T`` (T > 0): before the
  first checkpoint, in one of ``bands`` equal parts of ``[x_first, x_last]`` (early, middle, late
  for three), or after the last checkpoint. Every kind is banded by its fitted ``tau``; for flat
  and nonmonotone trajectories that midpoint means little.
- Kinds: learned, forgotten, nonmonotone, flat, unfinished. Tokens without a finite fit
  (``unfit``) have no band and are not drawn.
- Frequency quartile: 1 (rarest) to 4 (most frequent) by the evalset's ``target_freq``, with the
  quartile edges taken over all contextualized tokens. Word start: the evalset's ``word_start``.
  A missing annotation leaves the column null.

Each example carries its context token ids (up to ``context`` tokens before the target, from
``evalset/sequences.parquet``), its measured trajectory at every checkpoint with T > 0, its fitted
parameters with standard errors, the step-versus-smooth verdict where the fits hold it,
``censored`` (which side of the step lies outside the run's fitted checkpoints: ``none``, ``hi``,
``lo``; :mod:`spectrum.fit.kinds`; computed from ``tau`` for fits written without the column), and
the same token's tau, standard error, kind and censoring in every other run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spectrum import layout
from spectrum.analysis.runs import stepwise
from spectrum.analysis.runs.run_data import RunData, load_run, read_token_column
from spectrum.errors import SpectrumError
from spectrum.fit.kinds import CENSORED, censoring
from spectrum.manifest import Manifest, RunSpec

DRAWN_KINDS = ("learned", "forgotten", "nonmonotone", "flat", "unfinished")  # "unfit" has no band
FIT_COLUMNS = ("lo", "hi", "tau", "k")  # the fitted parameters each example carries
CELL = ("run", "band", "kind", "freq_quartile", "word_start")


@dataclass(frozen=True)
class Sampling:
    """How examples are drawn: ``per_cell`` tokens per cell at most, with ``seed``; ``context``
    tokens before the target; ``bands`` equal parts of each run's measured ln T range."""

    per_cell: int = 40
    seed: int = 0
    context: int = 32
    bands: int = 3

    def __post_init__(self) -> None:
        for name in ("per_cell", "context", "bands"):
            if getattr(self, name) < 1:
                raise SpectrumError(f"examples: {name} must be at least 1, "
                                    f"got {getattr(self, name)}")

    def describe(self) -> str:
        """One sentence for the page."""
        tokens = "token" if self.per_cell == 1 else "tokens"
        return (f"Up to {self.per_cell} {tokens} per cell (run x learning-time band x kind x "
                f"frequency quartile x word start), drawn at random with seed {self.seed}; "
                f"bands: tau before the run's first checkpoint, in {self.bands} equal parts of "
                f"its measured ln T range, or after its last checkpoint; up to {self.context} "
                "tokens of context before each target.")


def band_names(n_bands: int) -> tuple[str, ...]:
    """Names of the bands, in order of learning time."""
    inner = {1: ("within",), 2: ("early", "late"), 3: ("early", "middle", "late")}.get(
        n_bands, tuple(f"part {i + 1} of {n_bands}" for i in range(n_bands)))
    return ("before first checkpoint", *inner, "after last checkpoint")


def band_keys(n_bands: int) -> tuple[str, ...]:
    """Short names of the bands for URLs (``#band=<key>``), in the order of :func:`band_names`."""
    inner = {1: ("within",), 2: ("early", "late"), 3: ("early", "middle", "late")}.get(
        n_bands, tuple(f"part{i + 1}" for i in range(n_bands)))
    return ("before", *inner, "after")


def band_of(tau: np.ndarray, x: np.ndarray, n_bands: int) -> np.ndarray:
    """Band index per tau (0: before ``x[0]``; ``n_bands + 1``: after ``x[-1]``; -1: no tau)."""
    tau = np.asarray(tau, dtype=np.float64)
    edges = np.linspace(float(x[0]), float(x[-1]), n_bands + 1)
    band = np.searchsorted(edges[1:-1], tau, side="right") + 1
    band = np.where(tau < edges[0], 0, np.where(tau > edges[-1], n_bands + 1, band))
    return np.where(np.isfinite(tau), band, -1).astype(np.int16)


def band_ranges(x: np.ndarray, n_bands: int) -> list[tuple[float | None, float | None]]:
    """The ln T interval of every band (None: open end)."""
    edges = np.linspace(float(x[0]), float(x[-1]), n_bands + 1).tolist()
    return [(None, edges[0]), *zip(edges[:-1], edges[1:]), (edges[-1], None)]


def frequency_quartile(freq: np.ndarray) -> np.ndarray:
    """1 (rarest quarter) .. 4 (most frequent) by quantiles of ``freq`` over all tokens."""
    freq = np.asarray(freq, dtype=np.float64)
    edges = np.nanquantile(freq, [0.25, 0.5, 0.75])
    return (np.searchsorted(edges, freq, side="right") + 1).astype(np.int8)


def _annotation_columns(chunk: pl.DataFrame, quartiles: np.ndarray | None) -> list[pl.Series]:
    """seq_id, pos, target_id and the slice columns of a chunk (null where not annotated)."""
    cols = [chunk[c] for c in (layout.SEQ_ID, layout.POS, layout.TARGET_ID) if c in chunk.columns]
    if quartiles is not None:
        f = chunk["target_freq"].to_numpy().astype(np.float64)
        fq = pl.Series("freq_quartile", (np.searchsorted(quartiles, f, side="right") + 1)
                       .astype(np.int8))
    else:
        fq = pl.Series("freq_quartile", [None] * chunk.height, pl.Int8)
    ws = (chunk["word_start"].cast(pl.Boolean).alias("word_start") if "word_start" in chunk.columns
          else pl.Series("word_start", [None] * chunk.height, pl.Boolean))
    return [*cols, fq, ws]


def _candidates(run: RunData, sampling: Sampling, quartiles: np.ndarray | None,
                annotations: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One pass over the run's tokens: the ``per_cell`` tokens of smallest key in every cell, and
    every cell's size. The key of token i is the i-th draw of ``default_rng(seed).random``, the
    same in every run."""
    rng = np.random.default_rng(sampling.seed)
    keep = pl.DataFrame()
    sizes = []
    for ch in run.token_chunks(["kind", "tau", *annotations]):
        key = rng.random(ch.height)
        mask = (ch["in_pop"] & ch["kind"].is_in(DRAWN_KINDS)).to_numpy()
        t = ch.filter(pl.Series(mask))
        band = band_of(t["tau"].to_numpy(), run.x, sampling.bands)
        cells = pl.DataFrame([t[layout.TOKEN_IDX], t["kind"]]).with_columns(
            run=pl.lit(run.name), band=pl.Series(band), *_annotation_columns(t, quartiles),
            key=pl.Series(key[mask]))
        sizes.append(cells.group_by(CELL).len())
        keep = pl.concat([keep, cells], how="vertical") if keep.height else cells
        keep = (keep.sort("key").with_columns(rank=pl.int_range(pl.len()).over(CELL))
                .filter(pl.col("rank") < sampling.per_cell).drop("rank"))
    size = (pl.concat(sizes).group_by(CELL).agg(cell_size=pl.col("len").sum().cast(pl.UInt32))
            if sizes else pl.DataFrame())
    return keep, size


def _picked_fits(run: RunData, token_idx: np.ndarray) -> pl.DataFrame:
    """The fits of the given tokens (one pass, the rows of those tokens kept): the parameters,
    their standard errors, r2, the step-versus-smooth verdict where computable, ``in_pop``."""
    names = run.columns()
    cols = [c for c in (*FIT_COLUMNS, *(f"{p}_se" for p in FIT_COLUMNS), "r2", "kind",
                        "censored", layout.STEP_PREFERRED, *stepwise.COLUMNS) if c in names]
    wanted = pl.Series(np.asarray(token_idx, np.int64))
    parts = [ch.filter(pl.col(layout.TOKEN_IDX).is_in(wanted)) for ch in run.token_chunks(cols)]
    source = pl.concat(parts)
    if set(stepwise.COLUMNS) <= set(source.columns):  # the stepwise test's per-token verdict
        source = source.with_columns(stepwise.step_preferred())
    if "censored" not in source.columns:  # fits written before the column: the same rule
        x = run.x[run.scored] if run.scored.any() else run.x
        code = censoring(source["tau"].to_numpy(), float(x.min()), float(x.max()))
        source = source.with_columns(censored=pl.Series(np.asarray(CENSORED)[code]))
    return source


def _trajectories(out: Path, run: RunData, token_idx: np.ndarray) -> pl.DataFrame:
    """token_idx, loss (list, one per checkpoint with T > 0, NaN where not measured)."""
    files = [str(layout.loss_shard(out, run.name, int(s))) for s in run.steps]
    try:
        table = ds.dataset(files, format="parquet", partitioning="hive",
                           partition_base_dir=str(layout.losses_dir(out))).to_table(
            columns=[layout.TOKEN_IDX, layout.LOSS, layout.STEP],
            filter=pc.field(layout.TOKEN_IDX).isin(pa.array(token_idx, pa.int64())))
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise SpectrumError(f"{layout.loss_run_dir(out, run.name)}: unreadable loss shards "
                            f"({e})") from None
    order = np.argsort(token_idx)
    tok = table.column(layout.TOKEN_IDX).to_numpy()
    col = np.searchsorted(run.steps, table.column(layout.STEP).to_numpy())
    grid = np.full((len(token_idx), len(run.steps)), np.nan, dtype=np.float32)
    grid[order[np.searchsorted(token_idx[order], tok)], col] = \
        table.column(layout.LOSS).to_numpy(zero_copy_only=False)
    return pl.DataFrame({layout.TOKEN_IDX: token_idx,
                         "loss": pl.Series([g for g in grid], dtype=pl.List(pl.Float32))})


def read_contexts(out: Path, picks: pl.DataFrame, n_before: int) -> pl.Series | None:
    """The up-to-``n_before`` token ids before each target of ``picks`` (seq_id, pos, target_id),
    from ``evalset/sequences.parquet``; None when that file is absent. A sequence whose token at
    ``pos`` is not the target is a broken evalset and is reported by path."""
    path = layout.evalset_sequences(out)
    if not path.is_file():
        return None
    try:
        seqs = pl.read_parquet(path, columns=[layout.SEQ_ID, layout.INPUT_IDS])
    except Exception as e:  # noqa: BLE001
        raise SpectrumError(f"{path}: not a readable sequences file ({e})") from None
    seqs = seqs.with_columns(pl.col(layout.SEQ_ID).cast(pl.Int64)).unique(
        layout.SEQ_ID, keep="last", maintain_order=True)
    rows = picks.select(pl.col(layout.SEQ_ID).cast(pl.Int64), layout.POS, layout.TARGET_ID).join(
        seqs, on=layout.SEQ_ID, how="left", maintain_order="left")
    ids, pos = pl.col(layout.INPUT_IDS), pl.col(layout.POS)
    start = pl.max_horizontal(pos - n_before, 0)
    rows = rows.with_columns(held=ids.list.get(pos, null_on_oob=True),
                             context_ids=ids.list.slice(start, pos - start))
    bad = rows.filter(pl.col("held").is_null() | (pl.col("held") != pl.col(layout.TARGET_ID)))
    if bad.height:
        seq, p, target = bad.select(layout.SEQ_ID, layout.POS, layout.TARGET_ID).row(0)
        raise SpectrumError(f"{path}: sequence {seq} does not hold target {target} at "
                            f"position {p} as evalset/tokens.parquet says; rebuild the "
                            "evalset (`spectrum evalset --force`)")
    return rows["context_ids"].cast(pl.List(pl.Int32))


def _other_runs(picked: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """token_idx, others: list of {run, tau, tau_se, kind, censored} over every run with fits."""
    parts = []
    for name, f in picked.items():
        se = pl.col("tau_se") if "tau_se" in f.columns else pl.lit(None, pl.Float64)
        parts.append(f.select(
            layout.TOKEN_IDX, run=pl.lit(name),
            tau=pl.when(pl.col("in_pop")).then(pl.col("tau").cast(pl.Float64)),
            tau_se=pl.when(pl.col("in_pop")).then(se.cast(pl.Float64)),
            kind=pl.col("kind"), censored=pl.col("censored")))
    long = pl.concat(parts)
    return long.group_by(layout.TOKEN_IDX, maintain_order=True).agg(
        others=pl.struct("run", "tau", "tau_se", "kind", "censored"))


def _quartiles(out: Path) -> np.ndarray | None:
    """The frequency quartiles' edges over every token (None: no ``target_freq``)."""
    if "target_freq" not in pq.read_schema(layout.evalset_tokens(out)).names:
        return None
    freq = np.asarray(read_token_column(out, "target_freq"), dtype=np.float64)
    return np.nanquantile(freq, [0.25, 0.5, 0.75])


def draw_examples(out: str | Path, runs: list[RunData],
                  sampling: Sampling = Sampling()) -> pl.DataFrame:
    """The stratified, seeded examples of every run with fits, one row per (run, token).

    ``runs`` as loaded by :func:`spectrum.analysis.runs.run_data.load_run`; each run's tokens are read
    in chunks, keeping each cell's candidates only, then the fits of the drawn tokens and their
    trajectories. Columns: the cell (``run``, ``band`` index into
    :func:`band_names`, ``band_name``, ``kind``, ``freq_quartile``, ``word_start``), ``rank`` (the
    draw's order within its cell, 0-based), ``cell_size`` (tokens in the cell), ``token_idx``,
    ``seq_id``, ``pos``, ``target_id``, ``context_ids`` (null without ``sequences.parquet``),
    ``lo, hi, tau, k`` and their ``*_se``, ``r2``, ``censored`` (where it is ``hi`` the column
    ``hi`` is the sigmoid's extrapolated asymptote, where ``lo`` the column ``lo`` is: neither is a
    measured loss), ``step_preferred`` (null where not computed), ``ln_T`` and ``loss`` (lists
    over the run's checkpoints with T > 0) and ``others`` (the same token in every run: run, tau,
    tau_se, kind, censored). Rows are in the order of the random key.
    """
    out = Path(out)
    runs = [r for r in runs if r.has_fits]
    if not runs:
        return pl.DataFrame()
    quartiles = _quartiles(out)
    names = set(pq.read_schema(layout.evalset_tokens(out)).names)
    annotations = [c for c in (layout.SEQ_ID, layout.POS, layout.TARGET_ID, "target_freq",
                               "word_start") if c in names]
    drawn = [_candidates(r, sampling, quartiles, annotations) for r in runs]
    cells = pl.concat([c for c, _ in drawn], how="vertical_relaxed")
    sizes = pl.concat([s for _, s in drawn if s.height], how="vertical_relaxed")
    picks = (cells.join(sizes, on=CELL, how="left", nulls_equal=True).sort("key")
             .with_columns(rank=pl.int_range(pl.len()).over(CELL).cast(pl.Int32)))
    wanted = np.unique(picks[layout.TOKEN_IDX].to_numpy())
    picked = {r.name: _picked_fits(r, wanted) for r in runs}
    names_b = band_names(sampling.bands)
    frames = []
    for r in runs:
        mine = picks.filter(pl.col("run") == r.name)
        if not mine.height:
            continue
        source = picked[r.name]
        fit_cols = [c for c in (*FIT_COLUMNS, *(f"{p}_se" for p in FIT_COLUMNS), "r2",
                                "censored", layout.STEP_PREFERRED) if c in source.columns]
        fits = source.select(layout.TOKEN_IDX, *fit_cols)
        traj = _trajectories(out, r, mine[layout.TOKEN_IDX].to_numpy())
        frames.append(mine.join(fits, on=layout.TOKEN_IDX, how="left")
                      .join(traj, on=layout.TOKEN_IDX, how="left")
                      .with_columns(ln_T=pl.lit(r.x.tolist(), dtype=pl.List(pl.Float64))))
    ex = pl.concat(frames, how="diagonal_relaxed").sort("key")
    for c in (*(f"{p}_se" for p in FIT_COLUMNS), "r2"):
        if c not in ex.columns:
            ex = ex.with_columns(pl.lit(None, pl.Float64).alias(c))
    if layout.STEP_PREFERRED not in ex.columns:
        ex = ex.with_columns(pl.lit(None, pl.Boolean).alias(layout.STEP_PREFERRED))
    ctx = read_contexts(out, ex, sampling.context) if layout.POS in ex.columns else None
    ex = ex.with_columns(ctx if ctx is not None
                         else pl.lit(None, pl.List(pl.Int32)).alias("context_ids"))
    ex = ex.join(_other_runs(picked), on=layout.TOKEN_IDX, how="left", maintain_order="left")
    ex = ex.with_columns(band_name=pl.col("band").replace_strict(
        dict(enumerate(names_b)), return_dtype=pl.String))
    first = ["run", "band", "band_name", "kind", "freq_quartile", "word_start", "rank",
             "cell_size", layout.TOKEN_IDX]
    return ex.select(*first, pl.exclude(*first, "key"))


def load_evalset_tokenizer(out: str | Path) -> tuple[Any | None, str]:
    """The evalset's tokenizer (from the source ``evalset/meta.json`` records), or None and the
    reason it cannot be loaded. The second value describes where the tokenizer came from."""
    from spectrum.data.evalset import load_tokenizer

    path = layout.evalset_meta(out)
    if not path.is_file():
        return None, f"{path} is missing, so the evalset's tokenizer is unknown"
    try:
        source = json.loads(path.read_text())["tokenizer"]["source"]
    except (ValueError, KeyError, TypeError):
        return None, f"{path} does not name the evalset's tokenizer"
    try:
        return load_tokenizer(source), f"decoded with the evalset's tokenizer ({source})"
    except SpectrumError as e:
        return None, str(e)


def decode_pieces(tokenizer: Any, ids: np.ndarray) -> dict[int, str]:
    """The text of every token id in ``ids``, each decoded alone (special tokens kept)."""
    uniq = np.unique(np.asarray(ids, dtype=np.int64)).tolist()
    texts = tokenizer.batch_decode([[i] for i in uniq], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return dict(zip(uniq, texts))


def with_text(examples: pl.DataFrame, tokenizer: Any) -> pl.DataFrame:
    """``examples`` with ``target_text`` and ``context_text`` decoded by ``tokenizer``."""
    ctx = [None if c is None else tokenizer.decode(list(c), clean_up_tokenization_spaces=False)
           for c in examples["context_ids"].to_list()]
    tgt = [tokenizer.decode([int(t)], clean_up_tokenization_spaces=False)
           for t in examples[layout.TARGET_ID].to_list()]
    return examples.with_columns(context_text=pl.Series(ctx, dtype=pl.String),
                                 target_text=pl.Series(tgt, dtype=pl.String))


def _examples(out: Path, specs: list[RunSpec], sampling: Sampling, decode: bool) -> pl.DataFrame:
    runs = [r for r in (load_run(out, spec) for spec in specs) if r is not None]
    ex = draw_examples(out, runs, sampling)
    if decode and ex.height:
        tokenizer, _ = load_evalset_tokenizer(out)
        if tokenizer is not None:
            ex = with_text(ex, tokenizer)
    return ex


def examples_for(manifest: Manifest, sampling: Sampling = Sampling(), *,
                 decode: bool = True) -> pl.DataFrame:
    """The examples of a manifest's runs as :func:`draw_examples` draws them, with the decoded
    ``context_text`` and ``target_text`` when ``decode`` and the evalset's tokenizer loads."""
    return _examples(Path(manifest.out), list(manifest.runs), sampling, decode)


def examples_from_artifacts(out: str | Path, sampling: Sampling = Sampling(), *,
                            decode: bool = True) -> pl.DataFrame:
    """:func:`examples_for` from an output folder alone, with the runs as the report recorded
    them in ``reconstruction/scores.json``."""
    out = Path(out)
    path = layout.scores_file(out)
    try:
        recorded = json.loads(path.read_text())["runs"]
        specs = [RunSpec(name=r["name"], params=float(r["params"]), tokens=float(r["tokens"]),
                         tokens_per_step=int(r["tokens_per_step"]), role=r["role"],
                         checkpoints=out) for r in recorded]
    except FileNotFoundError:
        raise SpectrumError(f"{path} is missing; run `spectrum report` first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SpectrumError(f"{path}: no readable list of runs ({e})") from None
    return _examples(out, specs, sampling, decode)
