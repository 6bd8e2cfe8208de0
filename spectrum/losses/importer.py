"""Per-token losses computed elsewhere, imported as loss shards so that ``spectrum fit`` and
``spectrum report`` run on them unchanged.

A *mapping* (YAML) says what each file holds::

    evalset: ids.npy           # optional: (sequences, context) token ids of the evalset
    tokenizer: EleutherAI/pythia-70m   # optional: the vocabulary, recorded in meta.json
    max_nonfinite: 0.01        # optional: largest share of NaN/inf losses per checkpoint
    runs:
      - run: pythia-70m        # a run of the manifest: its tokens_per_step gives T
        file: pythia-70m.npy   # tokens x checkpoints, float, nats
        steps: [1000, 2000]    # one per column (.npy/.npz; a Parquet file carries its steps)
        tokens: [2097152000, 4194304000]   # optional: tokens seen, checked against the steps

Files (rows in ``token_idx`` order: token ``i`` is the target at position ``pos`` of sequence
``seq_id`` with ``i = seq_id * (context - 1) + pos - 1``, as in the evalset):

- ``.npy``: a 2-D array, tokens x checkpoints;
- ``.npz``: the array ``losses`` (or the only 2-D float array; ``key:`` names another), and
  optionally ``steps`` (1-D) and ``input_ids`` (the evalset's token ids);
- Parquet, long: columns ``token_idx`` (or ``token``), ``step``, ``loss``: one row per token and
  checkpoint;
- Parquet, wide: one float column per checkpoint named ``step<N>`` or ``<N>``, and optionally
  ``token_idx`` (or ``token``) giving each row's token.

The evalset: the ids the mapping names (or an ``.npz``'s ``input_ids``) become a minimal evalset
(``sequences.parquet``, ``tokens.parquet`` without corpus annotations, ``meta.json`` with the
vocabulary when a tokenizer is named); without ids, the evalset already under the output folder
is used. Everything is checked before anything is written; each problem is one line naming the
file: a row count that is not the evalset's token count, steps out of order or repeated, more
non-finite losses in a checkpoint than ``max_nonfinite`` allows, a run named twice or not in the
manifest, tokens seen that are not step x tokens_per_step.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from spectrum.errors import SpectrumError

MAX_NONFINITE = 0.01  # default largest share of non-finite losses in one checkpoint
_STEP_COLUMN = re.compile(r"(?:step)?(\d+)")
_TOKEN_COLUMNS = ("token_idx", "token")
_MAPPING_KEYS = {"evalset", "tokenizer", "max_nonfinite", "runs"}
_RUN_KEYS = {"run", "file", "steps", "tokens", "key"}


class ImportRefused(SpectrumError):
    """Bad input to the import; one line per problem, naming the file."""


@dataclass(frozen=True)
class Source:
    """One run's file of losses and what the mapping says about it."""

    run: str
    file: Path
    steps: tuple[int, ...] | None = None
    tokens: tuple[int, ...] | None = None
    key: str | None = None


@dataclass(frozen=True)
class Mapping:
    path: Path
    sources: tuple[Source, ...]
    evalset_ids: Path | None = None
    tokenizer: str | None = None
    max_nonfinite: float = MAX_NONFINITE


