"""The controlled test of a curriculum: its scores, their summary in words, tables and a figure.

The arms (:mod:`spectrum.curriculum.arms`) are trained by :mod:`spectrum.curriculum.runner`; each
(arm, seed, budget) run leaves a :class:`Curve` of validation loss against tokens. The statistics
(:mod:`spectrum.curriculum.stats`) use the final validation loss of every run: the paired
difference to the uniform run of the same seed and the compute multiplier read off uniform runs
at several budgets, each with a 95% interval across seeds, and for each control a verdict on
whether the curriculum beats it, claimed only where the difference survives Holm's correction over
all the comparisons the results state.

``results.json`` (written by the runner) holds ``setup``, ``summary`` (below) and ``curves``.
``summary.arms.<arm>`` has ``seeds`` (how many), ``final_loss``, ``final_minus_uniform`` and
``compute_multiplier``, each with ``mean`` and ``ci`` ([low, high], 95%); the uniform arm's
multiplier is 1. ``summary.comparisons.<control>`` scores the curriculum against each control the
same way with a ``verdict`` sentence; ``summary.budgets`` the uniform runs per budget;
``summary.compute_curve`` the curve of uniform loss on ln compute (a quadratic, see
:mod:`spectrum.curriculum.stats`); ``summary.paper`` the published speed-up in the same units;
``summary.noise`` the spread and the minimum detectable effect at 80% power. Every comparison
stated in words (each arm against uniform, the curriculum against each control; "curriculum vs
uniform" is one of them, reported in both places) carries ``p_holm``, ``p_wilcoxon_holm`` and
``survives_holm``: Holm's correction over all of them, listed in ``summary.family``.
``summary.verdicts`` holds all verdict sentences, the curriculum against each control first, then
each other arm against uniform (also ``summary.arms.<arm>.verdict``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spectrum.curriculum.arms import ARM_DESCRIPTIONS, ARMS, arm_order
from spectrum.curriculum.stats import (ALPHA, LEVEL, PAPER_MULTIPLIER, ComputeCurve, compute_curve,
                                       holm, ln_multiplier, mean_interval, outcome,
                                       min_detectable_difference, multiplier_interval,
                                       paired_test_power, verdict)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURE = "curriculum_test.png"
__all__ = ["ARMS", "Curve", "summarise", "report_section", "results_markdown", "plot"]


@dataclass
class Curve:
    """The validation-loss curve of one (arm, seed) training run; ``budget`` is its compute as a
    fraction of the arms' (uniform runs at other budgets calibrate the compute multiplier)."""

    arm: str
    seed: int
    tokens: list[float]
    losses: list[float]
    budget: float = 1.0

    @property
    def final(self) -> float:
        return float(self.losses[-1])

    @property
    def total_tokens(self) -> float:
        return float(self.tokens[-1])


def curve_record(c: Curve) -> dict[str, Any]:
    return asdict(c)


def _is_main(c: Curve) -> bool:
    return abs(c.budget - 1.0) < 1e-9


def _diffs(curves: list[Curve], arm: str, reference: str) -> tuple[list[int], list[float]]:
    """Per seed of ``arm``: its final loss minus ``reference``'s with the same seed (NaN if that
    run is missing, which makes the statistic undefined rather than dropping the seed)."""
    ref = {c.seed: c.final for c in curves if c.arm == reference}
    seeds = sorted(c.seed for c in curves if c.arm == arm)
    mine = {c.seed: c.final for c in curves if c.arm == arm}
    return seeds, [mine[s] - ref.get(s, math.nan) for s in seeds]


