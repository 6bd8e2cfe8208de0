"""Assertions shared by the tests: outputs computed two ways (in one piece and in token ranges, in
this process and on workers) equal to the last digits."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

REL = 1e-9  # relative tolerance of floats (sums added in another order)
ABS = 1e-12  # ... and absolute, for values near 0


def assert_close(a, b, path: str = "", rel: float = REL) -> None:
    """Equal structures (dicts, lists, tuples); floats equal to ``rel`` relative (NaN equals NaN),
    the rest exactly. ``path`` names where in the structure a difference lies."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}/{k}", rel)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        elif math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), path
        else:
            assert a == pytest.approx(b, rel=rel, abs=ABS), f"{path}: {a} != {b}"
    else:
        assert a == b, path


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame, name: str, rel: float = REL) -> None:
    """The same columns and rows; float columns equal to ``rel`` relative, the rest exactly."""
    assert a.columns == b.columns and a.height == b.height, name
    for col in a.columns:
        if a[col].dtype.is_float():
            np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=rel, atol=ABS,
                                       err_msg=f"{name}: {col}")
        else:
            assert a[col].to_list() == b[col].to_list(), f"{name}: {col}"
