"""The options of ``spectrum report`` (:mod:`pipelines.report`), importable without the analyses:
the command line is built from them without loading the stage. Their defaults repeat two
constants of the analyses (the step kinds and the token chunk), which a test holds equal."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import DistributedOptions, force_option, option

HELP = "learning-time spectra, held-out reconstruction of dL/dT, dL/dD, dL/dM, and the report"
EXECUTOR = "local"  # where the units run without --executor and --ray-address
SPECTRUM_KINDS = "learned,forgotten,unfinished"  # spectrum.fit.kinds.STEP_KINDS
TOKEN_CHUNK = 1 << 16  # spectrum.analysis.runs.run_data.CHUNK
UNIT_CHUNKS = 4  # token chunks in a unit of work on Ray


@dataclass(frozen=True, kw_only=True)
class ReportOptions(DistributedOptions):
    spectrum_bins: int = option(40, "bins of the shared ln T grid (default 40)")
    bootstrap: int = option(2000, "bootstrap replicates over sequences for bands and score "
                                  "intervals (default 2000)")
    spectrum_kinds: str = option(SPECTRUM_KINDS, "fit kinds that enter the spectra "
                                                 f"(default {SPECTRUM_KINDS})")
    split_seed: int = option(0, "seed of the sequence halves and the bootstrap (default 0)")
    ridge: float = option(0.5, "shrinkage of per-token slopes towards the population "
                               "(default 0.5)")
    token_chunk: int = option(TOKEN_CHUNK, "tokens read at a time by the per-token analyses; "
                                           f"on Ray a unit of work is {UNIT_CHUNKS} chunks "
                                           f"(default {TOKEN_CHUNK})")
    force: bool = force_option()

    def __post_init__(self) -> None:
        from pipelines.report import analysis_options

        analysis_options(self)  # a bad value is refused before any work


OPTIONS = ReportOptions