def summarise(curves: Sequence[Curve], level: float = LEVEL) -> dict[str, Any]:
    """Per-run scores, per-arm statistics, curriculum-vs-control comparisons, Holm's correction
    over the claims they make, and verdicts."""
    main = [c for c in curves if _is_main(c)]
    uniform_all = [c for c in curves if c.arm == "uniform"]
    curve = _uniform_curve(uniform_all, main)
    arms, per_run = _arm_statistics(main, curve, level)
    comparisons = {}
    if "curriculum" in arms:
        for ctrl in [a for a in arm_order(arms) if a != "curriculum"]:
            _, d = _diffs(main, "curriculum", ctrl)
            comparisons[ctrl] = {"difference": mean_interval(d, level),
                                 "compute_multiplier": multiplier_interval(d, curve, level)}
    family = _holm_family(arms, comparisons)
    verdicts = _verdicts(arms, comparisons, family["size"])
    budgets = []
    for b in sorted({c.budget for c in uniform_all}):
        cs = [c for c in uniform_all if abs(c.budget - b) < 1e-9]
        budgets.append({"budget": b, "tokens": cs[0].total_tokens, "seeds": len(cs),
                        "final_loss": mean_interval([c.final for c in cs], level)})
    return {"level": level, "runs": per_run, "arms": arms, "comparisons": comparisons,
            "budgets": budgets, "compute_curve": curve.to_dict() if curve else None,
            "paper": _paper(curve), "noise": _noise(arms, curve), "family": family,
            "verdicts": verdicts}


def _uniform_curve(uniform_all: list[Curve], main: list[Curve]) -> ComputeCurve | None:
    """The compute curve of the uniform runs, centred at the arms' compute (the 1x runs)."""
    center = math.log(main[0].total_tokens) if main else None
    curve = compute_curve([c.seed for c in uniform_all],
                          [math.log(c.total_tokens) for c in uniform_all],
                          [c.final for c in uniform_all], ln_center=center)
    if curve is not None:  # budgets as fractions of the arms' compute
        curve = replace(curve, budgets=tuple(sorted({float(c.budget) for c in uniform_all})))
    return curve


def _run_multiplier(d: float, curve: ComputeCurve | None) -> float | None:
    if curve is None or not math.isfinite(d):
        return None
    log_m, _ = ln_multiplier(d, curve)
    return None if log_m is None else math.exp(log_m)


