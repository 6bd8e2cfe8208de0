"""Curriculum reweighting from learning times.

- :mod:`.weights`: per-phase weights from fitted sigmoids, their export and alignment;
- :mod:`.sampling`: applying them in a training loop (a sampler, a weighted loss);
- :mod:`.trial`: the controlled test of a curriculum against uniform sampling and its controls.
"""

from spectrum.curriculum.sampling import PhaseSampler, weighted_token_loss
from spectrum.curriculum.weights import CurriculumWeights

__all__ = ["CurriculumWeights", "PhaseSampler", "weighted_token_loss"]
