"""The targets of the held-out-runs test, measured among held-out runs only.

- ``L``: each held-out run's mean loss at its scored checkpoints (after the warmup);
- ``dL/dlnT``: its finite differences in ln T between neighbouring scored checkpoints;
- ``dL/dlnM``: between two held-out runs of neighbouring model sizes at the same data scale (same
  tokens per step and warmup, so the same schedule), the difference of their losses at matched
  checkpoints over the difference in ln M;
- ``dL/dlnD``: between two held-out runs of one model size at neighbouring data scales, each
  annealed to its own D, the difference of their *end-of-run* losses over the difference in ln D
  (never two schedules compared at matched T).

Seed replicas (runs with identical M, D and tokens per step) form one *point*; its first run in
the manifest order stands for it in the targets, and all of them give the noise ceiling. A target
is an *extrapolation* when a run it is measured from lies outside the fit runs' range in ln M or
ln D, else an *interpolation*. Each target is a function of the runs' curves (run name -> (R, K)
array over bootstrap replicates), so measured and predicted curves go through the same operator
at the same points.

Seed families (:func:`seed_family`): for the seed noise of a target kind, the same targets are
measured once per training seed, row r = seed r. A target built from several runs takes the
same seed from each (replica s of size a with replica s of size b: common random numbers), so a
seed's run-level noise stays in its row. Replicas are told apart by the manifest's per-run
``seed:``; runs without one count as seeds in manifest order within their point (the k-th run
of every point pairs with the k-th of every other), which is a guess the manifest should
replace. Only replicas with the first run's checkpoints enter; a point without a replica of a
seed leaves NaN in that seed's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from spectrum.analysis.runs.curves import finite_difference, midpoints
from spectrum.analysis.runs.run_data import RunData

TARGETS = ("L", "dL/dlnT", "dL/dlnM", "dL/dlnD")
Curves = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Target:
    target: str  # one of TARGETS
    label: str  # the run, or the pair of runs, it is measured on
    regime: str  # interpolation | extrapolation
    x: np.ndarray  # ln T of each value
    runs: tuple[str, ...]  # the held-out runs it is measured from
    build: Callable[[Curves], np.ndarray]  # curves -> (R, n) values


def points(runs: list[RunData]) -> list[list[RunData]]:
    """Runs grouped by their point (:attr:`RunData.point`): seed replicas share a point;
    manifest order."""
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.point, []).append(r)
    return list(groups.values())


def regime(runs: list[RunData], fit: list[RunData]) -> str:
    lnM = np.log([r.M for r in fit])
    lnD = np.log([r.D for r in fit])
    tol = 1e-9
    inside = all(lnM.min() - tol <= np.log(r.M) <= lnM.max() + tol
                 and lnD.min() - tol <= np.log(r.D) <= lnD.max() + tol for r in runs)
    return "interpolation" if inside else "extrapolation"


def run_targets(h: RunData, fit: list[RunData]) -> list[Target]:
    sc = np.flatnonzero(h.scored)
    reg = regime([h], fit)
    out = [Target("L", h.name, reg, h.x[sc], (h.name,), lambda c, n=h.name: c[n][:, sc])]
    if len(sc) >= 2:
        out.append(Target("dL/dlnT", h.name, reg, midpoints(h.x[sc]), (h.name,),
                          lambda c, n=h.name: finite_difference(c[n][:, sc], h.x[sc])))
    return out


def _size_pairs(primaries: list[RunData], fit: list[RunData]) -> list[Target]:
    groups: dict[tuple, list[RunData]] = {}
    for r in primaries:
        groups.setdefault((r.D, r.tokens_per_step, r.warmup_steps), []).append(r)
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.M)
        for a, b in zip(runs[:-1], runs[1:]):
            common = np.intersect1d(a.steps[a.scored], b.steps[b.scored])
            if len(common) == 0:
                continue
            ja, jb = np.searchsorted(a.steps, common), np.searchsorted(b.steps, common)
            dlnM = np.log(b.M) - np.log(a.M)
            out.append(Target("dL/dlnM", f"{a.name} -> {b.name}", regime([a, b], fit), a.x[ja],
                              (a.name, b.name),
                              lambda c, a=a.name, b=b.name, ja=ja, jb=jb, d=dlnM:
                              (c[b][:, jb] - c[a][:, ja]) / d))
    return out


def _data_pairs(primaries: list[RunData], fit: list[RunData]) -> list[Target]:
    groups: dict[tuple, list[RunData]] = {}
    for r in primaries:
        groups.setdefault((r.M, r.tokens_per_step), []).append(r)
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.D)
        for a, b in zip(runs[:-1], runs[1:]):
            dlnD = np.log(b.D) - np.log(a.D)
            out.append(Target("dL/dlnD", f"{a.name} -> {b.name} (end of run)",
                              regime([a, b], fit), np.array([0.5 * (a.x[-1] + b.x[-1])]),
                              (a.name, b.name),
                              lambda c, a=a.name, b=b.name, d=dlnD:
                              (c[b][:, -1:] - c[a][:, -1:]) / d))
    return out


def heldout_targets(held: list[RunData], fit: list[RunData]) -> list[Target]:
    """Every target of the held-out runs (one run per point stands for its replicas)."""
    primaries = [p[0] for p in points(held)]
    out = [t for h in primaries for t in run_targets(h, fit)]
    return out + _size_pairs(primaries, fit) + _data_pairs(primaries, fit)


def replica_pairs(target: Target, held: list[RunData]) -> list[tuple[dict, dict]]:
    """For the noise ceiling: pairs of curve substitutions (measured as, predicted as) that
    replace a replicated point's first run by two different replicas of it."""
    out = []
    for p in points(held):
        first = p[0]
        if first.name not in target.runs or len(p) < 2:
            continue
        same = [r for r in p if np.array_equal(r.steps, first.steps)]
        for i in same:
            for j in same:
                if i.name != j.name:
                    out.append(({first.name: i.name}, {first.name: j.name}))
    return out


