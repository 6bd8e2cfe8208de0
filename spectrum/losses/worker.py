"""The losses stage's worker: the losses of a checkpoint over the evalset, one checkpoint per unit.

A :class:`LossWorker` keeps the evalset on its device and loads the next checkpoint in a
background thread while it evaluates the current one; every load of the process takes
:data:`spectrum.losses.evaluator.LOAD_LOCK`, so loads never run at once.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectrum.errors import SpectrumError
from spectrum.losses.plan import Unit


@dataclass(frozen=True)
class Result:
    losses: np.ndarray  # float32, token_idx order
    seconds: float  # evaluation only, without loading
    load_wait: float  # time spent waiting for the checkpoint to load


class LossWorker:
    """Evaluates checkpoints on one device; loads the next one in a background thread."""

    def __init__(self, input_ids: np.ndarray, meta: dict[str, Any], device: str, dtype: str,
                 batch_size: int | None, threads: int | None) -> None:
        import torch

        from spectrum.devices import parse_dtype, resolve_device
        from spectrum.losses.evaluator import Evaluator

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype)
        self.meta = meta
        # compiled cross-entropy on every device: on CPUs it halves the time of small models,
        # whose evaluation is mostly the log-sum-exp over the vocabulary
        self.evaluator = Evaluator(input_ids, self.device, batch_size=batch_size, fused=True)
        self.loader = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[str, Future] = {}

    def _load(self, path: str) -> Any:
        from transformers import AutoConfig

        from spectrum.losses.evaluator import LOAD_LOCK, check_compatible, load_model

        try:
            with LOAD_LOCK:
                config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpectrumError(f"checkpoint {path}: cannot be read: {first}") from None
        check_compatible(path, config, self.meta)
        return load_model(path, device=self.device, dtype=self.dtype)

    def prefetch(self, unit: Unit) -> None:
        if unit.path not in self.pending:
            self.pending[unit.path] = self.loader.submit(self._load, unit.path)

    def process(self, unit: Unit) -> Result:
        t0 = time.perf_counter()
        future = self.pending.pop(unit.path, None)
        model = future.result() if future is not None else self._load(unit.path)
        t1 = time.perf_counter()
        losses = self.evaluator(model).reshape(-1)
        del model
        return Result(losses, time.perf_counter() - t1, t1 - t0)
