"""EleutherAI's Pythia and PolyPythias suites: the facts the presets are built from, and the
presets themselves (``configs/pythia.yaml``, ``configs/polypythias.yaml``).

From EleutherAI's documentation (the pythia repository's README, its ``models/*.yml`` training
configurations and the model cards on the Hugging Face hub):

- every model is trained for 143,000 steps of 1024 sequences x 2048 tokens = 2,097,152 tokens
  (299,892,736,000 tokens in all: one data scale D for the whole suite);
- the learning rate warms up for 1% of the steps (``"warmup": 0.01`` in every configuration):
  1,430 steps, then decays by a cosine (``"lr-decay-style": "cosine"``, ``"lr-decay-iters":
  143000``) to ``min_lr``, a tenth of the peak, at step 143,000; the peak (``optimizer.params.lr``)
  is 1e-3 for 14M, 31M and 70M, 6e-4 for 160M, 3e-4 for 410M, 2.5e-4 for 1B, 2e-4 for 1.4B and
  1.2e-4 for 6.9B and 12B (the PolyPythias seeds repeat their size's configuration);
- 154 checkpoints per model, revisions ``step0``, ``step1``, ``step2``, ``step4``, ...,
  ``step512``, then ``step1000`` to ``step143000`` every 1,000 steps;
- the main models were trained with seed 1234 (GPT-NeoX's default); PolyPythias adds seeds 1 to
  9 of the 14M, 31M, 70M, 160M and 410M models as ``EleutherAI/pythia-<size>-seed<n>``;
- non-embedding parameters: Pythia's table (70M: 18,915,328 ... 12B: 11,327,027,200); 14M and
  31M are not in it and are counted from their configurations by the same convention
  (:mod:`spectrum.data.param_count`).

Checkpoints known to be broken upstream are avoided by the presets' shared step grid
(:data:`AVOID_STEPS`), and pythia-2.8b is left out: most of its step revisions on the hub hold
the weights of its final checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TRAIN_STEPS = 143_000
TOKENS_PER_STEP = 1024 * 2048  # 2,097,152
TRAIN_TOKENS = TRAIN_STEPS * TOKENS_PER_STEP  # 299,892,736,000
WARMUP_STEPS = round(0.01 * TRAIN_STEPS)  # 1,430
EARLY_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CHECKPOINT_STEPS = (0, *EARLY_STEPS, *range(1000, TRAIN_STEPS + 1, 1000))
MAIN_SEED = 1234
EXTRA_SEEDS = tuple(range(1, 10))
CONTEXT = 2048
# step revisions reported missing or holding another checkpoint's weights (pythia-410m-seed9
# step40000, -seed6 step88000, -seed2 step111000 have no weights; pythia-12b step50000 and
# step58000 serve the final model's first shard): the shared grid steps around them
AVOID_STEPS = frozenset({40_000, 50_000, 58_000, 88_000, 111_000})


@dataclass(frozen=True)
class Size:
    """One Pythia model size: its hub name, shape and non-embedding parameter count."""

    name: str  # as in the hub id: pythia-<name>
    layers: int
    width: int
    heads: int
    params: int  # non-embedding parameters (Pythia's table; 14m and 31m counted)
    peak_lr: float | None = None  # the training configuration's peak learning rate

    def config(self, vocab_size: int = 50_304) -> dict[str, Any]:
        """The model's config.json as far as the parameter count needs it."""
        return {"model_type": "gpt_neox", "num_hidden_layers": self.layers,
                "hidden_size": self.width, "num_attention_heads": self.heads,
                "intermediate_size": 4 * self.width, "vocab_size": vocab_size,
                "max_position_embeddings": CONTEXT, "tie_word_embeddings": False}


SIZES = {s.name: s for s in (
    Size("14m", 6, 128, 4, 1_189_888, 1e-3),
    Size("31m", 6, 256, 8, 4_739_072, 1e-3),
    Size("70m", 6, 512, 8, 18_915_328, 1e-3),
    Size("160m", 12, 768, 12, 85_056_000, 6e-4),
    Size("410m", 24, 1024, 16, 302_311_424, 3e-4),
    Size("1b", 16, 2048, 8, 805_736_448, 2.5e-4),
    Size("1.4b", 24, 2048, 16, 1_208_602_624, 2e-4),
    Size("2.8b", 32, 2560, 32, 2_517_652_480),
    Size("6.9b", 32, 4096, 32, 6_444_163_072, 1.2e-4),
    Size("12b", 36, 5120, 40, 11_327_027_200, 1.2e-4),
)}
SEEDED_SIZES = ("14m", "31m", "70m", "160m", "410m")


def repo_id(size: str, seed: int = MAIN_SEED) -> str:
    """The hub repository of a size and seed (seed 1234 has no suffix)."""
    return f"EleutherAI/pythia-{size}" + ("" if seed == MAIN_SEED else f"-seed{seed}")


