"""A run's learning-rate schedule: the learning rate of every update, from where it is known.

Sources, first found wins:

1. the run's ``schedule:`` in the manifest (:func:`spectrum.manifest.parse_schedule`), which the
   built-in suite fills from its configuration (``suite.learning_rate``, ``warmup_steps``,
   ``min_lr_ratio``: linear warmup, then cosine decay to the floor on the last step);
2. ``trainer_state.json`` of the run's last Hugging Face Trainer checkpoint: its ``log_history``
   entries with ``step`` and ``learning_rate``, linearly interpolated between logged steps and
   held at the ends;
3. none: the schedule is unknown, with the reason.

A schedule is the array ``lr[i]``, ``i = 0 .. S``: the learning rate of the update that ends at
step ``i`` (``lr[0]`` is 0: step 0 is the initial model); ``S = tokens / tokens_per_step``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectrum.manifest import RunSpec


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each update (``lr[i]``: the update ending at step ``i``), where it
    came from, and the warmup's last step (the step of the peak learning rate)."""

    lr: np.ndarray
    source: str
    warmup_steps: int


def total_steps(spec: RunSpec) -> int:
    return max(int(round(spec.tokens / spec.tokens_per_step)), 1)


def _shape(kind: str, s: np.ndarray, warmup: int, decay_from: int, end: int,
           floor: float) -> np.ndarray:
    """The schedule's factor of the peak learning rate at scheduler steps ``s``."""
    warm = s / max(warmup, 1)
    progress = np.clip((s - decay_from) / max(end - decay_from, 1), 0.0, 1.0)
    if kind == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + np.cos(math.pi * progress))
    elif kind in ("linear", "wsd"):
        decay = 1 - (1 - floor) * progress
    else:  # constant
        decay = np.ones_like(progress)
    return np.where(s < warmup, warm, decay)


def from_manifest(spec: RunSpec, schedule: dict | tuple) -> Schedule:
    """The learning rates a manifest ``schedule:`` (validated) describes."""
    S = total_steps(spec)
    if isinstance(schedule, tuple):  # (step, lr) pairs, piecewise linear
        steps, lrs = (np.array(v, float) for v in zip(*schedule))
        lr = np.interp(np.arange(S + 1, dtype=float), steps, lrs)
        lr[0] = 0.0
        return Schedule(lr, "the manifest's schedule (step, learning rate) pairs",
                        int(steps[int(np.argmax(lrs))]))
    kind, warmup = schedule["kind"], int(schedule.get("warmup_steps", spec.warmup_steps))
    floor = float(schedule.get("min_lr_ratio", 0.0))
    decay_steps = int(schedule.get("decay_steps", S - warmup if kind != "wsd" else 0.1 * S))
    decay_from = warmup if kind != "wsd" else S - decay_steps
    # the update ending at step i uses the scheduler's value at step i - 1
    s = np.arange(-1, S, dtype=float)
    lr = float(schedule["peak_lr"]) * _shape(kind, s, warmup, decay_from, S, floor)
    lr[0] = 0.0
    what = schedule.get("source", "the manifest's schedule")
    return Schedule(lr, f"{what} ({kind})", warmup)


def trainer_state(folder: Path) -> Path | None:
    """``trainer_state.json`` of the last ``checkpoint-<step>/`` in ``folder`` (or of the folder
    itself), or None."""
    found = []
    for p in folder.glob("checkpoint-*/trainer_state.json"):
        tail = p.parent.name.split("-", 1)[1]
        if tail.isdigit():
            found.append((int(tail), p))
    if found:
        return max(found)[1]
    own = folder / "trainer_state.json"
    return own if own.is_file() else None


def from_trainer_state(spec: RunSpec, path: Path) -> Schedule | str:
    """The logged learning rates, interpolated to every step; a reason where there are none."""
    try:
        history = json.loads(path.read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError) as e:
        return f"{path}: unreadable ({e})"
    pts = sorted({int(h["step"]): float(h["learning_rate"]) for h in history
                  if isinstance(h, dict) and isinstance(h.get("step"), (int, float))
                  and isinstance(h.get("learning_rate"), (int, float))}.items())
    if len(pts) < 2:
        return f"{path}: fewer than two logged learning rates in log_history"
    steps, lrs = (np.array(v, float) for v in zip(*pts))
    S = max(total_steps(spec), int(steps[-1]))
    lr = np.interp(np.arange(S + 1, dtype=float), steps, lrs)
    lr[0] = 0.0
    return Schedule(lr, f"logged learning rates of {path}", int(steps[int(np.argmax(lrs))]))


def run_schedule(spec: RunSpec) -> Schedule | str:
    """The run's schedule (module docstring), or why it is not known."""
    if spec.schedule is not None:
        return from_manifest(spec, spec.schedule)
    if isinstance(spec.checkpoints, Path) and spec.checkpoints.is_dir():
        path = trainer_state(spec.checkpoints)
        if path is not None:
            return from_trainer_state(spec, path)
    return (f"run {spec.name}: no learning-rate schedule is known (no `schedule:` in the "
            "manifest, no trainer_state.json with logged learning rates)")
