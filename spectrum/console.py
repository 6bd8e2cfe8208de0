"""Messages and progress bars, on stderr.

Every module logs with ``logging.getLogger(__name__)``; the loggers of ``spectrum`` and
``pipelines`` write one line per message to stderr (warnings and errors prefixed ``warning:`` and
``error:``), so stdout carries only what a user may pipe. :func:`set_verbosity` sets how much is
said: ``quiet`` (warnings and errors only, no progress bars), ``normal`` or ``verbose`` (also
debug messages). :func:`progress` is tqdm on stderr, silent when quiet; where stderr is not a
terminal (a log file, a pipe, a batch job) the bar becomes a plain line every
:data:`LINE_INTERVAL` seconds instead of carriage-return redraws.

Importing the library configures nothing: the handler is installed by the first
:func:`set_verbosity`, which the command line calls (as may any program that wants the tool's
messages on stderr).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
_ROOTS = ("spectrum", "pipelines")
LINE_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal


class _Stderr(logging.Handler):
    """Writes each message to the current ``sys.stderr`` through ``tqdm.write``, which keeps
    progress bars intact below it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own policy for a failed emit
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


def _install() -> None:
    handler = _Stderr()
    handler.setFormatter(_Format())
    for name in _ROOTS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(LEVELS["normal"])
        logger.propagate = False


def set_verbosity(level: str) -> None:
    """``quiet``, ``normal`` or ``verbose``, for every message and bar of the tool; installs the
    stderr handler of the tool's loggers the first time."""
    _install()
    for name in _ROOTS:
        logging.getLogger(name).setLevel(LEVELS[level])


def verbosity() -> str:
    level = logging.getLogger(_ROOTS[0]).level
    return next((k for k, v in LEVELS.items() if v == level), "normal")


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + bar) into a line of its own."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (rate and ETA) on stderr; disabled when quiet; a line every
    :data:`LINE_INTERVAL` seconds (and at the end) when stderr is not a terminal."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    kwargs["disable"] = bool(kwargs.get("disable")) or verbosity() == "quiet"
    if not _is_terminal(stream):
        kwargs.update(file=_Lines(stream), mininterval=LINE_INTERVAL, maxinterval=LINE_INTERVAL,
                      miniters=1, dynamic_ncols=False,
                      bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
                                 "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    else:
        kwargs["file"] = stream
    return tqdm(*args, **kwargs)