def log_spaced_steps(n: int, first: int, last: int = TRAIN_STEPS,
                     available: tuple[int, ...] = CHECKPOINT_STEPS,
                     avoid: frozenset[int] = AVOID_STEPS) -> tuple[int, ...]:
    """``n`` distinct checkpoint steps from ``available`` in ``[first, last]``, as evenly spread
    in log step as the grid allows: the checkpoint nearest in log step to each of ``n`` targets,
    where a target's nearest is taken the next free one on the side of its target."""
    pool = sorted(s for s in available if first <= s <= last and s not in avoid)
    if n > len(pool):
        raise ValueError(f"only {len(pool)} checkpoints lie in [{first}, {last}]")
    targets = [math.exp(math.log(first) + i * (math.log(last) - math.log(first)) / (n - 1))
               for i in range(n)]
    chosen: list[int] = []
    for i, t in enumerate(targets):
        free = [s for s in pool if (not chosen or s > chosen[-1])]
        # leave enough checkpoints after this one for the targets still to come
        free = free[:len(free) - (n - 1 - i)] if n - 1 - i else free
        chosen.append(min(free, key=lambda s: abs(math.log(s) - math.log(t))))
    return tuple(chosen)


DEFAULT_SCORED = 30  # checkpoints after the warmup in the presets


def preset_steps() -> tuple[int, ...]:
    """The presets' default steps: step 0, then :data:`DEFAULT_SCORED` log-spaced checkpoints
    from the first one after the warmup to the last."""
    first = min(s for s in CHECKPOINT_STEPS if s > WARMUP_STEPS)
    return (0, *log_spaced_steps(DEFAULT_SCORED, first))


MIN_LR_RATIO = 0.1  # min_lr over the peak in every configuration


def schedule(size: str) -> dict[str, Any]:
    """The run's learning-rate schedule in the manifest's ``schedule:`` form."""
    return {"kind": "cosine", "peak_lr": SIZES[size].peak_lr, "warmup_steps": WARMUP_STEPS,
            "min_lr_ratio": MIN_LR_RATIO}


def _run(size: str, seed: int, role: str) -> dict[str, Any]:
    name = f"pythia-{size}" + ("" if seed == MAIN_SEED else f"-seed{seed}")
    return {"name": name, "params": SIZES[size].params, "tokens": TRAIN_TOKENS,
            "tokens_per_step": TOKENS_PER_STEP, "warmup_steps": WARMUP_STEPS, "role": role,
            "seed": seed, "schedule": schedule(size),
            "checkpoints": {"hub": repo_id(size, seed),
                            "revisions": [f"step{s}" for s in CHECKPOINT_STEPS
                                          if s <= WARMUP_STEPS or s in set(preset_steps())]}}


# Pythia: one seed, one D; the fit sizes span 14M to 1.4B, 410M is held out between them
# (interpolation) and the two largest beyond them (extrapolation); two PolyPythias seeds of
# 410M give the held-out point its noise ceiling
PYTHIA_RUNS = (("14m", MAIN_SEED, "fit"), ("31m", MAIN_SEED, "fit"), ("70m", MAIN_SEED, "fit"),
               ("160m", MAIN_SEED, "fit"), ("1b", MAIN_SEED, "fit"), ("1.4b", MAIN_SEED, "fit"),
               ("410m", MAIN_SEED, "heldout"), ("410m", 1, "heldout"), ("410m", 3, "heldout"),
               ("6.9b", MAIN_SEED, "heldout"), ("12b", MAIN_SEED, "heldout"))
# PolyPythias: fit sizes 14M, 31M, 160M with seeds 1234 and 1-4; held out 70M (interpolation)
# and 410M (extrapolation, the largest) with seeds 5-9, which no fit run uses: five seed
# replicas at each held-out point, paired by seed between the two held-out sizes
POLYPYTHIAS_RUNS = tuple(
    [(size, seed, "fit") for size in ("14m", "31m", "160m") for seed in (MAIN_SEED, 1, 2, 3, 4)]
    + [(size, seed, "heldout") for size in ("70m", "410m") for seed in (5, 6, 7, 8, 9)])

EVALSET = {"corpus": {"kind": "jsonl", "path": "data/pile-val/*.jsonl", "field": "text"},
           "split": "all", "tokenizer": None, "sequences": 512, "context": CONTEXT, "seed": 0}


def preset(runs: tuple[tuple[str, int, str], ...], out: str) -> dict[str, Any]:
    """A manifest (as YAML data) for ``runs`` of (size, seed, role)."""
    return {"out": out, "evalset": EVALSET,
            "runs": [{**_run(size, seed, role), "steps": list(preset_steps())}
                     for size, seed, role in runs]}


def _flow(items: list[Any]) -> str:
    """A YAML flow sequence wrapped at 100 columns."""
    lines, line = [], ""
    for text in map(str, items):
        if line and len(line) + len(text) + 2 > 88:
            lines.append(line + ",")
            line = text
        else:
            line = f"{line}, {text}" if line else text
    lines.append(line)
    return "[" + "\n        ".join(lines) + "]"


