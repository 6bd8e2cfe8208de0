"""``spectrum export-curriculum``: its help line and options, light to import (the command line
reads them without loading the stage; see :mod:`pipelines.curriculum_export`)."""

from __future__ import annotations

import dataclasses

from pipelines.learnability import LearnabilityOptions
from pipelines.options import option

HELP = "export curriculum weights for a target run (reweights training data by learnability)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurriculumExportOptions(LearnabilityOptions):
    target_steps: int = option(help="optimizer steps of the run the weights are for")
    tokens_per_step: int | None = option(None, "tokens per step of the target run (default: the "
                                               "first measured run's)")
    target_ids: str | None = option(None, "the target dataset's doc ids: a text file (one per "
                                          "line), or Parquet/JSONL with a doc_id column "
                                          "(default: the documents of --corpus when it is given, "
                                          "i.e. the ones exported; else the manifest corpus's "
                                          "training split)")
    target_warmup_steps: int | None = option(None, "learning-rate warmup steps of the target run; "
                                                   "the phases are bins of ln T from its end "
                                                   "(default: the first measured run's "
                                                   "warmup_steps)")
    corpus: str | None = option(None, "the corpus to weight, KIND[:GLOB] with KIND python-stdlib, "
                                      "text, jsonl or parquet (default: the manifest's corpus); "
                                      "also the target dataset unless --target-ids is given")
    text_field: str | None = option(None, "the text field (jsonl) or column (parquet) of --corpus "
                                          "(default: text)")
    split: str = option("train", "documents of the corpus to weight (default: train)",
                        choices=("train", "validation", "all"))


OPTIONS = CurriculumExportOptions
