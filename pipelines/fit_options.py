"""The options of ``spectrum fit`` (:mod:`pipelines.fit`), importable without torch: the command
line is built from them without loading the stage."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import DistributedOptions, device_option, force_option, not_positive, option
from spectrum.errors import SpectrumError

HELP = "fit a sigmoid in log-time to every token's loss trajectory (batched Levenberg-Marquardt)"
EXECUTOR = "local"  # where the units run without --executor and --ray-address
FIT_DTYPES = ("float32", "float64")  # the names of spectrum.fit.worker.DTYPES


@dataclass(frozen=True, kw_only=True)
class FitStageOptions(DistributedOptions):
    device: str = device_option()
    fit_dtype: str = option("float32", "precision of the fits (default float32)",
                            choices=FIT_DTYPES)
    chunk_size: int = option(1 << 20, "tokens read from the shards and fitted at a time "
                                      "(default 1048576)")
    fit_kernel: str = option("auto", "the LM iterations in the fused Triton kernel or in torch; "
                                     "auto: the kernel on CUDA when Triton is installed "
                                     "(default auto)", choices=("auto", "triton", "torch"))
    force: bool = force_option()

    def __post_init__(self) -> None:
        problems = not_positive((("--chunk-size", self.chunk_size),
                                 ("--cpus-per-worker", self.cpus_per_worker),
                                 ("--workers", self.workers)))
        if problems:
            raise SpectrumError(*problems)


OPTIONS = FitStageOptions
