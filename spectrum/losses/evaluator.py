"""Per-token loss of one model over the evaluation set (no Ray; see ``pipelines/losses.py``).

Token ``i`` of the evalset is the target ``input_ids[s, p]`` (``1 <= p < context``) predicted
from ``input_ids[s, :p]``; its loss is ``-log softmax(logits[s, p-1])[target]`` in nats. The
evaluator returns a float32 array of shape ``(sequences, context - 1)`` whose row-major
flattening is in ``token_idx`` order.

How it computes: the transformer body runs on a batch of sequences, then the output projection
and the cross-entropy run over chunks of positions, so that logits exist for one chunk at a time
and never for the whole batch (at context 2048 and a 50k vocabulary a batch of 8 would otherwise
need 3.3 GB of fp32 logits). On CUDA the weights are bf16, attention is PyTorch's
scaled-dot-product attention, the cross-entropy is a compiled kernel that reads the bf16 logits
once and accumulates in fp32 (no fp32 copy of the logits is written), and the batch size is found
automatically: it starts large and halves on out-of-memory, remembering what fitted. On CPU
everything is fp32; the compiled cross-entropy is optional there (``fused=True``; the losses stage
uses it: small models spend most of their time in the log-sum-exp over the vocabulary).

Accuracy: in fp32 the losses agree with transformers' own cross-entropy
(``model(input_ids, labels=...)``) within 1e-4 nats per token (tested). In bf16 (weights,
activations and logits in bf16; log-sum-exp in fp32) a token's loss differs from the fp32 value
by up to about 0.1 nats, mean absolute difference about 0.01 nats on small GPT-NeoX models
(measured on CPU by ``tests/test_losses.py::test_bf16_tolerance``); use fp32 where single-token
precision matters more than speed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectrum.errors import SpectrumError
from spectrum.data.evalset import vocab_hash

# fp32 logits materialised at once: rows * vocab <= this (256 MiB)
MAX_LOGIT_ELEMENTS = 1 << 26
# tokens per batch the CUDA batch-size search starts from
CUDA_START_TOKENS = 1 << 16
# tokens per batch on CPU (larger batches are slower for small models: cache misses)
CPU_BATCH_TOKENS = 1 << 11

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "special_tokens_map.json")

# transformers' ``from_pretrained`` is not safe in several threads of one process: with tied
# input/output embeddings a concurrent load can leave ``lm_head.weight`` on the meta device and
# report it missing. Every load of this process (the background prefetch of the losses stage's
# worker included) takes this lock, so loads run one after another while evaluation overlaps them.
LOAD_LOCK = threading.RLock()

MAX_NAMED_WEIGHTS = 3  # weights named in a message; the rest are counted


def _named(keys: Any, shown: int = MAX_NAMED_WEIGHTS) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def weight_problems(info: dict[str, Any]) -> list[str]:
    """What transformers' loading info says does not fit: weights of the model that the
    checkpoint lacks (they would be fresh random values), weights of the checkpoint that the model
    has no place for, and weights whose shapes differ from what config.json implies."""
    problems = []
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = info.get("mismatched_keys") or ()
    if missing:
        problems.append(f"{len(missing)} weights of the model are missing from the checkpoint "
                        f"({_named(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights of the checkpoint have no place in the model "
                        f"({_named(unexpected)})")
    if mismatched:
        shown = sorted((str(k), tuple(a), tuple(b)) for k, a, b in mismatched)
        detail = "; ".join(f"{k}: {'x'.join(map(str, a))} in the file, "
                           f"{'x'.join(map(str, b))} by config.json"
                           for k, a, b in shown[:MAX_NAMED_WEIGHTS])
        more = f" and {len(shown) - MAX_NAMED_WEIGHTS} more" if len(shown) > MAX_NAMED_WEIGHTS else ""
        problems.append(f"{len(shown)} weights have other shapes than config.json implies "
                        f"({detail}{more})")
    problems += [str(m).strip().splitlines()[0] for m in info.get("error_msgs") or () if str(m)]
    return problems


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a causal LM checkpoint for evaluation (eval mode, SDPA attention).

    Loading is strict: an unreadable checkpoint (missing or broken config, truncated weights), or
    one whose weights do not fit its config.json (a weight missing, unexpected, or of another
    shape, as when ``num_hidden_layers`` or ``hidden_size`` was edited), raises
    :class:`SpectrumError` naming the checkpoint's path, instead of evaluating a model with
    freshly initialised weights.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SpectrumError(f"checkpoint {path}: cannot be read: config.json is missing")
    with LOAD_LOCK:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the problems are reported below, one line
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation="sdpa", local_files_only=True,
                output_loading_info=True, ignore_mismatched_sizes=True)
        except Exception as e:  # safetensors, json, OSError, ValueError: all mean "unreadable"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpectrumError(f"checkpoint {path}: cannot be read: {msg}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
    problems = weight_problems(info)
    if problems:
        raise SpectrumError(f"checkpoint {path}: its weights do not fit its config.json: "
                            + "; ".join(problems))
    return model.to(device).eval()


def _tokenizer_files(folder: Path) -> list[Path]:
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


_VOCAB_HASHES: dict[str, str] = {}


def checkpoint_vocab_hash(folder: str | Path) -> str | None:
    """The vocabulary hash of the tokenizer saved with a checkpoint, or None if it has none.

    Memoised on the tokenizer files' bytes: a suite saves the same tokenizer in every checkpoint.
    """
    from transformers import AutoTokenizer

    files = _tokenizer_files(Path(folder))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    key = h.hexdigest()
    if key not in _VOCAB_HASHES:
        try:
            with LOAD_LOCK:
                tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise SpectrumError(f"checkpoint {folder}: its tokenizer cannot be read: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from None
        _VOCAB_HASHES[key] = vocab_hash(tok)
    return _VOCAB_HASHES[key]


def check_compatible(path: str | Path, config: Any, evalset_meta: dict[str, Any]) -> None:
    """Raise :class:`SpectrumError` naming the checkpoint if it cannot be evaluated on the evalset:
    a tokenizer with another vocabulary, an embedding smaller than the evalset's vocabulary, or a
    context longer than the model's positions.

    ``evalset_meta`` is the evalset's meta.json (``context``, ``tokenizer.vocab_hash``,
    ``tokenizer.vocab_size``).
    """
    tok = evalset_meta["tokenizer"]
    context = int(evalset_meta["context"])
    problems = []
    theirs = checkpoint_vocab_hash(path)
    if theirs is not None and theirs != tok["vocab_hash"]:
        problems.append(f"checkpoint {path}: its tokenizer's vocabulary differs from the "
                        f"evalset's (tokenizer {tok['source']}); rebuild the evalset with this "
                        "tokenizer or evaluate checkpoints of the same tokenizer")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and vocab < int(tok["vocab_size"]):
        problems.append(f"checkpoint {path}: vocab_size {vocab} is smaller than the evalset "
                        f"tokenizer's {tok['vocab_size']} tokens")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < context:
        problems.append(f"checkpoint {path}: the evalset's context {context} exceeds the model's "
                        f"max_position_embeddings {positions}")
    if problems:
        raise SpectrumError(*problems)


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The transformer body (returning final normed hidden states) and the output projection,
    or None when the logits are not a plain linear map of them (soft-capping, scaling)."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or \
            getattr(cfg, "logit_scale", None) not in (None, 1, 1.0) or \
            getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        return None
    head = model.get_output_embeddings()
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, nn.Linear) or body is None or body is model:
        return None
    return body, head


def _logsumexp_minus_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in fp32 of (possibly bf16) logits. Compiled, the upcast is fused into the
    reductions: the logits are read once in their own dtype and no fp32 copy is written."""
    lf = logits.float()
    return torch.logsumexp(lf, dim=-1) - lf.gather(-1, targets[:, None])[:, 0]


