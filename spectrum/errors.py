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
    """A stage finished what it could, but some units of work failed (listed in ``problems``).

    ``shown``: those of the problems the stage already logged as they happened (a failed unit of
    work), so that a command running the stage inside another can report each problem once."""

    exit_code = 1

    def __init__(self, *problems: str, shown: tuple[str, ...] = ()) -> None:
        super().__init__(*problems)
        self.shown = tuple(shown)

    def unshown(self) -> list[str]:
        """The problems not logged yet (the stage's summary among them)."""
        return [p for p in self.problems if p not in self.shown]
