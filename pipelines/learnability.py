"""The learnability of training data for the curriculum commands: their shared options, and the
evalset, losses and fit stages run on a learnability manifest
(:func:`spectrum.curriculum.learnability.learnability_manifest`).

Not a command of its own: ``spectrum export-curriculum`` and ``spectrum curriculum-test`` use it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging

from pipelines.options import (device_option, executor_option, force_option, num_gpus_option,
                               option, ray_address_option, shared_with)
from spectrum.errors import SpectrumError, StageFailed
from spectrum.manifest import Manifest

STAGES = ("evalset", "losses", "fit")
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


def run_learnability_stages(lm: Manifest, options: LearnabilityOptions) -> None:
    """The evalset, losses and fit stages, unchanged, on the learnability manifest ``lm``: each
    with its own defaults and the shared options (device, executor, force, ...) of ``options``.
    Each stage skips what is already current, so the commands resume.

    A stage that fails some units raises :class:`StageFailed` again with only the problems it
    has not already shown and its summary, so that the command line reports each problem once.
    """
    for name in STAGES:
        try:
            module = importlib.import_module(f"pipelines.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pipelines.{name}":
                raise SpectrumError(f"the {name} stage is not available in this installation") from None
            raise
        log.info(f"curriculum: learnability of training data: {name} stage")
        try:
            module.main(lm, shared_with(module.OPTIONS, options))
        except StageFailed as e:
            raise StageFailed(*e.unshown()) from e
