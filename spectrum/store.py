"""Atomic Parquet and JSON files with provenance.

Every artifact is written under a temporary name in its destination folder and renamed into
place, so a killed process never leaves a half-written file under a final name. Each Parquet
file carries a ``provenance`` record in its schema metadata (what produced it: checkpoint path and
hash, evalset hash, dtype, code version, ...). A stage compares the provenance it would write with
the one on disk to decide whether an existing file is current (skip it), or stale (recompute it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from spectrum import __version__

PROVENANCE_KEY = b"token_spectrum.provenance"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _naming(e: OSError, path: Path, tmp: Path) -> OSError:
    """``e`` naming ``path``, where it named no file or the temporary one (pyarrow's write errors
    carry the errno only in their message)."""
    if e.filename is not None and str(e.filename) != str(tmp):
        return e
    code = e.errno
    if code is None:
        m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    reason = os.strerror(code) if code else (str(e).strip().splitlines() or [type(e).__name__])[0]
    return OSError(code, reason, str(path))


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the folder that cannot be written, not the temporary name
        raise OSError(e.errno, e.strerror, str(path.parent)) from e
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends
    without an exception, removed otherwise."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        yield tmp
        _commit(tmp, path)
    except OSError as e:
        raise _naming(e, path, tmp) from e
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path, *, prefix: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``path`` (named ``prefix...``, default ``.<name>.``) to fill;
    it replaces ``path`` (and whatever was there) when the block ends without an exception, and
    is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def source_commit() -> str | None:
    """The git commit of this installation's source (``<sha>-dirty`` when tracked files differ
    from it), or None outside a git checkout: what results quote so that a figure can be traced
    to the code that made it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def write_parquet(table: pa.Table, path: str | Path, provenance: dict[str, Any] | None = None,
                  *, compression: str = "zstd",
                  encodings: dict[str, str] | None = None) -> Path:
    """Write ``table`` to ``path`` atomically, with ``provenance`` in the schema metadata.

    ``encodings``: a Parquet encoding for some columns (e.g. ``BYTE_STREAM_SPLIT``), instead of
    the dictionary encoding every column gets by default."""
    path = Path(path)
    meta = dict(table.schema.metadata or {})
    record = {"code_version": __version__, **(provenance or {})}
    meta[PROVENANCE_KEY] = json.dumps(record, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    options: dict[str, Any] = {}
    if encodings:
        options = {"column_encoding": encodings,
                   "use_dictionary": [c for c in table.column_names if c not in encodings]}
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression=compression, **options)
    return path


def numeric_encodings(table: pa.Table | pa.Schema,
                      ascending: tuple[str, ...] = ()) -> dict[str, str]:
    """Encodings for :func:`write_parquet` that suit numeric tables (or a table's schema):
    ``BYTE_STREAM_SPLIT`` for every float column (measured values rarely repeat, so a dictionary
    only costs), and ``DELTA_BINARY_PACKED`` for the integer columns named in ``ascending``
    (indices in order)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    out = {f.name: "BYTE_STREAM_SPLIT" for f in schema if pa.types.is_floating(f.type)}
    out.update({name: "DELTA_BINARY_PACKED" for name in ascending
                if pa.types.is_integer(schema.field(name).type)})
    return out


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance record of a Parquet file, or None if the file is missing or unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else None


def is_current(path: str | Path, provenance: dict[str, Any]) -> bool:
    """True if ``path`` exists, reads as Parquet, and every key of ``provenance`` matches."""
    found = read_provenance(path)
    if found is None:
        return False
    expected = json.loads(json.dumps(provenance, sort_keys=True, default=str))
    return all(found.get(k) == v for k, v in expected.items())


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return write_bytes(text.encode(), path)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def hash_files(paths: list[Path], *, chunk: int = 1 << 20) -> str:
    """SHA-256 over the contents of ``paths`` (in the order given), as a hex string."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
