"""Numbers rounded and measured a column at a time equal Python's round and json.dumps one at a
time, including the values numpy's own rounding gets wrong."""

import json

import numpy as np
import pytest

from spectrum.report.jsonnum import as_objects, float_sizes, int_sizes, rounded


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([
        rng.normal(0, 5, 20_000),
        np.round(rng.normal(0, 5, 20_000), 3) + 0.0005,  # ties at 3 decimals
        np.round(rng.normal(0, 5, 20_000), 2) + 0.005,  # ties at 2 decimals
        rng.normal(0, 5, 20_000).astype(np.float32).astype(np.float64),
        10 ** rng.uniform(-8, 25, 20_000) * rng.choice([-1, 1], 20_000),
        [0.0, -0.0, -0.0004, 0.0004, np.nan, np.inf, -np.inf, 1e15, 1e16, -1e17, 2.675, 1.005,
         0.125, -0.125, 5e-5, -5e-5, 123456789012.3456, 2.0 ** 52 / 100]])


@pytest.mark.parametrize("digits", [0, 2, 3, 4])
def test_round_and_sizes_equal_python_one_number_at_a_time(digits):
    v = _values()
    want = [round(x, digits) if np.isfinite(x) else None for x in v.tolist()]
    r = rounded(v, digits)
    assert np.isnan(np.asarray(r[~np.isfinite(v)])).all()
    assert json.dumps(as_objects(r).tolist()) == json.dumps(want)
    assert float_sizes(r, digits).tolist() == [len(json.dumps(x)) for x in want]
    # numpy's rounding alone is not Python's: the ties are why rounded() exists
    if digits == 3:
        assert (np.round(v, 3)[np.isfinite(v)] != r[np.isfinite(v)]).any()


def test_shapes_are_kept():
    v = _values()[:600].reshape(20, 30)
    assert rounded(v, 2).shape == float_sizes(rounded(v, 2), 2).shape == (20, 30)
    assert rounded(v, 2)[3, 4] == round(float(v[3, 4]), 2) or not np.isfinite(v[3, 4])


def test_int_sizes():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(-10**15, 10**15, 5000), [0, -1, 9, 10, -10, 99, 100]])
    null = np.arange(v.size) % 11 == 0
    want = [4 if n else len(str(x)) for x, n in zip(v.tolist(), null)]
    assert int_sizes(v, null).tolist() == want
