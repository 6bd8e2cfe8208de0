"""Training a causal language model on fixed-length token sequences, with checkpoints.

:func:`train_model` is the training loop of the built-in suite and of experiments that compare
runs of the same model under different sampling of the training sequences (curricula). It is
plain PyTorch: AdamW, linear warmup then cosine decay to ``min_lr_ratio`` of the peak learning
rate (``transformers.get_cosine_with_min_lr_schedule_with_warmup``), gradient clipping, bf16
autocast on CUDA. It is deterministic for a seed on a given device: the seed fixes the
initialization and, without a ``sampler``, the order of the sequences (a fresh permutation per
pass over them).

:func:`save_checkpoint` writes one Hugging Face Trainer style ``checkpoint-<step>/`` folder
atomically: everything is written into a hidden temporary folder in the same parent, which is then
renamed into place, so a folder named ``checkpoint-<step>`` is always complete.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from transformers.utils import logging as hf_logging

from spectrum.console import progress as progress_bar
from spectrum.devices import resolve_device
from spectrum.store import atomic_folder

PARTIAL_PREFIX = ".partial-"  # temporary folders; never matches checkpoint-<step>


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule: AdamW with linear warmup and cosine decay to a floor."""

    learning_rate: float = 3.0e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0


@dataclass
class TrainState:
    """What :func:`train_model` hands to ``on_checkpoint`` and what resumes a run."""

    step: int
    tokens_seen: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loss: float | None  # mean training loss since the previous checkpoint (None at step 0)
    learning_rate: float
    eval_loss: float | None  # mean validation loss at this step, if evaluated here


@dataclass
class TrainResult:
    """The trained model (on its device, in train mode off) and the curves of the run."""

    model: torch.nn.Module
    steps: int
    tokens_seen: int
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since previous checkpoint)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    seconds: float = 0.0

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_curve[-1][1] if self.eval_curve and self.eval_curve[-1][0] == self.steps else None


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, sequences: torch.Tensor, *, batch_size: int = 64) -> float:
    """Mean next-token loss (nats) over every prediction in ``sequences`` ([n, context] ids)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in sequences.split(batch_size):
        batch = batch.to(device, torch.long)
        with _autocast(device):
            loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - batch.shape[0]
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / count


def _index_stream(n: int, seed: int, sampler: Iterable[int] | None) -> Iterator[int]:
    """Endless sequence indices: passes over ``sampler`` (default: a seeded shuffle), chained."""
    if sampler is None:
        generator = torch.Generator().manual_seed(seed)
        sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
    for epoch in itertools.count():
        empty = True
        for i in sampler:
            empty = False
            yield int(i)
        if empty:
            raise ValueError("the sampler yields no indices")


def _batch_size(train_sequences: torch.Tensor, tokens_per_step: int) -> int:
    """Sequences per step; ``tokens_per_step`` must be a multiple of the context."""
    context = train_sequences.shape[1]
    if tokens_per_step % context:
        raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of context {context}")
    return tokens_per_step // context


def _new_model(config, seed: int, optim: OptimConfig, steps: int,
               dev: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """The model initialised after ``torch.manual_seed(seed)``, its AdamW (no weight decay on
    vectors) and its warmup-then-cosine schedule."""
    from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dev)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.learning_rate, betas=optim.betas, fused=dev.type == "cuda")
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=steps,
        min_lr_rate=optim.min_lr_ratio)
    return model, optimizer, scheduler


def _restore(resume: dict[str, Any] | None, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Load the saved states of ``resume`` (if any); the step to continue from."""
    if resume is None:
        return 0
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    return int(resume["step"])


