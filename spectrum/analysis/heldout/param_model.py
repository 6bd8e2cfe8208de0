"""How each token's sigmoid moves with model size and data scale.

For every token ``i`` and each of its sigmoid parameters ``q`` in (``lo``, ``hi``, ``tau``,
``ln k``), the model is linear in the run's ``ln M`` and ``ln D``:

    q_i(M, D) = b0_i + bM_i * (ln M - c_M) + bD_i * (ln D - c_D)

fitted on the ``fit`` runs only, by weighted least squares with shrinkage: each token's
coefficients are pulled towards the population's (one pooled regression over all tokens) with
penalty ``ridge`` on the slopes and ``ridge_intercept`` on the intercept. A token observed in few
runs, or with a noisy midpoint, thus borrows the population's dependence; a token never observed
falls back to it.

What counts as an observation, and how much (kinds are handled explicitly):

- a plateau is observed only if the run's checkpoints reach it: ``hi`` only where ``tau`` is not
  before the first checkpoint, ``lo`` only where ``tau`` is not past the last one (outside the
  measured range a fitted plateau is an extrapolation and can be anything);
- ``tau`` and ``ln k`` only where the token's kind is one a sigmoid step describes
  (``step_kinds``, default learned, forgotten, unfinished); elsewhere a token's midpoint carries no
  information. ``lo`` and ``hi`` of ``flat`` and ``nonmonotone`` tokens count (the level is still
  the least-squares level);
- each observation is weighted ``s0^2 / (se^2 + s0^2)`` from the fit's standard error ``se``
  (floors ``s0``: 0.05 nats for lo and hi, 0.1 for tau, 0.1 for ln k), so a parameter the fit
  barely constrains hardly counts; without standard errors every weight is 1.
An axis (M or D) enters only if the fit runs take at least two values on it; predicting a run off
the fit runs' single value on an absent axis is refused (:class:`SpectrumError`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectrum.errors import SpectrumError
from spectrum.fit.kinds import STEP_KINDS

QUANTITIES = ("lo", "hi", "tau", "logk")
SE_FLOOR = {"lo": 0.05, "hi": 0.05, "tau": 0.1, "logk": 0.1}


@dataclass(frozen=True)
class RunParams:
    """One run's per-token fits, aligned on token_idx 0..N-1."""

    name: str
    lnM: float
    lnD: float
    lo: np.ndarray
    hi: np.ndarray
    tau: np.ndarray
    k: np.ndarray
    kind: np.ndarray  # str
    x_first: float = -np.inf  # ln T of the run's first checkpoint (T > 0)
    x_last: float = np.inf  # ... and of its last
    se: dict[str, np.ndarray] | None = None  # standard errors of lo, hi, tau, k (optional)


@dataclass(frozen=True)
class ParamModel:
    axes: tuple[str, ...]  # subset of ("lnM", "lnD") that vary across the fit runs
    center: dict[str, float]
    fixed_values: dict[str, float]  # value of an absent axis (the fit runs' only value)
    coef: dict[str, np.ndarray]  # quantity -> (N, 1 + len(axes))
    population: dict[str, np.ndarray]  # quantity -> (1 + len(axes),)
    k_range: tuple[float, float]
    n_obs: dict[str, np.ndarray]  # quantity -> (N,) observations per token

    def _design(self, lnM: float, lnD: float, run: str = "") -> np.ndarray:
        vals = {"lnM": lnM, "lnD": lnD}
        for ax, v in self.fixed_values.items():
            if not np.isclose(vals[ax], v, rtol=0, atol=1e-9):
                what, sym = ("model size", "M") if ax == "lnM" else ("data scale", "D")
                raise SpectrumError(
                    f"run {run or '?'}: the fit runs have one {what} only ({sym} = "
                    f"{np.exp(v):.4g}), so the dependence on {sym} is unknown and a run at "
                    f"{sym} = {np.exp(vals[ax]):.4g} cannot be predicted")
        return np.array([1.0] + [vals[a] - self.center[a] for a in self.axes])

    def predict_quantities(self, lnM: float, lnD: float, run: str = "") -> dict[str, np.ndarray]:
        """Per-token value of every modelled quantity at (ln M, ln D)."""
        x = self._design(lnM, lnD, run)
        return {name: c @ x for name, c in self.coef.items()}

    def predict(self, lnM: float, lnD: float, run: str = "") -> dict[str, np.ndarray]:
        """Per-token ``lo, hi, tau, k`` predicted at (ln M, ln D)."""
        q = self.predict_quantities(lnM, lnD, run)
        k = np.clip(np.exp(q["logk"]), *self.k_range)
        return {"lo": q["lo"], "hi": q["hi"], "tau": q["tau"], "k": k}


