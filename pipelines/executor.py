"""Executors: run one unit-of-work function over many units, in this process or on Ray actors.

A stage describes its work as a list of *units* (small picklable values) and a *worker*: an
object built once per process by a picklable ``make_worker()`` (it holds what is expensive to set
up: an evalset on a GPU, a model skeleton), with

- ``process(unit) -> result``: do one unit;
- ``prefetch(unit) -> None`` (optional): the unit it will be given next; a worker may start
  loading it in the background while it processes the current one.

``executor.map(make_worker, units)`` yields one :class:`Outcome` per unit, in completion order.
Both executors run the same worker code:

- :class:`LocalExecutor`: one worker in this process, units in order (debugging, no Ray);
- :class:`RayExecutor`: one Ray actor per worker slot (one per GPU with ``gpus_per_worker=1``,
  one per ``cpus_per_worker`` CPUs otherwise) on a local Ray (default) or a cluster
  (``address``); units go to whichever actor is free, each actor is told its next unit in
  advance so it can prefetch, and a dead actor is replaced.

Errors: a :class:`spectrum.errors.SpectrumError` from ``process`` (a user's input is bad, e.g. an
unreadable checkpoint) fails its unit at once; any other exception, or the death of the worker's
process, is retried up to ``retries`` times, then fails the unit. Other units go on either way.
Every error reaches the driver as one line, never a traceback. A worker that cannot be built
(``make_worker`` raises) stops the map with a :class:`SpectrumError` saying why.

:func:`make_executor` builds the executor of every stage that distributes work from the shared
options ``--executor``, ``--ray-address``, ``--workers``, ``--cpus-per-worker`` and ``--num-gpus``
(:mod:`pipelines.options`), with one meaning on every stage: ``--executor`` picks where units
run, each stage with its own default (:func:`executor_kind`), and ``--ray-address`` names the Ray
cluster to join.
"""

from __future__ import annotations

import os
import traceback
from abc import ABC, abstractmethod
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from spectrum.errors import SpectrumError


@dataclass
class Outcome:
    unit: Any
    result: Any = None
    error: str | None = None  # one line, when the unit failed
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(worker: Any, unit: Any, upcoming: Any = None) -> tuple[str, Any]:
    """Run one unit: ("ok", result) | ("fail", message) | ("retry", message)."""
    prefetch = getattr(worker, "prefetch", None)
    if upcoming is not None and prefetch is not None:
        prefetch(upcoming)
    try:
        return "ok", worker.process(unit)
    except SpectrumError as e:
        return "fail", "; ".join(e.problems) or str(e)
    except Exception as e:  # noqa: BLE001 - reported, retried, and the other units go on
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return "retry", last


class Executor(ABC):
    @abstractmethod
    def map(self, make_worker: Callable[[], Any], units: Sequence[Any]) -> Iterator[Outcome]:
        """Process every unit; yield an :class:`Outcome` per unit as it completes."""


class LocalExecutor(Executor):
    """One worker, in this process, units in order."""

    def __init__(self, retries: int = 1) -> None:
        self.retries = retries

    def map(self, make_worker: Callable[[], Any], units: Sequence[Any]) -> Iterator[Outcome]:
        if not units:
            return
        worker = make_worker()
        for i, unit in enumerate(units):
            upcoming = units[i + 1] if i + 1 < len(units) else None
            for attempt in range(1, self.retries + 2):
                status, value = _call(worker, unit, upcoming if attempt == 1 else None)
                if status != "retry":
                    break
            yield Outcome(unit, value if status == "ok" else None,
                          None if status == "ok" else value, attempt)


def _one_line(e: BaseException) -> str:
    if isinstance(e, SpectrumError):
        return "; ".join(e.problems) or str(e)
    return traceback.format_exception_only(type(e), e)[-1].strip()


class _Host:
    """The Ray actor: one worker, built in the actor's process. A worker that cannot be built
    answers every unit with ("abort", the reason in one line) instead of dying with a traceback."""

    def __init__(self, make_worker: Callable[[], Any]) -> None:
        self.worker, self.broken = None, None
        try:
            self.worker = make_worker()
        except Exception as e:  # noqa: BLE001 - reported to the driver as one line
            self.broken = _one_line(e)

    def process(self, unit: Any, upcoming: Any) -> tuple[str, Any]:
        if self.broken is not None:
            return "abort", self.broken
        return _call(self.worker, unit, upcoming)


