"""Planted worlds with the noise of real training runs, for the evidence and stepwise tests.

A world is a scaling suite of runs at (M, D, seed) points; every token of every run has a loss at
each checkpoint of a log-spaced grid over the run's own length. The noiseless curves follow one
of three laws, the same planted laws as the noise-free worlds of :mod:`tests.synthetic`:

- ``step``: each token a sigmoid in ln T whose tau and lo move with ln M and ln D;
- ``smooth``: each token a power-law decline in T whose level moves with ln M and ln D (no
  stepwise learning anywhere: the null of the stepwise test);
- ``other_law``: the step world, but the held-out runs follow the opposite laws in ln M and ln D
  (what the fit runs teach does not hold there).

Noise, as measured on real runs:

- per run, a curve over its checkpoints added to every token of the run: a stationary AR(1) in
  checkpoint order (``run_rho``, ``run_sd``), the sum of a *seed component* shared by every run
  with that seed (the same values at the same checkpoint index: a seed's initialisation and data
  order) and a part of the run's own; ``seed_share`` of the variance is the seed's;
- per token, residuals that are AR(1) in checkpoint order (``token_rho``, ``token_sd``);
- per token and run, a small jitter of tau (``tau_sd``).

Every run has the same number of checkpoints, so checkpoint k of runs of one seed shares the
seed's value at k (for runs of one D that is the same step). :func:`planted_world` returns the
arrays and the planted truth; :func:`write_world` writes them as loss shards with a manifest
(``seed:`` per run) for ``spectrum fit`` and ``spectrum report``. :func:`null_runs` draws the
smooth world's runs on any checkpoint grid (the null on which the stepwise rule is calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from spectrum.layout import loss_shard
from spectrum.store import write_parquet
from tests.synthetic import (SCALES, SIZES, TOKENS_PER_STEP, WORLD_D0, WORLD_LO_D, WORLD_LO_M,
                             WORLD_M0, token_truth, world_truth)

WORLDS = ("step", "smooth", "other_law")
TOKEN_COLUMNS = ("token_idx", "seq_id", "pos", "target_id", "doc_id", "target_freq", "word_start")


@dataclass(frozen=True)
class PlantedRun:
    name: str
    params: float  # M
    tokens: float  # D
    role: str  # fit | heldout
    seed: int

    @property
    def point(self) -> tuple[float, float]:
        return (self.params, self.tokens)


def planted_suite(heldout_seeds: tuple[int, ...] = (1, 2, 3, 4),
                  fit_seed: int = 0) -> tuple[PlantedRun, ...]:
    """Fit runs m1, m2, m4 at every D on ``fit_seed``; held out, m3 (interpolation) and m5
    (extrapolation) at every D on each of ``heldout_seeds`` (seeds no fit run uses), so the
    runs of a dL/dlnM or dL/dlnD pair at the held-out points are paired by seed."""
    if fit_seed in heldout_seeds:
        raise ValueError("held-out runs use seeds that no fit run uses")
    fit = [PlantedRun(f"{m}-{d}", SIZES[m], SCALES[d], "fit", fit_seed)
           for m in ("m1", "m2", "m4") for d in SCALES]
    held = [PlantedRun(f"{m}-{d}-s{s}", SIZES[m], SCALES[d], "heldout", s)
            for m in ("m3", "m5") for d in SCALES for s in heldout_seeds]
    return tuple(fit + held)


@dataclass(frozen=True)
class NoiseSpec:
    run_sd: float = 0.04  # nats: the run-level curve's marginal sd
    run_rho: float = 0.4  # its lag-1 autocorrelation in checkpoint order
    seed_share: float = 0.5  # the share of its variance that the runs of one seed share
    token_sd: float = 0.05  # nats: per-token residuals
    token_rho: float = 0.3
    tau_sd: float = 0.03  # per-token, per-run jitter of the learning time (ln tokens)


@dataclass
class PlantedWorld:
    """Every run's arrays, by run name: ``losses`` and ``clean`` (N tokens, K checkpoints),
    ``run_noise`` (K,), ``steps`` and ``x = ln(step * tokens_per_step)`` (K,); ``seed_noise``
    (K,) by seed; ``tau`` (N,) by run (the step laws' learning times; None for ``smooth``);
    ``truth``: the per-token laws; ``annotations``: the evaluation set's token table."""

    world: str
    runs: tuple[PlantedRun, ...]
    noise: NoiseSpec
    annotations: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    steps: dict[str, np.ndarray] = field(default_factory=dict)
    x: dict[str, np.ndarray] = field(default_factory=dict)
    clean: dict[str, np.ndarray] = field(default_factory=dict)
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    run_noise: dict[str, np.ndarray] = field(default_factory=dict)
    seed_noise: dict[int, np.ndarray] = field(default_factory=dict)
    tau: dict[str, np.ndarray | None] = field(default_factory=dict)

    def run(self, name: str) -> PlantedRun:
        return next(r for r in self.runs if r.name == name)

    def replicas(self, role: str = "heldout") -> dict[tuple[float, float], dict[int, str]]:
        """The runs of ``role`` by point (M, D), then by seed."""
        out: dict[tuple[float, float], dict[int, str]] = {}
        for r in self.runs:
            if r.role == role:
                out.setdefault(r.point, {})[r.seed] = r.name
        return out


def ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float, sd: float) -> np.ndarray:
    """Stationary Gaussian AR(1) series along the last axis: marginal sd ``sd``, lag-1
    autocorrelation ``rho``."""
    z = rng.standard_normal(shape)
    out = np.empty(shape)
    out[..., 0] = z[..., 0]
    innovation = np.sqrt(1.0 - rho ** 2)
    for k in range(1, shape[-1]):
        out[..., k] = rho * out[..., k - 1] + innovation * z[..., k]
    return sd * out


