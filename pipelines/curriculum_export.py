"""`spectrum export-curriculum`: weights that reshape a target run's data by when it becomes learnable.

1. Learnability of the *training* data: the evalset, losses and fit stages run unchanged on a
   derived manifest whose evalset is drawn from the training split (``split: train``), written
   under ``<out>/curriculum/learnability/`` (each stage skips what is already current, so the
   command resumes; :mod:`pipelines.learnability`, :mod:`spectrum.curriculum.learnability`). The
   runs measured are the manifest's ``fit`` runs, or ``--runs``.
2. A learnability model (:mod:`spectrum.curriculum.predict`) fitted on the scored sample, with
   its R^2 on held-out documents printed and written in the export's README.
3. Every sequence (window of the context, tail included) and every document of the corpus
   (``--corpus``, default the manifest's; ``--split``, default train), streamed
   (:mod:`spectrum.curriculum.corpus_export`): the loss shed in each phase of the target run,
   measured for scored windows and predicted for the others, turned into per-phase weights (mean 1
   per phase, floor ``--floor``), written to ``<out>/curriculum/`` with a README and
   ``coverage.json``.
4. The target dataset's ids: ``--target-ids`` (a text file with one ``doc_id`` per line, or a
   Parquet/JSONL file with a ``doc_id`` column); by default the documents of ``--corpus`` when it
   is given (the training text: the documents exported), else those of the manifest corpus's
   training split. Exported ids the target lacks are counted, logged with examples and
   written to ``<out>/curriculum/missing_ids.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from pipelines.curriculum_export_options import HELP, OPTIONS, CurriculumExportOptions  # noqa: F401
from pipelines.learnability import run_learnability_stages
from pipelines.options import option
from spectrum import layout
from spectrum.curriculum.corpus_export import (ExportCounts, coverage_paragraph, export_corpus,
                                                spread_paragraph)
from spectrum.curriculum.learnability import (evalset_meta, learnability_manifest,
                                              learnability_runs, measure, read_target_ids,
                                              shed_model_and_measured)
from spectrum.curriculum.predict import ShedModel
from spectrum.curriculum.weights import (PHASES_FILE, WEIGHTS_FILE, CurriculumWeights, Learnability,
                                         Phases, phase_schedule, readme_text)
from spectrum.data.corpus import documents, iter_documents
from spectrum.data.evalset import load_tokenizer
from spectrum.errors import SpectrumError
from spectrum.manifest import CorpusSpec, Manifest, RunSpec
from spectrum.store import source_commit, write_json, write_text

log = logging.getLogger(__name__)




def corpus_of(manifest: Manifest, options: CurriculumExportOptions) -> tuple[CorpusSpec, str | None]:
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
    lm = learnability_manifest(manifest, runs, layout.learnability_dir(manifest.out),
                               sequences=options.sequences)
    run_learnability_stages(lm, options)
    learn = measure(lm, _target_phases(options, runs[0]))
    meta = evalset_meta(lm)
    tokenizer = load_tokenizer(meta["tokenizer"]["source"])
    model, measured, shrink = shed_model_and_measured(lm, learn, len(tokenizer))
    spec, split = corpus_of(manifest, options)
    source = (f"the {split or 'whole'} split of the {spec.kind} corpus"
              f"{' ' + spec.path if spec.path else ''}")
    folder = layout.curriculum_dir(manifest.out)
    counts = export_corpus(iter_documents(spec, split), tokenizer, int(meta["context"]),
                           model, measured, folder, floor=options.floor,
                           provenance={"phases": learn.phases.to_dict(), "runs": list(learn.runs),
                                       "evalset_hash": meta.get("hash"),
                                       "learnability_dir": str(lm.out), "corpus": source,
                                       "shed_model": model.report(),
                                       "shrinkage": shrink.to_dict()})
    write_json(learn.phases.to_dict(), folder / PHASES_FILE)
    write_json({"corpus": source, **counts.to_dict(), "shed_model": model.report(),
                "shrinkage": shrink.to_dict(), "ln_vocab": math.log(len(tokenizer)),
                "code_commit": source_commit()}, layout.curriculum_coverage(manifest.out))
    write_text(readme_text(learn, options.floor, extra=coverage_paragraph(counts, model, source)
                           + spread_paragraph(counts, shrink)), folder / "README.md")
    target = _align_target(manifest, options)
    _log_export(learn, counts, model, source, target, folder,
                measured_tokens=max(r.tokens for r in runs))


def _target_phases(options: CurriculumExportOptions, first_run: RunSpec) -> Phases:
    """The phases of the target run: its steps and tokens per step (default: the first measured
    run's), equal bins of ln T from the end of its warmup."""
    tps = options.tokens_per_step or first_run.tokens_per_step
    warmup = (options.target_warmup_steps if options.target_warmup_steps is not None
              else first_run.warmup_steps)
    steps = options.target_steps
    return phase_schedule(steps, tps, options.phases,
                          first_step=min(max(warmup, 1), steps - 1) or 1)


def _align_target(manifest: Manifest, options: CurriculumExportOptions) -> str:
    """Align the export to the target dataset's ids and write what it lacks; returns the line
    that says so."""
    if options.target_ids:
        target, tsource = read_target_ids(options.target_ids), str(options.target_ids)
    elif options.corpus:  # the training text the user named: the documents exported
        spec, split = corpus_of(manifest, options)
        target = [d.doc_id for d in iter_documents(spec, split)]
        tsource = f"the exported documents of --corpus {options.corpus}"
    else:
        target = [d.doc_id for d in documents(manifest.evalset.corpus, "train")]
        tsource = f"the training split of {manifest.evalset.corpus.kind} corpus"
    al = CurriculumWeights.read(layout.curriculum_dir(manifest.out)).align(target)
    write_json({"target": tsource, **al.report(examples=50)},
               layout.curriculum_missing_ids(manifest.out))
    return f"curriculum: target dataset ({tsource}): {al.summary()}"


def _log_export(learn: Learnability, counts: ExportCounts, model: ShedModel, source: str,
                target: str, folder: Path, *, measured_tokens: int) -> None:
    ph = learn.phases
    log.info(f"curriculum: {counts.sequences} sequences / {counts.documents} documents of "
             f"{source} ({counts.sequences_measured} sequences measured, the rest predicted); "
             f"{ph.n} phases over {ph.target_steps} steps (starting at steps "
             f"{', '.join(map(str, ph.step_edges[:-1]))}); weights in {folder / WEIGHTS_FILE}")
    log.info(f"curriculum: learnability model on held-out documents: R^2 per phase "
             f"{', '.join(f'{v:.3f}' for v in model.cv_r2)} (uncalibrated "
             f"{', '.join(f'{v:.3f}' for v in model.cv_r2_raw)})")
    log.info(target)
    if ph.target_steps * ph.tokens_per_step > measured_tokens:
        log.warning(f"curriculum: the target run reaches T = "
                    f"{ph.target_steps * ph.tokens_per_step:.3g} tokens, beyond the longest "
                    f"measured run ({measured_tokens:.3g}); the later phases rest on sigmoids "
                    "extrapolated past the last checkpoint")
