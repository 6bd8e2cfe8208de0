"""The evaluation set: fixed sequences of token ids, and the contextualized tokens they hold.

``sequences`` windows of ``context`` tokens are drawn from the documents of one corpus split:
each document is tokenized on its own (no special tokens added), cut into non-overlapping
windows of ``context`` tokens starting at its first token (a shorter tail is dropped), and
``sequences`` of all these windows are chosen at random (``seed``), without replacement. A
sequence therefore never crosses a document boundary; ``seq_id`` is the order of the draw, so
any split by ``seq_id`` is a random split of the windows.

Contextualized token ``i`` (``token_idx``) is the target ``input_ids[seq_id, pos]`` predicted from
``input_ids[seq_id, :pos]``, for ``1 <= pos < context``: ``N = sequences * (context - 1)`` and
``token_idx = seq_id * (context - 1) + pos - 1``. The first token of a sequence has no context
and is not a target.

Files (under ``<out>/evalset/``):

- ``sequences.parquet``: ``seq_id`` (int32), ``input_ids`` (list<int32>), ``doc_id`` (string);
- ``tokens.parquet``: ``token_idx`` (int64), ``seq_id``, ``pos``, ``target_id`` (int32),
  ``doc_id`` and annotations for slicing: ``target_freq`` (float64, the target's relative
  frequency among all tokens of the corpus's *train* split under the same tokenizer) and
  ``word_start`` (bool: the target's text starts with whitespace, or the token before it ends
  with whitespace, so the target begins a word);
- ``meta.json``: the tokenizer (source, vocabulary hash and size), context, source (corpus,
  split, seed), counts, and ``hash``: the evalset hash, SHA-256 over the token ids, the
  vocabulary hash and the context. Loss shards record it; a new evalset makes them stale.

``meta.json`` is written last, so an evalset without it is incomplete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spectrum import layout
from spectrum.data.corpus import of_split, split_documents
from spectrum.errors import SpectrumError
from spectrum.manifest import EvalsetSpec
from spectrum.store import read_provenance, write_json, write_parquet

FORMAT = 1
# the files of an evalset folder, named as in an output folder's evalset (spectrum.layout)
SEQUENCES, TOKENS, META = (path(".").name for path in (
    layout.evalset_sequences, layout.evalset_tokens, layout.evalset_meta))
DEFINITION = ("token_idx = seq_id * (context - 1) + pos - 1: the target input_ids[seq_id, pos] "
              "predicted from input_ids[seq_id, :pos], 1 <= pos < context; "
              "N = sequences * (context - 1)")


@dataclass(frozen=True)
class Evalset:
    """A loaded evalset: ``input_ids`` (sequences, context) int32 and its ``meta.json``."""

    input_ids: np.ndarray
    meta: dict[str, Any]

    @property
    def hash(self) -> str:
        return self.meta["hash"]

    @property
    def context(self) -> int:
        return int(self.meta["context"])

    @property
    def num_tokens(self) -> int:
        s, c = self.input_ids.shape
        return s * (c - 1)


def load_tokenizer(source: str | Path) -> Any:
    """A transformers tokenizer from a folder or a hub id in the local cache (offline)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpectrumError(f"tokenizer {source}: cannot be loaded: {first}") from None