def _int_list(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise ValueError("must be a list of integers")
    return tuple(value)


def _source(raw: Any, i: int, base: Path, where: str) -> Source:
    if not isinstance(raw, dict) or not isinstance(raw.get("run"), str) \
            or not isinstance(raw.get("file"), str):
        raise ImportRefused(f"{where}: runs[{i}] needs run: <name> and file: <path>")
    unknown = sorted(set(raw) - _RUN_KEYS)
    if unknown:
        raise ImportRefused(f"{where}: runs[{i}].{unknown[0]}: unknown key (expected one of: "
                            f"{', '.join(sorted(_RUN_KEYS))})")
    file = Path(raw["file"]).expanduser()
    try:
        steps, tokens = _int_list(raw.get("steps")), _int_list(raw.get("tokens"))
    except ValueError as e:
        raise ImportRefused(f"{where}: runs[{i}] ({raw['run']}): steps and tokens {e}") from None
    return Source(raw["run"], file if file.is_absolute() else base / file, steps, tokens,
                  raw.get("key"))


def read_mapping(path: str | Path) -> Mapping:
    """The mapping file, checked for form (one line per problem)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ImportRefused(f"{path}: cannot be read as YAML ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), list) or not raw["runs"]:
        raise ImportRefused(f"{path}: must be a mapping with runs: a list of {{run, file, steps}}")
    unknown = sorted(set(raw) - _MAPPING_KEYS)
    if unknown:
        raise ImportRefused(f"{path}: {unknown[0]}: unknown key (expected one of: "
                            f"{', '.join(sorted(_MAPPING_KEYS))})")
    base = path.resolve().parent
    sources = tuple(_source(r, i, base, str(path)) for i, r in enumerate(raw["runs"]))
    share = raw.get("max_nonfinite", MAX_NONFINITE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ImportRefused(f"{path}: max_nonfinite must be a share in [0, 1), got {share!r}")
    ids = raw.get("evalset")
    return Mapping(path, sources, base / ids if isinstance(ids, str) else None,
                   raw.get("tokenizer"), float(share))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _refuse(file: Path, msg: str) -> ImportRefused:
    return ImportRefused(f"{file}: {msg}")


def _npz_arrays(file: Path) -> dict[str, np.ndarray]:
    with np.load(file, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _from_numpy(src: Source) -> tuple[tuple[int, ...] | None, np.ndarray]:
    """(steps the file holds, or None; losses tokens x checkpoints) of a .npy or .npz file."""
    if src.file.suffix == ".npy":
        return None, np.load(src.file, allow_pickle=False)
    arrays = _npz_arrays(src.file)
    key = src.key or ("losses" if "losses" in arrays else None)
    if key is None:
        floats = [k for k, a in arrays.items() if a.ndim == 2 and a.dtype.kind == "f"]
        if len(floats) != 1:
            raise _refuse(src.file, f"holds {len(floats)} 2-D float arrays; name the losses "
                                    "with key: in the mapping")
        key = floats[0]
    if key not in arrays:
        raise _refuse(src.file, f"has no array {key!r} (it has {', '.join(arrays)})")
    steps = arrays.get("steps")
    return (tuple(int(s) for s in steps.reshape(-1)) if steps is not None else None), arrays[key]


def _token_column(names: list[str]) -> str | None:
    return next((c for c in _TOKEN_COLUMNS if c in names), None)


def _from_long(file: Path, table: pa.Table, token: str) -> tuple[tuple[int, ...], np.ndarray]:
    tok = table.column(token).to_numpy().astype(np.int64)
    step = table.column("step").to_numpy().astype(np.int64)
    loss = table.column("loss").to_numpy(zero_copy_only=False).astype(np.float32)
    steps, col = np.unique(step, return_inverse=True)
    n = int(tok.max()) + 1 if len(tok) else 0
    if len(tok) and tok.min() < 0:
        raise _refuse(file, f"{token} holds negative indices")
    pair = col.astype(np.int64) * max(n, 1) + tok
    if len(np.unique(pair)) != len(pair):
        raise _refuse(file, f"repeats a ({token}, step) pair: each token and step once")
    out = np.full((n, len(steps)), np.nan, dtype=np.float32)
    out[tok, col] = loss
    counts = np.bincount(col, minlength=len(steps))
    short = [int(s) for s, c in zip(steps, counts) if c != n]
    if short:
        raise _refuse(file, f"steps {', '.join(map(str, short[:5]))} do not hold all {n} "
                            f"tokens 0..{n - 1}")
    return tuple(int(s) for s in steps), out


def _from_wide(file: Path, table: pa.Table, token: str | None
               ) -> tuple[tuple[int, ...], np.ndarray]:
    columns = [c for c in table.column_names if c != token]
    steps = []
    for c in columns:
        m = _STEP_COLUMN.fullmatch(c)
        if not m:
            raise _refuse(file, f"column {c!r} does not name a step (step<N> or <N>)")
        steps.append(int(m.group(1)))
    out = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                           for c in columns]) if columns else np.empty((table.num_rows, 0))
    if token is not None:
        tok = table.column(token).to_numpy().astype(np.int64)
        if not np.array_equal(np.sort(tok), np.arange(len(tok))):
            raise _refuse(file, f"{token} is not each of 0..{len(tok) - 1} once")
        out = out[np.argsort(tok)]
    return tuple(steps), out


def _from_parquet(src: Source) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        table = pq.read_table(src.file)
    except (OSError, pa.ArrowInvalid) as e:
        raise _refuse(src.file, f"not a readable Parquet file ({type(e).__name__})") from None
    token = _token_column(table.column_names)
    if "step" in table.column_names and "loss" in table.column_names:
        if token is None:
            raise _refuse(src.file, "a long table needs a token_idx (or token) column beside "
                                    "step and loss")
        return _from_long(src.file, table, token)
    return _from_wide(src.file, table, token)


def read_source(src: Source) -> tuple[tuple[int, ...], np.ndarray]:
    """(steps, float32 losses tokens x checkpoints) of one file, in the form it was given."""
    if not src.file.is_file():
        raise _refuse(src.file, f"not found (run {src.run})")
    try:
        if src.file.suffix in (".npy", ".npz"):
            steps, losses = _from_numpy(src)
        elif src.file.suffix == ".parquet":
            steps, losses = _from_parquet(src)
        else:
            raise _refuse(src.file, "unknown format: .npy, .npz or .parquet")
    except (OSError, ValueError) as e:
        raise _refuse(src.file, f"cannot be read ({str(e).splitlines()[0] if str(e) else e!r})") \
            from None
    if src.steps is not None:
        if steps is not None and tuple(steps) != src.steps:
            raise _refuse(src.file, "the steps in the file differ from the mapping's")
        steps = src.steps
    if steps is None:
        raise _refuse(src.file, f"name its checkpoints' steps in the mapping (steps: [...], "
                                f"run {src.run})")
    if losses.ndim != 2 or losses.dtype.kind not in "fiu":
        raise _refuse(src.file, f"holds a {losses.ndim}-D {losses.dtype} array; expected "
                                "tokens x checkpoints losses")
    return tuple(steps), np.asarray(losses, dtype=np.float32)


def check_source(src: Source, steps: tuple[int, ...], losses: np.ndarray, n_tokens: int,
                 tokens_per_step: int, max_nonfinite: float) -> None:
    """Refuse (one line naming the file) what cannot become this run's shards."""
    n, k = losses.shape
    if n != n_tokens:
        raise _refuse(src.file, f"holds {n} tokens (rows), the evalset {n_tokens}")
    if k != len(steps):
        raise _refuse(src.file, f"holds {k} checkpoints (columns) but {len(steps)} steps are "
                                "given")
    if any(s < 0 for s in steps):
        raise _refuse(src.file, "steps must be non-negative")
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise _refuse(src.file, f"step {dup[0]} is repeated")
    if list(steps) != sorted(steps):
        at = next(i for i in range(1, k) if steps[i] < steps[i - 1])
        raise _refuse(src.file, f"steps out of order: {steps[at - 1]} before {steps[at]}")
    if src.tokens is not None:
        if len(src.tokens) != k:
            raise _refuse(src.file, f"{len(src.tokens)} token counts for {k} checkpoints")
        off = [(s, t) for s, t in zip(steps, src.tokens) if t != s * tokens_per_step]
        if off:
            s, t = off[0]
            raise _refuse(src.file, f"step {s} saw {t} tokens, not step x tokens_per_step = "
                                    f"{s * tokens_per_step} as run {src.run} declares")
    bad = (~np.isfinite(losses)).mean(axis=0) if n else np.zeros(k)
    worst = int(np.argmax(bad)) if k else 0
    if k and bad[worst] > max_nonfinite:
        raise _refuse(src.file, f"step {steps[worst]} has {bad[worst]:.1%} non-finite losses, "
                                f"more than the {max_nonfinite:.1%} allowed (max_nonfinite)")


def read_ids(file: Path) -> np.ndarray:
    """(sequences, context) int32 token ids from .npy, an .npz's ``input_ids``, or a
    ``sequences.parquet`` (``seq_id``, ``input_ids``)."""
    try:
        if file.suffix == ".npz":
            arrays = _npz_arrays(file)
            if "input_ids" not in arrays:
                raise _refuse(file, "has no array 'input_ids'")
            ids = arrays["input_ids"]
        elif file.suffix == ".parquet":
            table = pq.read_table(file, columns=["seq_id", "input_ids"])
            order = np.argsort(table.column("seq_id").to_numpy())
            ids = np.array(table.column("input_ids").to_pylist(), dtype=np.int64)[order]
        else:
            ids = np.load(file, allow_pickle=False)
    except (OSError, ValueError, KeyError, pa.ArrowInvalid) as e:
        raise _refuse(file, f"cannot be read as token ids ({type(e).__name__})") from None
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.dtype.kind not in "iu" or (ids < 0).any():
        raise _refuse(file, f"holds {ids.ndim}-D {ids.dtype} ids; expected non-negative "
                            "integers, sequences x context (context >= 2)")
    return ids.astype(np.int32)


def evalset_from_ids(input_ids: np.ndarray, ids_file: Path, tokenizer: str | None
                     ) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """A minimal evalset (the contract's columns, no corpus annotations) from token ids."""
    from spectrum.data.evalset import (DEFINITION, FORMAT, evalset_hash, load_tokenizer,
                                       tokenizer_identity)

    s, c = input_ids.shape
    if tokenizer:
        ident = tokenizer_identity(load_tokenizer(tokenizer), tokenizer)
    else:
        ident = {"source": "unknown (imported without a tokenizer)", "class": None,
                 "vocab_size": int(input_ids.max()) + 1, "vocab_hash": "unknown"}
    n = s * (c - 1)
    seq_id = np.repeat(np.arange(s, dtype=np.int32), c - 1)
    doc = [f"imported-{i}" for i in range(s)]
    tokens = pa.table({
        "token_idx": pa.array(np.arange(n, dtype=np.int64)),
        "seq_id": pa.array(seq_id),
        "pos": pa.array(np.tile(np.arange(1, c, dtype=np.int32), s)),
        "target_id": pa.array(input_ids[:, 1:].reshape(-1).astype(np.int32)),
        "doc_id": pa.array([doc[i] for i in seq_id], pa.string())})
    sequences = pa.table({"seq_id": pa.array(np.arange(s, dtype=np.int32)),
                          "input_ids": pa.array(list(input_ids), pa.list_(pa.int32())),
                          "doc_id": pa.array(doc, pa.string())})
    meta = {"format": FORMAT, "definition": DEFINITION, "tokenizer": ident, "context": c,
            "sequences": s, "source": {"imported": str(ids_file)},
            "counts": {"sequences": s, "tokens": n, "documents": s},
            "hash": evalset_hash(input_ids, ident["vocab_hash"])}
    return sequences, tokens, meta


@dataclass(frozen=True)
class ImportPlan:
    """What an import will write, every input already checked."""

    mapping: Mapping
    evalset: tuple[pa.Table, pa.Table, dict[str, Any]] | None  # None: keep the one under out
    evalset_hash: str
    n_tokens: int
    steps: dict[str, tuple[int, ...]]  # run -> steps


def _evalset_ids(mapping: Mapping) -> tuple[Path, np.ndarray] | None:
    if mapping.evalset_ids is not None:
        return mapping.evalset_ids, read_ids(mapping.evalset_ids)
    for src in mapping.sources:
        if src.file.suffix == ".npz" and src.file.is_file():
            with np.load(src.file, allow_pickle=False) as z:
                if "input_ids" in z.files:
                    return src.file, read_ids(src.file)
    return None


def _plan_evalset(out: Path, mapping: Mapping, force: bool):
    """(new evalset tables or None, evalset hash, token count)."""
    from spectrum.data.evalset import load_evalset
    from spectrum.layout import evalset_dir

    given = _evalset_ids(mapping)
    folder = evalset_dir(out)
    try:
        existing = load_evalset(folder)
    except SpectrumError:
        existing = None
    if given is None:
        if existing is None:
            raise ImportRefused(f"{mapping.path}: no evalset: name its token ids (evalset: "
                                f"ids.npy, sequences x context) or build {folder} first")
        return None, existing.hash, existing.num_tokens
    tables = evalset_from_ids(given[1], given[0], mapping.tokenizer)
    meta = tables[2]
    if existing is not None and existing.hash != meta["hash"] and not force:
        raise ImportRefused(f"{folder}: holds another evalset than {given[0]}; --force replaces "
                            "it (the loss shards of other runs then become stale)")
    keep = existing is not None and existing.hash == meta["hash"]
    return (None if keep else tables), meta["hash"], meta["counts"]["tokens"]


def plan_import(manifest: Any, mapping: Mapping, *, force: bool = False) -> ImportPlan:
    """Check every input; :class:`ImportRefused` with one line per problem, nothing written."""
    from spectrum.layout import loss_run_dir, shard_steps

    problems: list[str] = []
    seen: dict[str, Path] = {}
    known = {r.name: r for r in manifest.runs}
    for src in mapping.sources:
        if src.run in seen:
            problems.append(f"{mapping.path}: run {src.run} is named twice ({seen[src.run]} and "
                            f"{src.file})")
        elif src.run not in known:
            problems.append(f"{mapping.path}: run {src.run} ({src.file}) is not a run of "
                            f"{manifest.path}")
        seen.setdefault(src.run, src.file)
    evalset, ehash, n = _plan_evalset(manifest.out, mapping, force)
    steps: dict[str, tuple[int, ...]] = {}
    for src in mapping.sources:
        if src.run not in known or steps.get(src.run) is not None:
            continue
        try:
            got, losses = read_source(src)
            check_source(src, got, losses, n, known[src.run].tokens_per_step,
                         mapping.max_nonfinite)
        except ImportRefused as e:
            problems.extend(e.problems)
            continue
        steps[src.run] = got
        other = sorted(set(shard_steps(manifest.out, src.run)) - set(got))
        if other and not force:
            problems.append(f"{loss_run_dir(manifest.out, src.run)}: holds shards of steps "
                            f"{', '.join(map(str, other[:5]))} that {src.file} does not; "
                            "--force removes them")
    if problems:
        raise ImportRefused(*problems)
    return ImportPlan(mapping, evalset, ehash, n, steps)


def write_import(manifest: Any, plan: ImportPlan, *, force: bool = False) -> int:
    """Write the evalset (if new) and every run's shards; returns the shards written."""
    import shutil

    from spectrum import __version__
    from spectrum.data.evalset import write_evalset
    from spectrum.layout import evalset_dir, loss_shard, shard_steps
    from spectrum.losses.shards import write_loss_shard

    if plan.evalset is not None:
        write_evalset(evalset_dir(manifest.out), *plan.evalset)
    written = 0
    for src in plan.mapping.sources:
        steps = plan.steps[src.run]
        if force:
            for old in set(shard_steps(manifest.out, src.run)) - set(steps):
                shutil.rmtree(loss_shard(manifest.out, src.run, old).parent)
        _, losses = read_source(src)
        digest = file_sha256(src.file)
        tps = manifest.run(src.run).tokens_per_step
        for j, step in enumerate(steps):
            prov = {"run": src.run, "step": step, "tokens": step * tps,
                    "checkpoint": f"imported from {src.file}",
                    "checkpoint_hash": f"imported:{digest}:{j}",
                    "evalset_hash": plan.evalset_hash, "dtype": "imported",
                    "code_version": __version__, "imported_from": str(src.file),
                    "source_sha256": digest, "source_column": j}
            write_loss_shard(loss_shard(manifest.out, src.run, step), losses[:, j], prov)
            written += 1
    return written
