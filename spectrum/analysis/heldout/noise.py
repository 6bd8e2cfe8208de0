"""Seed noise of a family of held-out targets, and the three-way verdict on a prediction of them.

A *family* is J targets of one kind (for instance every dL/dlnT value of the held-out points),
each measured on seed replicas: an array ``(R, J)`` whose row r is seed r's measurement of every
target (NaN where that seed has no run at a target's point). Runs that share a seed share a row,
so the common random numbers of seed-paired runs stay together when a seed is left out. The
measurement may be given in per-evaluation-sequence parts ``(R, J, S)`` whose mean over S is the
measured value; then intervals resample sequences as well as seeds. A (J,) prediction of the
family is scored against the replicas' means.

With n_j replicas of target j, the measured target is their mean m_j. The estimates:

- ``noise_var``: one replica's variance around its target's mean, pooled over targets
  (``sum (y - m)^2 / sum (n_j - 1)``), unbiased for the mean over targets of the per-target
  noise variance, whatever the correlation of the noise between targets;
- ``centered_noise_var``: the part of that noise that moves targets *against each other* (the
  residual mean square of the two-way layout target x seed, ``(R - 1)(J - 1)`` degrees of freedom
  on complete data). A seed's run-level noise shifts many targets together; such a common shift
  is an error for a prediction but adds nothing to the spread across targets, so the spread of
  the measured means is corrected with this part, not with ``noise_var``. Under noise that is
  independent between targets the two agree;
- ``signal_var``: the variance (ddof 1) of the true values across targets,
  ``var(m) - centered_noise_var / n`` with n the harmonic mean of the n_j;
- ``snr = signal_var / (noise_var / n)``: signal against the noise of one measured target;
- ``oracle_ceiling``: the expected R^2 of a noise-free predictor (the true values) against ONE
  replica, ``1 - J noise_var / ((J - 1)(signal_var + centered_noise_var))``; with noise
  independent between targets and many targets this is ``snr1 / (1 + snr1)``, snr1 = snr / n;
- ``score_corrected = 1 - (MSE(prediction, m) - noise_var / n) / ((J - 1)/J signal_var)``: an
  estimate of the R^2 of the prediction against the true values (the project's R^2,
  ``1 - SSE / SST``, with SST over the J targets), i.e. the error in excess of the noise.

Intervals: a t interval from the jackknife over seeds (leave one seed out, R - 1 degrees of
freedom; variances and ratios on the log scale), plus, with per-sequence parts, the variance of a
vectorised bootstrap over sequences (2000 replicates by default; one draw of sequences for
measurement and prediction; Satterthwaite degrees of freedom; a seed's own noise on particular
sequences enters both parts, which errs on the wide side). Seeds are few (3 to 8), and a
bootstrap over few seeds is biased in a way no percentile correction repairs: a resample that
repeats a seed has less noise than the data, and one that draws a single seed has none. On
simulated families of 60 targets with 4 seeds, the seed bootstrap's 95% interval for the snr
covered the truth 46% of the time (noise independent between targets) and 53% (half the noise a
common shift of the seed); the jackknife's covered it 95-97% and 86% (a common shift leaves close
to R - 1 degrees of freedom: few seeds cannot pin it down better). On dL/dlnT of the planted
world with run-level AR(1) noise half shared by a seed's runs (tests.planted_noise), 4 seeds
gave 95-98%. An interval over seeds needs at least 3 seeds, so a family with 2 is
``not_measurable`` even though its noise is estimated.

Verdict (threshold 0.5 by default): ``predicts`` when the corrected score's lower end is at least
the threshold, ``does_not_predict`` when its upper end is below it, ``not_measurable`` otherwise,
and always ``not_measurable`` (with a reason) with fewer than 2 replicas, fewer than 5 targets
(then the prediction's error against the noise is given instead of an R^2:
``RMSE(prediction - m) / sqrt(noise_var / n)``, about 1 for a prediction as good as the noise
allows) or no signal above the noise.

Beside the verdict: :func:`skill` (a prediction against a baseline, in excess of the noise),
:func:`unexplained` (the noise estimate of what a baseline leaves: is there anything above the
noise for a finer model to add), :func:`needed` (what a ``not_measurable`` family would need)
and :func:`holm` (Holm's correction over a family of claims).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import t as tdist

Verdict = Literal["predicts", "does_not_predict", "not_measurable"]
MIN_REPLICAS = 2
MIN_TARGETS = 5
_STATS = ("noise_var", "centered_noise_var", "signal_var", "snr", "oracle_ceiling",
          "score_corrected", "error_over_noise")
_LOG_SCALE = ("noise_var", "centered_noise_var", "snr", "error_over_noise")


# ---------------------------------------------------------------------------------------------
# the estimates, vectorised over a leading batch of families (seed subsets, sequence draws)

def family_stats(y: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Every estimate for a batch of families: ``y`` (B, R, J) with NaN where a replica lacks a
    target, ``prediction`` (B, J) or (J,). Returns arrays of shape (B,); an estimate that is
    not defined in a replicate (no degrees of freedom, no signal) is NaN or inf there."""
    y = np.asarray(y, float)
    finite = np.isfinite(y)
    n = finite.sum(axis=1)  # (B, J) replicas per target
    has = n > 0
    J = has.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(has, np.nansum(y, axis=1) / n, np.nan)
        dev = np.where(finite, y - m[:, None, :], 0.0)
        df = np.maximum(n - 1, 0).sum(axis=1)
        noise = (dev ** 2).sum(axis=(1, 2)) / df
        # the seed's common shift: each replica's deviations centred over the targets it has
        per_replica = finite.sum(axis=2)
        shift = np.where(per_replica > 0, dev.sum(axis=2) / per_replica, 0.0)
        centred = np.where(finite, dev - shift[:, :, None], 0.0)
        df_c = df - np.maximum((per_replica > 0).sum(axis=1) - 1, 0)
        centered = (centred ** 2).sum(axis=(1, 2)) / df_c
        inv_n = np.where(has, 1.0 / n, 0.0).sum(axis=1) / J  # 1 / harmonic mean of n_j
        m0 = np.where(has, m, 0.0)
        spread = ((m0 - (m0.sum(axis=1) / J)[:, None]) ** 2 * has).sum(axis=1) / (J - 1)
        signal = spread - centered * inv_n
        snr = signal / (noise * inv_n)
        ceiling = 1.0 - J * noise / ((J - 1) * (signal + centered))
        err2 = np.where(has, (np.broadcast_to(prediction, m.shape) - m0) ** 2, 0.0)
        mse = err2.sum(axis=1) / J
        score = 1.0 - (mse - noise * inv_n) / ((J - 1) / J * signal)
        score = np.where(signal > 0, score, np.nan)
        error = np.sqrt(mse / (noise * inv_n))
    return {"noise_var": noise, "centered_noise_var": centered, "signal_var": signal, "snr": snr,
            "oracle_ceiling": ceiling, "score_corrected": score, "error_over_noise": error,
            "rmse": np.sqrt(mse), "excess_mse": mse - noise * inv_n, "n_harmonic": 1.0 / inv_n}