def _weights(se: np.ndarray | None, floor: float) -> np.ndarray | float:
    if se is None:
        return 1.0
    se = np.asarray(se, float)
    return np.where(np.isfinite(se), floor ** 2 / (se ** 2 + floor ** 2), 0.0)


def observations(runs: list[RunParams], step_kinds: tuple[str, ...] = STEP_KINDS) -> dict[str, tuple]:
    """(values, weights), each (N, R), per quantity."""
    vals: dict[str, list] = {q: [] for q in QUANTITIES}
    wts: dict[str, list] = {q: [] for q in QUANTITIES}
    for r in runs:
        ok = (np.isfinite(r.lo) & np.isfinite(r.hi) & np.isfinite(r.tau) & np.isfinite(r.k)
              & (r.k > 0))
        step = ok & np.isin(r.kind, step_kinds)
        se = r.se or {}
        with np.errstate(invalid="ignore", divide="ignore"):
            seen = {"lo": ok & (r.tau <= r.x_last), "hi": ok & (r.tau >= r.x_first),
                    "tau": step, "logk": step}
            value = {"lo": r.lo, "hi": r.hi, "tau": r.tau, "logk": np.log(r.k)}
            k_se = se.get("k")
            se_q = {"lo": se.get("lo"), "hi": se.get("hi"), "tau": se.get("tau"),
                    "logk": None if k_se is None else np.asarray(k_se, float) / r.k}
        for q in QUANTITIES:
            w = seen[q] * _weights(se_q[q], SE_FLOOR[q])
            vals[q].append(np.where(w > 0, value[q], 0.0))
            wts[q].append(np.asarray(w, float) * np.ones(len(r.lo)))
    return {q: (np.stack(vals[q], 1), np.stack(wts[q], 1)) for q in QUANTITIES}


@dataclass(frozen=True)
class Design:
    """The regressors of a set of runs: 1 and the centred axes that vary among them."""

    axes: tuple[str, ...]
    center: dict[str, float]
    fixed: dict[str, float]
    X: np.ndarray  # (R, p)


def design(lnM: np.ndarray, lnD: np.ndarray) -> Design:
    lnM, lnD = np.asarray(lnM, float), np.asarray(lnD, float)
    axes, center, fixed = [], {}, {}
    for name, v in (("lnM", lnM), ("lnD", lnD)):
        if np.ptp(v) > 1e-9:
            axes.append(name)
            center[name] = float(v.mean())
        else:
            fixed[name] = float(v[0])
    X = np.stack([np.ones_like(lnM)] + [{"lnM": lnM, "lnD": lnD}[a] - center[a] for a in axes], 1)
    return Design(tuple(axes), center, fixed, X)


def penalty(p: int, ridge: float, ridge_intercept: float) -> np.ndarray:
    return np.diag([ridge_intercept] + [ridge] * (p - 1))


def population_beta(X: np.ndarray, sw: np.ndarray, swy: np.ndarray) -> np.ndarray:
    """The pooled regression over every observation, from each run's summed weights ``sw`` (R,)
    and summed weighted values ``swy`` (R,): the normal equations need nothing more.

    The minimum-norm solution: when the runs do not determine every coefficient (two runs, three
    coefficients), the undetermined direction gets none, so the result does not depend on the
    rounding of the sums (a tiny ridge there would amplify it, and with it the order in which
    token chunks were added)."""
    A_pop = np.einsum("r,rp,rq->pq", sw, X, X)
    b_pop = np.einsum("r,rp->p", swy, X)
    return np.linalg.lstsq(A_pop, b_pop, rcond=1e-10)[0]


