"""``spectrum suite``: train the manifest's built-in scaling suite (runs with a ``train:`` entry).

Runs whose last checkpoint exists are skipped, so ``spectrum run`` calls this first at almost no
cost once the suite is trained; a manifest without a ``suite:`` section (or without runs to
train) makes it a no-op. See :mod:`spectrum.suite.build`; the runs are trained side by side in
worker processes by :mod:`spectrum.suite.parallel`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import device_option, force_option, option
from spectrum.manifest import Manifest

HELP = "train the built-in mini scaling suite (checkpoints on a log-time schedule)"


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    device: str = device_option()
    force: bool = force_option()
    suite_workers: int | None = option(None, "runs trained at once, one process each (default: "
                                             "one single-threaded process per CPU core; one on a "
                                             "GPU)", metavar="N")


OPTIONS = SuiteOptions


def main(manifest: Manifest, options: SuiteOptions) -> None:
    from spectrum.suite.parallel import train_suite_in_processes  # torch: not needed for --help

    train_suite_in_processes(manifest, device=options.device, force=options.force,
                             workers=options.suite_workers)
