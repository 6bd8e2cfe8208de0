"""Power-law baselines: the smooth scaling laws the spectrum is compared against.

Two forms share one implementation, ``L = E + A * M**-alpha + B * X**-beta``:

- ``X = D`` (the run's training tokens): the Kaplan/Chinchilla law for the model- and data-scale
  axes, fitted to the *final* loss of each ``fit`` run;
- ``X = T`` (tokens seen at a checkpoint): its form for loss curves, fitted to every checkpoint
  (T > 0) of every ``fit`` run.

Fitting is nonlinear least squares (``scipy.optimize.least_squares``) in the parameters
``(E, ln A, alpha, ln B, beta)`` from a small grid of starting exponents; the best fit wins.
Parameters can be held fixed (``fixed={"alpha": 0.3}``), which is how a law is fitted to fewer
distinct points than it has parameters (the exponents are then borrowed from another fit), and how
one run's loss curve is described by ``E + B * T**-beta`` alone (:func:`power_law_in_T`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from spectrum.errors import SpectrumError

POWER_LAW_PARAMS = ("E", "A", "alpha", "B", "beta")


@dataclass(frozen=True)
class PowerLaw:
    """``L(M, X) = E + A * M**-alpha + B * X**-beta`` with its fitted parameters."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    x_name: str = "D"
    rmse: float = float("nan")
    n_points: int = 0
    fixed: dict[str, float] = field(default_factory=dict)

    def __call__(self, M, X) -> np.ndarray:
        M, X = np.asarray(M, float), np.asarray(X, float)
        return self.E + self.A * M ** -self.alpha + self.B * X ** -self.beta

    def dlnM(self, M, X) -> np.ndarray:
        """dL/d ln M (the law does not couple M and X, so X only sets the shape)."""
        M, X = np.broadcast_arrays(np.asarray(M, float), np.asarray(X, float))
        return -self.alpha * self.A * M ** -self.alpha

    def dlnX(self, M, X) -> np.ndarray:
        """dL/d ln X (X = D or T)."""
        M, X = np.broadcast_arrays(np.asarray(M, float), np.asarray(X, float))
        return -self.beta * self.B * X ** -self.beta

    def as_dict(self) -> dict:
        return {"form": f"E + A*M^-alpha + B*{self.x_name}^-beta", "E": self.E, "A": self.A,
                "alpha": self.alpha, "B": self.B, "beta": self.beta, "rmse": self.rmse,
                "n_points": self.n_points, "fixed": dict(self.fixed)}


def _unpack(theta: np.ndarray, free: list[str], fixed: dict[str, float]) -> dict[str, float]:
    vals = dict(fixed)
    for name, v in zip(free, theta):
        vals[name] = float(np.exp(v)) if name in ("A", "B") else float(v)
    return vals


def fit_power_law(M, X, L, *, x_name: str = "D", fixed: dict[str, float] | None = None,
                  starts: tuple[float, ...] = (0.1, 0.3, 0.7),
                  exponent_max: float = 5.0) -> PowerLaw:
    """Least-squares fit of ``E + A*M^-alpha + B*X^-beta`` to points ``(M, X, L)``.

    ``A`` and ``B`` are fitted on a log scale (so they stay positive); exponents are bounded to
    [0, ``exponent_max``] and ``E`` to [0, max L]. Raises :class:`SpectrumError` when there are
    fewer points than free parameters, or no finite point.
    """
    M, X, L = (np.asarray(a, float).ravel() for a in (M, X, L))
    ok = np.isfinite(M) & np.isfinite(X) & np.isfinite(L) & (M > 0) & (X > 0)
    M, X, L = M[ok], X[ok], L[ok]
    fixed = {k: float(v) for k, v in (fixed or {}).items()}
    unknown = set(fixed) - set(POWER_LAW_PARAMS)
    if unknown:
        raise ValueError(f"unknown fixed parameters {sorted(unknown)}")
    free = [p for p in POWER_LAW_PARAMS if p not in fixed]
    n_distinct = len(set(zip(M.tolist(), X.tolist())))
    if n_distinct < len(free):
        raise SpectrumError(f"a power law in M and {x_name} with {len(free)} free parameters "
                            f"needs at least {len(free)} distinct (M, {x_name}) points, "
                            f"got {n_distinct}")
    lnM, lnX = np.log(M), np.log(X)
    lmax = float(L.max())
    lo = {"E": 0.0, "A": -50.0, "alpha": 0.0, "B": -50.0, "beta": 0.0}
    hi = {"E": lmax, "A": 50.0, "alpha": exponent_max, "B": 50.0, "beta": exponent_max}

    def residual(theta: np.ndarray) -> np.ndarray:
        v = _unpack(theta, free, fixed)
        return v["E"] + v["A"] * np.exp(-v["alpha"] * lnM) + v["B"] * np.exp(-v["beta"] * lnX) - L

    def jacobian(theta: np.ndarray) -> np.ndarray:
        v = _unpack(theta, free, fixed)
        tm, tx = v["A"] * np.exp(-v["alpha"] * lnM), v["B"] * np.exp(-v["beta"] * lnX)
        cols = {"E": np.ones_like(L), "A": tm, "alpha": -lnM * tm, "B": tx, "beta": -lnX * tx}
        return np.stack([cols[p] for p in free], 1)

    best = None
    pairs = dict.fromkeys((fixed.get("alpha", a0), fixed.get("beta", b0))
                          for a0, b0 in itertools.product(starts, starts))
    for a0, b0 in pairs:
        e0 = fixed.get("E", 0.5 * float(L.min()))
        al, be = fixed.get("alpha", a0), fixed.get("beta", b0)
        # split the excess over E evenly between the two terms at the median point
        excess = max(float(np.median(L)) - e0, 1e-3)
        guess = {"E": e0, "alpha": al, "beta": be,
                 "A": np.log(excess / 2) + al * float(np.median(lnM)),
                 "B": np.log(excess / 2) + be * float(np.median(lnX))}
        x0 = np.array([np.clip(guess[p], lo[p] + 1e-9, hi[p] - 1e-9) for p in free])
        res = least_squares(residual, x0, jac=jacobian,
                            bounds=([lo[p] for p in free], [hi[p] for p in free]),
                            x_scale="jac", max_nfev=2000)
        if best is None or res.cost < best.cost:
            best = res
    v = _unpack(best.x, free, fixed)
    rmse = float(np.sqrt(2 * best.cost / len(L)))
    return PowerLaw(E=v["E"], A=v["A"], alpha=v["alpha"], B=v["B"], beta=v["beta"],
                    x_name=x_name, rmse=rmse, n_points=len(L), fixed=fixed)


def power_law_in_T(x: np.ndarray, L: np.ndarray) -> PowerLaw | None:
    """``E + B * T**-beta`` fitted to one loss curve ``L`` at ``x = ln T`` (its finite points), or
    None where it cannot be fitted."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    ok = np.isfinite(L)
    try:
        return fit_power_law(np.ones(ok.sum()), np.exp(x[ok]), L[ok], x_name="T",
                             fixed={"A": 0.0, "alpha": 0.0})
    except SpectrumError:
        return None
