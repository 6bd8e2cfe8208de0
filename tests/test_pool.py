"""The process pool (spectrum.pool): results in task order, the worker's state and slot, and what
a failed task, a killed worker and Ctrl-C leave."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from spectrum.errors import SpectrumError
from spectrum.pool import WorkerContext, run_tasks, worker_count


def _state(base: int) -> dict[str, int]:
    return {"base": base, "pid": os.getpid()}


def _add(worker: WorkerContext[dict[str, int]], task: int) -> tuple[int, int | None, int, int]:
    """The task plus the state's base, the worker's slot, where it ran and where its state was
    built."""
    return task + worker.state["base"], worker.slot, os.getpid(), worker.state["pid"]


def _die_on_three(worker: WorkerContext[None], task: int) -> int:
    if task == 3:
        os._exit(1)  # as if killed by the system
    time.sleep(0.2)
    return task


def _fail_on_two(worker: WorkerContext[None], task: int) -> int:
    if task == 2:
        raise ValueError("task 2 failed")
    return task


def _sleep_unless_zero(worker: WorkerContext[None], task: int) -> int:
    if task:
        time.sleep(60)
    return task


def _wait_for_no_children(seconds: float = 10.0) -> list:
    end = time.monotonic() + seconds
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    return multiprocessing.active_children()


def test_tasks_run_in_workers_with_their_state_and_come_back_in_order():
    seen = []
    out = run_tasks(_add, list(range(6)), workers=2, setup=_state, setup_args=(100,),
                    threads=None, on_result=lambda task, result: seen.append(task))
    assert [r[0] for r in out] == [100 + t for t in range(6)]
    assert sorted(seen) == list(range(6))
    assert {r[1] for r in out} <= {0, 1}
    pids = {r[2] for r in out}
    assert os.getpid() not in pids and len(pids) <= 2
    assert all(run_pid == state_pid for _, _, run_pid, state_pid in out)  # state built per worker
    assert not _wait_for_no_children()


def test_one_worker_runs_here_with_the_state_built_here():
    seen = []
    out = run_tasks(_add, [1, 2], workers=1, setup=_state, setup_args=(10,),
                    on_result=lambda task, result: seen.append(task))
    assert out == [(11, None, os.getpid(), os.getpid()), (12, None, os.getpid(), os.getpid())]
    assert seen == [1, 2]


def test_a_killed_worker_is_one_error_naming_the_unfinished_tasks():
    with pytest.raises(SpectrumError) as e:
        run_tasks(_die_on_three, [1, 2, 3, 4], workers=2, threads=None,
                  broken=lambda unfinished: "unfinished: " + ",".join(map(str, unfinished)))
    assert str(e.value).startswith("unfinished: ")
    unfinished = [int(t) for t in str(e.value).removeprefix("unfinished: ").split(",")]
    assert 3 in unfinished and set(unfinished) <= {1, 2, 3, 4}
    assert not _wait_for_no_children()


def test_a_failed_task_raises_its_error_and_ends_the_workers():
    with pytest.raises(ValueError, match="task 2 failed"):
        run_tasks(_fail_on_two, [1, 2, 3, 4, 5, 6], workers=2, threads=None)
    assert not _wait_for_no_children()


def test_ctrl_c_ends_the_workers_at_once_and_keeps_what_finished():
    finished = []
    pid = os.getpid()

    def on_result(task: int, result: int) -> None:
        finished.append(task)
        threading.Timer(0.2, os.kill, (pid, signal.SIGINT)).start()  # Ctrl-C while waiting

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_tasks(_sleep_unless_zero, [0, 1, 2], workers=2, threads=None, on_result=on_result)
    assert finished == [0]
    assert not _wait_for_no_children()
    assert time.monotonic() - t0 < 30  # the sleeping tasks were ended, not waited for


def test_worker_count_follows_the_request_else_the_cores():
    assert worker_count(3, "cpu", 2) == 2 and worker_count(0, "cpu", 5) == 1
    assert 1 <= worker_count(None, "cpu", 64) <= (os.cpu_count() or 1)
    assert worker_count(None, "cpu", 1) == 1
