"""The arms of the controlled curriculum test: the curriculum and the controls a sceptic would pick.

Every arm trains the same model with the same compute and seeds and differs only in the per-phase
sampling weights ``(n_items, P)`` of the training sequences (all drawn by the same
:class:`~spectrum.curriculum.sampling.PhaseSampler`):

- ``uniform``: every weight 1;
- ``curriculum``: the learnability weights of :mod:`spectrum.curriculum.weights`;
- ``freq_shuffled``: the frequency-matched control. The curriculum's weight rows are shuffled
  among sequences with a similar token-frequency profile (sequences bucketed by the mean log
  unigram frequency of their target tokens, rows permuted within each bucket), which breaks their
  link to learnability. A shuffle within buckets only matches the mean log frequency roughly, so
  each phase's column is then *calibrated* to the curriculum's token-frequency mix: tilted
  exponentially in the sequences' quintile shares (:func:`tilt_to_shares`, calibration by
  exponential tilting, i.e. raking) until the share of every frequency quintile among the tokens
  drawn in that phase equals the curriculum's (:func:`quintile_shares`). If the curriculum only
  helps by favouring frequent (or rare) tokens when it does, this control helps as much;
- ``random``: the weight rows permuted across all sequences: the same weight distribution (the
  same concentration of sampling, hence the same repetition of data) with no link to anything;
- ``timing_flat``: each sequence's weight constant over the phases, equal to its mean weight over
  the training *steps* (phases weighted by their number of steps). Every sequence is then drawn
  as often in expectation as under the curriculum, over the whole run; only *when* it is drawn
  differs. If the curriculum helps through a static reweighting of the data rather than through
  its timing, this control helps as much.
- ``exported``: what a user applies: the weights of ``spectrum export-curriculum`` for the pool
  (learnability measured by the suite's fit runs on the export's own scored sample; pool
  sequences outside it get predicted sheds, scored ones their measured sheds shrunk toward the
  prediction), not derived from the curriculum arm; trained like every other arm.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spectrum.curriculum.settings import ARMS  # noqa: E402,F401  (re-exported)
ARM_DESCRIPTIONS = {
    "uniform": "every weight 1",
    "curriculum": "learnability weights per phase",
    "freq_shuffled": "curriculum rows shuffled within token-frequency buckets, then tilted per "
                     "phase to the curriculum's token-frequency quintile shares",
    "random": "curriculum rows permuted across all sequences",
    "timing_flat": "each sequence's step-averaged curriculum weight, constant over phases",
    "exported": "the weights `spectrum export-curriculum` gives the pool, as a user applies them",
}

#: frequency bins of the token-frequency profile (quintiles)
N_QUANTILES = 5
#: the largest quintile-share difference per phase the frequency control is solved to stay within
MATCH_TOLERANCE = 0.005


def frequency_buckets(mean_log_freq: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids (0..B-1) of equal-count quantile bins of each sequence's mean log frequency."""
    v = np.asarray(mean_log_freq, dtype=np.float64)
    n_buckets = max(1, min(int(n_buckets), len(v)))
    rank = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return (rank * n_buckets // len(v)).astype(np.int64)


def frequency_profile(seq_index: np.ndarray, log_freq: np.ndarray, n_seq: int,
                      n_quantiles: int = N_QUANTILES) -> tuple[np.ndarray, np.ndarray]:
    """The quantile edges of the target tokens' log unigram frequency and, per sequence, the count
    of its target tokens in each quantile bin.

    ``seq_index`` (m) is each target token's sequence (0..n_seq-1), ``log_freq`` (m) its log
    unigram frequency. The ``n_quantiles - 1`` edges are order statistics at equal counts of all
    tokens (tokens equal to an edge fall in the bin above, so tied frequencies keep the bins only
    roughly equal); tokens with an undefined (NaN) frequency are not counted. Returns the edges and
    the ``(n_seq, n_quantiles)`` int counts.
    """
    idx = np.asarray(seq_index, dtype=np.int64)
    v = np.asarray(log_freq, dtype=np.float64)
    keep = ~np.isnan(v)
    idx, v = idx[keep], v[keep]
    if len(v) == 0:
        return np.full(n_quantiles - 1, np.nan), np.zeros((n_seq, n_quantiles), dtype=np.int64)
    s = np.sort(v)
    edges = s[np.minimum(np.arange(1, n_quantiles) * len(s) // n_quantiles, len(s) - 1)]
    q = np.searchsorted(edges, v, side="right")
    counts = np.bincount(idx * n_quantiles + q, minlength=n_seq * n_quantiles)
    return edges, counts.reshape(n_seq, n_quantiles).astype(np.int64)


def quintile_shares(weights: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """``(P, Q)``: per phase, the share of each frequency bin among the target tokens drawn when
    sequences are sampled in proportion to their weight: ``sum_i w_ip c_iq / sum_i w_ip n_i``,
    with ``c_iq`` the ``profile`` counts and ``n_i`` their row sums. NaN where a phase draws no
    token."""
    w = np.asarray(weights, dtype=np.float64)
    w = w[:, None] if w.ndim == 1 else w
    c = np.asarray(profile, dtype=np.float64)
    num = w.T @ c
    den = num.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def tilt_to_shares(base: np.ndarray, profile: np.ndarray, target: np.ndarray
                   ) -> tuple[np.ndarray, float]:
    """``base`` (n) weights tilted so that their quintile shares equal ``target`` (Q).

    Calibration by exponential tilting (raking): ``w_i = v_i exp(lambda . x_i)`` with ``x_i`` the
    sequence's share vector ``c_i / n_i``; ``lambda`` minimises the convex dual
    ``log sum_i v_i n_i exp(lambda . x_i) - lambda . target``, whose gradient is the tilted shares
    minus the target, so its minimum matches them exactly (the tilt closest to ``base`` in relative
    entropy that does). As the ``x_i`` sum to 1, the last component of ``lambda`` is fixed at 0.
    Sequences without target tokens (which no share depends on) keep their share of the total
    weight. Returns the weights rescaled to mean 1 and the largest remaining share difference (the
    solver may fall short where ``target`` is outside what reweighting these sequences can reach;
    nothing is raised).
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    v = np.asarray(base, dtype=np.float64)
    c = np.asarray(profile, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    n_tok = c.sum(1)
    has = (n_tok > 0) & (v > 0)
    x = np.divide(c, n_tok[:, None], out=np.zeros_like(c), where=n_tok[:, None] > 0)

    def gap(w: np.ndarray) -> float:
        s = quintile_shares(w, c)[0]
        return float(np.max(np.abs(s - t))) if np.isfinite(s).all() else 0.0

    if not has.any() or not np.isfinite(t).all() or gap(v) < 1e-12:
        return _mean_one(v), gap(v)
    log_vn, xs, q = np.log(v[has] * n_tok[has]), x[has], c.shape[1]

    def dual(mu: np.ndarray) -> tuple[float, np.ndarray]:
        lam = np.append(mu, 0.0)
        a = log_vn + xs @ lam
        lse = logsumexp(a)
        shares = np.exp(a - lse) @ xs
        return float(lse - lam @ t), (shares - t)[:q - 1]

    res = minimize(dual, np.zeros(q - 1), jac=True, method="BFGS",
                   options={"gtol": 1e-11, "maxiter": 1000})
    a = xs @ np.append(res.x, 0.0)
    w = v.copy()
    tilted = v[has] * np.exp(a - a.max())
    w[has] = tilted * (v[has].sum() / tilted.sum())  # the tokenless rows keep their share
    w = _mean_one(w)
    return w, gap(w)


def _mean_one(w: np.ndarray) -> np.ndarray:
    total = w.sum()
    return w * (len(w) / total) if total > 0 else np.ones_like(w)


def match_frequency(control: np.ndarray, curriculum: np.ndarray, profile: np.ndarray
                    ) -> np.ndarray:
    """``control`` (n, P) with each phase's column tilted to the curriculum's quintile shares
    (:func:`tilt_to_shares`); every column has mean 1."""
    target = quintile_shares(curriculum, profile)
    out = np.empty(np.shape(control), dtype=np.float64)
    for p in range(out.shape[1]):
        out[:, p] = tilt_to_shares(control[:, p], profile, target[p])[0]
    return out


def frequency_match(control: np.ndarray, curriculum: np.ndarray, profile: np.ndarray
                    ) -> list[float]:
    """Per phase, the largest absolute difference of the quintile shares of ``control`` and of
    the curriculum (0 where neither draws a token)."""
    d = np.abs(quintile_shares(control, profile) - quintile_shares(curriculum, profile))
    return [float(np.max(row)) if np.isfinite(row).all() else 0.0 for row in d]


def frequency_match_record(curriculum: np.ndarray, buckets: np.ndarray, seeds: Sequence[int],
                           freq_profile: np.ndarray, edges: np.ndarray) -> dict[str, object]:
    """How closely the frequency control of every seed matches the curriculum's quintile shares:
    per phase the largest absolute share difference over the seeds, after the tilt and (for
    comparison) of the plain shuffle within frequency buckets, beside the quintile edges."""
    tilted, plain = [], []
    for seed in seeds:
        shuffled = shuffle_within(curriculum, buckets, np.random.default_rng([seed, 7919]))
        plain.append(frequency_match(shuffled, curriculum, freq_profile))
        tilted.append(frequency_match(match_frequency(shuffled, curriculum, freq_profile),
                                      curriculum, freq_profile))
    worst = np.max(tilted, axis=0) if tilted else np.zeros(0)
    return {"quintile_edges": [float(e) if np.isfinite(e) else None for e in edges],
            "tolerance": MATCH_TOLERANCE,
            "max_abs_diff": [float(d) for d in worst],
            "shuffle_max_abs_diff": [float(d) for d in (np.max(plain, axis=0) if plain else [])],
            "matched": bool((worst <= MATCH_TOLERANCE).all())}


def shuffle_within(weights: np.ndarray, buckets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weights`` (n, P) with whole rows permuted among the items of each bucket."""
    out = np.array(weights, copy=True)
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        out[rows] = weights[rng.permutation(rows)]
    return out


def timing_control(weights: np.ndarray, phase_steps: Sequence[int]) -> np.ndarray:
    """Each row replaced by its mean over training steps: ``sum_p steps_p w_ip / sum_p steps_p``.

    ``phase_steps`` (P) are the numbers of optimizer steps of the phases. The expected number of
    draws of every item over the run is the curriculum's; columns keep mean 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    steps = np.asarray(phase_steps, dtype=np.float64)
    if steps.shape != (w.shape[1],) or (steps <= 0).any():
        raise ValueError(f"phase_steps must be {w.shape[1]} positive step counts, got {list(steps)}")
    mean = w @ steps / steps.sum()
    return np.repeat(mean[:, None], w.shape[1], axis=1)


def arm_weights(curriculum: np.ndarray, buckets: np.ndarray, seed: int,
                phase_steps: Sequence[int] | None = None, *,
                freq_profile: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The (n, P) sampling weights of every arm for one seed (controls use a seeded permutation).

    ``phase_steps`` (steps per phase) defines the timing control; without it phases count equally.
    ``freq_profile`` (n, Q) (:func:`frequency_profile`) makes ``freq_shuffled`` match the
    curriculum's token-frequency quintile shares in every phase (:func:`match_frequency`);
    without it the control is the plain shuffle within frequency buckets.
    """
    rng = np.random.default_rng([seed, 7919])
    steps = phase_steps if phase_steps is not None else np.ones(curriculum.shape[1])
    shuffled = shuffle_within(curriculum, buckets, rng)
    if freq_profile is not None:
        shuffled = match_frequency(shuffled, curriculum, freq_profile)
    return {"uniform": np.ones_like(curriculum),
            "curriculum": curriculum,
            "freq_shuffled": shuffled,
            "random": curriculum[rng.permutation(len(curriculum))],
            "timing_flat": timing_control(curriculum, steps)}


def weight_diagnostics(weights: np.ndarray, mean_log_freq: np.ndarray,
                       freq_profile: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per phase: the weights' range, their effective sample size as a fraction of the items
    (``(sum w)^2 / (n sum w^2)``: 1 = uniform), their Spearman correlation with each
    sequence's mean log token frequency (how much of the weighting is a frequency preference)
    and, given the sequences' ``freq_profile``, the share of each token-frequency quintile among
    the tokens the phase draws (:func:`quintile_shares`)."""
    from scipy.stats import spearmanr

    shares = quintile_shares(weights, freq_profile) if freq_profile is not None else None
    out = []
    for p in range(weights.shape[1]):
        w = weights[:, p]
        rho = spearmanr(w, mean_log_freq)[0] if np.ptp(w) > 0 and np.ptp(mean_log_freq) > 0 else 0.0
        row = {"phase": p, "min": float(w.min()), "max": float(w.max()),
               "ess_fraction": float(w.sum() ** 2 / (len(w) * (w ** 2).sum())),
               "spearman_freq": float(rho)}
        if shares is not None:
            row["quintile_shares"] = [float(s) for s in shares[p]]
        out.append(row)
    return out


def arm_order(names) -> list[str]:
    """The arms in the canonical order (``ARMS``), others after them alphabetically."""
    names = list(names)
    return [a for a in ARMS if a in names] + sorted(set(names) - set(ARMS))
