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
   ``doc_id`` column). Exported ids the target lacks are counted, printed with examples and
   written to ``<out>/curriculum/missing_ids.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

import numpy as np

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
_SHARED = ("device", "executor", "ray_address", "num_gpus", "force")


def add_learnability_arguments(p: argparse.ArgumentParser,
                               sequences_default: str = "the evalset's sequences") -> None:
    """Options shared by export-curriculum and curriculum-test."""
    p.add_argument("--runs", default=None,
                   help="comma-separated runs whose checkpoints measure learnability "
                        "(default: the manifest's fit runs)")
    p.add_argument("--sequences", type=int, default=None,
                   help=f"training-split sequences to measure (default: {sequences_default})")
    p.add_argument("--phases", type=int, default=4,
                   help="phases of the target run: equal bins of ln T (default 4)")
    p.add_argument("--floor", type=float, default=0.25,
                   help="smallest weight, as a fraction of the phase mean (default 0.25)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--executor", choices=("ray", "local"), default=None,
                   help="how the losses stage distributes work (default: the losses stage's)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per losses worker (default: 1 if GPUs exist, else 0)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are current")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-steps", type=int, required=True,
                   help="optimizer steps of the run the weights are for")
    p.add_argument("--tokens-per-step", type=int, default=None,
                   help="tokens per step of the target run (default: the first measured run's)")
    p.add_argument("--target-ids", default=None,
                   help="the target dataset's doc ids: a text file (one per line), or Parquet/JSONL "
                        "with a doc_id column (default: the manifest corpus's training split)")
    p.add_argument("--corpus", default=None,
                   help="the corpus to weight, KIND[:GLOB] with KIND python-stdlib, text, jsonl or "
                        "parquet (default: the manifest's corpus)")
    p.add_argument("--text-field", default=None,
                   help="the text field (jsonl) or column (parquet) of --corpus (default: text)")
    p.add_argument("--split", choices=("train", "validation", "all"), default="train",
                   help="documents of the corpus to weight (default: train)")
    add_learnability_arguments(p)


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


def _stage_namespace(module: Any, args: argparse.Namespace) -> argparse.Namespace:
    """A stage's own defaults, with the shared options (device, executor, ...) taken from ``args``."""
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    module.add_arguments(parser)
    ns = parser.parse_args([])
    for key in _SHARED:
        if getattr(args, key, None) is not None and hasattr(ns, key):
            setattr(ns, key, getattr(args, key))
    return ns