_FUSED: dict[str, Any] = {}  # "broken": compiling failed once in this process


@functools.cache
def _fused_cross_entropy() -> Any:
    """The compiled cross-entropy, built once per process."""
    return torch.compile(_logsumexp_minus_target, dynamic=False)


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                          *, max_logit_elements: int = MAX_LOGIT_ELEMENTS,
                          fused: bool = False) -> torch.Tensor:
    """Per-row cross-entropy of ``head(hidden)`` against ``targets`` (fp32, nats), computing the
    logits ``rows`` at a time so that at most ``max_logit_elements`` logits exist at once.

    ``fused``: compute log-sum-exp with a ``torch.compile``d kernel that reads the logits in their
    own dtype (bf16 on GPUs) instead of materialising an fp32 copy; falls back to the eager
    computation (with a warning) if compiling fails. ``hidden``: (n, d); ``targets``: (n,);
    returns (n,) float32.
    """
    n = hidden.shape[0]
    vocab = head.out_features if isinstance(head, nn.Linear) else head(hidden[:1]).shape[-1]
    rows = max(1, max_logit_elements // vocab)
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for i in range(0, n, rows):
        logits, t = head(hidden[i:i + rows]), targets[i:i + rows]
        if fused and not _FUSED.get("broken"):
            try:
                out[i:i + rows] = _fused_cross_entropy()(logits, t)
                continue
            except Exception as e:  # no compiler or Triton: the eager path gives the same numbers
                _FUSED["broken"] = True
                logging.getLogger(__name__).warning(
                    "fused cross-entropy unavailable (%s); using the eager one", type(e).__name__)
        out[i:i + rows] = F.cross_entropy(logits.float(), t, reduction="none")
    return out


@torch.inference_mode()
def batch_losses(model: nn.Module, input_ids: torch.Tensor,
                 *, max_logit_elements: int = MAX_LOGIT_ELEMENTS, fused: bool = False
                 ) -> torch.Tensor:
    """Losses (B, C-1) float32 of one batch of sequences ``input_ids`` (B, C) on the model's device."""
    b, c = input_ids.shape
    targets = input_ids[:, 1:].reshape(-1)
    split = body_and_head(model)
    if split is None:  # the model's own logits, cross-entropy in chunks (eager)
        hidden, head = model(input_ids=input_ids, use_cache=False).logits[:, :-1], nn.Identity()
        fused = False
    else:
        body, head = split
        hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(b * (c - 1), hidden.shape[-1])
    return chunked_cross_entropy(hidden, head, targets, max_logit_elements=max_logit_elements,
                                 fused=fused).view(b, c - 1)


class Evaluator:
    """Per-token losses of models over one evalset, kept on ``device``.

    >>> ev = Evaluator(input_ids, device="cuda")      # (sequences, context) token ids
    >>> losses = ev(model)                            # (sequences, context-1) float32, on CPU

    ``batch_size`` (sequences per forward pass) is found automatically on CUDA when None: the
    search starts at about 65k tokens per batch and halves on out-of-memory; the size that worked
    is kept for later models. On CPU it defaults to about 2k tokens per batch (larger batches are
    no faster for small models). ``fused`` (default: on CUDA) compiles the cross-entropy so that
    it reads bf16 logits without an fp32 copy (see :func:`chunked_cross_entropy`).
    """

    def __init__(self, input_ids: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                 *, batch_size: int | None = None,
                 max_logit_elements: int = MAX_LOGIT_ELEMENTS, fused: bool | None = None) -> None:
        self.device = torch.device(device)
        self.fused = self.device.type == "cuda" if fused is None else fused
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
        if ids.ndim != 2 or ids.shape[1] < 2:
            raise ValueError(f"input_ids must be (sequences, context >= 2), got {tuple(ids.shape)}")
        self.input_ids = ids.to(self.device)
        self.max_logit_elements = max_logit_elements
        s, c = ids.shape
        if batch_size is None:
            tokens = CUDA_START_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS
            batch_size = max(1, tokens // c)
        self.batch_size = max(1, min(batch_size, s))

    @property
    def num_tokens(self) -> int:
        s, c = self.input_ids.shape
        return s * (c - 1)

    def __call__(self, model: nn.Module) -> np.ndarray:
        s, c = self.input_ids.shape
        out = torch.empty(s, c - 1, dtype=torch.float32, device=self.device)
        i = 0
        while i < s:
            j = min(s, i + self.batch_size)
            try:
                out[i:j] = batch_losses(model, self.input_ids[i:j], fused=self.fused,
                                        max_logit_elements=self.max_logit_elements)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                oom = True
            else:
                oom = False
                i = j
            if oom:  # outside the except block, so the failed batch's tensors are freed
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                logging.getLogger(__name__).info("out of memory: batch size -> %d", self.batch_size)
        return out.cpu().numpy()


def token_losses(model: nn.Module, input_ids: np.ndarray | torch.Tensor,
                 *, batch_size: int | None = None) -> np.ndarray:
    """Per-token losses (sequences, context-1) float32 of ``model`` on ``input_ids`` (sequences,
    context), on the model's device. See :class:`Evaluator`."""
    device = next(model.parameters()).device
    return Evaluator(input_ids, device, batch_size=batch_size)(model)
