"""Synthetic artifacts (tests.synthetic) completed with what the token explorer reads besides the
fits: ``evalset/sequences.parquet`` holding every target at its position, and a real tokenizer
named by ``evalset/meta.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from spectrum.store import write_parquet
from tests.synthetic import make_synthetic_artifacts

TEXT = ("def total(items, count):\n    value = items + count\n    return value\n"
        "class Frame:\n    def name(self):\n        return self.summary.name\n")


def tokenizer_folder(folder: Path, vocab_size: int = 300) -> Path:
    from spectrum.data.tokenizer import train_tokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        train_tokenizer([TEXT * 3] * 20, vocab_size, out_dir=folder)
    return folder


def complete_evalset(out: Path, tokenizer: Path | None) -> None:
    """Rewrite target ids into the tokenizer's range (when given), write sequences.parquet whose
    ``input_ids[seq_id, pos]`` is the token's target, and meta.json naming the tokenizer."""
    tokens = pl.read_parquet(out / "evalset" / "tokens.parquet")
    if tokenizer is not None:
        from transformers import AutoTokenizer

        n = len(AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True))
        tokens = tokens.with_columns(pl.col("target_id") % n)
        write_parquet(tokens.to_arrow(), out / "evalset" / "tokens.parquet")
    context = int(tokens["pos"].max()) + 1
    seqs = []
    for seq_id, group in tokens.sort("seq_id", "pos").group_by("seq_id", maintain_order=True):
        ids = np.zeros(context, dtype=np.int32)
        ids[group["pos"].to_numpy()] = group["target_id"].to_numpy()
        seqs.append((int(seq_id[0]), ids))
    write_parquet(pa.table({"seq_id": pa.array([s for s, _ in seqs], pa.int32()),
                            "input_ids": pa.array([i for _, i in seqs], pa.list_(pa.int32()))}),
                  out / "evalset" / "sequences.parquet")
    meta = {"context": context,
            "tokenizer": {"source": str(tokenizer) if tokenizer is not None else "/nonexistent"}}
    (out / "evalset" / "meta.json").write_text(json.dumps(meta))


def explorer_world(root: Path, tokenizer: Path | None, **kw) -> Path:
    """make_synthetic_artifacts(root, **kw) with the evalset completed; returns the manifest."""
    manifest = make_synthetic_artifacts(root, **kw)
    complete_evalset(Path(root) / "artifacts", tokenizer)
    return manifest


def loaded_explorer_world(root: Path, **kw):
    """An explorer world with a real tokenizer under ``root``, loaded: (manifest, tokens, runs)."""
    from spectrum.analysis.runs.run_data import load_runs, read_tokens
    from spectrum.manifest import load_manifest

    manifest = load_manifest(explorer_world(root, tokenizer_folder(root / "tokenizer"), **kw))
    runs = load_runs(manifest)
    tokens = read_tokens(manifest.out)
    return manifest, tokens, runs
