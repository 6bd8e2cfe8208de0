"""The manifest (``checkpoints.yaml``): the evaluation set and the training runs to measure.

Loading validates the whole file before any work starts and reports *every* problem at once,
each with its location (``file: runs[2] (m2-d1).params: ...``). Two runs may not share a name or
a checkpoint source (the same folder, or the same revisions of a hub repository): their losses
would be one run's, measured twice; ``out`` may not be a file. Relative paths in the manifest
are resolved against the folder that holds the manifest, so a manifest can be run from anywhere.

A run's ``params`` (M) is a number or ``auto``: counted from its first checkpoint's config.json
(:mod:`spectrum.data.param_count`, offline), which must then be on disk when the manifest is read.

Whether each run's checkpoint folder exists and holds checkpoints is checked separately, by
:func:`spectrum.data.checkpoints.validate_checkpoint_sources`, because the built-in suite writes those
folders itself (``spectrum suite``) after the manifest has been read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from spectrum.errors import ManifestError

CorpusKind = Literal["python-stdlib", "text", "jsonl", "parquet"]
Role = Literal["fit", "heldout"]

_TOP_KEYS = {"out", "evalset", "suite", "runs"}
_EVALSET_KEYS = {"corpus", "split", "tokenizer", "sequences", "context", "seed", "annotations"}
_CORPUS_KEYS = {"kind", "path", "field", "column", "validation_fraction", "validation"}
SPLITS = ("validation", "train", "all")
_RUN_KEYS = {"name", "params", "tokens", "tokens_per_step", "role", "checkpoints", "steps", "train",
             "warmup_steps", "seed", "schedule"}
_HUB_KEYS = {"hub", "revisions", "cache_dir"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where evaluation (and suite training) text comes from.

    ``python-stdlib`` is the text that ships with Python (standard-library sources and pydoc
    topics); ``text`` a glob of .txt files (one document per file); ``jsonl`` a glob of JSON-lines
    files with a text ``field``; ``parquet`` a glob of Parquet files with a text ``column``.
    """

    kind: CorpusKind = "python-stdlib"
    path: str | None = None
    field: str = "text"
    column: str = "text"
    validation_fraction: float = 0.1
    # a separate validation corpus: then this corpus is all train, that one all validation, and
    # ``validation_fraction`` is not used
    validation: "CorpusSpec | None" = None


@dataclass(frozen=True)
class EvalsetSpec:
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    split: Literal["validation", "train", "all"] = "validation"
    tokenizer: str | None = None  # folder or hub id; None = the first checkpoint of the first run
    sequences: int = 256
    context: int = 128
    seed: int = 0


@dataclass(frozen=True)
class HubSource:
    """Checkpoints as revisions of a Hugging Face hub repository, read from the local cache."""

    repo: str
    revisions: tuple[str, ...]
    cache_dir: Path | None = None


@dataclass(frozen=True)
class RunSpec:
    name: str
    params: float  # M: non-embedding parameters (see spectrum.data.param_count.CONVENTION)
    tokens: float  # D: training tokens
    tokens_per_step: int
    role: Role
    checkpoints: Path | HubSource
    steps: tuple[int, ...] | None = None
    train: dict[str, Any] | None = None  # how `spectrum suite` makes this run (size, seed, ...)
    warmup_steps: int = 0  # learning-rate warmup; checkpoints at or before it are not scored
    # the training seed (initialisation and data order): runs of one configuration with other
    # seeds are its seed replicas, and runs of other configurations with the same seed pair with
    # it (common random numbers); None where unknown
    seed: int | None = None
    # where M was counted from for `params: auto` (the first checkpoint's config.json); None
    # where the manifest gives M as a number
    params_counted_from: Path | None = None
    # the learning-rate schedule (:func:`parse_schedule`): a mapping with ``kind``, or (step,
    # learning rate) pairs; filled from ``suite:`` for the runs the built-in suite trains; None
    # where the manifest says nothing (then a Trainer's trainer_state.json may tell)
    schedule: dict[str, Any] | tuple[tuple[int, float], ...] | None = None

    @property
    def point(self) -> tuple[float, float, int, int]:
        """The configuration (M, D, tokens per step, warmup) that seed replicas share."""
        return (self.params, self.tokens, self.tokens_per_step, self.warmup_steps)


