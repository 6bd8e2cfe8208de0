"""``spectrum plan``: what the manifest will cost, before anything is downloaded or evaluated
(see :mod:`spectrum.plan`). Offline; prints the table on stdout."""

from __future__ import annotations

import dataclasses

from pipelines.options import option
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest

HELP = ("the cost of the manifest before any work: checkpoints, token evaluations, FLOPs, "
        "storage, fit work, GPU time; revisions missing from the cache")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanOptions:
    tokens_per_second: float | None = option(
        None, "measured throughput of the losses stage on one GPU (token evaluations per "
              "second); default: an estimate from FLOPs")
    gpu: str = option("h100", "the GPU whose peak the FLOPs estimate uses: h100, h200, a100, "
                              "l40s or l4 (default h100)")
    utilisation: float = option(0.3, "share of the GPU's peak assumed by the FLOPs estimate "
                                     "(default 0.3)")

    def __post_init__(self) -> None:
        problems = []
        if self.tokens_per_second is not None and not self.tokens_per_second > 0:
            problems.append(f"--tokens-per-second must be positive, got {self.tokens_per_second}")
        if not 0 < self.utilisation <= 1:
            problems.append(f"--utilisation must be in (0, 1], got {self.utilisation}")
        if problems:
            raise SpectrumError(*problems)


OPTIONS = PlanOptions


def main(manifest: Manifest, options: PlanOptions) -> None:
    from spectrum.plan import GPU_PEAK_FLOPS, format_plan, make_plan  # pyarrow: not for --help

    if options.gpu not in GPU_PEAK_FLOPS:
        raise SpectrumError(f"--gpu: unknown GPU {options.gpu!r} (known: "
                            f"{', '.join(GPU_PEAK_FLOPS)})")
    print(format_plan(make_plan(manifest), options.tokens_per_second, options.gpu,
                      options.utilisation))