def token_coef(X: np.ndarray, y: np.ndarray, w: np.ndarray, pen: np.ndarray,
               beta_pop: np.ndarray) -> np.ndarray:
    """(n, p) per-token coefficients, each shrunk towards ``beta_pop`` (values, weights: (n, R))."""
    Xw = X[None, :, :] * w[:, :, None]  # (n, R, p)
    A = np.einsum("nrp,rq->npq", Xw, X) + pen
    b = np.einsum("nrp,nr->np", Xw, y) + pen @ beta_pop
    return np.linalg.solve(A, b[..., None])[..., 0]


def fit_linear_model(lnM: np.ndarray, lnD: np.ndarray, obs: dict[str, tuple[np.ndarray, np.ndarray]],
                     *, ridge: float = 0.5, ridge_intercept: float = 1e-3,
                     k_range: tuple[float, float] = (np.nan, np.nan)) -> ParamModel:
    """Per-token linear model in (ln M, ln D) of every quantity in ``obs`` (values and weights,
    each tokens x runs), shrunk towards the pooled population regression (module docstring)."""
    d = design(lnM, lnD)
    pen = penalty(d.X.shape[1], ridge, ridge_intercept)
    coef, pop, n_obs = {}, {}, {}
    for q, (y, w) in obs.items():
        pop[q] = population_beta(d.X, w.sum(0), (w * y).sum(0))
        coef[q] = token_coef(d.X, y, w, pen, pop[q])
        n_obs[q] = (w > 0).sum(1).astype(np.int64)
    return ParamModel(axes=d.axes, center=d.center, fixed_values=d.fixed, coef=coef,
                      population=pop, k_range=k_range, n_obs=n_obs)


@dataclass(frozen=True)
class PopulationModel:
    """The per-token linear model of a set of fit runs without its per-token coefficients: those
    are solved chunk by chunk (:meth:`coef`), each token independent of the others."""

    design: Design
    pen: np.ndarray
    population: dict[str, np.ndarray]  # quantity -> (p,)
    k_range: tuple[float, float] = (np.nan, np.nan)

    @classmethod
    def from_sums(cls, lnM: np.ndarray, lnD: np.ndarray, sums: dict[str, tuple[np.ndarray, np.ndarray]],
                  *, ridge: float = 0.5, ridge_intercept: float = 1e-3,
                  k_range: tuple[float, float] = (np.nan, np.nan)) -> "PopulationModel":
        """``sums``: quantity -> (summed weights, summed weighted values), each (R,)."""
        d = design(lnM, lnD)
        pop = {q: population_beta(d.X, sw, swy) for q, (sw, swy) in sums.items()}
        return cls(d, penalty(d.X.shape[1], ridge, ridge_intercept), pop, k_range)

    def model(self, obs: dict[str, tuple[np.ndarray, np.ndarray]]) -> ParamModel:
        """The model of a chunk of tokens (``obs`` as :func:`fit_linear_model`'s)."""
        coef = {q: token_coef(self.design.X, y, w, self.pen, self.population[q])
                for q, (y, w) in obs.items()}
        return ParamModel(axes=self.design.axes, center=self.design.center,
                          fixed_values=self.design.fixed, coef=coef, population=self.population,
                          k_range=self.k_range,
                          n_obs={q: (w > 0).sum(1).astype(np.int64) for q, (_, w) in obs.items()})


def step_k_range(runs: list[RunParams], step_kinds: tuple[str, ...] = STEP_KINDS) -> tuple[float, float] | None:
    """Smallest and largest k of the step kinds' fits (None: none)."""
    ks = np.concatenate([r.k[np.isin(r.kind, step_kinds) & np.isfinite(r.k) & (r.k > 0)]
                         for r in runs]) if runs else np.zeros(0)
    return (float(ks.min()), float(ks.max())) if ks.size else None


def fit_param_model(runs: list[RunParams], *, ridge: float = 0.5, ridge_intercept: float = 1e-3,
                    step_kinds: tuple[str, ...] = STEP_KINDS) -> ParamModel:
    """Fit the per-token linear model on ``runs`` (the fit runs). See the module docstring."""
    if not runs:
        raise SpectrumError("no fit runs to model token parameters on")
    k_range = step_k_range(runs, step_kinds) or (1e-3, 1e3)
    return fit_linear_model(np.array([r.lnM for r in runs]), np.array([r.lnD for r in runs]),
                            observations(runs, step_kinds), ridge=ridge,
                            ridge_intercept=ridge_intercept, k_range=k_range)
