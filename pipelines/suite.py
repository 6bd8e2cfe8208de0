"""``spectrum suite``: train the manifest's built-in scaling suite (runs with a ``train:`` entry).

Runs whose last checkpoint exists are skipped, so ``spectrum run`` calls this first at almost no
cost once the suite is trained; a manifest without a ``suite:`` section (or without runs to
train) makes it a no-op. See :mod:`spectrum.suite.build`.
"""

from __future__ import annotations

import argparse

from spectrum.manifest import Manifest

HELP = "train the built-in mini scaling suite (checkpoints on a log-time schedule)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (default auto: a GPU when present)")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if current (here: retrain every run of the suite)")
    parser.add_argument("--suite-workers", type=int, default=None, metavar="N",
                        help="runs trained at once, one process each (default: one "
                             "single-threaded process per CPU core; one on a GPU)")


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    from spectrum.suite.build import train_suite

    train_suite(manifest, device=getattr(args, "device", "auto"), force=getattr(args, "force", False),
                workers=getattr(args, "suite_workers", None))
