"""GPU scheduling of the Ray executor, on a Ray that declares GPUs this machine does not have:
Ray hands out GPU resources (and sets CUDA_VISIBLE_DEVICES for each actor) without touching
a device, so slots, fractional packing and the devices each worker is given can be checked
on a CPU."""

from __future__ import annotations

import os
import sys

import pytest

from pipelines.executor import RayExecutor

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_with_two_gpus():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


class _WhereAmI:
    """Reports, per unit, the worker's process and the GPUs Ray assigned to it."""

    def process(self, unit: int) -> tuple[int, int, tuple[str, ...], str]:
        gpus = tuple(str(g) for g in ray.get_gpu_ids())
        return unit, os.getpid(), gpus, os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_one_worker_per_gpu(ray_with_two_gpus):
    out = list(RayExecutor(gpus_per_worker=1).map(_WhereAmI, list(range(8))))
    assert sorted(o.unit for o in out) == list(range(8)) and all(o.ok for o in out)
    workers = {o.result[1]: o.result[2] for o in out}
    assert len(workers) == 2  # a slot per GPU
    assert sorted(gpus for gpus in workers.values()) == [("0",), ("1",)]
    assert all(o.result[3] == ",".join(o.result[2]) for o in out)  # each sees only its own GPU


def test_fractional_gpus_pack_workers_onto_each_gpu(ray_with_two_gpus):
    out = list(RayExecutor(gpus_per_worker=0.5).map(_WhereAmI, list(range(12))))
    assert all(o.ok for o in out)
    workers = {o.result[1]: o.result[2] for o in out}
    assert len(workers) == 4  # 2 GPUs / 0.5, each worker with one CPU of the 4
    per_gpu = sorted(gpus for gpus in workers.values())
    assert per_gpu == [("0",), ("0",), ("1",), ("1",)]


def test_workers_capped_by_units_and_by_request(ray_with_two_gpus):
    out = list(RayExecutor(gpus_per_worker=0.5).map(_WhereAmI, [0]))
    assert len(out) == 1 and out[0].ok
    out = list(RayExecutor(gpus_per_worker=0.5, workers=1).map(_WhereAmI, list(range(4))))
    assert len({o.result[1] for o in out}) == 1
