"""Sigmoid fits of per-token loss trajectories.

- :mod:`.model`: the sigmoid in ln T, its Jacobian, normal equations and the initial guess;
- :mod:`.solver`: the batched Levenberg-Marquardt solver in torch (:func:`fit_sigmoids`);
- :mod:`.triton_kernel`: the same iterations as one fused Triton kernel for CUDA;
- :mod:`.kinds`: what a fitted trajectory is (learned, flat, forgotten, ...).
"""

from spectrum.fit.kinds import KINDS, KindThresholds, classify
from spectrum.fit.solver import STATUSES, FitOptions, SigmoidFit, fit_sigmoids, solver_name

__all__ = ["KINDS", "STATUSES", "FitOptions", "KindThresholds", "SigmoidFit", "classify",
           "fit_sigmoids", "solver_name"]
