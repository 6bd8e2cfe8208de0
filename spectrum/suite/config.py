"""The manifest's ``suite:`` section: what ``spectrum suite`` trains, validated before any work.

Keys of ``suite:`` (defaults in brackets)::

    root: runs                 # folder for the suite's shared files (tokenizer, token cache, summary)
    corpus: {kind: ...}        # training text [evalset.corpus]; trained on its train split
    vocab_size: 2048           # byte-level BPE vocabulary, trained once on the train split
    context: 128               # training sequence length [evalset.context]
    learning_rate: 3.0e-3      # AdamW peak learning rate
    min_lr_ratio: 0.1          # cosine decay ends at learning_rate * min_lr_ratio on the last step
    warmup_steps: 10           # linear warmup, then cosine decay
    weight_decay: 0.1
    betas: [0.9, 0.95]
    grad_clip: 1.0             # max gradient norm (null: no clipping)
    log_checkpoints: 24        # log-spaced checkpoint steps in [1, steps] (before deduplication)
    checkpoints_per_doubling:  # instead of log_checkpoints: the same log-time grid for every run,
                               # warmup_steps * 2^(k / n) for k = 0, 1, ... up to the last step
    eval_sequences: 64         # validation sequences for the final loss in the summary
    sizes:                     # model sizes (GPT-NeoX, Pythia's architecture)
      m1: {width: 32, layers: 2, heads: 2}      # intermediate: 4 * width unless given

Checkpoints: step 0 and either ``log_checkpoints`` steps log-spaced over the whole run, or (with
``checkpoints_per_doubling``) a grid shared by all runs that starts at the end of the warmup, so
that checkpoints lie after the warmup, evenly in log-time, at the same steps in every run.

Each run that the suite trains has ``train: {size: m1, seed: 0}`` in ``runs:`` (``seed`` fixes
the initialization and the order of the training sequences). Its ``tokens`` (D) must be a multiple
of ``tokens_per_step``: the run trains ``tokens / tokens_per_step`` steps of
``tokens_per_step / context`` sequences. D counts every training token seen, repeats included:
while D is at most the train split's size no sequence repeats; beyond, the sequences are reshuffled
for each further pass. Its ``warmup_steps`` must equal ``suite.warmup_steps`` (the analysis leaves
the checkpoints at or before it out of the scored range). Its ``params`` (M) must equal the size's
non-embedding parameter count (all parameters except the input embedding and the output
projection, Pythia's convention).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectrum.errors import ManifestError
from spectrum.manifest import CorpusSpec, Manifest, RunSpec, _corpus, _Problems, _resolve
from spectrum.suite.train import OptimConfig

_SUITE_KEYS = {"root", "corpus", "vocab_size", "context", "learning_rate", "min_lr_ratio",
               "warmup_steps", "weight_decay", "betas", "grad_clip", "log_checkpoints",
               "eval_sequences", "sizes", "checkpoints_per_doubling"}
_SIZE_KEYS = {"width", "layers", "heads", "intermediate"}
_TRAIN_KEYS = {"size", "seed"}


@dataclass(frozen=True)
class ModelSize:
    """A GPT-NeoX shape: hidden ``width``, ``layers``, attention ``heads``, MLP ``intermediate``."""

    name: str
    width: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class SuiteConfig:
    """The shared hyperparameters of the suite (see the module doc for each key)."""

    root: Path
    corpus: CorpusSpec
    vocab_size: int = 2048
    context: int = 128
    optim: OptimConfig = OptimConfig()  # learning_rate, min_lr_ratio, warmup_steps, ...
    log_checkpoints: int = 24
    checkpoints_per_doubling: int | None = None  # if set, the shared log-time grid from the warmup
    eval_sequences: int = 64
    sizes: dict[str, ModelSize] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """One run the suite trains: where, which size, how long, which seed."""

    run: RunSpec
    size: ModelSize
    seed: int
    steps: int
    batch_size: int  # sequences per step = tokens_per_step / context
    checkpoint_steps: tuple[int, ...]

    @property
    def folder(self) -> Path:
        assert isinstance(self.run.checkpoints, Path)
        return self.run.checkpoints


@dataclass(frozen=True)
class SuitePlan:
    config: SuiteConfig
    runs: tuple[RunPlan, ...]
    base: Path  # the manifest's folder

    def fingerprint(self, plan: RunPlan) -> str:
        """A hash of everything that determines a run's checkpoints (hyperparameters, data, size)."""
        c = self.config
        corpus = asdict(c.corpus)
        if corpus["path"]:  # relative to the manifest: moving the whole folder keeps checkpoints valid
            corpus["path"] = os.path.relpath(corpus["path"], self.base)
        record = {
            "corpus": corpus, "vocab_size": c.vocab_size, "context": c.context, **asdict(c.optim),
            "size": asdict(plan.size) | {"name": None}, "seed": plan.seed, "steps": plan.steps,
            "batch_size": plan.batch_size,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def log_checkpoint_steps(steps: int, n: int) -> tuple[int, ...]:
    """Step 0, about ``n`` log-spaced integer steps in [1, steps] (deduplicated), and ``steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = np.unique(np.rint(np.geomspace(1, steps, max(n, 2))).astype(int))
    return tuple(sorted({0, steps, *grid.tolist()}))


def doubling_checkpoint_steps(steps: int, start: int, per_doubling: int) -> tuple[int, ...]:
    """Step 0, the grid ``start * 2^(k / per_doubling)`` (k = 0, 1, ...; rounded, deduplicated)
    up to ``steps``, and ``steps``. Runs with the same ``start`` share every grid step they reach."""
    if steps < 1 or start < 1 or per_doubling < 1:
        raise ValueError(f"steps, start and per_doubling must be >= 1, got {steps}, {start}, {per_doubling}")
    k = np.arange(math.floor(per_doubling * math.log2(max(steps / start, 1.0)) + 1e-9) + 1)
    grid = np.rint(start * 2.0 ** (k / per_doubling)).astype(int)
    return tuple(sorted({0, steps, *(int(s) for s in grid if s <= steps)}))


def gpt_neox_config(size: ModelSize, vocab_size: int, context: int, eos_token_id: int = 0):
    """The ``GPTNeoXConfig`` of a suite model (Pythia's defaults: untied embeddings,
    parallel residual, rotary embeddings on a quarter of each head, no dropout)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=size.width, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, intermediate_size=size.intermediate,
        max_position_embeddings=context, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
        tie_word_embeddings=False, use_cache=False)


