"""The options of ``spectrum losses`` (:mod:`pipelines.losses`), importable without torch: the
command line is built from them without loading the stage."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import (cpus_per_worker_option, device_option, executor_option,
                               force_option, num_gpus_option, option, ray_address_option,
                               workers_option)
from spectrum.errors import SpectrumError

HELP = "per-token losses of every checkpoint of every run over the evalset (Parquet shards)"
EXECUTOR = "ray"  # where the units run without --executor and --ray-address


@dataclass(frozen=True, kw_only=True)
class LossesOptions:
    device: str = device_option()
    executor: str | None = executor_option()
    ray_address: str | None = ray_address_option()
    num_gpus: float | None = num_gpus_option()
    force: bool = force_option()
    workers: int | None = workers_option()
    cpus_per_worker: int = cpus_per_worker_option()
    dtype: str = option("auto", "weights and activations: auto = bfloat16 on GPUs, float32 on "
                                "CPUs", choices=("auto", "float32", "bfloat16"))
    batch_size: int | None = option(None, "sequences per forward pass (default: automatic)")
    retries: int = option(2, "retries of a unit that failed unexpectedly (default 2)")

    def __post_init__(self) -> None:
        """Refuse values no run can use, naming every one."""
        problems = []
        for name, value, least in (("--cpus-per-worker", self.cpus_per_worker, 1),
                                   ("--workers", self.workers, 1),
                                   ("--batch-size", self.batch_size, 1),
                                   ("--retries", self.retries, 0),
                                   ("--num-gpus", self.num_gpus, 0)):
            if value is not None and value < least:
                problems.append(f"{name} must be at least {least}, got {value:g}")
        if self.num_gpus == 0 and self.device.startswith("cuda"):
            problems.append(f"--device {self.device} with --num-gpus 0: the workers would have "
                            "no GPU")
        if problems:
            raise SpectrumError(*problems)


OPTIONS = LossesOptions
