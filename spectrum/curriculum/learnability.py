"""The learnability of training data, measured by the evalset, losses and fit stages.

The stages run unchanged on a *learnability manifest* (:func:`learnability_manifest`): the
manifest with its evalset drawn from the training split, the runs that measure learnability, and
an output folder of its own (:func:`spectrum.layout.learnability_dir` for
``spectrum export-curriculum``, :func:`spectrum.layout.curriculum_test_learnability_dir` for
``spectrum curriculum-test``). Running the stages is the commands' work; this module holds what
comes before (which runs, which manifest) and after: the fits read back and aggregated over the
phases of a target run (:func:`measure`, :func:`read_pool`), and the learnability model with the
measured shed of every scored window (:func:`shed_model_and_measured`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spectrum import layout
from spectrum.curriculum.corpus_export import window_key
from spectrum.curriculum.predict import ShedModel, fit_shed_model
from spectrum.curriculum.shrinkage import Shrinkage, shrinkage
from spectrum.curriculum.weights import Learnability, Phases, learnability, weights_hash
from spectrum.errors import SpectrumError
from spectrum.fit.runs import fit_steps
from spectrum.losses.trajectories import load_losses, log_tokens
from spectrum.manifest import CorpusSpec, Manifest, RunSpec


def learnability_runs(manifest: Manifest, runs: str | None) -> tuple[RunSpec, ...]:
    """The runs named by ``runs`` (``--runs``, comma-separated), else the manifest's fit runs."""
    if runs:
        names = [r.strip() for r in runs.split(",") if r.strip()]
        unknown = [n for n in names if n not in {r.name for r in manifest.runs}]
        if unknown:
            raise SpectrumError(f"{manifest.path}: --runs names unknown run(s) {', '.join(unknown)}")
        return tuple(manifest.run(n) for n in names)
    if not manifest.fit_runs:
        raise SpectrumError(f"{manifest.path}: no run has role fit; name the runs with --runs")
    return manifest.fit_runs


def learnability_manifest(manifest: Manifest, runs: tuple[RunSpec, ...], out: Path, *,
                          sequences: int | None = None, corpus: CorpusSpec | None = None,
                          context: int | None = None) -> Manifest:
    """The manifest the stages run on: the evalset drawn from the training split (``sequences``,
    ``corpus`` and ``context`` replace the manifest's where given), ``runs`` only, output under
    ``out``."""
    ev = dataclasses.replace(manifest.evalset, split="train",
                             sequences=sequences or manifest.evalset.sequences,
                             corpus=corpus or manifest.evalset.corpus,
                             context=context or manifest.evalset.context)
    return dataclasses.replace(manifest, out=Path(out), evalset=ev, runs=runs)


def read_fits(lm: Manifest) -> dict[str, pl.DataFrame]:
    """The fits of every run of the learnability manifest; a :class:`SpectrumError` for a
    missing one."""
    fits = {}
    for run in lm.runs:
        path = layout.fits_file(lm.out, run.name)
        if not path.is_file():
            raise SpectrumError(f"{path}: no fits for run {run.name} (the fit stage did not write them)")
        fits[run.name] = pl.read_parquet(path)
    return fits


def first_fitted_x(lm: Manifest) -> dict[str, float]:
    """Per run, ln T of its first fitted checkpoint (where a censored hi begins)."""
    steps = {run.name: (fit_steps(lm.out, run), run.tokens_per_step) for run in lm.runs}
    return {name: float(log_tokens(np.asarray(s[:1]), tps)[0]) for name, (s, tps) in steps.items()
            if s}


def initial_losses(lm: Manifest) -> dict[str, pl.DataFrame]:
    """Per run, each token's measured loss at the run's first checkpoint (step 0 where there is
    one): where a token's shed starts (:func:`~spectrum.curriculum.weights.token_phase_shed`)."""
    out = {}
    for run in lm.runs:
        steps = layout.shard_steps(lm.out, run.name)
        if not steps:
            raise SpectrumError(f"{layout.loss_run_dir(lm.out, run.name)}: no loss shards for run "
                                f"{run.name} (the losses stage did not write them)")
        first = load_losses(lm.out, run.name, steps=steps[:1])
        out[run.name] = pl.DataFrame({"token_idx": first.token_idx, "loss": first.losses[:, 0]})
    return out


def measured_shed(lm: Manifest, tokens: pl.DataFrame, phases: Phases) -> Learnability:
    """The learnability of the scored sample over ``phases``: every run's fits, each token's shed
    starting from its measured initial loss and read only from the first fitted checkpoint on."""
    return learnability(tokens, read_fits(lm), phases, x_first=first_fitted_x(lm),
                        initial=initial_losses(lm))


def evalset_meta(lm: Manifest) -> dict[str, Any]:
    """The ``meta.json`` of the learnability sample (tokenizer, context, hash)."""
    return json.loads(layout.evalset_meta(lm.out).read_text())


def measure(lm: Manifest, phases: Phases) -> Learnability:
    """The fits aggregated over ``phases``, with the token ids of each sequence (``input_ids``),
    so that the table is usable without the evalset folder."""
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id"])
    learn = measured_shed(lm, tokens, phases)
    ids = pl.read_parquet(layout.evalset_sequences(lm.out), columns=["seq_id", "input_ids"])
    learn.sequences = learn.sequences.join(ids.with_columns(pl.col("seq_id").cast(
        learn.sequences.schema["seq_id"])), on="seq_id", how="left", maintain_order="left")
    return learn


