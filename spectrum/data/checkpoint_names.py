"""Checkpoint names: the folder names (``checkpoint-<step>``, ``step<step>``,
``step<step>-tokens<N>B``) and hub revisions (``step<step>``) the loader understands, and the step
each names. No manifest types here, so that counting parameters from a run's first checkpoint
(:mod:`spectrum.data.param_count`, used while the manifest is read) needs nothing that reads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FOLDER = re.compile(r"(?:checkpoint-(?P<hf>\d+)|step(?P<step>\d+)(?:-tokens(?P<btok>\d+)B)?)")
REVISION = re.compile(r"step(?P<step>\d+)(?:-tokens(?P<btok>\d+)B)?")


def named_folders(folder: Path) -> list[tuple[int, Path, str | None]]:
    """(step, path, billions-of-tokens) for every sub-folder named like a checkpoint."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for e in entries:
        m = FOLDER.fullmatch(e.name)
        if m and e.is_dir():
            step = int(m.group("hf") if m.group("hf") is not None else m.group("step"))
            found.append((step, Path(e.path), m.group("btok")))
    return sorted(found, key=lambda t: (t[0], t[1].name))


def revision_step(revision: str) -> int | None:
    """The step a hub revision names (``step<N>`` or ``step<N>-tokens<M>B``), or None."""
    m = REVISION.fullmatch(revision)
    return int(m.group("step")) if m else None


def checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every sub-folder named like a checkpoint, complete or not, by step."""
    return [(step, path) for step, path, _ in named_folders(folder)]