def checkpoint_steps(tokens: float, n_steps: int) -> np.ndarray:
    """``n_steps`` distinct steps, log-spaced from 1 to the run's last step (D / tokens per
    step); where rounding would repeat a step, the next one is taken."""
    grid = np.round(np.geomspace(1.0, tokens / TOKENS_PER_STEP, n_steps)).astype(np.int64)
    for k in range(1, n_steps):
        grid[k] = max(grid[k], grid[k - 1] + 1)
    return grid


def clean_curves(law: str, truth: dict[str, np.ndarray], run: PlantedRun, x: np.ndarray,
                 tau_jitter: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, K) noiseless losses of every token of ``run`` under ``law``, and the tokens' tau
    (None for ``smooth``). ``other_law`` reverses the laws at held-out runs only."""
    if law not in WORLDS:
        raise ValueError(f"unknown world {law!r} (one of {', '.join(WORLDS)})")
    dm, dd = np.log(run.params) - WORLD_M0, np.log(run.tokens) - WORLD_D0
    sign = -1.0 if (law == "other_law" and run.role == "heldout") else 1.0
    lo = truth["lo"] + sign * (WORLD_LO_M * dm + WORLD_LO_D * dd)
    if law == "smooth":
        decline = np.exp(-truth["beta"][:, None] * (x[None, :] - np.log(1000.0)))
        return lo[:, None] + truth["amp"][:, None] * decline, None
    tau = truth["tau"] + sign * (truth["tau_m"] * dm + truth["tau_d"] * dd) + tau_jitter
    z = np.clip(truth["k"][:, None] * (x[None, :] - tau[:, None]), -60, 60)
    return lo[:, None] + truth["delta"][:, None] / (1.0 + np.exp(z)), tau


def planted_world(world: str = "step", *, runs: tuple[PlantedRun, ...] | None = None,
                  noise: NoiseSpec = NoiseSpec(), n_seq: int = 16, context: int = 32,
                  n_steps: int = 16, seed: int = 0) -> PlantedWorld:
    """A planted world with run-level and token-level noise (see the module's docstring)."""
    runs = planted_suite() if runs is None else runs
    annotations = token_truth(n_seq, context, seed)
    n = n_seq * context
    w = PlantedWorld(world, tuple(runs), noise, {c: annotations[c] for c in TOKEN_COLUMNS},
                     world_truth(n, seed))
    rng = np.random.default_rng([seed, 7])
    for s in sorted({r.seed for r in runs}):
        w.seed_noise[s] = ar1(rng, (n_steps,), noise.run_rho,
                              noise.run_sd * np.sqrt(noise.seed_share))
    for r in runs:
        steps = checkpoint_steps(r.tokens, n_steps)
        x = np.log(steps * float(TOKENS_PER_STEP))
        own = ar1(rng, (n_steps,), noise.run_rho, noise.run_sd * np.sqrt(1 - noise.seed_share))
        clean, tau = clean_curves(world, w.truth, r, x, rng.normal(0.0, noise.tau_sd, n))
        w.steps[r.name], w.x[r.name], w.clean[r.name], w.tau[r.name] = steps, x, clean, tau
        w.run_noise[r.name] = w.seed_noise[r.seed] + own
        residual = ar1(rng, (n, n_steps), noise.token_rho, noise.token_sd)
        w.losses[r.name] = clean + w.run_noise[r.name][None, :] + residual
    return w


def null_runs(x: np.ndarray, n_runs: int, n_tokens: int, *, noise: NoiseSpec = NoiseSpec(),
              seed: int = 0) -> np.ndarray:
    """(n_runs, n_tokens, K) losses of the ``smooth`` law (no step anywhere) on the grid ``x``
    (ln T, K points) with this module's noise: per run, one AR(1) curve over the checkpoints
    (``run_sd``, ``run_rho``) added to every token of the run, and per token AR(1) residuals
    (``token_sd``, ``token_rho``). Each run draws its own tokens from :func:`world_truth`. The
    null of the stepwise test, on any checkpoint grid."""
    x = np.asarray(x, float)
    rng = np.random.default_rng([seed, 11])
    run = PlantedRun("null", float(np.exp(WORLD_M0)), float(np.exp(WORLD_D0)), "fit", seed)
    out = np.empty((n_runs, n_tokens, len(x)))
    for i in range(n_runs):
        clean, _ = clean_curves("smooth", world_truth(n_tokens, seed * 100_003 + i), run, x)
        shared = ar1(rng, (len(x),), noise.run_rho, noise.run_sd)
        out[i] = clean + shared[None, :] + ar1(rng, (n_tokens, len(x)), noise.token_rho,
                                               noise.token_sd)
    return out


def write_world(w: PlantedWorld, root: Path, *, warmup_steps: int = 2,
                schedule: dict | None = None) -> Path:
    """Write the evaluation set's token table, every run's loss shards (one per checkpoint,
    with provenance) and ``checkpoints.yaml`` (``seed:`` per run, and ``schedule:`` when given)
    under ``root``; returns the manifest's path (its ``out`` is ``root/artifacts``)."""
    root = Path(root)
    out = root / "artifacts"
    write_parquet(pa.table(w.annotations), out / "evalset" / "tokens.parquet")
    token_idx = pa.array(w.annotations["token_idx"], pa.int64())
    entries = []
    for r in w.runs:
        for j, step in enumerate(w.steps[r.name]):
            table = pa.table({"token_idx": token_idx,
                              "loss": pa.array(w.losses[r.name][:, j], pa.float32())})
            write_parquet(table, loss_shard(out, r.name, int(step)),
                          {"run": r.name, "step": int(step),
                           "tokens": int(step) * TOKENS_PER_STEP,
                           "checkpoint_hash": f"planted-{w.world}-{r.name}-{step}",
                           "evalset_hash": "planted"})
        entries.append({"name": r.name, "params": r.params, "tokens": r.tokens,
                        "tokens_per_step": TOKENS_PER_STEP, "role": r.role, "seed": r.seed,
                        "warmup_steps": warmup_steps, "checkpoints": f"runs/{r.name}",
                        **({"schedule": schedule} if schedule else {})})
    n_seq = int(w.annotations["seq_id"].max()) + 1
    context = int(w.annotations["token_idx"].size // n_seq)
    path = root / "checkpoints.yaml"
    path.write_text(yaml.safe_dump({"out": "artifacts",
                                    "evalset": {"sequences": n_seq, "context": context},
                                    "runs": entries}, sort_keys=False))
    return path
