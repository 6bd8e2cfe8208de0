"""`spectrum export-curriculum`: weights that reshape a target run's data by when it becomes learnable.

1. Learnability of the *training* data: the evalset, losses and fit stages run unchanged on a
   derived manifest whose evalset is drawn from the training split (``split: train``), written
   under ``<out>/curriculum/learnability/`` (each stage skips what is already current, so the
   command resumes). The runs measured are the manifest's ``fit`` runs, or ``--runs``.
2. Per training sequence and document: the loss shed in each phase of the target run
   (:mod:`spectrum.curriculum.weights`), turned into per-phase weights (mean 1 per phase, floor
   ``--floor``), written to ``<out>/curriculum/`` with a README.
3. The target dataset's ids: by default the documents of the manifest corpus's training split,
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

import polars as pl

from pipelines.options import (device_option, executor_option, force_option, num_gpus_option,
                               option, ray_address_option, shared_with)

from spectrum.data.corpus import documents
from spectrum.curriculum.weights import (CurriculumWeights, Learnability, learnability, phase_schedule,
                                 write_export)
from spectrum import layout
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest, RunSpec
from spectrum.store import write_json

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
                         runs: tuple[RunSpec, ...], target_steps: int, tokens_per_step: int
                         ) -> tuple[Manifest, Learnability]:
    """Run the stages (resuming) and aggregate the fits over the phases of the target run."""
    lm = learnability_manifest(manifest, runs, options.sequences)
    run_learnability_stages(lm, options)
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out),
                             columns=["token_idx", "seq_id", "doc_id"])
    phases = phase_schedule(target_steps, tokens_per_step, options.phases)
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


def main(manifest: Manifest, options: CurriculumExportOptions) -> None:
    runs = learnability_runs(manifest, options.runs)
    tps = options.tokens_per_step or runs[0].tokens_per_step
    lm, learn = measure_learnability(manifest, options, runs, options.target_steps, tps)
    folder = layout.curriculum_dir(manifest.out)
    evalset_meta = json.loads(layout.evalset_meta(lm.out).read_text())
    paths = write_export(learn, folder, floor=options.floor,
                         provenance={"evalset_hash": evalset_meta.get("hash"),
                                     "learnability_dir": str(lm.out)})
    if options.target_ids:
        target, source = read_target_ids(options.target_ids), str(options.target_ids)
    else:
        target = [d.doc_id for d in documents(manifest.evalset.corpus, "train")]
        source = f"the training split of {manifest.evalset.corpus.kind} corpus"
    al = CurriculumWeights.read(folder).align(target)
    write_json({"target": source, **al.report(examples=50)}, folder / "missing_ids.json")
    ph = learn.phases
    log.info(f"curriculum: {learn.sequences.height} sequences / {learn.documents.height} "
             f"documents, {ph.n} phases over {ph.target_steps} steps (starting at steps "
             f"{', '.join(map(str, ph.step_edges[:-1]))}); weights in {paths['sequences']}")
    log.info(f"curriculum: target dataset ({source}): {al.summary()}")
    measured = max(r.tokens for r in runs)
    if ph.target_steps * ph.tokens_per_step > measured:
        log.warning(f"curriculum: the target run reaches T = "
                    f"{ph.target_steps * ph.tokens_per_step:.3g} tokens, beyond the longest "
                    f"measured run ({measured:.3g}); the later phases rest on sigmoids "
                    "extrapolated past the last checkpoint")