def _sequence_draws(parts: np.ndarray, prediction: np.ndarray, n_boot: int,
                    rng: np.random.Generator, chunk: int):
    """Families with the evaluation sequences resampled, ``chunk`` at a time: one draw of
    sequences shared by every replica and by a per-sequence prediction."""
    S = parts.shape[2]
    present = np.isfinite(parts).all(axis=2)
    filled = np.nan_to_num(parts)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        w = rng.multinomial(S, np.full(S, 1.0 / S), size=b) / S  # (b, S)
        yb = np.where(present[None], np.einsum("rjs,bs->brj", filled, w), np.nan)
        pb = (w @ prediction.T) if prediction.ndim == 2 else prediction
        yield yb, pb
        done += b


def leave_one_seed_out(y: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Every estimate of :func:`family_stats` with one seed (row) left out: (R,) each."""
    R = y.shape[0]
    keep = ~np.eye(R, dtype=bool)
    return family_stats(np.stack([y[keep[r]] for r in range(R)]), prediction)


def _scale(key: str, values: np.ndarray) -> np.ndarray:
    """The scale an interval is built on: log for the positive ratios and variances (their
    sampling distributions are skewed), linear for the scores; NaN where not positive."""
    values = np.asarray(values, float)
    if key not in _LOG_SCALE:
        return values
    safe = np.where(values > 0, values, 1.0)
    return np.where(values > 0, np.log(safe), np.nan)


def jackknife_interval(key: str, estimate: float, loo: np.ndarray,
                       sequence_reps: np.ndarray | None = None,
                       level: float = 0.95) -> tuple[float, float] | None:
    """A t interval around ``estimate`` from its leave-one-seed-out values ``loo`` (jackknife
    variance over seeds, R - 1 degrees of freedom), plus, where given, the variance of
    replicates that resample evaluation sequences (Satterthwaite degrees of freedom). None
    where it is unbounded: fewer than 3 seeds, or an estimate that is not defined (or, on the
    log scale, not positive) with some seed left out."""
    loo = np.asarray(loo, float)
    R = loo.size
    est = float(_scale(key, np.array([estimate]))[0])
    th = _scale(key, loo)
    if R < 3 or not math.isfinite(est) or not np.isfinite(th).all():
        return None
    v_seed = (R - 1) / R * float(np.sum((th - th.mean()) ** 2))
    v_seq = 0.0
    if sequence_reps is not None:
        reps = _scale(key, sequence_reps)
        reps = reps[np.isfinite(reps)]
        v_seq = float(np.var(reps, ddof=1)) if reps.size > 1 else 0.0
    total = v_seed + v_seq
    df = (R - 1) * (total / v_seed) ** 2 if v_seed > 0 else 1e6
    half = float(tdist.ppf(0.5 + level / 2, df)) * math.sqrt(total)
    if key in _LOG_SCALE:
        return (math.exp(est - half), math.exp(est + half))
    return (est - half, est + half)


# ---------------------------------------------------------------------------------------------
# the result per target family

def finite_or_none(v: float | None) -> float | None:
    """``v`` as a float, or None where it is missing or not finite (JSON has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class NoiseEstimate:
    """The seed noise of one target family (members None where they cannot be computed)."""

    replicas: int
    targets: int
    snr: float | None = None
    snr_ci: tuple[float, float] | None = None
    noise_var: float | None = None
    centered_noise_var: float | None = None
    signal_var: float | None = None
    oracle_ceiling: float | None = None
    oracle_ceiling_ci: tuple[float, float] | None = None
    n_harmonic: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        ci = (lambda c: None if c is None else [finite_or_none(c[0]), finite_or_none(c[1])])
        out = {"snr": finite_or_none(self.snr), "snr_ci": ci(self.snr_ci), "noise_var": finite_or_none(self.noise_var),
               "centered_noise_var": finite_or_none(self.centered_noise_var),
               "signal_var": finite_or_none(self.signal_var),
               "oracle_ceiling": {"r2": finite_or_none(self.oracle_ceiling),
                                  "ci": ci(self.oracle_ceiling_ci)},
               "replicas": self.replicas, "targets": self.targets}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class FamilyVerdict:
    """The verdict on one prediction of a target family, with the noise it rests on."""

    verdict: Verdict
    noise: NoiseEstimate
    threshold: float
    score: float | None = None
    score_ci: tuple[float, float] | None = None
    rmse: float | None = None  # the prediction against the replicas' means, nats
    error_over_noise: float | None = None
    error_over_noise_ci: tuple[float, float] | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        ci = (lambda c: None if c is None else [finite_or_none(c[0]), finite_or_none(c[1])])
        score = {"value": finite_or_none(self.score), "ci": ci(self.score_ci)}
        if self.score is None and self.reason:
            score["reason"] = self.reason
        out = {"verdict": self.verdict, "noise": self.noise.to_json(), "score_corrected": score,
               "threshold": self.threshold, "rmse_nats": finite_or_none(self.rmse),
               "error_over_noise": {"value": finite_or_none(self.error_over_noise),
                                    "ci": ci(self.error_over_noise_ci)}}
        if self.reason:
            out["reason"] = self.reason
        return out


# ---------------------------------------------------------------------------------------------
# assessing a prediction

def _prepare(measured: np.ndarray, prediction: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Values (R, J), parts (R, J, S) or None, and the prediction, with targets that no replica
    measures and replicas that measure nothing left out."""
    measured = np.asarray(measured, float)
    prediction = np.asarray(prediction, float)
    if measured.ndim not in (2, 3):
        raise ValueError(f"measured must be (R, J) or (R, J, S), got shape {measured.shape}")
    parts = measured if measured.ndim == 3 else None
    with np.errstate(invalid="ignore"):
        y = measured.mean(axis=2) if parts is not None else measured
    J = y.shape[1]
    if prediction.shape[0] != J or prediction.ndim > 2:
        raise ValueError(f"prediction must be ({J},) or ({J}, S), got {prediction.shape}")
    if prediction.ndim == 2 and (parts is None or prediction.shape[1] != parts.shape[2]):
        raise ValueError("a per-sequence prediction needs per-sequence measurements with the "
                         "same sequences")
    cols = np.isfinite(y).any(axis=0)
    rows = np.isfinite(y[:, cols]).any(axis=1) if cols.any() else np.zeros(len(y), bool)
    y, prediction = y[rows][:, cols], prediction[cols]
    parts = parts[rows][:, cols] if parts is not None else None
    if not np.isfinite(prediction).all():
        raise ValueError("the prediction must be finite at every measured target")
    return y, parts, prediction


def _point_prediction(prediction: np.ndarray) -> np.ndarray:
    return prediction.mean(axis=1) if prediction.ndim == 2 else prediction


def _intervals(y: np.ndarray, parts: np.ndarray | None, prediction: np.ndarray,
               est: dict[str, float], n_boot: int, level: float, seed: int,
               chunk: int) -> dict[str, tuple[float, float] | None]:
    """Every estimate's interval: jackknife over seeds, plus a bootstrap over sequences."""
    loo = leave_one_seed_out(y, _point_prediction(prediction))
    seq: dict[str, np.ndarray | None] = {k: None for k in _STATS}
    if parts is not None and n_boot > 1:
        rng = np.random.default_rng(seed)
        draws = [family_stats(yb, pb) for yb, pb in
                 _sequence_draws(parts, prediction, n_boot, rng, chunk)]
        seq = {k: np.concatenate([d[k] for d in draws]) for k in _STATS}
    return {k: jackknife_interval(k, est[k], loo[k], seq[k], level) for k in _STATS}


def assess(measured: np.ndarray, prediction: np.ndarray, *, threshold: float = 0.5,
           n_boot: int = 2000, level: float = 0.95, seed: int = 0,
           chunk: int = 250) -> FamilyVerdict:
    """The noise of a target family and the verdict on ``prediction`` of it.

    ``measured``: (R, J) seed replicas of J targets (row r = seed r, NaN where absent), or
    (R, J, S) per-sequence parts whose mean over S is the measurement; ``prediction``: (J,), or
    (J, S) per-sequence parts (then one draw of sequences resamples both). ``n_boot``: the
    replicates of the bootstrap over sequences (used only with per-sequence parts)."""
    y, parts, prediction = _prepare(measured, prediction)
    R, J = y.shape
    df = int(np.maximum(np.isfinite(y).sum(axis=0) - 1, 0).sum())
    est = {k: float(v[0]) for k, v in family_stats(y[None], _point_prediction(prediction)).items()}
    rmse = est["rmse"] if J else None
    if R < MIN_REPLICAS or df == 0:
        reason = (f"{R} seed replica(s): at least {MIN_REPLICAS} of one target are needed to "
                  "measure the noise")
        return FamilyVerdict("not_measurable", NoiseEstimate(R, J, reason=reason), threshold,
                             rmse=rmse, reason=reason)
    ci = _intervals(y, parts, prediction, est, n_boot, level, seed, chunk)
    base = dict(noise_var=est["noise_var"], centered_noise_var=est["centered_noise_var"],
                n_harmonic=est["n_harmonic"])
    error = dict(rmse=rmse, error_over_noise=est["error_over_noise"],
                 error_over_noise_ci=ci["error_over_noise"])
    if J < MIN_TARGETS:
        reason = (f"{J} target(s): no R^2 on fewer than {MIN_TARGETS}; the error against the "
                  "noise is given instead")
        return FamilyVerdict("not_measurable", NoiseEstimate(R, J, reason=reason, **base),
                             threshold, reason=reason, **error)
    noise = NoiseEstimate(R, J, snr=est["snr"], snr_ci=ci["snr"], signal_var=est["signal_var"],
                          oracle_ceiling=est["oracle_ceiling"],
                          oracle_ceiling_ci=ci["oracle_ceiling"], **base)
    if not est["signal_var"] > 0:
        reason = "no signal above the noise: the targets' spread is within their noise"
        return FamilyVerdict("not_measurable", noise, threshold, reason=reason, **error)
    score_ci = ci["score_corrected"]
    verdict: Verdict = "not_measurable"
    reason = None
    if score_ci is None:
        reason = (f"the corrected score has no bounded interval over {R} seeds (fewer than 3, "
                  "or no signal above the noise with one seed left out)")
    elif score_ci[0] >= threshold:
        verdict = "predicts"
    elif score_ci[1] < threshold:
        verdict = "does_not_predict"
    else:
        reason = (f"the corrected score's interval [{score_ci[0]:.3g}, {score_ci[1]:.3g}] "
                  f"contains the threshold {threshold:g}")
    return FamilyVerdict(verdict, noise, threshold, score=est["score_corrected"],
                         score_ci=score_ci, reason=reason, **error)

def skill(measured: np.ndarray, prediction: np.ndarray, baseline: np.ndarray, *,
          level: float = 0.95) -> dict[str, Any]:
    """The skill of ``prediction`` against ``baseline`` on one family, in excess of the noise:
    ``1 - excess(prediction) / excess(baseline)`` with ``excess = MSE(., m) - noise_var / n``
    (each an unbiased estimate of the squared error against the true values): 1 for a perfect
    prediction, 0 for one no better than the baseline. ``value`` and a jackknife interval over
    seeds (``ci``; None where unbounded); per-sequence parts are reduced to their means here.
    ``reason`` where it cannot be computed (fewer than 2 replicas, or no baseline error in
    excess of the noise)."""
    measured = np.asarray(measured, float)
    means = measured.mean(axis=2) if measured.ndim == 3 else measured
    y, _, p = _prepare(means, _point_prediction(np.asarray(prediction, float)))
    _, _, b = _prepare(means, _point_prediction(np.asarray(baseline, float)))
    if y.shape[0] < MIN_REPLICAS:
        return {"value": None, "ci": None, "reason": f"{y.shape[0]} seed replica(s)"}

    def value(batch: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = family_stats(batch, b)["excess_mse"]
            return np.where(ref > 0, 1.0 - family_stats(batch, p)["excess_mse"] / ref, np.nan)

    est = float(value(y[None])[0])
    if not math.isfinite(est):
        return {"value": None, "ci": None,
                "reason": "the baseline's error is within the noise: nothing left to beat"}
    keep = ~np.eye(y.shape[0], dtype=bool)
    loo = value(np.stack([y[k] for k in keep]))
    ci = jackknife_interval("skill", est, loo, level=level)
    return {"value": est, "ci": None if ci is None else [ci[0], ci[1]]}


def unexplained(measured: np.ndarray, baseline: np.ndarray, **kw) -> NoiseEstimate:
    """The noise estimate of what ``baseline`` leaves unexplained (the family's targets minus
    the baseline's prediction): its ``snr`` says whether there is anything above the noise for
    a finer model (a token-level one, beside a tokenless null) to add. Arguments as
    :func:`assess`."""
    measured = np.asarray(measured, float)
    baseline = np.asarray(baseline, float)
    if measured.ndim == 3 and baseline.ndim == 1:
        baseline = baseline[:, None]
    residual = measured - baseline
    return assess(residual, np.zeros(residual.shape[1]), **kw).noise


def needed(result: FamilyVerdict, target_snr: float = 9.0) -> str:
    """What a ``not_measurable`` family would need, in one sentence from its numbers.

    The snr of a mean of n replicas grows as n (snr1 = snr / n per replica), and the corrected
    score's interval is taken to narrow as 1 / sqrt(n): conservative where the noise of the
    means, which falls as 1 / n, dominates it. Empty for the other verdicts."""
    noise = result.noise
    if result.verdict != "not_measurable":
        return ""
    if noise.noise_var is None:
        return (f"seed replicas: at least {MIN_REPLICAS} seeds at the held-out points "
                "(paired across the runs of a derivative)")
    if noise.replicas < 3:
        return (f"a third seed at the held-out points: {noise.replicas} seeds estimate the "
                "noise but give no interval over seeds")
    if noise.targets < MIN_TARGETS:
        return (f"more targets: {MIN_TARGETS} or more (more points or checkpoints in the "
                f"family) for an R^2; today {noise.targets}")
    n = noise.n_harmonic or float(noise.replicas)
    parts = []
    if noise.snr is not None and noise.snr > 0:
        snr1 = noise.snr / n
        want = max(math.ceil(target_snr / snr1), MIN_REPLICAS)
        parts.append(f"at snr {snr1:.2g} per replica, {want} replicas per point give snr "
                     f"{target_snr:g} (today {noise.snr:.2g} with {n:.3g})")
    else:
        parts.append("no signal above the noise at all: the spans of the derivatives (or the "
                     "lever arm in ln M, ln D) must widen before more replicas can help")
    if result.score is not None and result.score_ci is not None:
        gap = abs(result.score - result.threshold)
        half = max(result.score - result.score_ci[0], result.score_ci[1] - result.score)
        if gap > 0 and math.isfinite(half):
            want = math.ceil(n * (half / gap) ** 2)
            side = "above" if result.score > result.threshold else "below"
            parts.append(f"about {want} replicas would bring the score's interval {side} "
                         f"{result.threshold:g} (score {result.score:.3g} "
                         f"[{result.score_ci[0]:.3g}, {result.score_ci[1]:.3g}])")
        else:
            parts.append("the score's interval is unbounded or the score sits on the threshold: "
                         "more replicas alone cannot decide it")
    return "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------
# multiple comparisons

def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order.

    ``adjusted_(i) = max_{k <= i} min(1, (m - k + 1) p_(k))`` over the ascending p-values; a
    claim survives at level alpha when its adjusted p-value is at most alpha. NaN p-values are
    not part of the family and stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * q[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    out[ok] = adjusted
    return out