def run_learnability_stages(lm: Manifest, args: argparse.Namespace) -> None:
    """The evalset, losses and fit stages, unchanged, on the learnability manifest."""
    for name in LEARNABILITY_STAGES:
        try:
            module = importlib.import_module(f"pipelines.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pipelines.{name}":
                raise SpectrumError(f"the {name} stage is not available in this installation") from None
            raise
        print(f"curriculum: learnability of training data: {name} stage", flush=True)
        module.main(lm, _stage_namespace(module, args))


def read_fits(lm: Manifest) -> dict[str, pl.DataFrame]:
    fits = {}
    for run in lm.runs:
        path = layout.fits_file(lm.out, run.name)
        if not path.is_file():
            raise SpectrumError(f"{path}: no fits for run {run.name} (the fit stage did not write them)")
        fits[run.name] = pl.read_parquet(path)
    return fits


def measure_learnability(manifest: Manifest, args: argparse.Namespace, runs: tuple[RunSpec, ...],
                         target_steps: int, tokens_per_step: int) -> tuple[Manifest, Learnability]:
    """Run the stages (resuming) and aggregate the fits over the phases of the target run."""
    lm = learnability_manifest(manifest, runs, args.sequences)
    run_learnability_stages(lm, args)
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id"])
    phases = phase_schedule(target_steps, tokens_per_step, args.phases)
    learn = learnability(tokens, read_fits(lm), phases)
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
    per_token = token_shed(tokens, read_fits(lm), learn.phases)
    P = learn.phases.n
    seq_ids = learn.sequences["seq_id"].to_numpy()
    index = np.searchsorted(seq_ids, tokens["seq_id"].to_numpy())
    model = fit_shed_model(tokens["target_id"].to_numpy(), index,
                           per_token.select([f"s{p}" for p in range(P)]).to_numpy(),
                           learn.sequences["doc_id"].cast(pl.String).to_list(), vocab)
    shed = learn.shed()
    measured = {window_key(d, np.asarray(ids)): (int(sid), shed[i]) for i, (sid, d, ids) in enumerate(
        learn.sequences.select("seq_id", "doc_id", "input_ids").iter_rows())}
    return model, measured


def corpus_of(manifest: Manifest, args: argparse.Namespace):
    """The corpus to weight: ``--corpus KIND[:GLOB]`` or the manifest's, and its split."""
    spec = manifest.evalset.corpus
    if getattr(args, "corpus", None):
        kind, _, path = args.corpus.partition(":")
        if kind not in ("python-stdlib", "text", "jsonl", "parquet"):
            raise SpectrumError(f"--corpus: unknown kind {kind!r} (python-stdlib, text, jsonl, parquet)")
        spec = dataclasses.replace(spec, kind=kind, path=path or None,
                                   field=args.text_field or spec.field,
                                   column=args.text_field or spec.column)
    split = None if args.split == "all" else args.split
    return spec, split


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    runs = learnability_runs(manifest, args.runs)
    tps = args.tokens_per_step or runs[0].tokens_per_step
    lm, learn = measure_learnability(manifest, args, runs, args.target_steps, tps)
    folder = layout.curriculum_dir(manifest.out)
    evalset_meta = json.loads(layout.evalset_meta(lm.out).read_text())
    tokenizer = load_tokenizer(evalset_meta["tokenizer"]["source"])
    model, measured = shed_model_and_measured(lm, learn, len(tokenizer))
    spec, split = corpus_of(manifest, args)
    source = f"the {split or 'whole'} split of the {spec.kind} corpus{' ' + spec.path if spec.path else ''}"
    counts = export_corpus(iter_documents(spec, split), tokenizer, int(evalset_meta["context"]),
                           model, measured, folder, floor=args.floor,
                           provenance={"phases": learn.phases.to_dict(), "runs": list(learn.runs),
                                       "evalset_hash": evalset_meta.get("hash"),
                                       "learnability_dir": str(lm.out), "corpus": source,
                                       "shed_model": model.report()})
    write_json(learn.phases.to_dict(), folder / PHASES_FILE)
    write_json({"corpus": source, **counts.to_dict(), "shed_model": model.report()},
               folder / "coverage.json")
    write_text(readme_text(learn, args.floor, extra=coverage_paragraph(counts, model, source)),
               folder / "README.md")
    if args.target_ids:
        target, tsource = read_target_ids(args.target_ids), str(args.target_ids)
    else:
        target, tsource = [d.doc_id for d in documents(manifest.evalset.corpus, "train")], \
            f"the training split of {manifest.evalset.corpus.kind} corpus"
    al = CurriculumWeights.read(folder).align(target)
    write_json({"target": tsource, **al.report(examples=50)}, folder / "missing_ids.json")
    ph = learn.phases
    print(f"curriculum: {counts.sequences} sequences / {counts.documents} documents of {source} "
          f"({counts.sequences_measured} sequences measured, the rest predicted); {ph.n} phases over "
          f"{ph.target_steps} steps (starting at steps {', '.join(map(str, ph.step_edges[:-1]))}); "
          f"weights in {folder / WEIGHTS_FILE}")
    print(f"curriculum: learnability model on held-out documents: R^2 per phase "
          f"{', '.join(f'{v:.3f}' for v in model.cv_r2)} (uncalibrated "
          f"{', '.join(f'{v:.3f}' for v in model.cv_r2_raw)})")
    print(f"curriculum: target dataset ({tsource}): {al.summary()}")
    measured_tokens = max(r.tokens for r in runs)
    if ph.target_steps * ph.tokens_per_step > measured_tokens:
        print(f"curriculum: warning: the target run reaches T = {ph.target_steps * ph.tokens_per_step:.3g} "
              f"tokens, beyond the longest measured run ({measured_tokens:.3g}); the later phases rest on "
              "sigmoids extrapolated past the last checkpoint", file=sys.stderr)
