"""`spectrum export-curriculum`: weights that reshape a target run's data by when it becomes learnable.

1. Learnability of the *training* data: the evalset, losses and fit stages run unchanged on a
   derived manifest whose evalset is drawn from the training split (``split: train``), written
   under ``<out>/curriculum/learnability/`` (each stage skips what is already current, so the
   command resumes). The runs measured are the manifest's ``fit`` runs, or ``--runs``.
2. A learnability model (:mod:`spectrum.curriculum.predict`) fitted on the scored sample, with
   its R^2 on held-out documents printed and written in the export's README.
3. Every sequence (window of the context, tail included) and every document of the corpus
   (``--corpus``, default the manifest's; ``--split``, default train), streamed
   (:mod:`spectrum.curriculum.corpus_export`): the loss shed in each phase of the target run,
   measured for scored windows and predicted for the others, turned into per-phase weights (mean 1
   per phase, floor ``--floor``), written to ``<out>/curriculum/`` with a README and
   ``coverage.json``.
4. The target dataset's ids: by default the documents of the manifest corpus's training split,
   or ``--target-ids`` (a text file with one ``doc_id`` per line, or a Parquet/JSONL file with a
   ``doc_id`` column). Exported ids the target lacks are counted, logged with examples and
   written to ``<out>/curriculum/missing_ids.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.options import (device_option, executor_option, force_option, num_gpus_option,
                               option, ray_address_option, shared_with)

from spectrum.curriculum.corpus_export import coverage_paragraph, export_corpus, window_key
from spectrum.curriculum.predict import fit_shed_model
from spectrum.curriculum.weights import (PHASES_FILE, WEIGHTS_FILE, CurriculumWeights, Learnability,
                                         learnability, phase_schedule, readme_text, token_shed)
from spectrum.data.corpus import documents, iter_documents
from spectrum.data.evalset import load_tokenizer
from spectrum import layout
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import write_json, write_text

HELP = "export curriculum weights for a target run (reweights training data by learnability)"
LEARNABILITY_STAGES = ("evalset", "losses", "fit")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnabilityOptions:
    """Options shared by export-curriculum and curriculum-test."""

    runs: str | None = option(None, "comma-separated runs whose checkpoints measure learnability "
                                    "(default: the manifest's fit runs)")
    sequences: int | None = option(None, "training-split sequences to measure (default: the "
                                         "evalset's sequences)")
    phases: int = option(4, "phases of the target run: equal bins of ln T (default 4)")
    floor: float = option(0.25, "smallest weight, as a fraction of the phase mean (default 0.25)")
    device: str = device_option()
    executor: str = executor_option()
    ray_address: str | None = ray_address_option()
    num_gpus: float | None = num_gpus_option()
    force: bool = force_option()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurriculumExportOptions(LearnabilityOptions):
    target_steps: int = option(help="optimizer steps of the run the weights are for")
    tokens_per_step: int | None = option(None, "tokens per step of the target run (default: the "
                                               "first measured run's)")
    target_ids: str | None = option(None, "the target dataset's doc ids: a text file (one per "
                                          "line), or Parquet/JSONL with a doc_id column "
                                          "(default: the manifest corpus's training split)")
    target_warmup_steps: int | None = option(None, "learning-rate warmup steps of the target run; "
                                                   "the phases are bins of ln T from its end "
                                                   "(default: the first measured run's "
                                                   "warmup_steps)")
    corpus: str | None = option(None, "the corpus to weight, KIND[:GLOB] with KIND python-stdlib, "
                                      "text, jsonl or parquet (default: the manifest's corpus)")
    text_field: str | None = option(None, "the text field (jsonl) or column (parquet) of --corpus "
                                          "(default: text)")
    split: str = option("train", "documents of the corpus to weight (default: train)",
                        choices=("train", "validation", "all"))


OPTIONS = CurriculumExportOptions


def learnability_runs(manifest: Manifest, runs: str | None) -> tuple[RunSpec, ...]:
    if runs:
        names = [r.strip() for r in runs.split(",") if r.strip()]
        unknown = [n for n in names if n not in {r.name for r in manifest.runs}]
        if unknown:
            raise SpectrumError(f"{manifest.path}: --runs names unknown run(s) {', '.join(unknown)}")
        return tuple(manifest.run(n) for n in names)
    if not manifest.fit_runs:
        raise SpectrumError(f"{manifest.path}: no run has role fit; name the runs with --runs")
    return manifest.fit_runs


def learnability_manifest(manifest: Manifest, runs: tuple[RunSpec, ...],
                          sequences: int | None) -> Manifest:
    """The manifest the stages run on: training-split evalset, output under curriculum/learnability."""
    ev = dataclasses.replace(manifest.evalset, split="train",
                             sequences=sequences or manifest.evalset.sequences)
    return dataclasses.replace(manifest, out=layout.learnability_dir(manifest.out),
                               evalset=ev, runs=runs)


def run_learnability_stages(lm: Manifest, options: LearnabilityOptions) -> None:
    """The evalset, losses and fit stages, unchanged, on the learnability manifest: each with
    its own defaults and the shared options (device, executor, force, ...) of ``options``."""
    for name in LEARNABILITY_STAGES:
        try:
            module = importlib.import_module(f"pipelines.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pipelines.{name}":
                raise SpectrumError(f"the {name} stage is not available in this installation") from None
            raise
        log.info(f"curriculum: learnability of training data: {name} stage")
        module.main(lm, shared_with(module.OPTIONS, options))


def read_learnability_fits(lm: Manifest) -> dict[str, pl.DataFrame]:
    """The fits of every run of the learnability manifest; a :class:`SpectrumError` for a
    missing one."""
    fits = {}
    for run in lm.runs:
        path = layout.fits_file(lm.out, run.name)
        if not path.is_file():
            raise SpectrumError(f"{path}: no fits for run {run.name} (the fit stage did not write them)")
        fits[run.name] = pl.read_parquet(path)
    return fits


def measure_learnability(manifest: Manifest, options: LearnabilityOptions,
                         runs: tuple[RunSpec, ...], target_steps: int, tokens_per_step: int,
                         warmup_steps: int = 0) -> tuple[Manifest, Learnability]:
    """Run the stages (resuming) and aggregate the fits over the phases of the target run, whose
    ln T bins start at the end of its warmup."""
    lm = learnability_manifest(manifest, runs, options.sequences)
    run_learnability_stages(lm, options)
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id"])
    phases = phase_schedule(target_steps, tokens_per_step, options.phases,
                            first_step=min(max(warmup_steps, 1), target_steps - 1) or 1)
    learn = learnability(tokens, read_learnability_fits(lm), phases)
    # the token ids of each sequence, so that the table is usable without the evalset folder
    ids = pl.read_parquet(layout.evalset_sequences(lm.out), columns=["seq_id", "input_ids"])
    learn.sequences = learn.sequences.join(ids.with_columns(pl.col("seq_id").cast(
        learn.sequences.schema["seq_id"])), on="seq_id", how="left", maintain_order="left")
    return lm, learn


def read_target_ids(path: str | Path) -> list[str]:
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


def shed_model_and_measured(lm: Manifest, learn: Learnability, vocab: int):
    """The learnability model fitted on the scored sample, and the measured shed of each scored
    window keyed by :func:`~spectrum.curriculum.corpus_export.window_key`."""
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id", "target_id"]).sort("token_idx")
    per_token = token_shed(tokens, read_learnability_fits(lm), learn.phases)
    n_phases = learn.phases.n
    seq_ids = learn.sequences["seq_id"].to_numpy()
    index = np.searchsorted(seq_ids, tokens["seq_id"].to_numpy())
    model = fit_shed_model(tokens["target_id"].to_numpy(), index,
                           per_token.select([f"s{p}" for p in range(n_phases)]).to_numpy(),
                           learn.sequences["doc_id"].cast(pl.String).to_list(), vocab)
    shed = learn.shed()
    measured = {window_key(d, np.asarray(ids)): (int(sid), shed[i]) for i, (sid, d, ids) in enumerate(
        learn.sequences.select("seq_id", "doc_id", "input_ids").iter_rows())}
    return model, measured


def corpus_of(manifest: Manifest, options: CurriculumExportOptions):
    """The corpus to weight: ``--corpus KIND[:GLOB]`` or the manifest's, and its split."""
    spec = manifest.evalset.corpus
    if options.corpus:
        kind, _, path = options.corpus.partition(":")
        if kind not in ("python-stdlib", "text", "jsonl", "parquet"):
            raise SpectrumError(f"--corpus: unknown kind {kind!r} (python-stdlib, text, jsonl, "
                                "parquet)")
        spec = dataclasses.replace(spec, kind=kind, path=path or None,
                                   field=options.text_field or spec.field,
                                   column=options.text_field or spec.column)
    split = None if options.split == "all" else options.split
    return spec, split