@dataclass(frozen=True)
class Manifest:
    path: Path
    out: Path
    evalset: EvalsetSpec
    runs: tuple[RunSpec, ...]
    suite: dict[str, Any] | None = None  # validated by spectrum.suite.build

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def fit_runs(self) -> tuple[RunSpec, ...]:
        return tuple(r for r in self.runs if r.role == "fit")

    @property
    def heldout_runs(self) -> tuple[RunSpec, ...]:
        return tuple(r for r in self.runs if r.role == "heldout")


class _Problems:
    """Collects problems with their location instead of stopping at the first."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{self.file}: {where}: {msg}" if where else f"{self.file}: {msg}")

    def unknown_keys(self, where: str, mapping: dict, allowed: set[str]) -> None:
        for key in sorted(set(mapping) - allowed, key=str):
            self.add(f"{where}.{key}" if where else str(key),
                     f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def mapping(self, where: str, value: Any) -> dict | None:
        if not isinstance(value, dict):
            self.add(where, f"must be a mapping, got {type(value).__name__}")
            return None
        return value

    def integer(self, where: str, value: Any, *, minimum: int | None = None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            # YAML reads 2.0e7 as a float: accept floats that are whole numbers
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.add(where, f"must be an integer, got {value!r}")
                return None
        if minimum is not None and value < minimum:
            self.add(where, f"must be >= {minimum}, got {value}")
            return None
        return value

    def positive_number(self, where: str, value: Any) -> float | None:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e7" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(where, f"must be a number, got {value!r}")
            return None
        if not math.isfinite(value) or value <= 0:
            self.add(where, f"must be positive, got {value}")
            return None
        return float(value)


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def _corpus(raw: Any, where: str, base: Path, pr: _Problems, *,
            nested: bool = False) -> CorpusSpec | None:
    if raw is None:
        return CorpusSpec()
    m = pr.mapping(where, raw)
    if m is None:
        return None
    pr.unknown_keys(where, m, _CORPUS_KEYS - ({"validation", "validation_fraction"} if nested
                                              else set()))
    validation = None
    if m.get("validation") is not None:
        validation = _corpus(m["validation"], f"{where}.validation", base, pr, nested=True)
        if "validation_fraction" in m:
            pr.add(f"{where}.validation_fraction", "a separate validation corpus is given "
                   f"({where}.validation): the fraction would not be used; remove one of them")
    kind = m.get("kind", "python-stdlib")
    kinds = ("python-stdlib", "text", "jsonl", "parquet")
    if kind not in kinds:
        pr.add(f"{where}.kind", f"must be one of {', '.join(kinds)}, got {kind!r}")
        return None
    path = m.get("path")
    if kind != "python-stdlib":
        if not isinstance(path, str) or not path:
            pr.add(f"{where}.path", f"a glob of files is required for kind {kind}")
            return None
        path = str(_resolve(base, path))
    vf = m.get("validation_fraction", 0.1)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
        pr.add(f"{where}.validation_fraction", f"must be a number in (0, 1), got {vf!r}")
        vf = 0.1
    for key in ("field", "column"):
        if key in m and not isinstance(m[key], str):
            pr.add(f"{where}.{key}", f"must be a string, got {m[key]!r}")
    return CorpusSpec(kind=kind, path=path, field=str(m.get("field", "text")),
                      column=str(m.get("column", "text")), validation_fraction=float(vf),
                      validation=validation)


def _evalset(raw: Any, base: Path, pr: _Problems) -> EvalsetSpec | None:
    if raw is None:
        return EvalsetSpec()
    m = pr.mapping("evalset", raw)
    if m is None:
        return None
    pr.unknown_keys("evalset", m, _EVALSET_KEYS)
    corpus = _corpus(m.get("corpus"), "evalset.corpus", base, pr)
    split = m.get("split", "validation")
    if split not in SPLITS:
        pr.add("evalset.split", f"must be validation, train or all, got {split!r}")
    tok = m.get("tokenizer")
    if tok is not None and not isinstance(tok, str):
        pr.add("evalset.tokenizer", f"must be a folder, a hub id or null, got {tok!r}")
        tok = None
    if isinstance(tok, str) and (tok.startswith((".", "/", "~")) or _resolve(base, tok).exists()):
        tok = str(_resolve(base, tok))
    sequences = pr.integer("evalset.sequences", m.get("sequences", 256), minimum=1)
    context = pr.integer("evalset.context", m.get("context", 128), minimum=2)
    seed = pr.integer("evalset.seed", m.get("seed", 0))
    if None in (corpus, sequences, context, seed) or split not in SPLITS:
        return None
    return EvalsetSpec(corpus=corpus, split=split, tokenizer=tok, sequences=sequences,
                       context=context, seed=seed)


def _checkpoints(raw: Any, where: str, base: Path, pr: _Problems) -> Path | HubSource | None:
    if isinstance(raw, str) and raw:
        return _resolve(base, raw)
    if isinstance(raw, dict):
        pr.unknown_keys(where, raw, _HUB_KEYS)
        repo = raw.get("hub")
        revs = raw.get("revisions")
        ok = True
        if not isinstance(repo, str) or not repo:
            pr.add(f"{where}.hub", "must name a hub repository such as EleutherAI/pythia-70m")
            ok = False
        if not isinstance(revs, list) or not revs or not all(isinstance(r, str) for r in revs):
            pr.add(f"{where}.revisions", "must be a non-empty list of revision names (step1000, ...)")
            ok = False
        cache = raw.get("cache_dir")
        if cache is not None and not isinstance(cache, str):
            pr.add(f"{where}.cache_dir", f"must be a folder, got {cache!r}")
            ok = False
        if not ok:
            return None
        return HubSource(repo=repo, revisions=tuple(revs),
                         cache_dir=_resolve(base, cache) if cache else None)
    pr.add(where, "is required: a checkpoint folder, or {hub: <repo>, revisions: [...]}")
    return None


def _run(raw: Any, i: int, base: Path, pr: _Problems) -> RunSpec | None:
    m = pr.mapping(f"runs[{i}]", raw)
    if m is None:
        return None
    name = m.get("name")
    if not isinstance(name, str) or not name:
        pr.add(f"runs[{i}].name", "is required and must be a non-empty string")
        name = None
    elif any(c in name for c in "/\\= \t"):
        pr.add(f"runs[{i}].name", f"{name!r} must not contain '/', '\\', '=' or spaces")
    where = f"runs[{i}] ({name})" if name else f"runs[{i}]"
    pr.unknown_keys(where, m, _RUN_KEYS)
    missing = [k for k in ("params", "tokens", "tokens_per_step", "role", "checkpoints") if k not in m]
    for k in missing:
        pr.add(f"{where}.{k}", "is required")
    auto = m.get("params") == "auto"
    params = pr.positive_number(f"{where}.params", m["params"]) \
        if "params" in m and not auto else None
    tokens = pr.positive_number(f"{where}.tokens", m["tokens"]) if "tokens" in m else None
    tps = pr.integer(f"{where}.tokens_per_step", m["tokens_per_step"], minimum=1) \
        if "tokens_per_step" in m else None
    role = m.get("role")
    if "role" in m and role not in ("fit", "heldout"):
        pr.add(f"{where}.role", f"must be fit or heldout, got {role!r}")
        role = None
    ckpt = _checkpoints(m.get("checkpoints"), f"{where}.checkpoints", base, pr) \
        if "checkpoints" in m else None
    steps = m.get("steps")
    if steps is not None:
        if not isinstance(steps, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
            pr.add(f"{where}.steps", "must be null or a list of non-negative integers")
            steps = None
        else:
            steps = tuple(sorted(set(steps)))
    warmup = pr.integer(f"{where}.warmup_steps", m.get("warmup_steps", 0), minimum=0)
    train = m.get("train")
    if train is not None and not isinstance(train, dict):
        pr.add(f"{where}.train", f"must be a mapping, got {type(train).__name__}")
        train = None
    seed = _seed(m, train, where, pr)
    schedule = parse_schedule(m.get("schedule"), f"{where}.schedule", pr)
    counted_from = None
    if auto and ckpt is not None:
        params, counted_from = _count_params(ckpt, steps, f"{where}.params", pr)
    if None in (name, params, tokens, tps, role, ckpt, warmup):
        return None
    return RunSpec(name=name, params=params, tokens=tokens, tokens_per_step=tps, role=role,
                   checkpoints=ckpt, steps=steps, train=train, warmup_steps=warmup, seed=seed,
                   params_counted_from=counted_from, schedule=schedule)


def _count_params(ckpt: Path | HubSource, steps: tuple[int, ...] | None, where: str,
                  pr: _Problems) -> tuple[float | None, Path | None]:
    """``params: auto``: M counted from the first checkpoint's config.json (offline; GPT-NeoX
    by arithmetic, other models on the meta device), or a problem saying why it cannot be."""
    from spectrum.data.param_count import CountError, count_from, first_config

    try:
        config = first_config(ckpt, steps)
        return float(count_from(config)), config
    except CountError as e:
        pr.add(where, f"auto: cannot count the parameters: {e}; give M as a number, or make the "
                      "first checkpoint available first")
        return None, None


def _seed(m: dict[str, Any], train: dict[str, Any] | None, where: str,
          pr: _Problems) -> int | None:
    """The run's ``seed:``, or the built-in suite's ``train.seed``; they must agree."""
    seed = pr.integer(f"{where}.seed", m["seed"], minimum=0) if m.get("seed") is not None else None
    trained = (train or {}).get("seed")
    if isinstance(trained, int) and not isinstance(trained, bool):
        if seed is not None and seed != trained:
            pr.add(f"{where}.seed", f"{seed} differs from train.seed {trained}")
        return trained if seed is None else seed
    return seed


def _source_key(src: Path | HubSource) -> tuple:
    """What identifies a checkpoint source: the real folder, or the hub repository and cache."""
    if isinstance(src, HubSource):
        cache = str(src.cache_dir.resolve()) if src.cache_dir else None
        return ("hub", src.repo, cache)
    return ("folder", str(src.resolve()))


def _shared_sources(runs: list[tuple[int, RunSpec]], pr: _Problems) -> None:
    """Two runs reading the same checkpoints would measure one run twice under two names (and
    write its losses under both): refuse, naming both runs."""
    seen: dict[tuple, tuple[int, RunSpec]] = {}
    for i, run in runs:
        key = _source_key(run.checkpoints)
        if key in seen:
            j, first = seen[key]
            if isinstance(run.checkpoints, HubSource):
                common = sorted(set(run.checkpoints.revisions) & set(first.checkpoints.revisions))
                if not common:
                    continue  # other revisions of the same repository: other checkpoints
                what = f"revisions {', '.join(common)} of {run.checkpoints.repo}"
            else:
                what = f"folder {run.checkpoints}"
            pr.add(f"runs[{i}] ({run.name}).checkpoints",
                   f"{what} is also the checkpoint source of runs[{j}] ({first.name}); "
                   "each run needs its own checkpoints")
        else:
            seen[key] = (i, run)


SCHEDULE_KINDS = ("cosine", "linear", "constant", "wsd")
_SCHEDULE_KEYS = {"kind", "peak_lr", "warmup_steps", "min_lr_ratio", "decay_steps"}
# the built-in suite's schedule defaults (spectrum.suite.train.OptimConfig; a test holds them equal)
SUITE_SCHEDULE = {"learning_rate": 3.0e-3, "min_lr_ratio": 0.1, "warmup_steps": 10}


def parse_schedule(raw: Any, where: str, pr: _Problems) -> dict | tuple | None:
    """A run's ``schedule:``: null; ``{kind: cosine|linear|constant|wsd, peak_lr, warmup_steps,
    min_lr_ratio, decay_steps}`` (``kind`` and ``peak_lr`` required; cosine and linear decay from
    the warmup's end to ``min_lr_ratio`` of the peak on the last step, wsd over its last
    ``decay_steps``, 10% of the run by default); or a list of ``[step, learning_rate]`` pairs
    (piecewise linear). One problem per line."""
    if raw is None:
        return None
    if isinstance(raw, list):
        ok = bool(raw) and all(isinstance(p, list) and len(p) == 2
                               and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in p) and p[0] >= 0 and p[1] >= 0 for p in raw)
        if not ok or len({p[0] for p in raw}) < 2:
            pr.add(where, "must be a list of [step, learning_rate] pairs (steps >= 0, at least "
                   "two distinct, learning rates >= 0)")
            return None
        return tuple(sorted((int(a), float(b)) for a, b in raw))
    m = pr.mapping(where, raw)
    if m is None:
        return None
    n = len(pr.items)
    pr.unknown_keys(where, m, _SCHEDULE_KEYS)
    if m.get("kind") not in SCHEDULE_KINDS:
        pr.add(f"{where}.kind",
               f"must be one of {', '.join(SCHEDULE_KINDS)}, got {m.get('kind')!r}")
    pr.positive_number(f"{where}.peak_lr", m.get("peak_lr"))
    for key in ("warmup_steps", "decay_steps"):
        if key in m:
            pr.integer(f"{where}.{key}", m[key], minimum=0)
    ratio = m.get("min_lr_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        pr.add(f"{where}.min_lr_ratio", f"must be a number in [0, 1], got {ratio!r}")
    return None if len(pr.items) > n else dict(m)


def _suite_schedule(run: RunSpec, suite: dict | None) -> RunSpec:
    """A run the built-in suite trains, without its own ``schedule:``: the suite's schedule."""
    if run.schedule is not None or run.train is None or not isinstance(suite, dict):
        return run
    get = {k: suite.get(k, v) for k, v in SUITE_SCHEDULE.items()}
    return replace(run, schedule={"kind": "cosine", "peak_lr": get["learning_rate"],
                                  "warmup_steps": get["warmup_steps"],
                                  "min_lr_ratio": get["min_lr_ratio"],
                                  "source": "the suite's configuration"})


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate an already-parsed manifest; raise :class:`ManifestError` listing every problem."""
    path = Path(path)
    base = path.resolve().parent
    pr = _Problems(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: must be a YAML mapping with keys out, evalset, runs")
    pr.unknown_keys("", data, _TOP_KEYS)
    out = data.get("out", "artifacts")
    if not isinstance(out, str) or not out:
        pr.add("out", f"must be a folder name, got {out!r}")
        out = "artifacts"
    evalset = _evalset(data.get("evalset"), base, pr)
    suite = data.get("suite")
    if suite is not None and not isinstance(suite, dict):
        pr.add("suite", f"must be a mapping, got {type(suite).__name__}")
        suite = None
    raw_runs = data.get("runs")
    runs: list[RunSpec] = []
    indexed: list[tuple[int, RunSpec]] = []
    if not isinstance(raw_runs, list) or not raw_runs:
        pr.add("runs", "must be a non-empty list of runs")
    else:
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_runs):
            run = _run(raw, i, base, pr)
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                if name in seen:
                    pr.add(f"runs[{i}].name", f"duplicate run name {name!r} (also runs[{seen[name]}])")
                seen.setdefault(name, i)
            if run is not None:
                runs.append(run)
                indexed.append((i, run))
        _shared_sources(indexed, pr)
        runs = [_suite_schedule(r, suite) for r in runs]
    out_path = _resolve(base, out)
    if out_path.exists() and not out_path.is_dir():
        pr.add("out", f"{out_path} is a file, not a folder")
    if pr.items:
        raise ManifestError(*pr.items)
    assert evalset is not None
    return Manifest(path=path, out=out_path, evalset=evalset, runs=tuple(runs), suite=suite)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file. Raises :class:`ManifestError` with every problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_manifest(data, path)
