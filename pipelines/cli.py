"""The ``spectrum`` command line.

Each stage lives in its own module under ``pipelines/`` and exposes three names:

- ``HELP``: one line for ``spectrum --help``;
- ``add_arguments(parser)``: its own options (shared ones, such as ``--config``, are added here);
- ``main(manifest, args)``: runs the stage; raises :class:`spectrum.errors.SpectrumError` for a
  problem the user can fix.

``spectrum run`` runs every stage in pipeline order with each stage's defaults; each stage skips
the work whose outputs are already current, so the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from spectrum.errors import SpectrumError
from spectrum.manifest import load_manifest

# name -> module, in pipeline order; `run` runs the ones in RUN_ORDER.
STAGES: dict[str, str] = {
    "suite": "pipelines.suite",
    "evalset": "pipelines.evalset",
    "losses": "pipelines.losses",
    "fit": "pipelines.fit",
    "report": "pipelines.report",
    "export-curriculum": "pipelines.curriculum_export",
    "curriculum-test": "pipelines.curriculum_test",
}
RUN_ORDER = ("suite", "evalset", "losses", "fit", "report")


def _stage(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(STAGES[name])
    except ModuleNotFoundError as e:
        if e.name == STAGES[name]:
            return None
        raise


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="checkpoints.yaml",
                   help="the manifest (default: checkpoints.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrum",
        description="Per-token loss trajectories, sigmoid fits and learning-time spectra.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", conflict_handler="resolve",
                         help="run every stage: " + " -> ".join(RUN_ORDER))
    _add_common(run)
    for name in STAGES:
        mod = _stage(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        _add_common(p)
        mod.add_arguments(p)
        if name in RUN_ORDER:
            mod.add_arguments(run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        manifest = load_manifest(args.config)
        if args.command == "run":
            for name in RUN_ORDER:
                mod = _stage(name)
                if mod is not None:
                    mod.main(manifest, args)
        else:
            _stage(args.command).main(manifest, args)
    except SpectrumError as e:
        for line in e.problems or [str(e)]:
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