@dataclasses.dataclass
class Pool:
    """The scored training sequences of the controlled test, in ``seq_id`` order."""

    learn: Learnability
    input_ids: np.ndarray  # (n, context) token ids
    mean_log_freq: np.ndarray  # (n,) mean log unigram frequency of each sequence's targets
    tokens: int  # target tokens scored
    #: (n, 5) each sequence's target tokens per quintile of the pool's log unigram frequency
    freq_profile: np.ndarray | None = None
    freq_edges: np.ndarray | None = None  # (4,) the quintile edges (log frequency)


def read_pool(lm: Manifest, phases: Phases) -> Pool:
    """The learnability of the test's pool over ``phases``, its sequences and their frequency
    profile (mean log frequency and target tokens per frequency quintile of the pool,
    :func:`~spectrum.curriculum.arms.frequency_profile`); a :class:`SpectrumError` when the
    evalset's sequences and tokens disagree."""
    from spectrum.curriculum.arms import frequency_profile

    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id", "target_freq"])
    learn = measured_shed(lm, tokens, phases)
    seqs = pl.read_parquet(layout.evalset_sequences(lm.out)).sort("seq_id")
    if seqs["seq_id"].to_list() != learn.sequences["seq_id"].to_list():
        raise SpectrumError(f"{layout.evalset_dir(lm.out)}: sequences and tokens disagree; rerun "
                            "with --force")
    mean_log_freq = (tokens.group_by("seq_id").agg(pl.col("target_freq").log().mean())
                     .sort("seq_id")["target_freq"].to_numpy())
    seq_ids = seqs["seq_id"].to_numpy()
    index = np.searchsorted(seq_ids, tokens["seq_id"].cast(seqs["seq_id"].dtype).to_numpy())
    log_freq = tokens["target_freq"].cast(pl.Float64).log().fill_null(float("nan")).to_numpy()
    edges, profile = frequency_profile(index, log_freq, len(seq_ids))
    return Pool(learn, np.stack(seqs["input_ids"].to_numpy()), mean_log_freq, int(tokens.height),
                profile, edges)


def shed_model_and_measured(lm: Manifest, learn: Learnability, vocab: int
                            ) -> tuple[ShedModel, dict[bytes, tuple[int, np.ndarray]], Shrinkage]:
    """The learnability model fitted on the scored sample, the shed of each scored window keyed
    by :func:`~spectrum.curriculum.corpus_export.window_key` (measured, shrunk toward the model's
    out-of-fold prediction by its reliability: :mod:`spectrum.curriculum.shrinkage`), and the
    shrinkage."""
    if learn.per_token is None:
        raise ValueError("the learnability model needs the per-token shed (learnability())")
    targets = pl.read_parquet(layout.evalset_tokens(lm.out), columns=["token_idx", "target_id"])
    per_token = learn.per_token.join(targets, on="token_idx", how="left", maintain_order="left")
    n_phases = learn.phases.n
    seq_ids = learn.sequences["seq_id"].to_numpy()
    index = np.searchsorted(seq_ids, per_token["seq_id"].to_numpy())
    model = fit_shed_model(per_token["target_id"].to_numpy(), index,
                           per_token.select([f"s{p}" for p in range(n_phases)]).to_numpy(),
                           learn.sequences["doc_id"].cast(pl.String).to_list(), vocab)
    measured = learn.shed()
    shrink = shrinkage(measured, model.held_out, learn.run_shed)
    shed = shrink.apply(measured, model.held_out)
    keyed = {window_key(d, np.asarray(ids)): (int(sid), shed[i]) for i, (sid, d, ids) in enumerate(
        learn.sequences.select("seq_id", "doc_id", "input_ids").iter_rows())}
    return model, keyed, shrink


def exported_weights(lm: Manifest, pool: Pool, phases: Phases, floor: float, vocab: int
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """The weights ``spectrum export-curriculum`` gives the pool's sequences: learnability
    measured on the sample of the learnability manifest ``lm`` (its stages already run), each
    pool sequence's shed measured (shrunk) where it was scored there, else predicted from its
    tokens, and weights by :func:`~spectrum.curriculum.weights.phase_weights` over the pool (the
    export's rule, normalised over the pool as the export normalises over its corpus). Returns
    the ``(n, P)`` weights and what they rest on."""
    from spectrum.curriculum.corpus_export import window_shed
    from spectrum.curriculum.weights import phase_weights

    learn = measure(lm, phases)
    model, measured, shrink = shed_model_and_measured(lm, learn, vocab)
    docs = pool.learn.sequences["doc_id"].cast(pl.String).to_list()
    shed, hits = window_shed(docs, list(pool.input_ids), model, measured)
    w = phase_weights(shed, floor)
    scored = sum(h is not None for h in hits)
    return w, {"runs": list(learn.runs), "sample_sequences": learn.sequences.height,
               "pool_measured": scored, "pool_predicted": len(hits) - scored,
               "shed_model_cv_r2": model.cv_r2, "shrinkage": shrink.to_dict(),
               "weights_hash": weights_hash(w)}


def read_target_ids(path: str | Path) -> list[str]:
    """The target dataset's ids: a text file (one per line), or Parquet/JSONL with a ``doc_id``
    column."""
    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"{path}: --target-ids file not found")
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        df = pl.read_ndjson(path)
    else:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if "doc_id" not in df.columns:
        raise SpectrumError(f"{path}: has no doc_id column (columns: {', '.join(df.columns)})")
    return df["doc_id"].cast(pl.String).to_list()
