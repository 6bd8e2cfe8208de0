"""The report's tables: statistics from ``scores.json`` and the runs, as rows of strings."""

from __future__ import annotations

from typing import Any

import numpy as np

from spectrum.analysis.runs.fit_summary import FitSummary
from spectrum.analysis.runs.run_data import RunData

GROUPS = (("predictions", "prediction"), ("baselines", "baseline"), ("references", "reference"))
SCORE_HEADER = ("test", "target", "model", "kind", "R^2", "95% interval", "RMSE (nats)",
                "n targets", "note")
HELDOUT_HEADER = ("target", "model", "kind", "R^2", "95% interval", "RMSE (nats)", "n",
                  "R^2 interpolation", "R^2 extrapolation", "note")


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def interval(ci: list | None) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "-"


def _scores(block: dict):
    for group, kind in GROUPS:
        for model, s in block.get(group, {}).items():
            yield model, kind, s


def score_rows(scores: dict, tests: tuple[str, ...], in_sample_label: str) -> list[tuple[str, ...]]:
    """One row per (test, target, model) of the given tests."""
    rows = []
    for test in tests:
        entry = scores["tests"].get(test)
        if entry is None:
            continue
        for target, block in entry["targets"].items():
            for model, kind, s in _scores(block):
                note = s.get("reason") or ""
                if test == "in_sample" and kind == "prediction":
                    note = in_sample_label + (f"; {note}" if note else "")
                rows.append((test, target, model, kind, fmt(s.get("r2"), 4),
                             interval(s.get("r2_ci")), fmt(s.get("rmse_nats")),
                             str(s.get("n_targets", 0)), note))
    return rows


def _regime_r2(s: dict, regime: str) -> str:
    r = s.get("by_regime", {}).get(regime)
    if not r or r.get("r2") is None:
        return "-"
    return f"{fmt(r['r2'])} {interval(r.get('r2_ci'))} (n {r['n_targets']})"


def heldout_rows(entry: dict) -> list[tuple[str, ...]]:
    """The held-out-runs scores, target by target: prediction, baselines, then the ceiling."""
    rows = []
    for target, block in entry["targets"].items():
        for model, kind, s in _scores(block):
            note = s.get("reason") or ""
            same = s.get("param_model_on_these_targets")
            if same:
                note = (f"{note}; " if note else "") + \
                    f"param_model on the same targets: R^2 {fmt(same.get('r2'))}"
            rows.append((target, model, kind, fmt(s.get("r2"), 4), interval(s.get("r2_ci")),
                         fmt(s.get("rmse_nats")), str(s.get("n_targets", 0)),
                         _regime_r2(s, "interpolation"), _regime_r2(s, "extrapolation"), note))
    return rows


def heldout_run_rows(entry: dict) -> list[tuple[str, ...]]:
    return [(r["name"], r["regime"], r["replica_of"] or "-", fmt(r["params"]), fmt(r["tokens"]),
             str(r["warmup_steps"]),
             f"{fmt(r['scored_T'][0])} - {fmt(r['scored_T'][1])}" if r["scored_T"] else "-",
             str(r["scored_checkpoints"])) for r in entry.get("runs", [])]


def run_rows(runs: list[RunData]) -> list[tuple[str, ...]]:
    out = []
    for r in runs:
        n = r.summary.n_tokens if r.summary is not None else 0
        pop = r.summary.n_pop if r.summary is not None else 0
        sc = r.scored
        scored = f"{np.exp(r.x[sc].min()):.3g} - {np.exp(r.x[sc].max()):.3g}" if sc.any() else "-"
        out.append((r.name, r.role, f"{r.M:.3g}", f"{r.D:.3g}", str(len(r.steps)),
                    str(r.warmup_steps), scored, f"{pop}/{n}" if n else "no fits"))
    return out


def chinchilla_rows(fitted: dict) -> list[tuple[str, ...]]:
    law = fitted.get("chinchilla")
    if not law:
        return []
    if "reason" in law:
        return [("chinchilla", "-", "-", law["reason"])]
    ci = law.get("intervals", {})
    return [("chinchilla", p, fmt(law[p]), interval(ci.get(p))) for p in ("E", "A", "alpha", "B",
                                                                         "beta")]


