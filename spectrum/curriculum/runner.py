"""Training the arms of the controlled curriculum test, and writing its results.

:class:`TrialSettings` holds the test's options; :func:`run_arms` trains every (arm, seed) at the
arms' compute and the uniform arm at the other budgets, each a fresh model on the same pool with
the same optimizer and schedule, its batches drawn by one
:class:`~spectrum.curriculum.sampling.PhaseSampler` whose random numbers depend only on the seed
(so within a seed the arms differ only in their weights). A finished run is stored in
``runs/<arm>[-x<budget>]-seed<seed>.json`` with the fingerprint of the setup and reused when the
same command runs again. :func:`write_results` scores the curves
(:func:`spectrum.curriculum.trial.summarise`) and writes ``results.json``, ``results.md`` and the
figure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from spectrum.curriculum.arms import arm_weights
from spectrum.curriculum.weights import weights_hash
from spectrum.curriculum.settings import ARMS, GIVEN_ARMS, SEED_BASE, TrialSettings  # noqa: F401
from spectrum.curriculum.trial import (FIGURE, RESULTS_JSON, RESULTS_MD, Curve, curve_record,
                                       markdown_table, comparison_table, plot, results_markdown,
                                       summarise)
from spectrum.pool import WorkerContext, run_tasks, worker_count
from spectrum.store import write_json, write_text

log = logging.getLogger(__name__)

def pool_size(split_windows: int, steps: int, batch_size: int, epochs: float) -> int:
    """Training sequences in the pool: what ``steps`` batches consume in ``epochs`` passes,
    capped by the windows the training split holds."""
    return int(min(split_windows, math.ceil(steps * batch_size / epochs)))


def fingerprint(record: dict[str, Any]) -> str:
    """A short hash of everything that determines the runs (a changed setup retrains them)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_schedule(steps: int, n_log: int = 6, n_late: int = 4) -> list[int]:
    """Log-spaced evaluation steps, densified linearly over the second half of training."""
    grid = np.geomspace(1, steps, n_log)
    late = np.linspace(steps / 2, steps, n_late + 1)
    return sorted({0, steps, *np.rint(grid).astype(int).tolist(), *np.rint(late).astype(int).tolist()})


def weights_fingerprint(fingerprint: str, weights: np.ndarray) -> str:
    """The fingerprint of the runs of an arm with weights of its own: the setup's and its weights'."""
    return f"{fingerprint}-{weights_hash(weights)}"


def budget_steps(steps: int, budget: float) -> int:
    return max(1, int(round(steps * budget)))


def run_name(arm: str, seed: int, budget: float = 1.0) -> str:
    return f"{arm}-seed{seed}" if abs(budget - 1) < 1e-9 else f"{arm}-x{budget:g}-seed{seed}"


def run_record(test_dir: Path, arm: str, seed: int, budget: float = 1.0) -> Path:
    """The record of one finished run in the test's folder."""
    return Path(test_dir) / "runs" / f"{run_name(arm, seed, budget)}.json"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _plan(arms: Sequence[str], seed: int, budgets: Sequence[float]) -> list[tuple[str, int, float]]:
    """(arm, seed, budget) of every run of one seed: all arms at budget 1, the uniform arm at
    every other budget."""
    return [(a, seed, 1.0) for a in arms] + [("uniform", seed, b) for b in budgets if abs(b - 1) > 1e-9]


def _trial_state(shared: dict[str, Any]) -> dict[str, Any]:
    """What every training task of a worker shares: the pool, model, schedule and output."""
    return shared


