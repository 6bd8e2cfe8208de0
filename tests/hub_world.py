"""A Hugging Face cache of tiny GPT-NeoX models laid out under the preset's repositories and
revisions, and a reduced copy of a preset that reads it offline.

The cache is what ``huggingface_hub`` writes: ``models--ORG--NAME/blobs/<sha256>``,
``snapshots/<commit>/<file>`` symlinks into the blobs, and ``refs/<revision>`` holding the
commit. Each revision's weights move from a random initial model towards a second random model
along a sigmoid in ln(step), so that the losses change over the checkpoints.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import micro_corpus

TINY_WIDTHS = {"pythia-14m": 8, "pythia-70m": 16, "pythia-410m": 24}  # a reduced Pythia
STEPS = [0, 512, 2000, 4000, 8000, 16000, 33000, 68000, 143000]  # from the preset's revisions
CONTEXT = 16


def tiny_config(width: int, vocab: int) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=4 * width,
                         max_position_embeddings=CONTEXT, tie_word_embeddings=False,
                         use_cache=False, bos_token_id=0, eos_token_id=0)


def _add_snapshot(root: Path, revision: str, files: dict[str, bytes]) -> Path:
    commit = hashlib.sha1(f"{root.name}@{revision}".encode()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snap


def build_hub_cache(cache: Path, repos: dict[str, int], steps: list[int], tokenizer_dir: Path
                    ) -> None:
    """``repos`` (repository id -> width): one snapshot per ``step<N>`` revision."""
    import tempfile

    import torch
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok_files = {p.name: p.read_bytes() for p in tokenizer_dir.iterdir() if p.is_file()}
    for r, (repo, width) in enumerate(repos.items()):
        root = cache / f"models--{repo.replace('/', '--')}"
        torch.manual_seed(r)
        start = GPTNeoXForCausalLM(tiny_config(width, len(tok)))
        end = GPTNeoXForCausalLM(tiny_config(width, len(tok)))
        for step in steps:
            share = 0.0 if step == 0 else 1 / (1 + math.exp(-(math.log(step) - math.log(8000))))
            model = GPTNeoXForCausalLM(tiny_config(width, len(tok)))
            with torch.no_grad():
                for p, a, b in zip(model.parameters(), start.parameters(), end.parameters()):
                    p.copy_(a + share * (b - a))
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
            _add_snapshot(root, f"step{step}", {**files, **tok_files})


def reduced_preset(folder: Path, preset: Path, runs: dict[str, int] = TINY_WIDTHS,
                   steps: list[int] = STEPS) -> Path:
    """A copy of ``preset`` with only ``runs`` (by name) and ``steps``, reading a tiny hub cache
    built in ``folder/hub`` and a small text corpus; M is ``auto`` (counted from the cache)."""
    from spectrum.data.tokenizer import train_tokenizer

    data = yaml.safe_load(preset.read_text())
    corpus = micro_corpus(folder / "corpus")
    tokenizer_dir = folder / "tokenizer"
    train_tokenizer((p.read_text() for p in sorted((folder / "corpus").glob("*.txt"))), 320,
                    tokenizer_dir)
    chosen = [r for r in data["runs"] if r["name"] in runs]
    build_hub_cache(folder / "hub", {r["checkpoints"]["hub"]: runs[r["name"]] for r in chosen},
                    steps, tokenizer_dir)
    for r in chosen:
        r["checkpoints"]["cache_dir"] = "hub"
        r["steps"] = list(steps)
        r["params"] = "auto"
    data["runs"] = chosen
    data["out"] = "artifacts"
    data["evalset"] = {"corpus": {"kind": "text", "path": corpus, "validation_fraction": 0.15},
                       "split": "validation", "tokenizer": None, "sequences": 8,
                       "context": CONTEXT, "seed": 0}
    path = folder / preset.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
