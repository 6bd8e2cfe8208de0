"""The table ``reconstruction/predictions.parquet``: one row per target point of every test and
model, with what was measured there and what the model predicted (the estimate, row 0 of the
bootstrap replicates)."""

from __future__ import annotations

import numpy as np
import polars as pl

SCHEMA = {"test": pl.Utf8, "target": pl.Utf8, "model": pl.Utf8, "model_kind": pl.Utf8,
          "run": pl.Utf8, "regime": pl.Utf8, "x": pl.Float64, "T": pl.Float64,
          "measured": pl.Float64, "predicted": pl.Float64}


def prediction_rows(*, test: str, target: str, model: str, model_kind: str, run: str,
                    regime: str | None, x: np.ndarray, measured: np.ndarray,
                    predicted: np.ndarray) -> pl.DataFrame:
    """The rows of one model on one target: ``x`` (ln T), ``measured`` and ``predicted`` (n,);
    ``regime`` None where the test has none (interpolation or extrapolation: held-out runs)."""
    x = np.asarray(x, float)
    n = len(x)
    return pl.DataFrame({"test": [test] * n, "target": [target] * n, "model": [model] * n,
                         "model_kind": [model_kind] * n, "run": [run] * n,
                         "regime": [regime] * n, "x": x, "T": np.exp(x),
                         "measured": np.asarray(measured, float),
                         "predicted": np.asarray(predicted, float)}, schema=SCHEMA)


def prediction_table(rows: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows of every test in one table (an empty table with the columns when none)."""
    return pl.concat(rows) if rows else pl.DataFrame(schema=SCHEMA)
