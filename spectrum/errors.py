"""User-facing errors.

A :class:`SpectrumError` is a problem with the user's input (a manifest, a checkpoint, a shard):
the command line prints its message, one line per problem, and exits with status 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SpectrumError(Exception):
    """A problem the user can fix; ``problems`` holds one sentence per problem."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


class ManifestError(SpectrumError):
    """The manifest (checkpoints.yaml) is invalid; every problem found is listed."""


class StageFailed(SpectrumError):
    """A stage finished what it could, but some units of work failed (listed in ``problems``)."""

    exit_code = 1
