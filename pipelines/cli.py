"""The ``spectrum`` command line.

Each stage lives in its own module under ``pipelines/`` and exposes three names:

- ``HELP``: one line for ``spectrum --help``;
- ``add_arguments(parser)``: its own options (shared ones, such as ``--config``, are added here);
- ``main(manifest, args)``: runs the stage; raises :class:`spectrum.errors.SpectrumError` for a
  problem the user can fix.

``spectrum run`` runs every stage in pipeline order with each stage's defaults; each stage skips
the work whose outputs are already current, so the same command resumes an interrupted run.

Errors end in one line each on stderr and a non-zero exit, never a traceback: a problem with the
user's input (exit 2, or 1 when a stage finished what it could), a file or folder that cannot be
read or written (exit 2, naming the path: read-only, full, a file where a folder is needed), or
an unexpected error (exit 3). ``--debug`` shows the traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import errno
import sys
import traceback
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
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (for bug reports)")


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


_OS_HINTS = {errno.EACCES: "permission denied (is the folder read-only?)",
             errno.EPERM: "permission denied (is the folder read-only?)",
             errno.EROFS: "the file system is read-only",
             errno.ENOSPC: "no space left on the device",
             errno.EDQUOT: "the disk quota is exhausted",
             errno.EFBIG: "the file is larger than this system allows",
             errno.ENOTDIR: "a file stands where a folder is needed",
             errno.EEXIST: "a file stands where a folder is needed",
             errno.EISDIR: "a folder stands where a file is needed"}


def os_error_line(e: OSError) -> str:
    """One sentence naming the path an operating-system error is about."""
    reason = _OS_HINTS.get(e.errno or -1, e.strerror or type(e).__name__)
    where = " and ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {reason}" if where else f"{reason} ({e})"


def _run(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.config)
    if args.command == "run":
        for name in RUN_ORDER:
            mod = _stage(name)
            if mod is not None:
                mod.main(manifest, args)
    else:
        _stage(args.command).main(manifest, args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        _run(args)
    except SpectrumError as e:
        if debug:
            traceback.print_exc()
        for line in e.problems or [str(e)]:
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: unexpected {type(e).__name__}{': ' + first if first else ''} "
              "(rerun with --debug to see the traceback, and report it)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