def _flow_map(m: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "}"


def preset_yaml(runs: tuple[tuple[str, int, str], ...], out: str, header: str) -> str:
    """:func:`preset` as YAML text: the revisions and steps written once (YAML anchors) and
    shared by every run, so one key chooses the steps of all runs."""
    data = preset(runs, out)
    ev = data["evalset"]
    text = [header.rstrip(), "", f"out: {out}", "evalset:",
            f"  corpus: {{kind: {ev['corpus']['kind']}, path: \"{ev['corpus']['path']}\", "
            f"field: {ev['corpus']['field']}}}",
            f"  split: {ev['split']}", "  tokenizer: null       # the first checkpoint's",
            f"  sequences: {ev['sequences']}", f"  context: {ev['context']}",
            f"  seed: {ev['seed']}", "runs:"]
    for i, run in enumerate(data["runs"]):
        revisions = ("&revisions " + _flow(run["checkpoints"]["revisions"])) if i == 0 \
            else "*revisions"
        steps = ("&steps " + _flow(run["steps"])) if i == 0 else "*steps"
        text += [f"  - name: {run['name']}", f"    params: {run['params']}",
                 f"    tokens: {run['tokens']}", f"    tokens_per_step: {run['tokens_per_step']}",
                 f"    warmup_steps: {run['warmup_steps']}", f"    role: {run['role']}",
                 f"    seed: {run['seed']}", f"    schedule: {_flow_map(run['schedule'])}",
                 f"    checkpoints:", f"      hub: {run['checkpoints']['hub']}",
                 f"      revisions: {revisions}", f"    steps: {steps}"]
    return "\n".join(text) + "\n"


_COMMON_HEADER = """\
# Steps: every run reads the same checkpoints: step0, and 30 checkpoints log-spaced in step
# from step2000, the first after the warmup (1,430 steps, 1% of 143,000), to step143000. The
# early checkpoints step1 ... step512 and step1000 (within the warmup: evaluated and shown,
# never scored) are listed in `revisions`; to evaluate them too, set the first run's
# `steps: &steps null`, which every run shares. Only the revisions of the chosen steps need to
# be in the local Hugging Face cache (download them with `hf download <repo>
# --revision step<N>`); `spectrum plan --config <this file>` lists the ones missing.
# Time: 1024 sequences x 2048 tokens = 2,097,152 tokens per step; D = 143,000 steps =
# 299,892,736,000 tokens for every run: one data scale, so the dL/dD targets are null with their
# reason. M: Pythia's published non-embedding parameter counts (14m and 31m counted from their
# configs by the same convention; `params: auto` gives the same numbers). Schedule: each
# size's peak learning rate, warmup and cosine decay to a tenth of the peak, as its training
# configuration in the pythia repository's models/ gives them (the schedule_law baseline reads it).
# Evalset: the Pile's validation documents as JSON lines (field text) under data/pile-val/,
# relative to this file; any corpus kind of the manifest works (see the README).
# Regenerate with `python -m spectrum.data.public_suites` (spectrum/data/public_suites.py)."""

PYTHIA_HEADER = """\
# EleutherAI's Pythia suite (github.com/EleutherAI/pythia): GPT-NeoX models of 14M to 12B
# parameters trained on the same 300B tokens of the Pile in the same order, seed 1234.
# Fit runs: 14m, 31m, 70m, 160m, 1b, 1.4b. Held out: 410m (interpolation, between 160m and 1b)
# with its PolyPythias seed replicas 410m-seed1 and -seed3 (the noise ceiling), and 6.9b and
# 12b (extrapolation: the largest sizes). The held-out runs of seed 1234 share their seed with
# the fit runs (the suite has one seed); 6.9b and 12b were initialised differently from the
# others (an erratum of the Pythia README). pythia-2.8b is left out: most of its step
# revisions on the hub hold the weights of its final checkpoint.
""" + _COMMON_HEADER

POLYPYTHIAS_HEADER = """\
# PolyPythias (van der Wal et al., ICLR 2025): Pythia 14M, 31M, 70M, 160M and 410M, each
# trained with seed 1234 (the Pythia models) and seeds 1 to 9 (EleutherAI/pythia-<size>-seed<n>),
# identical otherwise; the seed changes the initialisation and the data order.
# Fit runs: 14m, 31m and 160m with seeds 1234, 1, 2, 3, 4. Held out: 70m (interpolation) and
# 410m (extrapolation: the largest size) with seeds 5 to 9, which no fit run uses: five seed
# replicas at each held-out point (the noise ceiling), paired by seed across the two sizes
# for dL/dM (the same seed: the same data order). The other 25 runs of the suite can be added
# as more replicas (their names follow the same pattern); the hub also holds
# pythia-160m-data-seed1..3 and pythia-160m-weight-seed1..3, with only the data order or only
# the initialisation varied.
""" + _COMMON_HEADER

PRESETS = {"pythia": (PYTHIA_RUNS, "artifacts/pythia", PYTHIA_HEADER),
           "polypythias": (POLYPYTHIAS_RUNS, "artifacts/polypythias", POLYPYTHIAS_HEADER)}


if __name__ == "__main__":
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, (runs, out, header) in PRESETS.items():
        (root / f"{name}.yaml").write_text(preset_yaml(runs, out, header))
        print(root / f"{name}.yaml")
