"""Curriculum reweighting from learning times.

- :mod:`.weights`: per-phase weights from fitted sigmoids, their export and alignment;
- :mod:`.shrinkage`: measured sheds shrunk toward the learnability model by their reliability;
- :mod:`.sampling`: applying them in a training loop (a sampler, a weighted loss);
- :mod:`.trial`: the controlled test of a curriculum against uniform sampling and its controls;
- :mod:`.settings`: the test's settings and arms (no heavy imports: the command line reads them).

``CurriculumWeights``, ``PhaseSampler`` and ``weighted_token_loss`` are imported on first use, so
that importing a light submodule does not load torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {"PhaseSampler": "spectrum.curriculum.sampling",
         "weighted_token_loss": "spectrum.curriculum.sampling",
         "CurriculumWeights": "spectrum.curriculum.weights"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