def vocab_hash(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary (token -> id, special tokens included)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _encode(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        enc = getattr(backend, "encode_batch_fast", backend.encode_batch)(
            texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in enc]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(i, dtype=np.int32) for i in ids]


def _vocab_flags(tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: (its text starts with whitespace, its text ends with whitespace)."""
    n = len(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    text = tokenizer.batch_decode([[i] for i in range(n)])
    starts = np.array([(r or "")[:1] in ("Ġ", "▁", "Ċ", "ĉ", "č") or t[:1].isspace()
                       for r, t in zip(raw, text)], dtype=bool)
    ends = np.array([t[-1:].isspace() for t in text], dtype=bool)
    return starts, ends


def tokenizer_identity(tokenizer: Any, source: str | Path) -> dict[str, Any]:
    return {"source": str(source), "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer), "vocab_hash": vocab_hash(tokenizer)}


def _source(spec: EvalsetSpec) -> dict[str, Any]:
    corpus = dataclasses.asdict(spec.corpus)
    if corpus.get("validation") is None:  # no separate validation corpus: as recorded before
        corpus.pop("validation", None)
    return {"corpus": corpus, "split": spec.split, "seed": spec.seed}


def evalset_hash(input_ids: np.ndarray, vocab: str) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}:{vocab}:{input_ids.shape[0]}x{input_ids.shape[1]}:".encode())
    h.update(np.ascontiguousarray(input_ids, dtype="<i4").tobytes())
    return h.hexdigest()


def build_evalset(spec: EvalsetSpec, tokenizer: Any, source: str | Path
                  ) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Draw the evalset described by ``spec`` with ``tokenizer`` (loaded from ``source``).

    Returns (sequences table, tokens table, meta). Raises :class:`SpectrumError` when the split
    holds fewer than ``spec.sequences`` windows of ``spec.context`` tokens.
    """
    s, c = spec.sequences, spec.context
    splits = split_documents(spec.corpus)
    docs = of_split(splits, spec.split)
    encoded = _encode(tokenizer, [d.text for d in docs])
    windows = [(d, start) for d, ids in enumerate(encoded) for start in range(0, len(ids) - c + 1, c)]
    if len(windows) < s:
        raise SpectrumError(
            f"evalset: the {spec.split} split of the {spec.corpus.kind} corpus holds only "
            f"{len(windows)} windows of {c} tokens, fewer than evalset.sequences = {s}; "
            "lower evalset.sequences or evalset.context")
    chosen = np.random.default_rng(spec.seed).choice(len(windows), size=s, replace=False)
    input_ids = np.stack([encoded[windows[w][0]][windows[w][1]:windows[w][1] + c] for w in chosen])
    seq_doc = [docs[windows[w][0]].doc_id for w in chosen]

    train = encoded if spec.split == "train" else _encode(
        tokenizer, [d.text for d in splits["train"]])
    vocab_n = max(len(tokenizer), int(input_ids.max()) + 1)
    counts = np.zeros(vocab_n, dtype=np.int64)
    for ids in train:
        counts += np.bincount(ids, minlength=vocab_n)[:vocab_n]
    freq = counts / max(1, counts.sum())
    starts, ends = _vocab_flags(tokenizer)

    targets = input_ids[:, 1:]
    word_start = starts[targets] | ends[input_ids[:, :-1]]
    n = s * (c - 1)
    seq_id = np.repeat(np.arange(s, dtype=np.int32), c - 1)
    tokens = pa.table({
        "token_idx": pa.array(np.arange(n, dtype=np.int64)),
        "seq_id": pa.array(seq_id),
        "pos": pa.array(np.tile(np.arange(1, c, dtype=np.int32), s)),
        "target_id": pa.array(targets.reshape(-1).astype(np.int32)),
        "doc_id": pa.array([seq_doc[i] for i in seq_id], pa.string()),
        "target_freq": pa.array(freq[targets.reshape(-1)].astype(np.float64)),
        "word_start": pa.array(word_start.reshape(-1)),
    })
    sequences = pa.table({
        "seq_id": pa.array(np.arange(s, dtype=np.int32)),
        "input_ids": pa.array(list(input_ids), pa.list_(pa.int32())),
        "doc_id": pa.array(seq_doc, pa.string()),
    })
    ident = tokenizer_identity(tokenizer, source)
    meta = {
        "format": FORMAT,
        "definition": DEFINITION,
        "tokenizer": ident,
        "context": c,
        "sequences": s,
        "source": _source(spec),
        "counts": {"sequences": s, "tokens": n, "documents": len(set(seq_doc)),
                   "split_documents": len(docs), "split_windows": len(windows),
                   "train_tokens": int(counts.sum())},
        "hash": evalset_hash(input_ids, ident["vocab_hash"]),
    }
    return sequences, tokens, meta


def write_evalset(folder: str | Path, sequences: pa.Table, tokens: pa.Table,
                  meta: dict[str, Any]) -> None:
    """Write the three files atomically, meta.json last."""
    folder = Path(folder)
    prov = {"evalset_hash": meta["hash"]}
    write_parquet(sequences, folder / SEQUENCES, prov)
    write_parquet(tokens, folder / TOKENS, prov)
    write_json(meta, folder / META)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def meta_problems(meta: dict[str, Any]) -> list[str]:
    """What a ``meta.json`` lacks of the keys the later stages read (empty if nothing)."""
    problems = []
    if meta.get("format") != FORMAT:
        problems.append(f"format is {meta.get('format')!r}, not {FORMAT}")
    if not isinstance(meta.get("hash"), str):
        problems.append("no hash")
    if not _is_int(meta.get("context"), 2):
        problems.append("no context (an integer >= 2)")
    if not _is_int(meta.get("sequences"), 1):
        problems.append("no sequences (an integer >= 1)")
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("vocab_hash"), str) \
            or not isinstance(tok.get("source"), str) or not _is_int(tok.get("vocab_size"), 1):
        problems.append("no tokenizer (source, vocab_size, vocab_hash)")
    counts = meta.get("counts")
    if not isinstance(counts, dict) or not _is_int(counts.get("tokens")):
        problems.append("no counts.tokens")
    elif not problems and counts["tokens"] != meta["sequences"] * (meta["context"] - 1):
        problems.append(f"counts.tokens {counts['tokens']} is not sequences x (context - 1)")
    if not isinstance(meta.get("source"), dict):
        problems.append("no source")
    return problems


def evalset_is_current(folder: str | Path, spec: EvalsetSpec, tokenizer: Any) -> bool:
    """True when ``folder`` holds a complete evalset built from ``spec`` with this vocabulary."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None or meta_problems(meta) or stale_reason(meta, spec) is not None \
            or meta["tokenizer"]["vocab_hash"] != vocab_hash(tokenizer):
        return False
    return all((read_provenance(folder / f) or {}).get("evalset_hash") == meta.get("hash")
               for f in (SEQUENCES, TOKENS))


def stale_reason(meta: dict[str, Any], spec: EvalsetSpec, *, corpus_path: bool = True
                 ) -> str | None:
    """What of the manifest's evalset settings differs from those ``meta`` was drawn with (the
    corpus, split, seed, sequences or context), or None when they agree. ``corpus_path=False``
    ignores where the corpus lies (a project folder copied elsewhere keeps its evalset) and
    compares the corpus's other settings. The tokenizer is compared with each checkpoint's when
    the losses are measured."""
    expected = json.loads(json.dumps(_source(spec), default=str))
    found = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if not corpus_path:
        expected["corpus"] = {k: v for k, v in expected["corpus"].items() if k != "path"}
        corpus = found.get("corpus")
        found = {**found, "corpus": {k: v for k, v in corpus.items() if k != "path"}
                 if isinstance(corpus, dict) else corpus}
    changed = [k for k in ("corpus", "split", "seed") if found.get(k) != expected[k]]
    changed += [k for k in ("sequences", "context") if meta.get(k) != getattr(spec, k)]
    return ", ".join(f"{k} changed" for k in changed) or None


def _read_sequences(path: Path, meta: dict[str, Any]) -> np.ndarray:
    """``input_ids`` (sequences, context) int32 in ``seq_id`` order, checked against ``meta``."""
    fix = "; rebuild it with `spectrum evalset --force`"
    try:
        table = pq.read_table(path, columns=["seq_id", "input_ids"])
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpectrumError(f"evalset {path}: not a readable sequences file ({first}){fix}") \
            from None
    s, c = int(meta["sequences"]), int(meta["context"])
    ids = table.column("input_ids").combine_chunks()
    seq_type, ids_type = table.schema.field("seq_id").type, ids.type
    if not pa.types.is_integer(seq_type) or not pa.types.is_list(ids_type) \
            or not pa.types.is_integer(ids_type.value_type):
        raise SpectrumError(f"evalset {path}: seq_id is {seq_type} and input_ids {ids_type}; "
                            f"expected integers and lists of integers{fix}")
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    seq_id = table.column("seq_id").to_numpy()
    if len(ids) != s or ids.null_count or not (lengths == c).all() \
            or not np.array_equal(np.sort(seq_id), np.arange(s)):
        raise SpectrumError(f"evalset {path}: does not hold {s} sequences (seq_id 0..{s - 1}) "
                            f"of {c} tokens as meta.json says{fix}")
    input_ids = ids.values.to_numpy(zero_copy_only=False).astype(np.int32).reshape(s, c)
    input_ids = input_ids[np.argsort(seq_id)]
    if evalset_hash(input_ids, meta["tokenizer"]["vocab_hash"]) != meta["hash"]:
        raise SpectrumError(f"evalset {path}: its token ids do not match the hash in meta.json "
                            f"(changed after it was written){fix}")
    return input_ids


def load_evalset(folder: str | Path) -> Evalset:
    """Read ``sequences.parquet`` and ``meta.json``, checked against each other (shape, content
    hash); :class:`SpectrumError` naming the file if one is missing, incomplete or altered."""
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file() or not (folder / SEQUENCES).is_file():
        raise SpectrumError(f"evalset {folder} is missing or incomplete: run "
                            "`spectrum evalset --config <manifest>` first")
    meta = _read_meta(folder)
    problems = meta_problems(meta) if meta is not None else ["not a JSON object"]
    if problems:
        raise SpectrumError(f"evalset {meta_path}: {'; '.join(problems)}; rebuild it with "
                            "`spectrum evalset --force`")
    input_ids = _read_sequences(folder / SEQUENCES, meta)
    return Evalset(input_ids=input_ids, meta=meta)
