"""``spectrum suite``: train the manifest's built-in scaling suite (runs with a ``train:`` entry).

Runs whose last checkpoint exists are skipped, so ``spectrum run`` calls this first at almost no
cost once the suite is trained; a manifest without a ``suite:`` section (or without runs to
train) makes it a no-op. See :mod:`spectrum.suite.build`.

On the CPU the runs are trained side by side, one single-threaded process per core (tiny models
gain little from intra-op threads and lose much to oversubscription); on a GPU one after another.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipelines.options import device_option, force_option, option
from spectrum import console
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest
from spectrum.suite.build import SuiteData, prepare_data, train_in_process, train_run, train_suite
from spectrum.suite.config import RunPlan, SuitePlan

HELP = "train the built-in mini scaling suite (checkpoints on a log-time schedule)"


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    device: str = device_option()
    force: bool = force_option()
    suite_workers: int | None = option(None, "runs trained at once, one process each (default: "
                                             "one single-threaded process per CPU core; one on a "
                                             "GPU)", metavar="N")


OPTIONS = SuiteOptions


def main(manifest: Manifest, options: SuiteOptions) -> None:
    train_suite_in_processes(manifest, device=options.device, force=options.force,
                             workers=options.suite_workers)


def train_suite_in_processes(manifest: Manifest, *, device: str = "auto", force: bool = False,
                             progress: bool = True, workers: int | None = None
                             ) -> dict[str, Any] | None:
    """:func:`spectrum.suite.build.train_suite`, with ``workers`` runs trained at once, each in
    its own process (default: one per CPU core on the CPU, one on a GPU; 1: in this process)."""
    return train_suite(manifest, device=device, force=force, progress=progress,
                            train_runs=partial(_train_runs, workers=workers, device=device,
                                               progress=progress))


def worker_count(requested: int | None, device: str, n_runs: int) -> int:
    """Processes to train ``n_runs`` runs with (see the module doc)."""
    import torch

    from spectrum.devices import resolve_device

    if requested is not None:
        return max(1, min(requested, n_runs))
    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads(), n_runs))


def _train_runs(plan: SuitePlan, todo: list[RunPlan], data: SuiteData, *, workers: int | None,
                device: str, progress: bool) -> tuple[dict[str, dict[str, Any]], int]:
    n = worker_count(workers, device, len(todo))
    if n == 1:
        return train_in_process(plan, todo, data, device=device, progress=progress)
    return _train_in_pool(plan, todo, n, device, progress), n


_WORKER: dict[str, Any] = {}


def _init_worker(plan: SuitePlan, threads: int, slots: Any, verbosity: str) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    console.set_verbosity(verbosity)
    torch.set_num_threads(threads)
    with slots.get_lock():
        _WORKER["slot"] = slots.value
        slots.value += 1
    _WORKER["data"] = prepare_data(plan.config)


def _train_in_worker(plan: SuitePlan, index: int, device: str, progress: bool) -> dict[str, Any]:
    return train_run(plan, plan.runs[index], _WORKER["data"], device=device, progress=progress,
                     position=_WORKER["slot"])


def _stop(executor: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (their runs resume later)."""
    executor.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def _train_in_pool(plan: SuitePlan, todo: list[RunPlan], n: int, device: str,
                   progress: bool) -> dict[str, dict[str, Any]]:
    """Train ``todo`` in ``n`` spawned processes. The workers ignore Ctrl-C; on an interrupt
    (or a failed run) the parent ends them, and each run resumes on the next call. A worker that
    dies (killed by the system, for instance for memory) fails the call with the runs it left
    unfinished instead of leaving it waiting for them."""
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // n)
    index = {r.run.name: i for i, r in enumerate(plan.runs)}
    executor = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(plan, threads, ctx.Value("i", 0),
                                             console.verbosity()))
    try:
        pending = {executor.submit(_train_in_worker, plan, index[r.run.name], device, progress):
                   r.run.name for r in todo}
        done, _ = wait(pending, return_when=FIRST_EXCEPTION)  # all done, or the first failure
        for future in done:
            error = future.exception()
            if isinstance(error, BrokenProcessPool):
                unfinished = sorted(name for f, name in pending.items()
                                    if not f.done() or f.exception() is not None)
                raise SpectrumError(
                    f"suite: a training process ended abruptly (killed, perhaps for memory) with "
                    f"runs {', '.join(unfinished)} unfinished; their checkpoints so far are kept "
                    f"and the same command resumes them") from None
            if error is not None:
                raise error
        records = {name: future.result() for future, name in pending.items()}
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown(wait=True)
    return records
