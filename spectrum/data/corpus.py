"""Corpora: documents from the text that ships with Python, or from the user's files.

A corpus is a list of :class:`Document` (``doc_id``, ``text``), split at the document level into
``train`` and ``validation``: a document goes to validation when a stable hash (SHA-256) of its
``doc_id`` falls below ``validation_fraction``. The split therefore depends only on each
document's own id: adding or removing files never moves another document across the split, and
no document is ever in both. If the hash puts every document on one side of a corpus with at
least two documents, the document with the smallest hash goes to validation (or the largest to
train), so that both splits are non-empty.

Kinds (``CorpusSpec.kind``):

- ``python-stdlib``: the standard library's ``.py`` files under ``sysconfig``'s ``stdlib`` path,
  one document per file, ``doc_id`` = path relative to that folder. Third-party packages
  (``site-packages``, ``dist-packages``) and the interpreter's own regression tests (``test/``,
  about as large as the rest and dominated by fixtures) are left out. Plus the pydoc topics
  (``pydoc_data.topics``), ``doc_id`` = ``pydoc:<topic>``. The corpus depends on the Python
  version that runs the tool.
- ``text``: a glob of text files, one document per file, ``doc_id`` = path relative to the
  glob's folder (the part of the pattern before its first wildcard), so moving the data folder
  does not change the split.
- ``jsonl``: a glob of JSON-lines files, one document per line with the text in ``field``;
  ``doc_id`` = the line's ``id`` if present, else ``<file>:<line>`` (1-based).
- ``parquet``: a glob of Parquet files with a text ``column``; ``doc_id`` = the ``id`` column if
  present, else ``<file>:<row>`` (0-based).

A corpus may name a separate validation corpus (``validation:``, a corpus of any kind): then
every document of the main corpus is ``train``, every document of the other is ``validation``,
and the other's ids are prefixed ``validation:`` so that the two never collide. The split
``all`` means both splits, everywhere a split is chosen (the evalset, the curriculum export).

Documents whose text is empty or only whitespace are dropped. Files are read as UTF-8 (undecodable
bytes are replaced). The result is sorted by ``doc_id``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from spectrum.errors import SpectrumError
from spectrum.manifest import CorpusSpec

Split = Literal["train", "validation"]
VALIDATION_PREFIX = "validation:"  # doc ids of a separate validation corpus

_STDLIB_EXCLUDED_TOP = {"site-packages", "dist-packages", "test", "__pycache__"}


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def split_score(doc_id: str) -> float:
    """A stable number in [0, 1) for ``doc_id``: the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(docs: list[Document], validation_fraction: float) -> dict[str, Split]:
    """Assign every document of a corpus to ``train`` or ``validation`` (see the module doc)."""
    scores = {d.doc_id: split_score(d.doc_id) for d in docs}
    out: dict[str, Split] = {
        i: ("validation" if s < validation_fraction else "train") for i, s in scores.items()}
    if len(out) >= 2:
        values = set(out.values())
        if values == {"train"}:
            out[min(scores, key=scores.__getitem__)] = "validation"
        elif values == {"validation"}:
            out[max(scores, key=scores.__getitem__)] = "train"
    return out


def documents(spec: CorpusSpec, split: Split) -> list[Document]:
    """The documents of one split of the corpus ``spec``, sorted by ``doc_id``.

    Raises :class:`SpectrumError` if the corpus is empty, a glob matches no file, or a file
    cannot be read as the kind says.
    """
    if split not in ("train", "validation", "all"):
        raise ValueError(f"split must be 'train', 'validation' or 'all', got {split!r}")
    return of_split(split_documents(spec), split)


def of_split(splits: dict[Split, list[Document]], split: str) -> list[Document]:
    """The documents of ``split`` (``train``, ``validation`` or ``all``: both, sorted by id)."""
    if split == "all":
        return sorted(splits["train"] + splits["validation"], key=lambda d: d.doc_id)
    return splits[split]  # type: ignore[index]


def split_documents(spec: CorpusSpec) -> dict[Split, list[Document]]:
    """Both splits of the corpus ``spec`` (``train``, ``validation``), each sorted by ``doc_id``,
    from one reading of the corpus. Raises as :func:`documents` does."""
    if spec.validation is not None:
        return {"train": all_documents(spec), "validation": _validation_documents(spec)}
    docs = all_documents(spec)
    assignment = split_of(docs, spec.validation_fraction)
    return {split: [d for d in docs if assignment[d.doc_id] == split]
            for split in ("train", "validation")}


def _validation_documents(spec: CorpusSpec) -> list[Document]:
    assert spec.validation is not None
    return [Document(VALIDATION_PREFIX + d.doc_id, d.text) for d in all_documents(spec.validation)]