def _train_one(worker: WorkerContext[dict[str, Any]],
               task: tuple[str, int, float, np.ndarray | None]) -> dict[str, Any]:
    """Train one (arm, seed, budget) run with the shared pool, model and schedule."""
    from spectrum.curriculum.sampling import PhaseSampler
    from spectrum.suite import train as st

    arm, seed, budget, w = task
    sh = worker.state
    phases, pool = sh["phases"], sh["pool"]
    steps, tps = phases.target_steps, phases.tokens_per_step
    batch = tps // pool.shape[1]
    if w is not None:
        sampler = PhaseSampler(w, phases.step_starts, batch_size=batch, num_steps=steps, seed=seed)
        n_steps, at = steps, eval_schedule(steps)
    else:  # a uniform run on its own full schedule: only its final loss is used
        n_steps = budget_steps(steps, budget)
        sampler = PhaseSampler(np.ones(len(pool)), [0], batch_size=batch, num_steps=n_steps, seed=seed)
        at = [n_steps]
    cpu0 = cpu_seconds()
    res = st.train_model(sh["model_config"], pool, steps=n_steps, tokens_per_step=tps, seed=seed,
                         optim=sh["optim"], sampler=sampler, eval_sequences=sh["eval_sequences"],
                         eval_steps=at, device=sh["device"], progress=run_name(arm, seed, budget))
    curve = Curve(arm, seed, [float(s * tps) for s, _ in res.eval_curve],
                  [float(v) for _, v in res.eval_curve], float(budget))
    write_json({"setup": sh["fingerprints"].get(arm, sh["fingerprint"]),
                "curve": curve_record(curve), "seconds": res.seconds,
                "cpu_seconds": cpu_seconds() - cpu0},
               run_record(sh["out"], arm, seed, budget))
    return curve_record(curve)


def run_arms(model_config: Any, optim: Any, pool: Any, eval_sequences: Any, w_curr: np.ndarray,
             buckets: np.ndarray, phases: Any, *, seeds: Sequence[int], arms: Sequence[str],
             out: Path, fingerprint: str, budgets: Sequence[float] = (1.0,), device: str = "auto",
             force: bool = False, workers: int | None = 1,
             on_seed: Callable[[list[Curve]], None] | None = None,
             freq_profile: np.ndarray | None = None,
             fixed: dict[str, np.ndarray] | None = None) -> list[Curve]:
    """Train every (arm, seed) and the uniform budget runs, seed after seed, ``workers`` runs at
    once (each in its own process when more than 1; None: :func:`spectrum.pool.worker_count`),
    with :func:`spectrum.pool.run_tasks` (Ctrl-C or a killed worker keeps the finished runs);
    reuse runs whose record in ``out/runs`` carries ``fingerprint``. ``on_seed(curves so far)``
    is called whenever all runs of the first seeds are complete (to write interim results of the
    seeds finished so far). ``freq_profile`` (each sequence's target tokens per frequency
    quintile) makes the frequency control match the curriculum's quintile shares
    (:func:`~spectrum.curriculum.arms.arm_weights`). ``fixed``: arms whose weights are given (the
    same for every seed) instead of derived from ``w_curr``; their runs' records carry a
    fingerprint that includes their weights."""
    phase_steps = np.diff(phases.step_edges)
    plan = [run for s in seeds for run in _plan(arms, s, budgets)]
    done: dict[tuple[str, int, float], Curve] = {}
    todo, seed_weights = [], {}
    fixed = fixed or {}
    prints = {arm: weights_fingerprint(fingerprint, w) for arm, w in fixed.items()}
    if missing := [a for a in arms if a in GIVEN_ARMS and a not in fixed]:
        raise ValueError(f"arm(s) {', '.join(missing)} need their weights (fixed=...)")
    for arm, seed, budget in plan:
        path = run_record(out, arm, seed, budget)
        if not force and path.is_file():
            rec = json.loads(path.read_text())
            if rec.get("setup") == prints.get(arm, fingerprint):
                done[(arm, seed, budget)] = Curve(**rec["curve"])
                continue
        w = None
        if abs(budget - 1) < 1e-9:  # every arm's weights of a seed computed once
            if seed not in seed_weights:
                seed_weights[seed] = {**arm_weights(w_curr, buckets, seed, phase_steps,
                                                    freq_profile=freq_profile), **fixed}
            w = seed_weights[seed][arm]
        todo.append((arm, seed, budget, w))
    shared = {"phases": phases, "pool": pool, "model_config": model_config, "optim": optim,
              "eval_sequences": eval_sequences, "device": device, "fingerprint": fingerprint,
              "fingerprints": prints, "out": Path(out)}
    reported = 0

    def finished(key, rec) -> None:
        nonlocal reported
        done[key] = Curve(**rec)
        n = 0  # seeds complete from the first one on
        for s in seeds:
            if all((a, s2, b) in done for a, s2, b in plan if s2 == s):
                n += 1
            else:
                break
        if on_seed is not None and n > reported:
            reported = n
            on_seed([done[k] for k in plan if k[1] in set(seeds[:n])])

    n = worker_count(None, device, len(todo)) if workers is None else workers
    run_tasks(_train_one, todo, workers=n, setup=_trial_state, setup_args=(shared,), threads=1,
              on_result=lambda task, rec: finished(task[:3], rec),
              broken=lambda unfinished: (
                  f"curriculum-test: a training process ended abruptly (killed, perhaps for "
                  f"memory) with {len(unfinished)} run(s) unfinished; the finished runs are kept "
                  f"and the same command trains the others"))
    if not todo and on_seed is not None and done:
        on_seed([done[k] for k in plan])
    return [done[k] for k in plan]


