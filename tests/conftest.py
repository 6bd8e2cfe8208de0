"""Shared fixtures.

- ``write_micro_manifest``: a function ``(folder, runs=None, **suite) -> Path`` writing a
  valid micro-suite manifest into ``folder`` with its corpus (80 small Python-like .txt files in
  ``folder/corpus/``); ``runs`` is a list of ``(name, size, steps, seed, role)``, ``suite``
  overrides keys of the ``suite:`` section. Nothing is trained.
- ``micro_suite``: (session) the manifest path of a trained micro suite: sizes ``s1`` (width 16,
  1 layer) and ``s2`` (width 32, 2 layers), vocabulary 320, context 32, 256 tokens per step;
  runs ``m1-d1`` (fit, s1, 24 steps), ``m2-d1`` (fit, s2, 24 steps), ``m2-d2`` (heldout, s2,
  48 steps); evalset: 16 validation sequences of 32 tokens. Checkpoints in ``<dir>/runs/<run>/``.
  Treat it as read-only (copy it to change it).
- ``trainer_runs``: (session) three tiny runs written by Hugging Face's ``Trainer``
  (:mod:`tests.trainer_checkpoints`: GPT-2 tied, GPT-NeoX untied, Llama-style tied), six
  ``checkpoint-<step>/`` folders each at irregular steps, on the micro corpus. Read-only.
"""

from __future__ import annotations

import os

# Without CUDA, Triton kernels (spectrum.fit.triton_kernel) are tested under Triton's interpreter,
# which must be chosen before Triton is first imported.
if not os.path.exists("/dev/nvidia0") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from spectrum.console import set_verbosity

# Tests train and run tiny models, whose small tensor operations gain nothing from several
# intra-op threads and lose a lot to oversubscription when the cores are shared.
torch.set_num_threads(1)

# The tool's messages on stderr as under the command line (importing the library installs no
# handler), for the tests that run a stage's ``main`` directly and read what it said.
set_verbosity("normal")

MICRO_SIZES = {"s1": {"width": 16, "layers": 1, "heads": 2},
               "s2": {"width": 32, "layers": 2, "heads": 2}}
MICRO_RUNS = [("m1-d1", "s1", 24, 0, "fit"), ("m2-d1", "s2", 24, 0, "fit"),
              ("m2-d2", "s2", 48, 0, "heldout")]


def micro_corpus(folder: Path, n_docs: int = 80) -> str:
    """Small Python-like documents with learnable structure; returns the glob of the files."""
    rng = random.Random(0)
    names = ["alpha", "beta", "gamma", "delta", "value", "count", "items", "total"]
    ops = ["+", "-", "*"]
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for f in range(rng.randint(3, 6)):
            a, b = rng.sample(names, 2)
            lines.append(f"def {rng.choice(names)}_{f}({a}, {b}):")
            for _ in range(rng.randint(1, 4)):
                lines.append(f"    {a} = {a} {rng.choice(ops)} {b}")
            lines.append(f"    return {a}\n")
        (folder / f"doc{d:03d}.txt").write_text("\n".join(lines))
    return str(folder / "*.txt")


def _write_micro_manifest(folder: Path, runs: list[tuple[str, str, int, int, str]] | None = None,
                          **suite: Any) -> Path:
    from spectrum.suite.config import ModelSize, non_embedding_params

    folder = Path(folder)
    corpus = {"kind": "text", "path": micro_corpus(folder / "corpus").replace(str(folder) + "/", ""),
              "validation_fraction": 0.15}
    section: dict[str, Any] = {"vocab_size": 320, "context": 32, "learning_rate": 1.0e-2,
                               "warmup_steps": 2, "log_checkpoints": 8, "eval_sequences": 8,
                               "sizes": MICRO_SIZES, **suite}
    tokens_per_step = 8 * section["context"]
    entries = []
    for name, size, steps, seed, role in runs or MICRO_RUNS:
        s = section["sizes"][size]
        params = non_embedding_params(ModelSize(size, s["width"], s["layers"], s["heads"],
                                                s.get("intermediate", 4 * s["width"])))
        entries.append({"name": name, "params": params, "tokens": steps * tokens_per_step,
                        "tokens_per_step": tokens_per_step, "warmup_steps": section["warmup_steps"],
                        "role": role, "checkpoints": f"runs/{name}", "train": {"size": size, "seed": seed}})
    manifest = {"out": "artifacts",
                "evalset": {"corpus": corpus, "split": "validation", "tokenizer": None,
                            "sequences": 16, "context": 32, "seed": 0},
                "suite": section, "runs": entries}
    path = folder / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def write_micro_manifest():
    return _write_micro_manifest


@pytest.fixture(scope="session")
def micro_suite(tmp_path_factory) -> Path:
    from spectrum.manifest import load_manifest
    from spectrum.suite.build import train_suite

    path = _write_micro_manifest(tmp_path_factory.mktemp("micro_suite"))
    train_suite(load_manifest(path), device="cpu", progress=False)
    return path


@pytest.fixture(scope="session")
def trainer_runs(tmp_path_factory):
    from tests.trainer_checkpoints import write_trainer_runs

    root = tmp_path_factory.mktemp("trainer_runs")
    return write_trainer_runs(root, micro_corpus(root / "corpus"))
