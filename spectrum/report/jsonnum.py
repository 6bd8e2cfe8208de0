"""Numbers for the page's JSON, whole columns at a time: Python's ``round`` and the text's length.

``json.dumps`` writes a float as ``repr(float)`` and an int as ``str(int)``; the explorer embeds
millions of them, so they are rounded and measured here with numpy instead of one Python call per
number. :func:`rounded` gives exactly what ``round(v, digits)`` gives (numpy's own rounding
scales by ``10**digits`` first and so rounds some values ending in 5 the other way; those near
a tie, and the very large, are rounded by Python); :func:`float_sizes` and :func:`int_sizes` the
number of characters ``json.dumps`` writes for each value, ``null`` (4) for a missing one.
"""

from __future__ import annotations

import numpy as np

_POW10 = 10 ** np.arange(19, dtype=np.int64)  # 1 .. 1e18
_EXACT = 1e15  # below this many units of the last digit, the decimal text is the shortest repr


def _digit_count(a: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative int64 values (1 for 0)."""
    return 1 + np.searchsorted(_POW10[1:], a, side="right")


def rounded(values: np.ndarray, digits: int) -> np.ndarray:
    """``round(v, digits)`` of every finite value, NaN where the value is not finite."""
    shape = np.shape(values)
    v = np.asarray(values, dtype=np.float64).ravel()
    scale = 10.0 ** digits
    with np.errstate(invalid="ignore", over="ignore"):
        y = v * scale
        out = np.rint(y) / scale
        frac = np.abs(y - np.floor(y))
    finite = np.isfinite(v)
    out[~finite] = np.nan
    # v * scale is within one ulp of the exact product: only values that land near a tie, or too
    # large for the product to keep its fraction, can round differently from Python
    doubt = finite & ((np.abs(frac - 0.5) <= 1e-9 * np.maximum(1.0, np.abs(y)))
                      | (np.abs(y) >= 2.0 ** 50))
    for i in np.flatnonzero(doubt):
        out[i] = round(float(v[i]), digits)
    return out.reshape(shape)


def float_sizes(r: np.ndarray, digits: int) -> np.ndarray:
    """Characters of ``json.dumps(float(v))`` for values already rounded to ``digits`` decimals
    (4, ``null``, where NaN). The text of such a value is its integer part, a point and its
    decimals without trailing zeros (at least one), with a sign where negative (-0.0 too)."""
    r = np.asarray(r, dtype=np.float64)
    flat = r.ravel()
    size = np.full(flat.shape, 4, dtype=np.int64)
    finite = np.isfinite(flat)
    with np.errstate(invalid="ignore", over="ignore"):
        units = np.abs(np.rint(flat * 10.0 ** digits))
    plain = finite & (units < _EXACT)
    a = np.where(plain, units, 0).astype(np.int64)
    zeros = sum(((a % _POW10[j]) == 0).astype(np.int64) for j in range(1, digits + 1))
    decimals = np.maximum(digits - zeros, 1)
    text = np.signbit(flat) + _digit_count(a // _POW10[digits]) + 1 + decimals
    size[plain] = text[plain]
    for i in np.flatnonzero(finite & ~plain):  # very large: Python writes it
        size[i] = len(repr(float(flat[i])))
    return size.reshape(r.shape)


def int_sizes(values: np.ndarray, null: np.ndarray | None = None) -> np.ndarray:
    """Characters of ``json.dumps(int(v))`` (4, ``null``, where ``null`` is true)."""
    v = np.asarray(values, dtype=np.int64)
    size = (v < 0) + _digit_count(np.abs(v))
    return size if null is None else np.where(null, 4, size)


def as_objects(r: np.ndarray) -> np.ndarray:
    """An object array of Python floats, None where NaN (what the JSON writes as null)."""
    out = np.asarray(r, dtype=np.float64).astype(object)
    out[np.isnan(np.asarray(r, dtype=np.float64))] = None
    return out
