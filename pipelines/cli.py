"""The ``spectrum`` command line.

Each stage lives in its own module under ``pipelines/`` and exposes three names:

- ``HELP``: one line for ``spectrum --help``;
- ``OPTIONS``: the frozen dataclass of its options (see :mod:`pipelines.options`), from which its
  flags are generated (``--config`` and the verbosity flags are added here);
- ``main(manifest, options)``: runs the stage; raises :class:`spectrum.errors.SpectrumError` for
  a problem the user can fix.

A stage whose module imports heavy dependencies (torch, the analyses) declares ``HELP`` and
``OPTIONS`` in a light module of their own (:data:`DECLARED_IN`), so that the command line, its
``--help`` included, is built without loading the stage; and only the options of the command
being run are added to the parser (``spectrum --help`` loads no stage's options at all).

``spectrum run`` runs every stage in pipeline order; it takes the options of all of them, each
flag once, and each stage skips the work whose outputs are already current, so the same command
resumes an interrupted run. Messages and progress bars go to stderr (``--quiet``: warnings and
errors only; ``--verbose``: also debug messages).

Errors end in one line each on stderr and a non-zero exit, never a traceback: a problem with the
user's input (exit 2, or 1 when a stage finished what it could), a file or folder that cannot be
read or written (exit 2, naming the path: read-only, full, a file where a folder is needed), or
an unexpected error (exit 3). ``--debug`` shows the traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from types import ModuleType

from pipelines.options import add_options, from_namespace
from spectrum.console import set_verbosity
from spectrum.errors import SpectrumError
from spectrum.manifest import load_manifest

log = logging.getLogger("pipelines.cli")  # not __name__: "__main__" under `python -m`

# name -> module, in pipeline order; `run` runs the ones in RUN_ORDER.
STAGES: dict[str, str] = {
    "suite": "pipelines.suite",
    "evalset": "pipelines.evalset",
    "losses": "pipelines.losses",
    "fit": "pipelines.fit",
    "report": "pipelines.report",
    "export-curriculum": "pipelines.curriculum_export",
    "curriculum-test": "pipelines.curriculum_test",
    "plan": "pipelines.plan",
    "import-losses": "pipelines.import_losses",
}
RUN_ORDER = ("suite", "evalset", "losses", "fit", "report")
# name -> the light module that declares the stage's HELP and OPTIONS (default: the stage's own)
DECLARED_IN: dict[str, str] = {
    "evalset": "pipelines.evalset_options",
    "losses": "pipelines.losses_options",
    "fit": "pipelines.fit_options",
    "report": "pipelines.report_options",
    "suite": "pipelines.suite",
    "export-curriculum": "pipelines.curriculum_export_options",
    "curriculum-test": "pipelines.curriculum_test_options",
    "plan": "pipelines.plan",
    "import-losses": "pipelines.import_losses",
}


def _module(path: str) -> ModuleType | None:
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name == path:
            return None
        raise


def _stage(name: str) -> ModuleType | None:
    """The stage's module (its ``main``); None when this installation lacks it."""
    return _module(STAGES[name])


def _declared(name: str) -> ModuleType | None:
    """The module of the stage's ``HELP`` and ``OPTIONS``; None when the stage is missing."""
    if name in DECLARED_IN and importlib.util.find_spec(STAGES[name]) is None:
        return None
    return _module(DECLARED_IN.get(name, STAGES[name]))


def _add_common(p: argparse.ArgumentParser, default: object = None) -> None:
    """``--config`` and the verbosity flags; on subcommands their defaults are suppressed, so a
    verbosity flag given before the subcommand is kept."""
    p.add_argument("--config", default="checkpoints.yaml",
                   help="the manifest (default: checkpoints.yaml)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_const", dest="verbosity", const="quiet",
                      default=default, help="only warnings and errors; no progress bars")
    loud.add_argument("-v", "--verbose", action="store_const", dest="verbosity",
                      const="verbose", default=default, help="also debug messages")
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an error (for bug reports)")


def build_parser(command: str | None = None, *, names_only: bool = False
                 ) -> argparse.ArgumentParser:
    """The command line. With ``command`` (a stage, or ``run``) only that command's options are
    added (the other commands are known by name); without, every command's, as the tests of the
    options do; ``names_only``: no command's options (``spectrum --help``)."""
    parser = argparse.ArgumentParser(
        prog="spectrum",
        description="Per-token loss trajectories, sigmoid fits and learning-time spectra.")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_const", dest="verbosity", const="quiet",
                      default="normal", help="only warnings and errors; no progress bars")
    loud.add_argument("-v", "--verbose", action="store_const", dest="verbosity",
                      const="verbose", help="also debug messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every stage: " + " -> ".join(RUN_ORDER))
    _add_common(run, argparse.SUPPRESS)
    wanted = set() if names_only else set(STAGES) if command is None else \
        set(RUN_ORDER) if command == "run" else {command}
    # every command's help line (light modules); the options only of the commands wanted
    declared = {name: mod for name in STAGES if (mod := _declared(name)) is not None}
    for name, mod in declared.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        _add_common(p, argparse.SUPPRESS)
        if name in wanted:
            add_options(p, [mod.OPTIONS])
    if not names_only and command in (None, "run"):
        add_options(run, [declared[name].OPTIONS for name in RUN_ORDER if name in declared])
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is one), or None."""
    return next((a for a in argv if a == "run" or a in STAGES), None)


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
    names = [n for n in RUN_ORDER if _stage(n) is not None] if args.command == "run" \
        else [args.command]
    # every stage's options first: a bad value is reported before any work starts
    stages = [(_stage(name), from_namespace(_declared(name).OPTIONS, args)) for name in names]
    manifest = load_manifest(args.config)
    for mod, options in stages:
        mod.main(manifest, options)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    command = _command(argv)
    args = build_parser(command, names_only=command is None).parse_args(argv)
    set_verbosity(args.verbosity)
    debug = bool(args.debug)
    try:
        _run(args)
    except SpectrumError as e:
        if debug:
            traceback.print_exc()
        for line in e.problems or [str(e)]:
            log.error(line)
        return e.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted: finished outputs are kept; run the same command to resume")
        return 130
    except OSError as e:
        if debug:
            raise
        log.error(os_error_line(e))
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log.error(f"unexpected {type(e).__name__}{': ' + first if first else ''} "
                  "(rerun with --debug to see the traceback, and report it)")
        return 3
    finally:
        set_verbosity("normal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
