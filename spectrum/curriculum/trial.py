"""The controlled test of a curriculum: the arms, their controls, and how the result is scored.

Four arms train the same model with the same compute and the same seeds, and differ only in the
per-phase sampling weights of the training sequences (all drawn by the same
:class:`~spectrum.curriculum.sampling.PhaseSampler`):

- ``uniform``: every weight 1;
- ``curriculum``: the learnability weights of :mod:`spectrum.curriculum.weights`;
- ``freq_shuffled``: the curriculum's weight rows shuffled among sequences with a similar
  token-frequency profile (sequences bucketed by the mean log unigram frequency of their tokens,
  rows permuted within each bucket): same weights, same frequency profile of what is upweighted,
  but no link to learnability. If the curriculum only helps by favouring frequent (or rare)
  tokens, this control helps as much;
- ``random``: the weight rows permuted across all sequences: the same weight distribution (the
  same concentration of sampling, hence the same repetition of data) with no link to anything.

The score of every (arm, seed) is read off its validation-loss curve: the tokens needed to reach
the final validation loss of the ``uniform`` run *with the same seed* (linear interpolation in
ln T between evaluations; ``None`` = not reached), and the final validation loss. The summary
gives mean and standard deviation across seeds, and the speed-up ``T_uniform / T_arm`` where
``T_uniform`` is the uniform run's own tokens to its final loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ARMS = ("uniform", "curriculum", "freq_shuffled", "random")
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURE = "curriculum_test.png"


def frequency_buckets(mean_log_freq: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids (0..B-1) of equal-count quantile bins of each sequence's mean log frequency."""
    v = np.asarray(mean_log_freq, dtype=np.float64)
    n_buckets = max(1, min(int(n_buckets), len(v)))
    rank = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return (rank * n_buckets // len(v)).astype(np.int64)


def shuffle_within(weights: np.ndarray, buckets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weights`` (n, P) with whole rows permuted among the items of each bucket."""
    out = np.array(weights, copy=True)
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        out[rows] = weights[rng.permutation(rows)]
    return out


def arm_weights(curriculum: np.ndarray, buckets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The (n, P) sampling weights of every arm for one seed (controls use a seeded permutation)."""
    rng = np.random.default_rng([seed, 7919])
    return {"uniform": np.ones_like(curriculum),
            "curriculum": curriculum,
            "freq_shuffled": shuffle_within(curriculum, buckets, rng),
            "random": curriculum[rng.permutation(len(curriculum))]}


def weight_diagnostics(weights: np.ndarray, mean_log_freq: np.ndarray) -> list[dict[str, float]]:
    """Per phase: the weights' range, their effective sample size as a fraction of the items
    (``(sum w)^2 / (n sum w^2)``: 1 = uniform), and their Spearman correlation with each
    sequence's mean log token frequency (how much of the weighting is a frequency preference)."""
    from scipy.stats import spearmanr

    out = []
    for p in range(weights.shape[1]):
        w = weights[:, p]
        rho = spearmanr(w, mean_log_freq)[0] if np.ptp(w) > 0 and np.ptp(mean_log_freq) > 0 else 0.0
        out.append({"phase": p, "min": float(w.min()), "max": float(w.max()),
                    "ess_fraction": float(w.sum() ** 2 / (len(w) * (w ** 2).sum())),
                    "spearman_freq": float(rho)})
    return out


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Tokens at which the curve first reaches ``target`` (interpolated in ln T), or None."""
    t, l = np.asarray(tokens, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    ok = np.isfinite(l) & (t > 0)
    t, l = t[ok], l[ok]
    hit = np.flatnonzero(l <= target)
    if len(hit) == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(t[0])
    x0, x1, l0, l1 = math.log(t[i - 1]), math.log(t[i]), l[i - 1], l[i]
    x = x1 if l0 == l1 else x0 + (l0 - target) * (x1 - x0) / (l0 - l1)
    return float(math.exp(x))


@dataclass
class Curve:
    """The validation-loss curve of one (arm, seed) training run."""

    arm: str
    seed: int
    tokens: list[float]
    losses: list[float]

    @property
    def final(self) -> float:
        return float(self.losses[-1])


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    if std <= 1e-9 * abs(float(v.mean())):  # equal values up to rounding
        std = 0.0
    return {"mean": float(v.mean()), "std": std,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def summarise(curves: list[Curve]) -> dict[str, Any]:
    """Per-seed scores and per-arm statistics across seeds (see the module doc)."""
    uniform = {c.seed: c for c in curves if c.arm == "uniform"}
    per_run, arms = [], {}
    for c in curves:
        u = uniform.get(c.seed)
        target = u.final if u else None
        reach = tokens_to_reach(c.tokens, c.losses, target) if target is not None else None
        u_reach = tokens_to_reach(u.tokens, u.losses, target) if u else None
        per_run.append({"arm": c.arm, "seed": c.seed, "final_loss": c.final, "target_loss": target,
                        "final_minus_uniform": (c.final - target) if target is not None else None,
                        "tokens_to_target": reach, "total_tokens": float(c.tokens[-1]),
                        "speedup": (u_reach / reach) if reach and u_reach else None})
    for arm in arm_order({r["arm"] for r in per_run}):
        rows = [r for r in per_run if r["arm"] == arm]
        arms[arm] = {"seeds": len(rows),
                     "reached": sum(r["tokens_to_target"] is not None for r in rows),
                     "final_loss": _stats([r["final_loss"] for r in rows]),
                     "final_minus_uniform": _stats([r["final_minus_uniform"] for r in rows]),
                     "tokens_to_target": _stats([r["tokens_to_target"] for r in rows]),
                     "speedup": _stats([r["speedup"] for r in rows])}
    return {"runs": per_run, "arms": arms}


def arm_order(names) -> list[str]:
    """The arms in the canonical order (``ARMS``), others after them alphabetically."""
    names = list(names)
    return [a for a in ARMS if a in names] + sorted(set(names) - set(ARMS))


def _pm(s: dict[str, Any], fmt: str, missing: str = "not reached") -> str:
    if s["mean"] is None:
        return missing
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt.lstrip('+')}}"


TABLE_HEADER = ("arm", "final val. loss", "final loss - uniform's (paired)",
                "tokens to uniform's final loss", "reached",
                "speed-up vs uniform (seeds that reached)")


def table_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per arm, in the columns of :data:`TABLE_HEADER`."""
    rows = []
    for arm in arm_order(summary["arms"]):
        a = summary["arms"][arm]
        delta = a.get("final_minus_uniform") or {"mean": None}
        rows.append((arm, _pm(a["final_loss"], ".4f"), _pm(delta, "+.4f", "-"),
                     _pm(a["tokens_to_target"], ".3g"), f"{a['reached']}/{a['seeds']}",
                     _pm(a["speedup"], ".3f")))
    return rows


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


def results_markdown(summary: dict[str, Any], setup: dict[str, Any]) -> str:
    s = setup
    return f"""# Controlled test of the learnability curriculum

Model `{s.get('size')}` trained {s.get('steps')} steps x {s.get('tokens_per_step')} tokens
({s.get('steps', 0) * s.get('tokens_per_step', 0):.3g} tokens) from a pool of
{s.get('pool_sequences')} training sequences, {s.get('phases')} curriculum phases (weight floor
{s.get('floor')}), seeds {', '.join(map(str, s.get('seeds', [])))}. Every arm samples batches with
the same phase-aware sampler; only the weights differ (`uniform`: all 1; `curriculum`:
learnability; `freq_shuffled`: curriculum weights shuffled within {s.get('buckets')} buckets of
mean log token frequency; `random`: curriculum weights permuted across all sequences).
Validation loss on {s.get('eval_sequences')} validation sequences. Mean ± standard deviation across
seeds; the target is the final loss of the uniform run with the same seed, and "tokens to"
interpolates the validation curve in ln T. Speed-up = uniform's tokens to its final loss / the
arm's.

{markdown_table(summary)}

Curriculum weights per phase (steps {', '.join(map(str, s.get('phase_steps', [])))}): range, effective
sample size as a fraction of the pool (1 = uniform), and Spearman correlation with the sequence's
mean log token frequency:

{_diagnostics_table(s.get('curriculum_weights', []))}

![validation loss per arm]({FIGURE})
"""


def _diagnostics_table(rows: list[dict[str, float]]) -> str:
    lines = ["| phase | min | max | ESS fraction | Spearman with log frequency |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['min']:.3f} | {r['max']:.3f} | {r['ess_fraction']:.3f} | "
              f"{r['spearman_freq']:.3f} |" for r in rows]
    return "\n".join(lines)


def plot(curves: list[Curve], summary: dict[str, Any], path: str | Path) -> Path:
    """Validation loss against tokens per arm (mean over seeds, seeds faint) and the final losses."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ARMS, ("black", "tab:red", "tab:blue", "tab:gray")))
    fig, (ax, dx, bx) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    uniform = {c.seed: c for c in curves if c.arm == "uniform"}
    order = arm_order(summary["arms"])
    for i, arm in enumerate(order):
        cs = [c for c in curves if c.arm == arm]
        col = colors.get(arm, f"C{i}")
        for c in cs:
            ax.plot(c.tokens, c.losses, color=col, alpha=0.25, lw=0.8)
        n = min(len(c.tokens) for c in cs)
        ax.plot(cs[0].tokens[:n], np.mean([c.losses[:n] for c in cs], axis=0), color=col, lw=2,
                label=arm)
        paired = [(c, uniform[c.seed]) for c in cs if c.seed in uniform
                  and len(uniform[c.seed].losses) == len(c.losses)]
        if paired:
            diff = np.array([np.subtract(c.losses, u.losses) for c, u in paired])
            t = np.asarray(paired[0][0].tokens)
            m = diff.mean(0)
            sd = diff.std(0, ddof=1) if len(diff) > 1 else np.zeros_like(m)
            dx.plot(t, m, color=col, lw=2, label=arm)
            dx.fill_between(t, m - sd, m + sd, color=col, alpha=0.15)
        finals = [c.final for c in cs]
        bx.scatter([i] * len(finals), finals, color=col, alpha=0.6)
        bx.errorbar([i], [np.mean(finals)], yerr=[np.std(finals, ddof=1) if len(finals) > 1 else 0],
                    color=col, fmt="_", markersize=20, capsize=5)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens T")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss (mean over seeds; seeds faint)")
    ax.legend()
    dx.set_xscale("log")
    dx.axhline(0, color="black", lw=0.8)
    dx.set_xlabel("training tokens T")
    dx.set_ylabel("loss - uniform's loss (same seed)")
    dx.set_title("difference to uniform (mean ± sd over seeds)")
    for a in (ax, dx):
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bx.set_xticks(range(len(order)), order, rotation=20)
    bx.set_ylabel("final validation loss")
    bx.set_title("final loss per seed, mean ± sd")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_section(test_dir: str | Path) -> dict[str, Any] | None:
    """The controlled test's result for the report, or None if the test has not been run.

    ``test_dir`` is ``<out>/curriculum/test`` or the output directory ``<out>`` itself.

    Returns ``{"title", "intro" (a paragraph), "header" and "rows" (the table), "markdown" (both
    as Markdown), "figure" (Path of the PNG or None), "summary" (the results.json record)}``; the Markdown refers to no file, so it can be placed
    anywhere; the report embeds the figure itself.
    """
    test_dir = Path(test_dir)
    if not (test_dir / RESULTS_JSON).is_file() and (test_dir / "curriculum" / "test").is_dir():
        test_dir = test_dir / "curriculum" / "test"
    path = test_dir / RESULTS_JSON
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    s = rec["setup"]
    intro = (f"Model {s['size']}, {s['steps']} steps x {s['tokens_per_step']} tokens, "
             f"{len(s['seeds'])} seeds, {s['pool_sequences']} training sequences, "
             f"{s['phases']} phases. Each arm differs from uniform only in its sampling weights; "
             "freq_shuffled and random are the controls for token frequency and for the weight "
             "distribution itself. Mean ± sd across seeds; the target is the uniform run's final "
             "validation loss (same seed).")
    fig = test_dir / FIGURE
    return {"title": "Controlled test of the learnability curriculum", "intro": intro,
            "header": TABLE_HEADER, "rows": table_rows(rec["summary"]),
            "markdown": intro + "\n\n" + markdown_table(rec["summary"]),
            "figure": fig if fig.is_file() else None, "summary": rec["summary"]}


def curve_record(c: Curve) -> dict[str, Any]:
    return asdict(c)