def non_embedding_params(size: ModelSize) -> int:
    """Parameters of the model except the input embedding and the output projection (M)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(gpt_neox_config(size, vocab_size=8, context=8))
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def _number(pr: _Problems, where: str, value: Any, *, low: float, high: float = math.inf,
            low_open: bool = False) -> float | None:
    if isinstance(value, str):
        try:  # YAML 1.1 reads 3e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        pr.add(where, f"must be a number, got {value!r}")
        return None
    if value < low or value > high or (low_open and value == low):
        pr.add(where, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
        return None
    return float(value)


def _sizes(raw: Any, pr: _Problems) -> dict[str, ModelSize]:
    m = pr.mapping("suite.sizes", raw) if raw is not None else None
    if raw is None:
        pr.add("suite.sizes", "is required: a mapping of size names to {width, layers, heads}")
    if not m:
        if m is not None:
            pr.add("suite.sizes", "must name at least one model size")
        return {}
    sizes = {}
    for name, spec in m.items():
        where = f"suite.sizes.{name}"
        s = pr.mapping(where, spec)
        if s is None:
            continue
        pr.unknown_keys(where, s, _SIZE_KEYS)
        for key in ("width", "layers", "heads"):
            if key not in s:
                pr.add(f"{where}.{key}", "is required")
        width = pr.integer(f"{where}.width", s["width"], minimum=1) if "width" in s else None
        layers = pr.integer(f"{where}.layers", s["layers"], minimum=1) if "layers" in s else None
        heads = pr.integer(f"{where}.heads", s["heads"], minimum=1) if "heads" in s else None
        inter = pr.integer(f"{where}.intermediate", s["intermediate"], minimum=1) \
            if "intermediate" in s else (4 * width if width else None)
        if width and heads and width % heads:
            pr.add(f"{where}.heads", f"must divide width {width}, got {heads}")
            continue
        if None not in (width, layers, heads, inter):
            sizes[str(name)] = ModelSize(str(name), width, layers, heads, inter)
    return sizes


def _config(raw: dict, manifest: Manifest, pr: _Problems) -> SuiteConfig:
    pr.unknown_keys("suite", raw, _SUITE_KEYS)
    base = manifest.path.resolve().parent
    root = raw.get("root", "runs")
    if not isinstance(root, str) or not root:
        pr.add("suite.root", f"must be a folder, got {root!r}")
        root = "runs"
    corpus = manifest.evalset.corpus
    if raw.get("corpus") is not None:
        corpus = _corpus(raw["corpus"], "suite.corpus", base, pr) or corpus
    defaults = SuiteConfig(root=Path(), corpus=corpus, context=manifest.evalset.context)
    ints = {k: pr.integer(f"suite.{k}", raw.get(k, getattr(defaults, k)), minimum=lo)
            for k, lo in (("vocab_size", 257), ("context", 2), ("log_checkpoints", 2),
                          ("eval_sequences", 1))}
    if raw.get("checkpoints_per_doubling") is not None:
        if "log_checkpoints" in raw:
            pr.add("suite.checkpoints_per_doubling", "give either log_checkpoints or "
                                                     "checkpoints_per_doubling, not both")
        ints["checkpoints_per_doubling"] = pr.integer(
            "suite.checkpoints_per_doubling", raw["checkpoints_per_doubling"], minimum=1)
    o = defaults.optim
    optim = {
        "learning_rate": _number(pr, "suite.learning_rate", raw.get("learning_rate", o.learning_rate),
                                 low=0, low_open=True),
        "min_lr_ratio": _number(pr, "suite.min_lr_ratio", raw.get("min_lr_ratio", o.min_lr_ratio),
                                low=0, high=1),
        "weight_decay": _number(pr, "suite.weight_decay", raw.get("weight_decay", o.weight_decay), low=0),
        "warmup_steps": pr.integer("suite.warmup_steps", raw.get("warmup_steps", o.warmup_steps), minimum=0),
    }
    clip = raw.get("grad_clip", o.grad_clip)
    if clip is not None:
        clip = _number(pr, "suite.grad_clip", clip, low=0, low_open=True)
    betas = raw.get("betas", list(o.betas))
    if not (isinstance(betas, list) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        pr.add("suite.betas", f"must be two numbers in [0, 1), got {betas!r}")
        betas = list(o.betas)
    optim = OptimConfig(betas=(float(betas[0]), float(betas[1])), grad_clip=clip,
                        **{k: (v if v is not None else getattr(o, k)) for k, v in optim.items()})
    sizes = _sizes(raw.get("sizes"), pr)
    return SuiteConfig(
        root=_resolve(base, root), corpus=corpus, sizes=sizes, optim=optim,
        **{k: (v if v is not None else getattr(defaults, k)) for k, v in ints.items()})


def _plan_run(run: RunSpec, i: int, config: SuiteConfig, counts: dict[str, int],
              pr: _Problems) -> RunPlan | None:
    where = f"runs[{i}] ({run.name})"
    train = run.train or {}
    pr.unknown_keys(f"{where}.train", train, _TRAIN_KEYS)
    size_name = train.get("size")
    size = config.sizes.get(str(size_name)) if size_name is not None else None
    if size_name is None:
        pr.add(f"{where}.train.size", "is required: one of suite.sizes")
    elif size is None:
        pr.add(f"{where}.train.size", f"unknown size {size_name!r} (suite.sizes has: "
                                      f"{', '.join(config.sizes) or 'none'})")
    seed = pr.integer(f"{where}.train.seed", train.get("seed", 0), minimum=0)
    if not isinstance(run.checkpoints, Path):
        pr.add(f"{where}.checkpoints", "must be a folder for a run the suite trains (not hub revisions)")
        return None
    tps = run.tokens_per_step
    ok = True
    if tps % config.context:
        pr.add(f"{where}.tokens_per_step", f"{tps} is not a multiple of suite.context "
                                           f"{config.context} (a step is a batch of whole sequences)")
        ok = False
    steps = run.tokens / tps
    if not steps.is_integer() or steps < 1:
        fix = max(1, round(steps)) * tps
        pr.add(f"{where}.tokens", f"{run.tokens:g} is not a positive multiple of tokens_per_step "
                                  f"{tps}; use {fix} ({fix // tps} steps)")
        ok = False
    elif steps <= config.optim.warmup_steps:
        pr.add(f"{where}.tokens", f"{int(steps)} steps do not exceed suite.warmup_steps "
                                  f"{config.optim.warmup_steps}")
        ok = False
    if run.warmup_steps != config.optim.warmup_steps:
        pr.add(f"{where}.warmup_steps", f"{run.warmup_steps} but the suite warms up for "
                                        f"{config.optim.warmup_steps} steps (suite.warmup_steps); "
                                        f"write warmup_steps: {config.optim.warmup_steps}")
        ok = False
    if size is not None:
        if size.name not in counts:  # not setdefault: its default would build the model every time
            counts[size.name] = non_embedding_params(size)
        count = counts[size.name]
        if run.params != count:
            pr.add(f"{where}.params", f"{run.params:g} but size {size.name} has {count} non-embedding "
                                      f"parameters; write params: {count}")
            ok = False
    if not ok or size is None or seed is None:
        return None
    steps = int(steps)
    return RunPlan(run=run, size=size, seed=seed, steps=steps, batch_size=tps // config.context,
                   checkpoint_steps=checkpoint_schedule(config, steps))


def checkpoint_schedule(config: SuiteConfig, steps: int) -> tuple[int, ...]:
    """The checkpoint steps of a run of ``steps`` steps (see the module doc)."""
    if config.checkpoints_per_doubling is None:
        return log_checkpoint_steps(steps, config.log_checkpoints)
    return doubling_checkpoint_steps(steps, max(config.optim.warmup_steps, 1),
                                     config.checkpoints_per_doubling)


def plan_suite(manifest: Manifest) -> SuitePlan | None:
    """Validate the ``suite:`` section and the runs it trains; None if there is nothing to train.

    Raises :class:`ManifestError` listing every problem, each with its location.
    """
    trained = [(i, r) for i, r in enumerate(manifest.runs) if r.train is not None]
    if manifest.suite is None:
        if trained:
            i, r = trained[0]
            raise ManifestError(f"{manifest.path}: runs[{i}] ({r.name}).train: needs a suite: section "
                                f"with the model sizes")
        return None
    if not trained:
        return None
    pr = _Problems(manifest.path)
    config = _config(manifest.suite, manifest, pr)
    counts: dict[str, int] = {}
    plans = [_plan_run(r, i, config, counts, pr) for i, r in trained]
    if pr.items:
        raise ManifestError(*pr.items)
    return SuitePlan(config=config, runs=tuple(p for p in plans if p is not None),
                     base=manifest.path.resolve().parent)
