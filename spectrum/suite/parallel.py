"""Training the suite's runs side by side, each in its own process (:mod:`spectrum.pool`).

On the CPU the runs are trained side by side, one single-threaded process per core (tiny models
gain little from intra-op threads and lose much to oversubscription); on a GPU one after another.
Each worker process prepares the suite's data once (from the cache the calling process built).
Ctrl-C, a failed run or a killed worker end the workers; every run resumes from its last
checkpoint on the next call.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from spectrum.manifest import Manifest
from spectrum.pool import WorkerContext, run_tasks, worker_count
from spectrum.suite.build import SuiteData, prepare_data, train_in_process, train_run, train_suite
from spectrum.suite.config import RunPlan, SuitePlan


def train_suite_in_processes(manifest: Manifest, *, device: str = "auto", force: bool = False,
                             progress: bool = True, workers: int | None = None
                             ) -> dict[str, Any] | None:
    """:func:`spectrum.suite.build.train_suite`, with ``workers`` runs trained at once, each in
    its own process (default: :func:`spectrum.pool.worker_count`; 1: in this process)."""
    return train_suite(manifest, device=device, force=force, progress=progress,
                       train_runs=partial(_train_runs, workers=workers, device=device,
                                          progress=progress))


def _train_runs(plan: SuitePlan, todo: list[RunPlan], data: SuiteData, *, workers: int | None,
                device: str, progress: bool) -> tuple[dict[str, dict[str, Any]], int]:
    n = worker_count(workers, device, len(todo))
    if n == 1:
        return train_in_process(plan, todo, data, device=device, progress=progress)
    index = {r.run.name: i for i, r in enumerate(plan.runs)}
    tasks = [(index[r.run.name], device, progress) for r in todo]
    records = run_tasks(_train_in_worker, tasks, workers=n, setup=_worker_state, setup_args=(plan,),
                        threads=max(1, (os.cpu_count() or 1) // n),
                        broken=partial(_broken, plan))
    return {r.run.name: rec for r, rec in zip(todo, records)}, n


def _worker_state(plan: SuitePlan) -> tuple[SuitePlan, SuiteData]:
    return plan, prepare_data(plan.config)


def _train_in_worker(worker: WorkerContext[tuple[SuitePlan, SuiteData]],
                     task: tuple[int, str, bool]) -> dict[str, Any]:
    (plan, data), (index, device, progress) = worker.state, task
    return train_run(plan, plan.runs[index], data, device=device, progress=progress,
                     position=worker.slot)


def _broken(plan: SuitePlan, unfinished: list[tuple[int, str, bool]]) -> str:
    names = sorted(plan.runs[index].run.name for index, *_ in unfinished)
    return (f"suite: a training process ended abruptly (killed, perhaps for memory) with runs "
            f"{', '.join(names)} unfinished; their checkpoints so far are kept and the same "
            f"command resumes them")
