"""Every artifact path under the output folder, and the column names that stages share.

Nothing else spells these paths or names. Under ``out`` (default ``artifacts/``):

| path | written by |
|---|---|
| ``evalset/tokens.parquet``, ``sequences.parquet``, ``meta.json`` | ``spectrum evalset`` |
| ``losses/run=<run>/step=<step>/part-0.parquet`` | ``spectrum losses`` (hive-partitioned) |
| ``fits/run=<run>/part-0.parquet`` | ``spectrum fit`` |
| ``spectra/spectra.parquet``, ``grid.json``, ``comparisons.json`` | ``spectrum report`` |
| ``reconstruction/predictions.parquet``, ``scores.json`` | ``spectrum report`` |
| ``report/report.md``, ``index.html``, ``figures/*.png`` | ``spectrum report`` |
| ``curriculum/weights.parquet``, ``coverage.json``, ``missing_ids.json``, ``learnability/`` | ``spectrum export-curriculum`` |
| ``curriculum/test/results.json``, ``runs/``, ``learnability/`` | ``spectrum curriculum-test`` |
"""

from __future__ import annotations

import re
from pathlib import Path

PART = "part-0.parquet"  # the one file of a hive partition

# Columns shared between stages.
TOKEN_IDX = "token_idx"
LOSS = "loss"
SEQ_ID = "seq_id"
POS = "pos"
TARGET_ID = "target_id"
INPUT_IDS = "input_ids"
STEP = "step"
RUN = "run"
STEP_PREFERRED = "step_preferred"  # per token: the step is preferred over smooth alternatives

_STEP_DIR = re.compile(r"^step=(\d+)$")


# evalset
def evalset_dir(out: str | Path) -> Path:
    return Path(out) / "evalset"


def evalset_tokens(out: str | Path) -> Path:
    return evalset_dir(out) / "tokens.parquet"


def evalset_sequences(out: str | Path) -> Path:
    return evalset_dir(out) / "sequences.parquet"


def evalset_meta(out: str | Path) -> Path:
    return evalset_dir(out) / "meta.json"


# losses
def losses_dir(out: str | Path) -> Path:
    """The root of the hive-partitioned loss shards."""
    return Path(out) / "losses"


def checkpoint_hash_memo(out: str | Path) -> Path:
    """Checkpoint content hashes by file size and time (outside ``losses/``: scans of the
    shards read only shards)."""
    return Path(out) / ".cache" / "checkpoint_hashes.json"


def loss_run_dir(out: str | Path, run: str) -> Path:
    """The folder holding a run's loss shards."""
    return losses_dir(out) / f"{RUN}={run}"


def loss_shard(out: str | Path, run: str, step: int) -> Path:
    """The loss shard of one checkpoint of a run."""
    return loss_run_dir(out, run) / f"{STEP}={step}" / PART


def shard_steps(out: str | Path, run: str) -> list[int]:
    """The steps of ``run`` that have a loss shard, ascending."""
    root = loss_run_dir(out, run)
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / PART).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


# fits
def fits_file(out: str | Path, run: str) -> Path:
    return Path(out) / "fits" / f"{RUN}={run}" / PART


# spectra and reconstruction
def spectra_dir(out: str | Path) -> Path:
    return Path(out) / "spectra"


def spectra_table(out: str | Path) -> Path:
    return spectra_dir(out) / "spectra.parquet"


def spectra_grid(out: str | Path) -> Path:
    return spectra_dir(out) / "grid.json"


def spectra_comparisons(out: str | Path) -> Path:
    return spectra_dir(out) / "comparisons.json"


def reconstruction_dir(out: str | Path) -> Path:
    return Path(out) / "reconstruction"


def predictions_file(out: str | Path) -> Path:
    return reconstruction_dir(out) / "predictions.parquet"


def scores_file(out: str | Path) -> Path:
    return reconstruction_dir(out) / "scores.json"


# report
def report_dir(out: str | Path) -> Path:
    return Path(out) / "report"


def report_index(out: str | Path) -> Path:
    return report_dir(out) / "index.html"


# curriculum
def curriculum_dir(out: str | Path) -> Path:
    return Path(out) / "curriculum"


def learnability_dir(out: str | Path) -> Path:
    """The evalset, losses and fits of the training-split sample the curriculum is measured on."""
    return curriculum_dir(out) / "learnability"


def curriculum_coverage(out: str | Path) -> Path:
    """How the exported corpus was covered: items, measured and predicted shed, model accuracy."""
    return curriculum_dir(out) / "coverage.json"


def curriculum_missing_ids(out: str | Path) -> Path:
    """Exported ids the target dataset lacks."""
    return curriculum_dir(out) / "missing_ids.json"


def curriculum_test_dir(out: str | Path) -> Path:
    return curriculum_dir(out) / "test"


def curriculum_test_learnability_dir(out: str | Path) -> Path:
    """The evalset, losses and fits of the controlled test's pool of training sequences."""
    return curriculum_test_dir(out) / "learnability"
