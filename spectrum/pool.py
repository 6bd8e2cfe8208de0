"""Independent tasks run side by side in spawned worker processes, or one after another here.

:func:`run_tasks` is the one process pool of the tool (the training suite and the controlled
curriculum test use it). Each worker process builds its state once (``setup(*setup_args)``, for
instance the tokenized data) and runs tasks with it; results come back to the calling process,
which hands each to ``on_result`` as it finishes. What an interruption leaves:

- Ctrl-C: the workers ignore it (the terminal sends it to them too); the calling process cancels
  the tasks not started, ends the workers at once and lets ``KeyboardInterrupt`` propagate (the
  command line turns it into one line, no traceback). Results handed to ``on_result`` and
  whatever the tasks wrote are kept.
- a worker that dies (killed by the system, for instance for memory): the pool is broken; the
  call fails with one :class:`~spectrum.errors.SpectrumError` line naming the unfinished tasks
  (``broken(unfinished)``), instead of waiting for them.
- a task that raises: the other workers are ended and the error propagates.

:func:`worker_count` is the rule for how many processes train tiny models: one single-threaded
process per core on the CPU (tiny models gain little from intra-op threads and lose much to
oversubscription), one on a GPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from spectrum import console
from spectrum.errors import SpectrumError

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


@dataclass(frozen=True)
class WorkerContext(Generic[S]):
    """What a task receives besides its own argument: the worker's state (built once per process
    by ``setup``) and its slot, 0 to workers-1 (a progress bar's line), None in the calling
    process."""

    state: S
    slot: int | None


# A process pool's initializer can hand state to the tasks of its process only through a global
# of that process: this is it. It is set once in each worker process by `_start_worker` and read
# by `_call`; the calling process never sets it.
_WORKER: list[WorkerContext[Any]] = []


def worker_count(requested: int | None, device: str, n_tasks: int) -> int:
    """Processes to run ``n_tasks`` training tasks on ``device`` with: ``requested`` (at most one
    per task), else one per CPU core (at most torch's thread limit) on the CPU, one on a GPU."""
    import torch

    from spectrum.devices import resolve_device

    if requested is not None:
        return max(1, min(requested, n_tasks))
    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads(), n_tasks))


def _start_worker(setup: Callable[..., Any] | None, setup_args: tuple, threads: int | None,
                  verbosity: str, slots: Any) -> None:
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the calling process's to handle
    console.set_verbosity(verbosity)
    # tqdm's default lock is a multiprocessing semaphore, which a worker ended by the calling
    # process would leave behind (a warning at exit); a process's bars need only a thread lock
    tqdm.set_lock(threading.RLock())
    if threads:
        import torch

        torch.set_num_threads(threads)
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    _WORKER[:] = [WorkerContext(setup(*setup_args) if setup is not None else None, slot)]


def _call(fn: Callable[[WorkerContext[Any], Any], Any], task: Any) -> Any:
    return fn(_WORKER[0], task)


def _stop(executor: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # taken before shutdown, which forgets them (and would let the running tasks finish)
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)  # the pool's thread and queues, cleaned up


def run_tasks(fn: Callable[[WorkerContext[S], T], R], tasks: Sequence[T], *, workers: int,
              setup: Callable[..., S] | None = None, setup_args: tuple = (),
              threads: int | None = 1,
              on_result: Callable[[T, R], None] | None = None,
              broken: Callable[[list[T]], str] | None = None) -> list[R]:
    """``fn(worker, task)`` for every task, in ``workers`` spawned processes (1: one after another
    in this process, with ``setup`` run here and torch's threads left alone); the results in the
    order of ``tasks``. ``fn`` and ``setup`` must be module-level functions (they are pickled by
    name), ``setup_args`` and the tasks picklable. ``threads``: torch's intra-op threads in each
    worker (None: torch's default). ``on_result(task, result)`` runs here as each task finishes.
    ``broken(unfinished tasks)`` is the message of a broken pool (see the module doc)."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        here = WorkerContext(setup(*setup_args) if setup is not None else None, None)
        in_order = []
        for task in tasks:
            in_order.append(fn(here, task))
            if on_result is not None:
                on_result(task, in_order[-1])
        return in_order
    ctx = mp.get_context("spawn")
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                   initargs=(setup, setup_args, threads, console.verbosity(),
                                             ctx.Value("i", 0)))
    try:
        futures = {executor.submit(_call, fn, task): i for i, task in enumerate(tasks)}
        results: dict[int, R] = {}
        pending = set(futures)
        while pending:
            # a timed wait: a Ctrl-C delivered to another thread of this process is handled
            # within the timeout, not when the next task finishes
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=futures.__getitem__):
                if isinstance(future.exception(), BrokenProcessPool):
                    raise SpectrumError(_broken_message(futures, tasks, broken)) from None
                results[futures[future]] = future.result()
                if on_result is not None:
                    on_result(tasks[futures[future]], results[futures[future]])
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown(wait=True)
    return [results[i] for i in range(len(tasks))]


def _broken_message(futures: dict[Future, int], tasks: Sequence[T],
                    broken: Callable[[list[T]], str] | None) -> str:
    unfinished = [tasks[i] for f, i in sorted(futures.items(), key=lambda kv: kv[1])
                  if not f.done() or f.exception() is not None]
    if broken is not None:
        return broken(unfinished)
    return (f"a worker process ended abruptly (killed, perhaps for memory) with "
            f"{len(unfinished)} of {len(tasks)} tasks unfinished")
