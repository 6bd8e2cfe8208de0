"""The controlled curriculum test's settings and arms: plain values, no heavy imports, so that the
command line can show their defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

ARMS = ("uniform", "curriculum", "freq_shuffled", "random", "timing_flat", "exported")
#: arms whose weights are given to the trainer (the export's), not derived from the curriculum's
GIVEN_ARMS = ("exported",)

#: test seeds start here, far from the seeds of the runs that measure learnability (0, 1, ...)
SEED_BASE = 1000


@dataclass(frozen=True)
class TrialSettings:
    """Options of the controlled test (``spectrum curriculum-test``).

    ``size``: the suite size to train (None: the smallest size of a fit run); ``seeds``: seeds per
    arm, numbered from ``seed_base``; ``steps``: training steps (None: the shortest fit run of that
    size); ``epochs``: passes over the pool the default pool size allows; ``buckets``: frequency
    buckets of the frequency-matched control; ``eval_sequences``: validation sequences;
    ``arms``; ``budgets``: compute of the uniform calibration runs as fractions of the arms'
    (1 is the uniform arm itself); ``phases``, ``floor``: the curriculum's phases and weight
    floor; phases are equal bins of ln T from the end of the warmup to the last step.
    """

    size: str | None = None
    seeds: int = 8
    seed_base: int = SEED_BASE
    steps: int | None = None
    epochs: float = 2.0
    buckets: int = 8
    eval_sequences: int = 128
    arms: tuple[str, ...] = ARMS
    budgets: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4)
    phases: int = 4
    floor: float = 0.25
    workers: int | None = None  # runs trained at once (None: spectrum.pool.worker_count)

    @property
    def seed_ids(self) -> list[int]:
        return list(range(self.seed_base, self.seed_base + self.seeds))