SeedKey = tuple[int, int]  # (0, seed) from the manifest; (1, k): the k-th run of its point


def seed_replicas(held: list[RunData]) -> tuple[list[SeedKey], dict[str, dict[SeedKey, str]]]:
    """The seeds of the held-out runs (the rows of a family, ascending) and, for each point's
    first run, the run that measures it on each seed (replicas with its checkpoints only; the
    first run of a seed where a point has two)."""
    replicas: dict[str, dict[SeedKey, str]] = {}
    for p in points(held):
        first = p[0]
        by_seed: dict[SeedKey, str] = {}
        for k, r in enumerate(p):
            if np.array_equal(r.steps, first.steps):
                by_seed.setdefault((0, r.seed) if r.seed is not None else (1, k), r.name)
        replicas[first.name] = by_seed
    seeds = sorted({s for by_seed in replicas.values() for s in by_seed})
    return seeds, replicas


def seed_label(key: SeedKey) -> str:
    return f"seed {key[1]}" if key[0] == 0 else f"replica {key[1] + 1} in manifest order"


def seed_family(targets: list[Target], curves: Curves, held: list[RunData]) -> np.ndarray:
    """(seeds, values, rows of ``curves``): every value of ``targets`` (in order, a target's
    values consecutive) measured on each seed of the held-out runs, NaN where a run of the
    target has no replica of that seed. ``curves``: each held-out run's curve, (rows, K) with
    any leading rows (sequence-bootstrap draws, or per-sequence parts)."""
    seeds, replicas = seed_replicas(held)
    blocks = []
    for t in targets:
        per_seed = []
        for s in seeds:
            names = [replicas.get(run, {}).get(s) for run in t.runs]
            if all(n is not None for n in names):
                per_seed.append(t.build({run: curves[n] for run, n in zip(t.runs, names)}))
            else:
                per_seed.append(None)
        shape = next((v.shape for v in per_seed if v is not None), None)
        if shape is None:
            shape = (next(iter(curves.values())).shape[0], len(t.x))
        blocks.append(np.stack([v if v is not None else np.full(shape, np.nan)
                                for v in per_seed]))  # (seeds, rows, n)
    if not blocks:
        return np.zeros((len(seeds), 0, 0))
    return np.concatenate(blocks, axis=2).transpose(0, 2, 1)
