"""Pilot of the built-in suite's design: how much of each held-out target is seed noise.

For a manifest whose runs are trained by ``spectrum suite``, this trains what is missing, draws
the evalset, evaluates every checkpoint (``spectrum losses --executor local``), and prints, per
derivative target, the noise and signal variances and their ratio ``snr`` with the report's rule:
with n seed replicas of a point, ``noise_var`` is one replica's variance around its point's mean
(pooled over targets), ``signal_var`` is the variance of the replica means across targets minus
``noise_var / n``, and ``snr = signal_var / (noise_var / n)``.

Targets (each measured on the mean evalset loss of a run at a checkpoint; only points with at
least two seed replicas count, and replicas pair by seed across the runs of a pair):

- ``dL/dlnT`` at several spans: finite differences in ln T between scored checkpoints (after the
  warmup) that are ``span`` grid steps apart, on the sub-grid of every ``span``-th checkpoint
  counted back from the last (span 1: neighbouring checkpoints; with 4 checkpoints per doubling,
  span 2 is half a doubling, as a suite with 2 checkpoints per doubling would give);
- ``dL/dlnM``: between neighbouring sizes at one data scale (same tokens per step), at the scored
  checkpoints both have (at the same spans as dL/dlnT: every span-th of them), over d ln M;
- ``dL/dlnD``: between neighbouring data scales of one size, end-of-run losses, over d ln D.

Beside each snr: its range over the subsets that leave one seed out (scaled to n). Also
printed: the seed SD of each point's end-of-run loss, and the cost of each stage (training
CPU-seconds from ``suite_summary.json``, wall seconds of evalset and losses here).

    # a pilot manifest (SETTINGS below; the pilots used --evalset-sequences 64), one shared
    # tokenizer cache for all pilots
    python benchmarks/pilot_suite.py write /tmp/pilot-lr3e-3 --setting lr3e-3 --data /tmp/pilot-data
    python benchmarks/pilot_suite.py measure /tmp/pilot-lr3e-3/pilot.yaml     # train, evaluate, print
    python benchmarks/pilot_suite.py measure /tmp/pilot-lr3e-3/pilot.yaml --no-run --runs w96
    python benchmarks/pilot_suite.py measure checkpoints.yaml --role heldout

``measure --json FILE`` also writes the table. The settings of ``write`` are the pilots recorded
in benchmarks/RESULTS.md ("Pilot: the default suite's design"); the two-D settings hold the
one-D pilots' runs (same names and configuration), so a folder written for both trains only
the new data scale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Pilot settings: the shared hyperparameters and the grid of (size, D, seeds) they are tried on.
# Seeds 1-4: replicas on seeds no fit run of the default suite uses.
WIDTHS = {"w16": (16, 2), "w24": (24, 2), "w32": (32, 2), "w48": (48, 2), "w64": (64, 2),
          "w96": (96, 4), "w128": (128, 4)}
# the pilot of the learning rate and batch: two widths at one data scale, four seeds
PAIR = dict(sizes=("w32", "w96"), tokens=(262144,), seeds=(1, 2, 3, 4))
SETTINGS: dict[str, dict] = {
    # today's default: peak lr 1e-2, 1024 tokens per step, warmup 16
    "today": dict(learning_rate=1.0e-2, tokens_per_step=1024, warmup_steps=16, **PAIR),
    "lr3e-3": dict(learning_rate=3.0e-3, tokens_per_step=1024, warmup_steps=16, **PAIR),
    "b4096": dict(learning_rate=1.0e-2, tokens_per_step=4096, warmup_steps=4, **PAIR),
    "b4096-lr3e-3": dict(learning_rate=3.0e-3, tokens_per_step=4096, warmup_steps=4, **PAIR),
    "lr5e-3": dict(learning_rate=5.0e-3, tokens_per_step=1024, warmup_steps=16, **PAIR),
    "b2048": dict(learning_rate=1.0e-2, tokens_per_step=2048, warmup_steps=8, **PAIR),
    # the held-out structure of a design: two data scales, so dL/dlnD too
    "lr3e-3-two-d": dict(learning_rate=3.0e-3, tokens_per_step=1024, warmup_steps=16,
                         sizes=("w32", "w64", "w96"), tokens=(131072, 262144), seeds=(1, 2, 3, 4)),
    "lr5e-3-two-d": dict(learning_rate=5.0e-3, tokens_per_step=1024, warmup_steps=16,
                         sizes=("w32", "w96"), tokens=(131072, 262144), seeds=(1, 2, 3, 4)),
}


# --- writing a pilot manifest -------------------------------------------------------------------

def non_embedding_params(width: int, heads: int) -> int:
    from spectrum.suite.config import ModelSize, non_embedding_params as count

    return count(ModelSize("x", width, 2, heads, 4 * width))


def write_manifest(folder: Path, setting: str, *, data: Path | None, evalset_sequences: int,
                   checkpoints_per_doubling: int) -> Path:
    """A manifest of the setting's runs (all held out, seeds as replicas) in ``folder``."""
    import yaml

    s = SETTINGS[setting]
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:  # share the tokenizer and token cache between pilots
        data.mkdir(parents=True, exist_ok=True)
        (folder / "runs").mkdir(exist_ok=True)
        link = folder / "runs" / "data"
        if not link.exists():
            link.symlink_to(data.resolve(), target_is_directory=True)
    sizes = {n: {"width": WIDTHS[n][0], "layers": 2, "heads": WIDTHS[n][1]} for n in s["sizes"]}
    runs = []
    for n in s["sizes"]:
        params = non_embedding_params(*WIDTHS[n])
        for d in s["tokens"]:
            for seed in s["seeds"]:
                name = f"{n}-{d // 1024}k-s{seed}"
                runs.append({"name": name, "params": params, "tokens": d,
                             "tokens_per_step": s["tokens_per_step"],
                             "warmup_steps": s["warmup_steps"], "role": "heldout",
                             "checkpoints": f"runs/{name}", "train": {"size": n, "seed": seed}})
    manifest = {
        "out": "artifacts",
        "evalset": {"corpus": {"kind": "python-stdlib"}, "split": "validation", "tokenizer": None,
                    "sequences": evalset_sequences, "context": 128, "seed": 0},
        "suite": {"root": "runs", "vocab_size": 1024, "context": 128,
                  "learning_rate": s["learning_rate"], "min_lr_ratio": 0.1,
                  "warmup_steps": s["warmup_steps"], "weight_decay": 0.1, "betas": [0.9, 0.95],
                  "grad_clip": 1.0, "checkpoints_per_doubling": checkpoints_per_doubling,
                  "eval_sequences": 64, "sizes": sizes},
        "runs": runs,
    }
    path = folder / "pilot.yaml"
    path.write_text(f"# pilot setting {setting} (benchmarks/pilot_suite.py)\n"
                    + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=120))
    return path