def main(manifest: Manifest, options: CurriculumExportOptions) -> None:
    runs = learnability_runs(manifest, options.runs)
    tps = options.tokens_per_step or runs[0].tokens_per_step
    warmup = (options.target_warmup_steps if options.target_warmup_steps is not None
              else runs[0].warmup_steps)
    lm, learn = measure_learnability(manifest, options, runs, options.target_steps, tps, warmup)
    folder = layout.curriculum_dir(manifest.out)
    evalset_meta = json.loads(layout.evalset_meta(lm.out).read_text())
    tokenizer = load_tokenizer(evalset_meta["tokenizer"]["source"])
    model, measured = shed_model_and_measured(lm, learn, len(tokenizer))
    spec, split = corpus_of(manifest, options)
    source = (f"the {split or 'whole'} split of the {spec.kind} corpus"
              f"{' ' + spec.path if spec.path else ''}")
    counts = export_corpus(iter_documents(spec, split), tokenizer, int(evalset_meta["context"]),
                           model, measured, folder, floor=options.floor,
                           provenance={"phases": learn.phases.to_dict(), "runs": list(learn.runs),
                                       "evalset_hash": evalset_meta.get("hash"),
                                       "learnability_dir": str(lm.out), "corpus": source,
                                       "shed_model": model.report()})
    write_json(learn.phases.to_dict(), folder / PHASES_FILE)
    write_json({"corpus": source, **counts.to_dict(), "shed_model": model.report()},
               folder / "coverage.json")
    write_text(readme_text(learn, options.floor, extra=coverage_paragraph(counts, model, source)),
               folder / "README.md")
    if options.target_ids:
        target, tsource = read_target_ids(options.target_ids), str(options.target_ids)
    else:
        target = [d.doc_id for d in documents(manifest.evalset.corpus, "train")]
        tsource = f"the training split of {manifest.evalset.corpus.kind} corpus"
    al = CurriculumWeights.read(folder).align(target)
    write_json({"target": tsource, **al.report(examples=50)}, folder / "missing_ids.json")
    ph = learn.phases
    log.info(f"curriculum: {counts.sequences} sequences / {counts.documents} documents of "
             f"{source} ({counts.sequences_measured} sequences measured, the rest predicted); "
             f"{ph.n} phases over {ph.target_steps} steps (starting at steps "
             f"{', '.join(map(str, ph.step_edges[:-1]))}); weights in {folder / WEIGHTS_FILE}")
    log.info(f"curriculum: learnability model on held-out documents: R^2 per phase "
             f"{', '.join(f'{v:.3f}' for v in model.cv_r2)} (uncalibrated "
             f"{', '.join(f'{v:.3f}' for v in model.cv_r2_raw)})")
    log.info(f"curriculum: target dataset ({tsource}): {al.summary()}")
    measured_tokens = max(r.tokens for r in runs)
    if ph.target_steps * ph.tokens_per_step > measured_tokens:
        log.warning(f"curriculum: the target run reaches T = "
                    f"{ph.target_steps * ph.tokens_per_step:.3g} tokens, beyond the longest "
                    f"measured run ({measured_tokens:.3g}); the later phases rest on sigmoids "
                    "extrapolated past the last checkpoint")