def _arm_statistics(main: list[Curve], curve: ComputeCurve | None,
                    level: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``summary.arms`` and ``summary.runs``: every arm against uniform, per arm and per run."""
    arms: dict[str, Any] = {}
    per_run = []
    for arm in arm_order({c.arm for c in main}):
        seeds, d = _diffs(main, arm, "uniform")
        finals = [c.final for c in sorted((c for c in main if c.arm == arm), key=lambda c: c.seed)]
        diff = mean_interval(d, level)
        mult = ({"mean": 1.0, "ci": [1.0, 1.0], "n": len(d)} if arm == "uniform"
                else multiplier_interval(d, curve, level))
        arms[arm] = {"seeds": len(seeds), "seed_ids": seeds, "final_loss": mean_interval(finals, level),
                     "final_minus_uniform": diff, "compute_multiplier": mult}
        for s, f, x in zip(seeds, finals, d):
            per_run.append({"arm": arm, "seed": s, "budget": 1.0, "final_loss": f,
                            "final_minus_uniform": x if math.isfinite(x) else None,
                            "compute_multiplier": _run_multiplier(x, curve)})
    return arms, per_run


def _claims(arms: dict[str, Any], comparisons: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every comparison the results state in words, by name, with the statistics that report it:
    the curriculum against each control, then each other arm against uniform. "curriculum vs
    uniform" is reported in two places but is one test."""
    claims: dict[str, list[dict[str, Any]]] = {}
    for ctrl, c in comparisons.items():
        claims[f"curriculum vs {ctrl}"] = [c["difference"]]
    for arm, a in arms.items():
        if arm != "uniform":
            claims.setdefault(f"{arm} vs uniform", []).append(a["final_minus_uniform"])
    return claims


def _holm_family(arms: dict[str, Any], comparisons: dict[str, Any]) -> dict[str, Any]:
    """Holm's correction over the claims (paired t-test and, beside it, Wilcoxon): adds
    ``p_holm``, ``p_wilcoxon_holm`` and ``survives_holm`` to every statistic of a claim and
    returns ``summary.family``. A claim without a p-value (undefined, one seed) is not counted."""
    claims = _claims(arms, comparisons)
    names = list(claims)
    first = [claims[n][0] for n in names]
    p_holm = holm([s["p"] for s in first])
    w_holm = holm([s["p_wilcoxon"] for s in first])
    rows = []
    for name, ph, pw in zip(names, p_holm, w_holm):
        for s in claims[name]:
            s.update(p_holm=ph, p_wilcoxon_holm=pw, survives_holm=ph is not None and ph < ALPHA)
        rows.append({"name": name, "p": claims[name][0]["p"], "p_holm": ph,
                     "p_wilcoxon": claims[name][0]["p_wilcoxon"], "p_wilcoxon_holm": pw,
                     "survives": ph is not None and ph < ALPHA})
    return {"method": "Holm step-down over the paired t-test p-values", "alpha": ALPHA,
            "size": sum(p is not None for p in p_holm), "claims": rows}


def _verdicts(arms: dict[str, Any], comparisons: dict[str, Any], size: int) -> list[str]:
    """Adds a ``verdict`` to every comparison and every arm other than uniform; returns all the
    sentences, the curriculum against each control first, each claim once."""
    out = []
    for ctrl, c in comparisons.items():
        c["verdict"] = verdict("the curriculum", ctrl, c["difference"], c["compute_multiplier"],
                               size)
        out.append(c["verdict"])
    for arm, a in arms.items():
        if arm == "uniform":
            continue
        if arm == "curriculum" and "uniform" in comparisons:
            a["verdict"] = comparisons["uniform"]["verdict"]
            continue
        a["verdict"] = verdict(arm, "uniform", a["final_minus_uniform"], a["compute_multiplier"],
                               size)
        out.append(a["verdict"])
    return out


def _paper(curve: ComputeCurve | None) -> dict[str, Any]:
    out: dict[str, Any] = {"claim": "11% faster validation-loss reduction",
                           "compute_multiplier": PAPER_MULTIPLIER}
    if curve is not None and curve.slope < 0:
        out["final_minus_uniform"] = curve.loss_change(math.log(PAPER_MULTIPLIER))
    return out


def _noise(arms: dict[str, Any], curve: ComputeCurve | None) -> dict[str, Any]:
    """The seed-to-seed spread of the uniform runs; what the curriculum's paired differences can
    detect: the multiplier its interval's half-width stands for (``resolvable_multiplier``, an
    effect of that size is detected about half the time) and the minimum detectable difference
    and multiplier at 80% power of the two-sided paired t-test, with the power against the
    paper's multiplier."""
    out: dict[str, Any] = {}
    if "uniform" in arms:
        out["uniform_final_sd"] = arms["uniform"]["final_loss"]["sd"]
    cur = arms.get("curriculum", {}).get("final_minus_uniform")
    if not cur or cur["ci"][0] is None:
        return out
    sd, n = cur["sd"], cur["n"]
    d80 = min_detectable_difference(sd, n, power=0.8, alpha=ALPHA)
    out.update(power_n=n, power_sd=sd, min_detectable_difference_80=d80)
    if curve is None or not curve.slope < 0:
        return out
    half = (cur["ci"][1] - cur["ci"][0]) / 2
    out["resolvable_multiplier"] = _run_multiplier(-half, curve)
    if d80 is not None:
        out["min_detectable_multiplier_80"] = _run_multiplier(-d80, curve)
    paper = abs(curve.loss_change(math.log(PAPER_MULTIPLIER)))
    if sd > 0 and paper > 0:
        out["power_at_paper_multiplier"] = paired_test_power(paper, sd, n, alpha=ALPHA)
    return out


# --------------------------------------------------------------------------------------------
# tables and text


def _ci(s: dict[str, Any], fmt: str) -> str:
    if s.get("mean") is None:
        return "undefined" if s.get("nonfinite") or s.get("undefined") else "-"
    if s["ci"][0] is None:
        return f"{s['mean']:{fmt}} (no interval)"
    return f"{s['mean']:{fmt}} [{s['ci'][0]:{fmt}}, {s['ci'][1]:{fmt}}]"


def _p(s: dict[str, Any], key: str = "p") -> str:
    return "-" if s.get(key) is None else f"{s[key]:.3g}"


TABLE_HEADER = ("arm", "seeds", "final val. loss", "final - uniform (nats, 95% CI)",
                "paired p", "Holm p", "compute multiplier (95% CI)")
COMPARISON_HEADER = ("curriculum vs", "curriculum - control (nats, 95% CI)", "paired p", "Holm p",
                     "compute multiplier (95% CI)", "verdict")


def table_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per arm, in the columns of :data:`TABLE_HEADER`."""
    rows = []
    for arm in arm_order(summary["arms"]):
        a = summary["arms"][arm]
        d = a["final_minus_uniform"]
        if arm == "uniform":  # the reference: no difference to test
            rows.append((arm, str(a["seeds"]), _ci(a["final_loss"], ".4f"), "0 (reference)", "-",
                         "-", "1 (reference)"))
            continue
        rows.append((arm, str(a["seeds"]), _ci(a["final_loss"], ".4f"), _ci(d, "+.4f"), _p(d),
                     _p(d, "p_holm"), _ci(a["compute_multiplier"], ".3f")))
    return rows


#: the comparison in a few words, by :func:`spectrum.curriculum.stats.outcome`
WORDS = {"undefined": "-", "one_seed": "-", "lower": "curriculum better",
         "higher": "curriculum worse", "not_after_holm": "no difference after Holm (interval "
         "excludes 0)", "covers": "no difference resolved"}


def comparison_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per control (in the arms' order, as results.json read back may hold them in
    another), in the columns of :data:`COMPARISON_HEADER`."""
    rows = []
    comparisons = summary.get("comparisons", {})
    for ctrl in arm_order(comparisons):
        c = comparisons[ctrl]
        d = c["difference"]
        rows.append((ctrl, _ci(d, "+.4f"), _p(d), _p(d, "p_holm"),
                     _ci(c["compute_multiplier"], ".3f"), WORDS[outcome(d)]))
    return rows


def _md_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_table(summary: dict[str, Any]) -> str:
    return _md_table(TABLE_HEADER, table_rows(summary))


def comparison_table(summary: dict[str, Any]) -> str:
    return _md_table(COMPARISON_HEADER, comparison_rows(summary))


def context_sentences(summary: dict[str, Any], setup: dict[str, Any]) -> str:
    """The compute curve, Holm's correction, the paper's claim in the same units, the noise and
    what the test can detect, and the cost of measuring learnability, in a few sentences."""
    parts = [t for t in (_curve_text(summary.get("compute_curve")), _family_text(summary))
             if t]
    paper = summary.get("paper", {})
    if "final_minus_uniform" in paper:
        parts.append(f"The published \"11% faster\" is a compute multiplier of "
                     f"{paper['compute_multiplier']:.2f}, here a final-loss difference of "
                     f"{paper['final_minus_uniform']:+.4f} nats.")
    parts += _noise_text(summary.get("noise", {}))
    cost = setup.get("learnability_cost")
    if cost:
        parts.append(f"Measuring learnability cost {cost['train_tokens']:.3g} training tokens and "
                     f"{cost['token_evaluations']:.3g} token-evaluations "
                     f"(about {cost['flops']:.3g} FLOPs, {cost['arm_runs_equivalent']:.2f} times the "
                     "compute of one arm's training run).")
    return " ".join(parts)


def _curve_text(cc: dict[str, Any] | None) -> str:
    if not cc:
        return ""
    budgets = ", ".join(f"{b:g}x" for b in cc["budgets"])
    if cc.get("model", "line") == "line":
        return (f"Uniform runs at budgets {budgets} give a slope of {cc['slope']:+.4f} ± "
                f"{cc['slope_se']:.4f} nats per unit of ln compute (within-seed R^2 "
                f"{cc['r2_within']:.3f}).")
    misfit = ", ".join(f"{r:+.3f}" for r in cc.get("line_residual_by_budget", ()))
    return (f"Uniform runs at budgets {budgets} fit a quadratic in ln compute with one intercept "
            f"per seed (a straight line would leave mean residuals of {misfit} nats by budget): "
            f"local slope at the arms' compute {cc['slope']:+.4f} ± {cc['slope_se']:.4f} nats per "
            f"unit of ln compute, curvature {cc['curvature']:+.4f} ± {cc['curvature_se']:.4f} "
            f"(within-seed R^2 {cc['r2_within']:.3f}); the compute multiplier is read off this "
            "curve and its interval carries the uncertainty of both coefficients.")


def _family_text(summary: dict[str, Any]) -> str:
    fam = summary.get("family")
    if not fam or not fam.get("size"):
        return ""
    kept = [c["name"] for c in fam["claims"] if c["survives"]]
    which = (f"{len(kept)} survive{'s' if len(kept) == 1 else ''}: {', '.join(kept)}" if kept
             else "none survives")
    return (f"The results state {fam['size']} comparisons (each arm against uniform, the "
            f"curriculum against each control); a difference is claimed only where it survives "
            f"Holm's correction over all {fam['size']} (adjusted paired t-test p < "
            f"{fam['alpha']:g}); {which}.")


def _noise_text(noise: dict[str, Any]) -> list[str]:
    parts = []
    if noise.get("uniform_final_sd") is not None:
        parts.append(f"Seed-to-seed sd of the uniform final loss: {noise['uniform_final_sd']:.4f} "
                     "nats.")
    if noise.get("resolvable_multiplier") is not None:
        parts.append(f"The half-width of the curriculum's 95% interval stands for a multiplier of "
                     f"{noise['resolvable_multiplier']:.3f}; a true effect of that size would be "
                     "detected only about half the time.")
    if noise.get("min_detectable_multiplier_80") is not None:
        parts.append(f"The minimum detectable multiplier (80% power, two-sided paired t-test at "
                     f"{ALPHA:g}, {noise['power_n']} seeds, sd of the paired differences "
                     f"{noise['power_sd']:.4f} nats) is {noise['min_detectable_multiplier_80']:.3f}"
                     f", a difference of {noise['min_detectable_difference_80']:.4f} nats.")
    if noise.get("power_at_paper_multiplier") is not None:
        parts.append(f"Against the paper's multiplier of {PAPER_MULTIPLIER:.2f} the test has "
                     f"power {noise['power_at_paper_multiplier']:.2f}.")
    return parts


def results_markdown(summary: dict[str, Any], setup: dict[str, Any]) -> str:
    s = setup
    arms = "; ".join(f"`{a}`: {ARM_DESCRIPTIONS.get(a, a)}" for a in arm_order(summary["arms"]))
    verdicts = "\n".join(f"- {v}" for v in summary.get("verdicts", [])) or "- (no curriculum arm)"
    return f"""# Controlled test of the learnability curriculum

Model `{s.get('size')}` trained {s.get('steps')} steps x {s.get('tokens_per_step')} tokens
({s.get('steps', 0) * s.get('tokens_per_step', 0):.3g} tokens) from a pool of
{s.get('pool_sequences')} training sequences, {s.get('phases')} curriculum phases starting at steps
{', '.join(map(str, s.get('phase_steps', [])[:-1]))} (weight floor {s.get('floor')}), seeds
{_seed_text(s.get('seeds', []))}. Every arm samples batches with the same phase-aware sampler and
the same random numbers per seed; only the weights differ ({arms}). Uniform runs at
{', '.join(f'{b:g}x' for b in s.get('budgets', []))} the steps (each a full schedule) calibrate the
compute multiplier. Validation loss on {s.get('eval_sequences')} validation sequences. Every
statistic uses every seed: the mean with its 95% Student-t interval across seeds; paired p from a
t-test on the per-seed differences, and Holm p the same p adjusted by Holm's step-down method over
every comparison stated here (each arm against uniform, the curriculum against each control): a
difference is claimed only where the Holm p is below {ALPHA:g}.

## Verdicts

{verdicts}

{context_sentences(summary, s)}

## Arms against uniform

{markdown_table(summary)}

## The curriculum against each control

{comparison_table(summary)}

## Curriculum weights

Per phase: range, effective sample size as a fraction of the pool (1 = uniform), and Spearman
correlation with the sequence's mean log token frequency:

{_diagnostics_table(s.get('curriculum_weights', []))}

{_cost_text(s)}

![validation loss per arm]({FIGURE})
"""


def _cost_text(s: dict[str, Any]) -> str:
    t = s.get("training")
    if not t:
        return ""
    cpu = (f"{t['run_cpu_seconds']:.0f} CPU-seconds" if not t["runs_without_cpu_record"]
           else f"CPU time recorded for {t['runs'] - t['runs_without_cpu_record']} of them: "
                f"{t['run_cpu_seconds']:.0f} CPU-seconds")
    return (f"Training cost: {t['runs']} runs, {t['run_wall_seconds']:.0f} s of wall time summed over "
            f"runs ({cpu}; each run's CPU time measured with `resource.getrusage` in the process "
            f"that trained it); this command's wall time {s.get('wall_seconds', float('nan')):.0f} s.")


def _seed_text(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]} ({len(seeds)})"
    return ", ".join(map(str, seeds))