# --- running the stages -------------------------------------------------------------------------

def stage(name: str, manifest: Path, *extra: str) -> float:
    """Run ``spectrum <name>`` on the manifest; its wall seconds."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", name, "--config", str(manifest), *extra],
                   check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


# --- the measurement ----------------------------------------------------------------------------

@dataclass
class Run:
    name: str
    M: float
    D: float
    tps: int
    warmup: int
    seed: int
    steps: np.ndarray  # checkpoint steps, ascending
    loss: np.ndarray  # mean evalset loss at each step

    @property
    def scored(self) -> np.ndarray:
        return self.steps > self.warmup


def load_runs(manifest_path: Path, role: str | None, pattern: str | None = None) -> list[Run]:
    import re

    import polars as pl

    from spectrum.layout import losses_dir
    from spectrum.manifest import load_manifest

    m = load_manifest(manifest_path)
    df = (pl.scan_parquet(str(losses_dir(m.out) / "**" / "*.parquet"), hive_partitioning=True)
          .group_by("run", "step").agg(pl.col("loss").mean()).collect())
    out = []
    for r in m.runs:
        if (role is not None and r.role != role) or (pattern and not re.search(pattern, r.name)):
            continue
        d = df.filter(pl.col("run") == r.name).sort("step")
        if d.height == 0:
            continue
        out.append(Run(r.name, r.params, r.tokens, r.tokens_per_step, r.warmup_steps,
                       r.seed if r.seed is not None else 0, d["step"].to_numpy(),
                       d["loss"].to_numpy().astype(float)))
    return out


def points(runs: list[Run]) -> dict[tuple, dict[int, Run]]:
    """(M, D, tokens per step) -> {seed: run}."""
    out: dict[tuple, dict[int, Run]] = {}
    for r in runs:
        out.setdefault((r.M, r.D, r.tps), {})[r.seed] = r
    return out


def subgrid(steps: np.ndarray, span: int) -> np.ndarray:
    """Indices of every ``span``-th of ``steps``, counted back from the last."""
    return np.arange(len(steps) - 1, -1, -span)[::-1]


def snr_of(matrix: np.ndarray) -> dict:
    """The report's rule on a (targets, seeds) matrix of measured values."""
    n = matrix.shape[1]
    means = matrix.mean(axis=1)
    noise = ((matrix - means[:, None]) ** 2).sum() / (matrix.shape[0] * (n - 1))
    signal = means.var(ddof=1) - noise / n
    return {"targets": matrix.shape[0], "replicas": n, "noise_var": noise, "signal_var": signal,
            "snr": signal / (noise / n), "snr_one_seed": signal / noise}