def write_results(curves: list[Curve], setup: dict[str, Any], out: Path, *,
                  quiet: bool = False) -> dict[str, Any]:
    """Score the curves, write results.json, results.md and the figure; return the summary.
    ``setup["seeds"]`` is narrowed to the seeds the curves hold (interim results)."""
    setup = {**setup, "seeds": sorted({c.seed for c in curves})}
    # step 0 has no place on a log axis of tokens: scores and figure use T > 0
    scored = [Curve(c.arm, c.seed, c.tokens[1:], c.losses[1:], c.budget) if c.tokens[0] == 0 else c
              for c in curves]
    summary = summarise(scored)
    write_json({"setup": setup, "summary": summary, "curves": [curve_record(c) for c in curves]},
               out / RESULTS_JSON)
    plot(scored, summary, out / FIGURE)
    write_text(results_markdown(summary, setup), out / RESULTS_MD)
    if quiet:
        log.info(f"curriculum-test: interim results of {len(setup['seeds'])} seed(s) in "
                 f"{out / RESULTS_MD}")
        return summary
    log.info(markdown_table(summary))
    log.info(comparison_table(summary))
    for v in summary["verdicts"]:
        log.info(f"curriculum-test: {v}")
    log.info(f"curriculum-test: results in {out / RESULTS_MD}")
    return summary


def training_cost(out: Path, curves: Sequence[Curve]) -> dict[str, float]:
    """Wall and CPU seconds the training of ``curves`` took, summed over their run records (CPU
    time measured in the process that trained each run; records without it count as missing)."""
    wall, cpu, missing = 0.0, 0.0, 0
    for c in curves:
        path = run_record(out, c.arm, c.seed, c.budget)
        rec = json.loads(path.read_text()) if path.is_file() else {}
        wall += float(rec.get("seconds", 0.0))
        if "cpu_seconds" in rec:
            cpu += float(rec["cpu_seconds"])
        else:
            missing += 1
    return {"runs": len(curves), "run_wall_seconds": wall, "run_cpu_seconds": cpu,
            "runs_without_cpu_record": missing}


def learnability_cost(runs: Sequence[Any], checkpoints: dict[str, int], tokens_evaluated: int,
                      arm_params: int, arm_tokens: int) -> dict[str, float]:
    """Compute spent on measuring learnability: the training of its runs (6 N D FLOPs) and the
    evaluation of ``tokens_evaluated`` tokens at every checkpoint (2 N FLOPs each), with N the
    runs' non-embedding parameters; beside one arm's training run (6 N D)."""
    train_tokens = float(sum(r.tokens for r in runs))
    evals = float(sum(checkpoints.get(r.name, 0) * tokens_evaluated for r in runs))
    flops = float(sum(6 * r.params * r.tokens + 2 * r.params * checkpoints.get(r.name, 0)
                      * tokens_evaluated for r in runs))
    arm_flops = 6.0 * arm_params * arm_tokens
    return {"runs": [r.name for r in runs], "train_tokens": train_tokens,
            "token_evaluations": evals, "flops": flops, "arm_run_flops": arm_flops,
            "arm_runs_equivalent": flops / arm_flops if arm_flops else float("nan")}


@dataclass
class Stopwatch:
    """Wall and CPU seconds since creation (for the record of what a run of the test cost)."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=cpu_seconds)

    def read(self) -> dict[str, float]:
        return {"wall_seconds": time.perf_counter() - self.wall0, "cpu_seconds": cpu_seconds() - self.cpu0}