def _diagnostics_table(rows: list[dict[str, float]]) -> str:
    lines = ["| phase | min | max | ESS fraction | Spearman with log frequency |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['min']:.3f} | {r['max']:.3f} | {r['ess_fraction']:.3f} | "
              f"{r['spearman_freq']:.3f} |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# figure


def plot(curves: list[Curve], summary: dict[str, Any], path: str | Path) -> Path:
    """Validation loss per arm (mean over seeds), the paired difference to uniform over training
    (mean and 95% t-band), and the compute curve with each arm's final loss placed on it."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ARMS, ("black", "tab:red", "tab:blue", "tab:gray", "tab:green",
                             "tab:purple")))
    fig, (ax, dx, bx) = plt.subplots(1, 3, figsize=(16, 4.4))
    main = [c for c in curves if _is_main(c)]
    uniform = {c.seed: c for c in main if c.arm == "uniform"}
    order = arm_order({c.arm for c in main})
    for i, arm in enumerate(order):
        cs = [c for c in main if c.arm == arm]
        col = colors.get(arm, f"C{i}")
        n = min(len(c.tokens) for c in cs)
        ax.plot(cs[0].tokens[:n], np.mean([c.losses[:n] for c in cs], axis=0), color=col, lw=1.5,
                label=arm)
        paired = [(c, uniform[c.seed]) for c in cs if c.seed in uniform
                  and len(uniform[c.seed].losses) == len(c.losses)]
        if len(paired) > 1 and arm != "uniform":
            diff = np.array([np.subtract(c.losses, u.losses) for c, u in paired])
            t = np.asarray(paired[0][0].tokens)
            m = diff.mean(0)
            half = _tq(len(diff)) * diff.std(0, ddof=1) / math.sqrt(len(diff))
            dx.plot(t, m, color=col, lw=1.5, label=arm)
            dx.fill_between(t, m - half, m + half, color=col, alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens T")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss (mean over seeds)")
    ax.legend(fontsize=8)
    dx.set_xscale("log")
    dx.axhline(0, color="black", lw=0.8)
    dx.set_xlabel("training tokens T")
    dx.set_ylabel("loss - uniform's loss (same seed)")
    dx.set_title("paired difference to uniform (mean, 95% band)")
    for a in (ax, dx):
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _plot_compute(bx, curves, summary, colors)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tq(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def _plot_compute(bx, curves: list[Curve], summary: dict[str, Any], colors: dict[str, str]) -> None:
    uni = [c for c in curves if c.arm == "uniform"]
    if not uni:
        return
    bx.scatter([c.total_tokens for c in uni], [c.final for c in uni], s=10, color="black", alpha=0.4,
               label="uniform runs (seeds x budgets)")
    cc = summary.get("compute_curve")
    ref = [b for b in summary.get("budgets", []) if abs(b["budget"] - 1) < 1e-9]
    if cc and ref and ref[0]["final_loss"]["mean"] is not None:
        t1, l1 = ref[0]["tokens"], ref[0]["final_loss"]["mean"]
        tt = np.geomspace(min(c.total_tokens for c in uni) * 0.8, max(c.total_tokens for c in uni) * 1.25)
        c = np.log(tt / t1)
        bx.plot(tt, l1 + cc["slope"] * c + cc.get("curvature", 0.0) * c ** 2, color="black", lw=1,
                label=f"fitted {cc.get('model', 'line')}")
        for arm, a in summary["arms"].items():
            m = a["final_loss"]["mean"]
            if arm == "uniform" or m is None:
                continue
            bx.axhline(m, color=colors.get(arm, "C0"), lw=1, ls="--", label=f"{arm} (mean final)")
    bx.set_xscale("log")
    bx.set_xlabel("training tokens (compute) of the uniform run")
    bx.set_ylabel("final validation loss")
    bx.set_title("compute curve: arms' final losses on it")
    bx.legend(fontsize=7)


# --------------------------------------------------------------------------------------------
# the report's section


def report_section(test_dir: str | Path) -> dict[str, Any] | None:
    """The controlled test's result for the report, or None if the test has not been run.

    ``test_dir`` is ``<out>/curriculum/test`` or the output directory ``<out>`` itself.

    Returns ``{"title", "intro" (a paragraph), "verdicts" (every verdict sentence: the curriculum
    against each control, then each other arm against uniform), "header" and "rows" (the per-arm
    table), "comparison_header" and "comparison_rows" (the curriculum against each control),
    "figure" (Path of the PNG or None), "markdown" (title aside, all of it as Markdown that refers
    to no file, so it can be placed anywhere)}``; the report shows every part.
    """
    test_dir = Path(test_dir)
    if not (test_dir / RESULTS_JSON).is_file() and (test_dir / "curriculum" / "test").is_dir():
        test_dir = test_dir / "curriculum" / "test"
    path = test_dir / RESULTS_JSON
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    s, summary = rec["setup"], rec["summary"]
    intro = (f"Model {s['size']}, {s['steps']} steps x {s['tokens_per_step']} tokens, "
             f"{len(s['seeds'])} seeds, {s['pool_sequences']} training sequences, "
             f"{s['phases']} phases. Each arm differs from uniform only in its sampling weights; "
             "freq_shuffled, random and timing_flat control for token frequency, for the weight "
             "distribution itself and for the timing of the weights; exported trains on the "
             "weights the export gives the pool, as a user applies them. Final validation loss, "
             "paired by seed, mean with its 95% interval across seeds; the compute multiplier "
             "comes from uniform runs at several budgets. "
             + context_sentences(summary, s))
    verdicts = list(summary.get("verdicts", []))  # the curriculum against each control first
    fig = test_dir / FIGURE
    markdown = "\n\n".join([intro, "\n".join(f"- {v}" for v in verdicts), markdown_table(summary),
                            comparison_table(summary)])
    return {"title": "Controlled test of the learnability curriculum", "intro": intro,
            "verdicts": verdicts, "header": TABLE_HEADER, "rows": table_rows(summary),
            "comparison_header": COMPARISON_HEADER, "comparison_rows": comparison_rows(summary),
            "figure": fig if fig.is_file() else None, "markdown": markdown}
