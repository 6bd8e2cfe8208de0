"""The options of ``spectrum evalset`` (:mod:`pipelines.evalset`), importable without the data
libraries: the command line is built from them without loading the stage."""

from __future__ import annotations

import dataclasses

from pipelines.options import force_option

HELP = "draw the evaluation set (token ids, annotations) from the manifest's corpus"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalsetOptions:
    force: bool = force_option()


OPTIONS = EvalsetOptions