def stepwise_rows(stepwise: dict) -> list[tuple[str, ...]]:
    rows = []
    for run, v in stepwise.get("runs", {}).items():
        rows.append((run, v.get("role", "-"), fmt(v.get("params")), fmt(v.get("tokens")),
                     fmt(v.get("share_step")), fmt(v.get("share_step_shed")),
                     fmt(v.get("share_smooth")), fmt(v.get("share_undecided")),
                     str(v.get("n_tokens", "-")), fmt(v.get("share_outside_window")),
                     fmt(v.get("share_step_in_window")), fmt(v.get("share_unresolved")),
                     str(v.get("checkpoints", "-")), v.get("reason") or ""))
    return rows


def fit_quality_rows(fits: dict[str, FitSummary]) -> list[tuple[str, ...]]:
    rows = []
    for run, f in fits.items():
        counts = f.kind_counts
        rows.append((run, str(f.n_tokens), ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                     fmt(f.r2_median) if f.r2_median is not None else "-",
                     fmt(f.tau_se_median) if f.tau_se_median is not None else "-"))
    return rows


def join_and(names: list[str]) -> str:
    """The names as a phrase: "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def fit_settings_text(settings: dict[str, dict[str, Any]], runs: list[str]) -> str:
    """The fit settings of every run in one sentence: a setting every run shares once, one that
    differs with the runs of each value; the runs whose fits record none are named."""
    recorded = [r for r in runs if settings.get(r)]
    if not recorded:
        return "not recorded in the fits' provenance."
    keys = dict.fromkeys(k for r in recorded for k in settings[r] if k != "run")
    parts = []
    for key in keys:
        values: dict[str, list[str]] = {}
        for r in recorded:
            values.setdefault(str(settings[r].get(key, "not recorded")), []).append(r)
        if len(values) == 1:
            parts.append(f"{key} = {next(iter(values))}")
        else:
            parts.append(f"{key} = " + ", ".join(f"{v} ({join_and(rs)})"
                                                 for v, rs in values.items()))
    missing = [r for r in runs if r not in recorded]
    return (f"for {join_and(recorded)}: " + "; ".join(parts)
            + (f"; not recorded for {join_and(missing)}" if missing else "") + ".")


GLANCE_HEADER = ("target", "verdict", "noise-corrected score [95%]", "oracle ceiling [95%]",
                 "snr [95%]", "seeds", "best baseline: score [95%]")


def _with_interval(value: Any, ci: list | None) -> str:
    if value is None:
        return "-"
    return f"{fmt(value)} {interval(ci)}" if ci else fmt(value)


def _best_baseline(basis: dict) -> str:
    scored = [(m, b) for m, b in (basis.get("baselines") or {}).items()
              if b.get("value") is not None]
    if not scored:
        return "-"
    model, b = max(scored, key=lambda mb: mb[1]["value"])
    return f"{model}: {_with_interval(b['value'], b.get('ci'))}"


def glance_rows(entry: dict) -> list[tuple[str, ...]]:
    """One row per held-out target kind: its three-way verdict and the numbers it rests on
    (where the score is not defined, the prediction's error against the noise instead)."""
    rows = []
    for target, block in entry.get("targets", {}).items():
        if "verdict" not in block:
            continue
        noise, sc = block["noise"], block["score_corrected"]
        basis = block.get("verdict_basis", {})
        if sc.get("value") is not None:
            score = f"{fmt(sc['value'])} {interval(sc.get('ci'))}"
        else:
            err = (basis.get("error_over_noise") or {}).get("value")
            score = f"- (error {fmt(err)} x noise)" if err is not None else "-"
        ceiling = noise.get("oracle_ceiling") or {}
        rows.append((target, block["verdict"], score,
                     _with_interval(ceiling.get("r2"), ceiling.get("ci")),
                     _with_interval(noise.get("snr"), noise.get("snr_ci")),
                     str(noise.get("replicas", 0)), _best_baseline(basis)))
    return rows