def snr(values: list[dict[int, float]]) -> dict:
    """:func:`snr_of` on targets given as {seed: value}, on the seeds every target has, and its
    range over the subsets that leave one seed out (each scaled to all n seeds: the spread of
    the estimate over seeds; a percentile bootstrap of seeds would understate the noise, since a
    resample repeats seeds)."""
    seeds = sorted(set.intersection(*(set(v) for v in values))) if values else []
    if len(values) < 2 or len(seeds) < 2:
        return {"targets": len(values), "snr": None}
    matrix = np.array([[v[s] for s in seeds] for v in values])
    out = snr_of(matrix)
    if len(seeds) >= 3:
        n = len(seeds)
        loo = [snr_of(np.delete(matrix, j, axis=1))["snr_one_seed"] * n for j in range(n)]
        out["snr_leave_one_seed_out"] = [float(min(loo)), float(max(loo))]
    return out


def dT_targets(pts: dict, span: int) -> list[dict[int, float]]:
    out = []
    for reps in pts.values():
        first = next(iter(reps.values()))
        same = {s: r for s, r in reps.items() if np.array_equal(r.steps, first.steps)}
        sc = np.flatnonzero(first.scored)
        idx = sc[subgrid(first.steps[sc], span)]
        x = np.log(first.steps[idx] * first.tps)
        for k in range(len(idx) - 1):
            out.append({s: (r.loss[idx[k + 1]] - r.loss[idx[k]]) / (x[k + 1] - x[k])
                        for s, r in same.items()})
    return out


def dM_targets(pts: dict, span: int) -> list[dict[int, float]]:
    by_d: dict[tuple, list] = {}
    for (M, D, tps), reps in pts.items():
        by_d.setdefault((D, tps), []).append((M, reps))
    out = []
    for group in by_d.values():
        group.sort(key=lambda g: g[0])
        for (Ma, ra), (Mb, rb) in zip(group[:-1], group[1:]):
            a, b = next(iter(ra.values())), next(iter(rb.values()))
            common = np.intersect1d(a.steps[a.scored], b.steps[b.scored])
            common = common[subgrid(common, span)]
            ja, jb = np.searchsorted(a.steps, common), np.searchsorted(b.steps, common)
            seeds = sorted(set(ra) & set(rb))
            d = math.log(Mb / Ma)
            for k in range(len(common)):
                out.append({s: (rb[s].loss[jb[k]] - ra[s].loss[ja[k]]) / d for s in seeds})
    return out


def dD_targets(pts: dict) -> list[dict[int, float]]:
    by_m: dict[tuple, list] = {}
    for (M, D, tps), reps in pts.items():
        by_m.setdefault((M, tps), []).append((D, reps))
    out = []
    for group in by_m.values():
        group.sort(key=lambda g: g[0])
        for (Da, ra), (Db, rb) in zip(group[:-1], group[1:]):
            seeds = sorted(set(ra) & set(rb))
            d = math.log(Db / Da)
            out.append({s: (rb[s].loss[-1] - ra[s].loss[-1]) / d for s in seeds})
    return out


