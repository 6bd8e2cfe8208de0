"""Checkpoints written the way users write them: Hugging Face's own ``Trainer``.

:func:`write_trainer_runs` trains one tiny causal LM per architecture of :data:`ARCHITECTURES`
with ``transformers.Trainer`` on a small text corpus and a byte-level BPE tokenizer trained on
the spot. Each run leaves Trainer's ``checkpoint-<step>/`` folders (config.json,
model.safetensors, trainer_state.json and the tokenizer) at irregular steps, as a user's own
``save_steps`` plus a callback that saves early checkpoints would. :func:`write_manifest` writes
a manifest for them as the README describes it.

- ``gpt2-tied``: GPT-2 with tied input/output embeddings (the transformers default);
- ``neox-untied``: GPT-NeoX with untied embeddings (Pythia's architecture);
- ``llama-tied``: a Llama-style configuration with ``tie_word_embeddings=True``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

VOCAB = 300
CONTEXT = 32  # training and evaluation windows
BATCH = 8
TOKENS_PER_STEP = BATCH * CONTEXT
MAX_STEPS = 22
SAVE_STEPS = 10  # Trainer saves at 10, 20 and the last step
EARLY_SAVES = (1, 3, 6)  # and a callback at these: checkpoints at 1, 3, 6, 10, 20, 22


def _gpt2(vocab: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                      bos_token_id=0, eos_token_id=0)


def _neox(vocab: int) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def _llama(vocab: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, tie_word_embeddings=True, bos_token_id=0,
                       eos_token_id=0, pad_token_id=0)


ARCHITECTURES: dict[str, Callable[[int], Any]] = {
    "gpt2-tied": _gpt2, "neox-untied": _neox, "llama-tied": _llama}
TIED = {"gpt2-tied": True, "neox-untied": False, "llama-tied": True}


@dataclass(frozen=True)
class TrainerRun:
    name: str
    folder: Path  # holds checkpoint-<step>/
    params: int  # non-embedding parameters
    steps: tuple[int, ...]  # the steps Trainer saved


@dataclass(frozen=True)
class TrainerRuns:
    root: Path
    corpus: str  # glob of the text files
    runs: tuple[TrainerRun, ...]


def _blocks(tokenizer: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The corpus as one token stream cut into CONTEXT-token training examples."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // CONTEXT
    return [{"input_ids": torch.tensor(ids[i * CONTEXT:(i + 1) * CONTEXT]),
             "labels": torch.tensor(ids[i * CONTEXT:(i + 1) * CONTEXT])} for i in range(n)]


def _non_embedding_params(model: Any) -> int:
    embeddings = {id(model.get_input_embeddings().weight),
                  id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def _train(name: str, folder: Path, tokenizer: Any, data: list[dict[str, Any]]) -> TrainerRun:
    import torch
    from transformers import (AutoModelForCausalLM, Trainer, TrainerCallback,
                              TrainingArguments)

    class EarlySaves(TrainerCallback):
        """Saves at EARLY_SAVES besides Trainer's own save_steps: irregular steps."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step in EARLY_SAVES:
                control.should_save = True
            return control

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[name](len(tokenizer)))
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) \
        == TIED[name], name
    args = TrainingArguments(
        output_dir=str(folder), max_steps=MAX_STEPS, per_device_train_batch_size=BATCH,
        learning_rate=5e-3, warmup_steps=2, lr_scheduler_type="cosine", weight_decay=0.0,
        save_strategy="steps", save_steps=SAVE_STEPS, save_only_model=True, use_cpu=True,
        report_to="none", disable_tqdm=True, logging_strategy="no", seed=0,
        dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
            callbacks=[EarlySaves()]).train()
    steps = tuple(sorted(int(p.name.removeprefix("checkpoint-"))
                         for p in folder.glob("checkpoint-*")))
    return TrainerRun(name, folder, _non_embedding_params(model), steps)


def write_trainer_runs(root: Path, corpus_glob: str) -> TrainerRuns:
    """Train the tokenizer on the corpus, then one run per architecture in ``root/runs/<name>``."""
    from transformers.utils import logging as hf_logging

    from spectrum.data.tokenizer import train_tokenizer

    texts = [Path(f).read_text() for f in sorted(glob.glob(corpus_glob))]
    tokenizer = train_tokenizer(texts, VOCAB)
    data = _blocks(tokenizer, texts)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        runs = tuple(_train(name, root / "runs" / name, tokenizer, data)
                     for name in ARCHITECTURES)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return TrainerRuns(root, corpus_glob, runs)


def write_manifest(runs: TrainerRuns, folder: Path, names: list[str] | None = None) -> Path:
    """A manifest in ``folder`` (its ``out`` there too) for the named runs (default: all), written
    as a user would from the README: the runs' ``checkpoints`` folders, M, D, tokens per step and
    a role; the evalset's tokenizer is the first run's first checkpoint's."""
    chosen = [r for r in runs.runs if names is None or r.name in names]
    entries = [{"name": r.name, "params": r.params, "tokens": MAX_STEPS * TOKENS_PER_STEP,
                "tokens_per_step": TOKENS_PER_STEP, "role": "heldout" if i == 2 else "fit",
                "checkpoints": str(r.folder)} for i, r in enumerate(chosen)]
    manifest = {"out": "artifacts",
                "evalset": {"corpus": {"kind": "text", "path": runs.corpus,
                                       "validation_fraction": 0.15},
                            "split": "validation", "tokenizer": None, "sequences": 16,
                            "context": CONTEXT, "seed": 0},
                "runs": entries}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path
