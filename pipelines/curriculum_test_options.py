"""``spectrum curriculum-test``: its help line and options, light to import (the command line reads
them without loading the stage; see :mod:`pipelines.curriculum_test`)."""

from __future__ import annotations

import dataclasses

from pipelines.learnability import LearnabilityOptions
from pipelines.options import option
from spectrum.curriculum.settings import ARMS, TrialSettings

HELP = "controlled test: train one suite size under uniform, curriculum and control weightings"


_DEFAULTS = TrialSettings()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurriculumTestOptions(LearnabilityOptions):
    sequences: int | None = option(None, "training-split sequences to measure (default: what the "
                                         "run consumes in --epochs passes, at most the split's "
                                         "windows)")
    size: str | None = option(None, "model size of the suite to train (default: the smallest "
                                    "size of a fit run)")
    seeds: int = option(_DEFAULTS.seeds, f"seeds per arm (default {_DEFAULTS.seeds})")
    seed_base: int = option(_DEFAULTS.seed_base, f"first seed of the test (default "
                                                 f"{_DEFAULTS.seed_base}); must differ from the "
                                                 "seeds of the runs that measure learnability")
    steps: int | None = option(None, "training steps (default: the steps of the shortest fit run "
                                     "of that size)")
    epochs: float = option(_DEFAULTS.epochs, "passes over the pool that the default pool size "
                                             f"allows (default {_DEFAULTS.epochs:g})")
    buckets: int = option(_DEFAULTS.buckets, "token-frequency buckets of the frequency-matched "
                                             f"control (default {_DEFAULTS.buckets})")
    eval_sequences: int = option(_DEFAULTS.eval_sequences, "validation sequences for the loss "
                                                           "curves (default "
                                                           f"{_DEFAULTS.eval_sequences})")
    arms: str = option(",".join(ARMS), f"arms to train (default {','.join(ARMS)})")
    budgets: str = option(",".join(f"{b:g}" for b in _DEFAULTS.budgets),
                          "compute of the uniform calibration runs as fractions of the arms' "
                          f"(default {','.join(f'{b:g}' for b in _DEFAULTS.budgets)}; at least 3)")
    workers: int | None = option(None, "runs trained at once, each in its own process (default: "
                                       "one per CPU core on the CPU, 1 on a GPU)")


OPTIONS = CurriculumTestOptions