def measure(runs: list[Run], spans: tuple[int, ...]) -> dict:
    pts = {k: v for k, v in points(runs).items() if len(v) >= 2}
    table = {}
    for span in spans:
        table[f"dL/dlnT span {span}"] = snr(dT_targets(pts, span))
    for span in spans:
        table[f"dL/dlnM span {span}"] = snr(dM_targets(pts, span))
    table["dL/dlnD end of run"] = snr(dD_targets(pts))
    ends = {f"M={M:g} D={D:g} tps={tps}": {
        "mean": float(np.mean([r.loss[-1] for r in reps.values()])),
        "seed_sd": float(np.std([r.loss[-1] for r in reps.values()], ddof=1)),
        "seeds": len(reps)} for (M, D, tps), reps in pts.items()}
    return {"targets": table, "end_of_run": ends}


def print_table(result: dict, costs: dict) -> None:
    print(f"{'target':<22} {'n':>4} {'targets':>7} {'noise_var':>10} {'signal_var':>10} "
          f"{'snr':>7} {'leave 1 seed out':>17} {'snr 1 seed':>10}")
    for name, t in result["targets"].items():
        if t.get("snr") is None:
            print(f"{name:<22} {'-':>4} {t['targets']:>7}  (fewer than 2 targets with replicas)")
            continue
        print(f"{name:<22} {t['replicas']:>4.0f} {t['targets']:>7} {t['noise_var']:>10.2e} "
              f"{t['signal_var']:>10.2e} {t['snr']:>7.2f} "
              f"{'[%.1f, %.1f]' % tuple(t.get('snr_leave_one_seed_out', (np.nan, np.nan))):>17} {t['snr_one_seed']:>10.2f}")
    print("\nend-of-run loss per point: mean, seed SD (seeds)")
    for k, e in result["end_of_run"].items():
        print(f"  {k:<40} {e['mean']:.3f}  sd {e['seed_sd']:.3f}  ({e['seeds']})")
    print("\ncosts:", json.dumps(costs))


def training_costs(manifest_path: Path) -> dict:
    from spectrum.manifest import load_manifest
    from spectrum.suite.config import plan_suite

    plan = plan_suite(load_manifest(manifest_path))
    if plan is None:
        return {}
    path = plan.config.root / "suite_summary.json"
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    cpu = {n: r.get("cpu_seconds") for n, r in s["runs"].items()}
    known = [v for v in cpu.values() if v is not None]
    return {"train_cpu_seconds": round(sum(known), 1), "train_wall_seconds": s.get("wall_seconds"),
            "train_cpu_seconds_per_run": cpu}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a pilot manifest")
    w.add_argument("folder", type=Path)
    w.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    w.add_argument("--data", type=Path, help="a shared folder for the suite's tokenizer and token cache")
    w.add_argument("--evalset-sequences", type=int, default=256)
    w.add_argument("--checkpoints-per-doubling", type=int, default=4)
    m = sub.add_parser("measure", help="train what is missing, evaluate, print the snr table")
    m.add_argument("manifest", type=Path)
    m.add_argument("--role", choices=("fit", "heldout"), help="only runs of this role")
    m.add_argument("--runs", help="only runs whose name matches this regular expression")
    m.add_argument("--spans", default="1,2,4", help="derivative spans in grid steps")
    m.add_argument("--no-run", action="store_true", help="only read the loss shards already there")
    m.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "write":
        print(write_manifest(a.folder, a.setting, data=a.data, evalset_sequences=a.evalset_sequences,
                             checkpoints_per_doubling=a.checkpoints_per_doubling))
        return
    sys.path.insert(0, str(ROOT))
    manifest = a.manifest.resolve()
    costs: dict = {}
    if not a.no_run:
        costs["suite_wall_seconds"] = round(stage("suite", manifest), 1)
        costs["evalset_wall_seconds"] = round(stage("evalset", manifest), 1)
        costs["losses_wall_seconds"] = round(stage("losses", manifest, "--executor", "local"), 1)
    costs |= training_costs(manifest)
    result = measure(load_runs(manifest, a.role, a.runs), tuple(int(s) for s in a.spans.split(",")))
    print_table(result, {k: v for k, v in costs.items() if k != "train_cpu_seconds_per_run"})
    if a.json:
        a.json.write_text(json.dumps(result | {"costs": costs}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
