"""The shared assertions of tests.helpers fail where the outputs differ."""

import math

import numpy as np
import polars as pl
import pytest

from tests.helpers import assert_close, assert_frames_close


def test_assert_close_accepts_last_digits_and_nan_and_names_a_difference():
    a = {"r2": 0.9, "ci": [0.1, math.nan], "n": 3, "reason": None}
    assert_close(a, {"r2": 0.9 * (1 + 1e-12), "ci": [0.1, math.nan], "n": 3, "reason": None})
    with pytest.raises(AssertionError, match="/ci\\[0\\]"):
        assert_close(a, {**a, "ci": [0.1 * (1 + 1e-6), math.nan]})
    with pytest.raises(AssertionError, match="/r2"):
        assert_close(a, {**a, "r2": None})
    with pytest.raises(AssertionError):
        assert_close(a, {**a, "extra": 1})


def test_assert_frames_close_compares_every_column():
    a = pl.DataFrame({"run": ["x", "y"], "S": np.array([1.0, 2.0])})
    assert_frames_close(a, a.with_columns(pl.col("S") * (1 + 1e-12)), "same")
    with pytest.raises(AssertionError, match="S"):
        assert_frames_close(a, a.with_columns(pl.col("S") + 1e-3), "S differs")
    with pytest.raises(AssertionError, match="run"):
        assert_frames_close(a, a.with_columns(run=pl.lit("x")), "run differs")