class RayExecutor(Executor):
    """Ray actors on a local Ray (``address=None``) or a cluster (``address="auto"``, ``ip:port``).

    ``workers`` defaults to as many as the cluster holds (GPUs // gpus_per_worker, or
    CPUs // cpus_per_worker), capped by the number of units. Asking for GPUs on a cluster without
    them raises :class:`SpectrumError` instead of waiting forever.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0, retries: int = 2,
                 num_cpus: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.retries = retries
        self.num_cpus = num_cpus
        self._started = False

    def _connect(self) -> None:
        """Start or join Ray, unless this process is already connected."""
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                      logging_level="ERROR", configure_logging=True)
        if self.address is None:  # a fresh local Ray, never someone else's running cluster
            ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), **kwargs)
        else:
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise SpectrumError(f"cannot connect to the Ray cluster at {self.address}: "
                                    f"{str(e).splitlines()[0] if str(e) else e!r}") from None
        self._started = True

    @contextmanager
    def connected(self) -> Iterator["RayExecutor"]:
        """Ray stays up for every :meth:`map` inside (one start for several rounds of units);
        stopped at the end if this executor started it."""
        import ray

        self._connect()
        started, self._started = self._started, False
        try:
            yield self
        finally:
            if started:
                ray.shutdown()

    def cluster_resources(self) -> dict[str, float]:
        """The cluster's resources (joins the cluster; a local Ray is started by :meth:`map`)."""
        import ray

        if self.address is None and not ray.is_initialized():
            return {}
        self._connect()
        return ray.cluster_resources()

    def _slots(self, n_units: int) -> int:
        import ray

        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            gpus = res.get("GPU", 0)
            if gpus < self.gpus_per_worker:
                raise SpectrumError(
                    f"--num-gpus {self.gpus_per_worker:g} per worker, but the Ray cluster has "
                    f"{gpus:g} GPUs; use --num-gpus 0 to run on CPUs")
            slots = int(gpus // self.gpus_per_worker)
        else:
            cpus = res.get("CPU", 0)
            if cpus < self.cpus_per_worker:
                raise SpectrumError(f"the Ray cluster has {cpus:g} CPUs, fewer than one "
                                    f"worker's {self.cpus_per_worker:g}")
            slots = int(cpus // self.cpus_per_worker)
        if self.workers is not None:
            slots = min(slots, self.workers)
        return max(1, min(slots, n_units))

    def map(self, make_worker: Callable[[], Any], units: Sequence[Any]) -> Iterator[Outcome]:
        if not units:
            return
        import ray

        self._connect()
        try:
            yield from self._map(ray, make_worker, units)
        finally:
            if self._started:  # disconnect from (and stop) what this executor started
                ray.shutdown()
                self._started = False

    def _map(self, ray: Any, make_worker: Callable[[], Any],
             units: Sequence[Any]) -> Iterator[Outcome]:
        host = ray.remote(_Host).options(num_cpus=self.cpus_per_worker,
                                         num_gpus=self.gpus_per_worker)
        shared = ray.put(make_worker)
        actors = [host.remote(shared) for _ in range(self._slots(len(units)))]
        try:
            yield from self._schedule(ray, host, shared, actors, units)
        finally:  # free the actors' CPUs and GPUs now, also on a cluster this run did not start
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def _schedule(self, ray: Any, host: Any, shared: Any, actors: list[Any],
                  units: Sequence[Any]) -> Iterator[Outcome]:
        queue: deque[int] = deque(range(len(units)))
        attempts = [0] * len(units)
        reserved: dict[int, int | None] = {}  # actor -> the unit it was told to prefetch
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (actor, unit)

        def submit(a: int) -> None:
            u = reserved.pop(a, None)
            if u is None:
                if not queue:
                    return
                u = queue.popleft()
            nxt = queue.popleft() if queue else None
            reserved[a] = nxt
            attempts[u] += 1
            ref = actors[a].process.remote(units[u], units[nxt] if nxt is not None else None)
            inflight[ref] = (a, u)

        def fill() -> None:
            busy = {a for a, _ in inflight.values()}
            for a in range(len(actors)):
                if a not in busy:
                    submit(a)

        fill()
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            a, u = inflight.pop(ref)
            try:
                status, value = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker's process died: replace it
                status, value = "retry", f"worker died ({type(e).__name__})"
                ray.kill(actors[a], no_restart=True)
                actors[a] = host.remote(shared)
                nxt = reserved.pop(a, None)
                if nxt is not None:
                    queue.appendleft(nxt)
            except ray.exceptions.RayTaskError as e:
                status, value = "retry", str(e).strip().splitlines()[-1]
            if status == "abort":
                raise SpectrumError(f"a Ray worker could not start: {value}")
            if status == "retry" and attempts[u] <= self.retries:
                queue.appendleft(u)
            else:
                yield Outcome(units[u], value if status == "ok" else None,
                              None if status == "ok" else value, attempts[u])
            fill()


# ---- the executor of a stage, from its options -------------------------------------------------

EXECUTORS = ("local", "ray")
LOCAL_RAY = "local"  # the --ray-address that starts a fresh local Ray, as giving none does


def executor_kind(executor: str | None, ray_address: str | None, default: str) -> str:
    """``local`` or ``ray``: ``--executor`` when given; else ``ray`` when ``--ray-address`` is
    given, else the stage's ``default``. A Ray address with ``--executor local`` is refused."""
    if executor is None:
        return "ray" if ray_address is not None else default
    if executor not in EXECUTORS:
        raise SpectrumError(f"--executor {executor}: choose one of {', '.join(EXECUTORS)}")
    if executor == "local" and ray_address is not None:
        raise SpectrumError(f"--ray-address {ray_address} names a Ray cluster, but --executor "
                            "local runs in this process; give one of them")
    return executor


@dataclass(frozen=True)
class Placement:
    """Where a stage's units run: the executor, the device its workers use (``auto`` resolved to
    ``cuda`` or ``cpu`` for Ray workers, as given for this process) and their torch threads
    (None: torch's default, every core)."""

    executor: Executor
    device: str
    threads: int | None

    @property
    def distributed(self) -> bool:
        return not isinstance(self.executor, LocalExecutor)


def make_executor(kind: str, *, ray_address: str | None = None, device: str = "cpu",
                  num_gpus: float | None = None, workers: int | None = None,
                  cpus_per_worker: int = 1, retries: int = 1) -> Placement:
    """The executor of kind ``local`` or ``ray`` (see :func:`executor_kind`).

    Ray workers get ``num_gpus`` GPUs each; by default 1 when GPUs exist (on this machine for a
    local Ray, in the cluster for ``ray_address``) and ``device`` is not cpu, else 0. Devices,
    GPUs and CPUs that this machine (or the cluster) lacks are refused here, before any work is
    planned. ``ray_address`` ``local`` or None starts a fresh local Ray."""
    from spectrum.devices import parse_device, resolve_device

    address = None if ray_address in (None, LOCAL_RAY) else ray_address
    if kind == "local" or address is None:
        resolve_device(device)  # a device this machine has
    else:
        parse_device(device)  # the workers' machines are checked by the cluster's GPUs
    if kind == "local":
        return Placement(LocalExecutor(retries=retries), device, None)
    ex = RayExecutor(address, workers=workers, cpus_per_worker=cpus_per_worker, retries=retries)
    ex.gpus_per_worker = _gpus_per_worker(ex, device, num_gpus)
    cpus = os.cpu_count() or 1
    if address is None and cpus_per_worker > cpus:
        raise SpectrumError(f"--cpus-per-worker {cpus_per_worker}: this machine has {cpus} CPUs")
    resolved = ("cuda" if ex.gpus_per_worker > 0 else "cpu") if device == "auto" else device
    return Placement(ex, resolved, cpus_per_worker)


def _gpus_per_worker(ex: RayExecutor, device: str, num_gpus: float | None) -> float:
    """GPUs per Ray worker (see :func:`make_executor`), checked against what there is."""
    if ex.address is None:
        import torch

        have: float = torch.cuda.device_count() if torch.cuda.is_available() else 0
        where = "this machine"
    else:
        have = ex.cluster_resources().get("GPU", 0)
        where = f"the Ray cluster at {ex.address}"
    gpus = num_gpus
    if gpus is None:
        gpus = 0 if device == "cpu" else (1 if have >= 1 else 0)
    if gpus > 0 and have < gpus:
        raise SpectrumError(f"--num-gpus {gpus:g} per worker, but {where} has {have:g} GPUs; "
                            "use --num-gpus 0 to run on CPUs")
    if gpus == 0 and device.startswith("cuda"):
        raise SpectrumError(f"--device {device}: {where} has no GPU for the workers")
    return gpus