def iter_documents(spec: CorpusSpec, split: Split | None) -> Iterator[Document]:
    """The non-empty documents of one split (``None``: both), one at a time in file order, so that
    memory does not grow with the corpus. The split is the hash rule of :func:`split_of` without
    its fallback for corpora that the rule puts on one side entirely; ids are not checked for
    uniqueness (:func:`documents` does both)."""
    if spec.validation is not None:
        main = dataclasses.replace(spec, validation=None)
        if split in (None, "train"):
            yield from _iter_all(main)
        if split in (None, "validation"):
            for d in _iter_all(spec.validation):
                yield Document(VALIDATION_PREFIX + d.doc_id, d.text)
        return
    for d in _iter_all(spec):
        if split is None or (split_score(d.doc_id) < spec.validation_fraction) == (split == "validation"):
            yield d


def _iter_all(spec: CorpusSpec) -> Iterator[Document]:
    """Every non-empty document of one corpus, in file order."""
    if spec.kind == "python-stdlib":
        docs: Iterator[Document] = _python_stdlib()
    else:
        readers = {"text": _text, "jsonl": _jsonl, "parquet": _parquet}
        if spec.kind not in readers:
            raise SpectrumError(f"evalset.corpus.kind: unknown corpus kind {spec.kind!r}")
        docs = (d for f in _files(spec) for d in readers[spec.kind](f, spec))
    for d in docs:
        if d.text.strip():
            yield d


def all_documents(spec: CorpusSpec) -> list[Document]:
    """Every document of the corpus (both splits), sorted by ``doc_id``; ids are unique."""
    if spec.kind == "python-stdlib":
        docs = list(_python_stdlib())
    else:
        readers = {"text": _text, "jsonl": _jsonl, "parquet": _parquet}
        if spec.kind not in readers:
            raise SpectrumError(f"evalset.corpus.kind: unknown corpus kind {spec.kind!r}")
        docs = [d for f in _files(spec) for d in readers[spec.kind](f, spec)]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        where = f"{spec.path} " if spec.path else ""
        raise SpectrumError(f"evalset.corpus: the {spec.kind} corpus {where}has no non-empty documents")
    docs.sort(key=lambda d: d.doc_id)
    for a, b in zip(docs, docs[1:]):
        if a.doc_id == b.doc_id:
            raise SpectrumError(f"evalset.corpus: document id {a.doc_id!r} occurs twice in {spec.path}")
    return docs


@functools.lru_cache(maxsize=1)
def _stdlib_documents() -> tuple[Document, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in _STDLIB_EXCLUDED_TOP or "__pycache__" in rel.parts or not path.is_file():
            continue
        docs.append(Document(rel.as_posix(), path.read_bytes().decode("utf-8", errors="replace")))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without pydoc_data: the sources alone
        topics = {}
    docs.extend(Document(f"pydoc:{name}", text) for name, text in sorted(topics.items()))
    return tuple(docs)


def _python_stdlib() -> Iterator[Document]:
    return iter(_stdlib_documents())


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root if len(fixed) < len(parts) else root.parent


def _files(spec: CorpusSpec) -> list[tuple[Path, str]]:
    """(file, name used in doc ids) for every file the glob matches, sorted."""
    if not spec.path:
        raise SpectrumError(f"evalset.corpus.path: a glob of files is required for kind {spec.kind}")
    files = sorted(Path(p) for p in glob.glob(spec.path, recursive=True) if Path(p).is_file())
    if not files:
        raise SpectrumError(f"evalset.corpus.path: no files match {spec.path}")
    root = _glob_root(spec.path)
    out = []
    for f in files:
        try:
            name = f.relative_to(root).as_posix()
        except ValueError:
            name = f.as_posix()
        out.append((f, name))
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise SpectrumError(f"evalset.corpus: cannot read {path}: {e.strerror or e}") from None


def _text(file: tuple[Path, str], spec: CorpusSpec) -> Iterator[Document]:
    path, name = file
    yield Document(name, _read_text(path))


def _jsonl(file: tuple[Path, str], spec: CorpusSpec) -> Iterator[Document]:
    path, name = file
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpectrumError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(spec.field), str):
            raise SpectrumError(
                f"{path}:{lineno}: expected a JSON object with a string field {spec.field!r} "
                f"(evalset.corpus.field)")
        doc_id = str(record["id"]) if record.get("id") is not None else f"{name}:{lineno}"
        yield Document(doc_id, record[spec.field])


def _parquet(file: tuple[Path, str], spec: CorpusSpec) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, name = file
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise SpectrumError(f"{path}: not a readable Parquet file ({e})") from None
    if spec.column not in schema.names:
        raise SpectrumError(f"{path}: has no column {spec.column!r} (evalset.corpus.column); "
                            f"columns: {', '.join(schema.names)}")
    if not pa.types.is_string(schema.field(spec.column).type) and \
            not pa.types.is_large_string(schema.field(spec.column).type):
        raise SpectrumError(f"{path}: column {spec.column!r} must hold text, "
                            f"it holds {schema.field(spec.column).type}")
    columns = [spec.column] + (["id"] if "id" in schema.names and spec.column != "id" else [])
    table = pq.read_table(path, columns=columns)
    texts = table.column(spec.column).to_pylist()
    ids = table.column("id").to_pylist() if "id" in columns else [None] * len(texts)
    for row, (text, id_) in enumerate(zip(texts, ids)):
        if text is None:
            continue
        yield Document(str(id_) if id_ is not None else f"{name}:{row}", text)