@dataclass
class _Recorder:
    """What happens at a checkpoint or evaluation step: the validation loss, the mean training
    loss since the previous checkpoint, and the ``on_checkpoint`` call."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    result: TrainResult
    tokens_per_step: int
    checkpoint_steps: list[int]
    eval_at: set[int]
    eval_sequences: torch.Tensor | None
    on_checkpoint: Callable[[TrainState], None] | None
    losses: list[torch.Tensor] = field(default_factory=list)  # training losses since the last checkpoint

    def wants(self, step: int) -> bool:
        return step in self.checkpoint_steps or step in self.eval_at

    def __call__(self, step: int) -> None:
        eval_loss = evaluate(self.model, self.eval_sequences) if step in self.eval_at else None
        if eval_loss is not None:
            self.result.eval_curve.append((step, eval_loss))
        train_loss = float(torch.stack(self.losses).mean()) if self.losses else None
        if step not in self.checkpoint_steps:
            return
        if train_loss is not None:
            self.result.train_curve.append((step, train_loss))
        if self.on_checkpoint is not None:
            self.on_checkpoint(TrainState(
                step=step, tokens_seen=step * self.tokens_per_step, model=self.model,
                optimizer=self.optimizer, scheduler=self.scheduler, train_loss=train_loss,
                learning_rate=self.scheduler.get_last_lr()[0], eval_loss=eval_loss))
        self.losses.clear()


def _update(model: torch.nn.Module, batch: torch.Tensor, optimizer: torch.optim.Optimizer,
            scheduler: Any, grad_clip: float | None, dev: torch.device) -> torch.Tensor:
    """One optimizer step on ``batch``; its (detached) training loss."""
    with _autocast(dev):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_model(
    config,
    train_sequences: torch.Tensor,
    *,
    steps: int,
    tokens_per_step: int,
    seed: int,
    optim: OptimConfig = OptimConfig(),
    sampler: Iterable[int] | None = None,
    checkpoint_steps: Iterable[int] = (),
    on_checkpoint: Callable[[TrainState], None] | None = None,
    eval_sequences: torch.Tensor | None = None,
    eval_steps: Iterable[int] | None = None,
    device: str | torch.device = "auto",
    resume: dict[str, Any] | None = None,
    progress: bool | str = True,
    progress_position: int | None = None,
) -> TrainResult:
    """Train a ``GPTNeoXForCausalLM`` (or any causal LM config) from scratch for ``steps`` steps.

    - ``config``: a transformers config; the model is ``AutoModelForCausalLM.from_config(config)``,
      initialised after ``torch.manual_seed(seed)``.
    - ``train_sequences``: [n, context] token ids. Each step trains on
      ``tokens_per_step // context`` of them (``tokens_per_step`` must be a multiple of context).
    - ``sampler``: optional iterable of indices into ``train_sequences`` (a torch ``Sampler`` or
      any re-iterable); it is iterated again when exhausted. Default: a fresh seeded shuffle per
      pass. Give one to train the same model on the same compute under another data order or
      weighting (e.g. ``WeightedRandomSampler``).
    - ``checkpoint_steps``: steps at which ``on_checkpoint(TrainState)`` is called; step 0 is the
      initial model (before any update), step ``s`` the model after ``s`` updates.
    - ``eval_sequences``: [m, context] ids; the mean validation loss is computed at
      ``eval_steps`` (default: the checkpoint steps and the last step) and returned as
      ``eval_curve``; at checkpoint steps it is also passed in the ``TrainState``.
    - ``resume``: ``{"step", "model", "optimizer", "scheduler"}`` (state dicts) to continue a run
      from a saved step; the data order continues where it stopped (the index stream is replayed),
      so a resumed run equals an uninterrupted one.
    - ``progress``: a tqdm bar over tokens (rate and ETA); a string sets its description;
      ``progress_position`` its line (for runs trained side by side).

    Returns a :class:`TrainResult` with the trained model (in eval mode, on ``device``).
    """
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    batch_size = _batch_size(train_sequences, tokens_per_step)
    checkpoint_steps = sorted({s for s in checkpoint_steps if 0 <= s <= steps})
    eval_at = set(eval_steps) if eval_steps is not None else set(checkpoint_steps) | {steps}
    if eval_sequences is None:
        eval_at = set()
    model, optimizer, scheduler = _new_model(config, seed, optim, steps, dev)
    start = _restore(resume, model, optimizer, scheduler)
    stream = _index_stream(len(train_sequences), seed, sampler)
    for _ in itertools.islice(stream, start * batch_size):  # replay the data order up to `start`
        pass
    result = TrainResult(model=model, steps=steps, tokens_seen=steps * tokens_per_step)
    record = _Recorder(model, optimizer, scheduler, result, tokens_per_step, checkpoint_steps,
                       eval_at, eval_sequences, on_checkpoint)

    t0 = time.perf_counter()
    bar = progress_bar(total=steps * tokens_per_step, initial=start * tokens_per_step, unit="tok",
                       unit_scale=True, dynamic_ncols=True, disable=progress is False,
                       desc=progress if isinstance(progress, str) else "train",
                       position=progress_position)
    model.train()
    if start == 0:
        record(0)
    for step in range(start + 1, steps + 1):
        idx = torch.tensor(list(itertools.islice(stream, batch_size)))
        batch = train_sequences[idx].to(dev, torch.long, non_blocking=True)
        record.losses.append(_update(model, batch, optimizer, scheduler, optim.grad_clip, dev))
        if record.wants(step):
            record(step)
            bar.set_postfix(loss=f"{result.train_curve[-1][1]:.3f}" if result.train_curve else "-",
                            refresh=False)
        bar.update(tokens_per_step)
    bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result


# --- checkpoint folders ------------------------------------------------------------------------

def checkpoint_dir(folder: Path, step: int) -> Path:
    return Path(folder) / f"checkpoint-{step}"


def trainer_state(state: TrainState, *, max_steps: int, batch_size: int, n_sequences: int,
                  extra: dict[str, Any] | None = None,
                  log_history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``trainer_state.json`` record with the HF Trainer's keys where they apply."""
    seen_sequences = state.step * batch_size
    return {
        "global_step": state.step,
        "max_steps": max_steps,
        "num_input_tokens_seen": state.tokens_seen,
        "tokens_seen": state.tokens_seen,
        "epoch": seen_sequences / n_sequences,
        "num_train_epochs": math.ceil(max_steps * batch_size / n_sequences),
        "train_batch_size": batch_size,
        "log_history": list(log_history or []),
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "is_hyper_param_search": False,
        "best_metric": None,
        "best_model_checkpoint": None,
        "trial_name": None,
        "trial_params": None,
        **(extra or {}),
    }


def save_checkpoint(folder: Path, step: int, model, tokenizer, state: dict[str, Any],
                    extra_files: dict[str, Any] | None = None) -> Path:
    """Write ``folder/checkpoint-<step>/`` (config.json, model.safetensors, trainer_state.json,
    tokenizer files, and ``extra_files`` saved with ``torch.save``) atomically."""
    final = checkpoint_dir(folder, step)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
    try:
        # a stale checkpoint of the same step (retraining) is replaced
        with atomic_folder(final, prefix=f"{PARTIAL_PREFIX}{step}-") as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True)
                                                    + "\n")
            for name, obj in (extra_files or {}).items():
                torch.save(obj, tmp / name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return final


def remove_partials(folder: Path) -> None:
    """Delete temporary folders left behind by a killed run."""
    for p in Path(folder).glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
