"""The report: ``report/report.md`` and a self-contained ``report/index.html``.

The document is assembled once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown with figures linked from ``report/figures/*.png``, and HTML with the same
PNGs embedded as base64 data URIs, so the HTML file alone carries everything.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spectrum.report import figures
from spectrum.analysis.evaluation import IN_SAMPLE_LABEL, SMOOTHING, TESTS, SpectraResult
from spectrum.analysis.run_data import RunData
from spectrum.store import write_bytes, write_text


@dataclass(frozen=True)
class Block:
    kind: str  # h2 | h3 | p | table | figure | pre | html
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    png: bytes = b""
    name: str = ""
    html: str = ""  # kind html: a fragment for index.html; ``text`` stands in for it in Markdown


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def score_rows(scores: dict) -> list[tuple[str, ...]]:
    """One row per (test, target, model): the score table of the report."""
    rows = []
    for test, entry in scores["tests"].items():
        note_test = IN_SAMPLE_LABEL if test == "in_sample" else ""
        for target, block in entry["targets"].items():
            for group, kind in (("predictions", "prediction"), ("baselines", "baseline"),
                                ("references", "reference")):
                for model, s in block.get(group, {}).items():
                    note = s.get("reason") or entry.get("reason") or ""
                    if note_test and kind == "prediction":
                        note = note_test + (f"; {note}" if note else "")
                    rows.append((test, target, model, kind, _fmt(s.get("r2"), 4),
                                 _fmt(s.get("median_rel_err")), str(s.get("n_targets", 0)), note))
    return rows


def _run_table(runs: list[RunData]) -> list[tuple[str, ...]]:
    out = []
    for r in runs:
        n = r.tokens.height if r.tokens is not None else 0
        pop = int(r.tokens["in_pop"].sum()) if r.tokens is not None else 0
        out.append((r.name, r.role, f"{r.M:.3g}", f"{r.D:.3g}", str(len(r.steps)),
                    f"{np.exp(r.x.min()):.3g} - {np.exp(r.x.max()):.3g}",
                    f"{pop}/{n}" if n else "no fits"))
    return out


def _headline(scores: dict) -> list[str]:
    """Plain sentences for the held-out results."""
    lines = []
    t = scores["tests"]
    for test, target in (("heldout_tokens", "dL/dlnT"), ("heldout_runs", "dL/dlnT"),
                         ("heldout_runs", "dL/dlnM"), ("heldout_runs", "dL/dlnD")):
        entry = t.get(test, {})
        block = entry.get("targets", {}).get(target)
        if not block:
            continue
        best = [(m, s) for m, s in block["predictions"].items() if s.get("r2") is not None]
        base = [(m, s) for m, s in block["baselines"].items() if s.get("r2") is not None]
        if not best:
            why = next((s.get("reason") for s in block["predictions"].values()), None)
            lines.append(f"{test}, {target}: not scored ({why or entry.get('reason')}).")
            continue
        m, s = max(best, key=lambda kv: kv[1]["r2"])
        line = (f"{test}, {target}: {m} R^2 = {_fmt(s['r2'], 4)}, median relative error "
                f"{_fmt(s['median_rel_err'])} over {s['n_targets']} targets")
        if base:
            bm, bs = max(base, key=lambda kv: kv[1]["r2"])
            line += (f"; best baseline {bm} R^2 = {_fmt(bs['r2'], 4)}, "
                     f"error {_fmt(bs['median_rel_err'])}")
        lines.append(line + ".")
    return lines


def build_blocks(*, manifest_path: str, runs: list[RunData], spectra: SpectraResult, scores: dict,
                 preds: pl.DataFrame, fits: dict[str, pl.DataFrame],
                 fit_settings: dict[str, Any] | None, edges: np.ndarray,
                 curriculum: dict[str, Any] | None = None) -> list[Block]:
    B: list[Block] = []
    roles = {r.name: r.role for r in runs}
    n_tokens = max((r.tokens.height for r in runs if r.tokens is not None), default=0)
    B.append(Block("p", f"Manifest: {manifest_path}. {len(runs)} runs with measured losses, "
                        f"{n_tokens} contextualized tokens in the evaluation set."))
    B.append(Block("h2", "What was measured and what was predicted"))
    B.append(Block("p", "Every run's loss was measured per token at each checkpoint, and a sigmoid "
                        "in x = ln T (T: training tokens seen) was fitted to every token's "
                        "trajectory: l(x) = lo + (hi - lo) * sigmoid(-k (x - tau)). tau is the "
                        "token's learning time, delta = hi - lo the loss it sheds. The spectrum S "
                        "of a run is the loss shed per unit ln T by the tokens whose tau falls "
                        "there. From these, the tests below predict loss derivatives, each scored "
                        "against measured values beside baselines on the same targets."))
    B.append(Block("table", header=("run", "role", "M (params)", "D (tokens)", "checkpoints",
                                    "T range", "tokens with a fit"), rows=tuple(_run_table(runs))))
    B.append(Block("h2", "Results"))
    for line in _headline(scores):
        B.append(Block("p", line))
    B.append(Block("table", header=("test", "target", "model", "kind", "R^2", "median rel. err.",
                                    "n targets", "note"), rows=tuple(score_rows(scores))))
    B.append(Block("p", f"The in_sample rows are an {IN_SAMPLE_LABEL}: the sum of fitted sigmoids "
                        "reproduces the loss curve by construction. Evidence comes from the "
                        "held-out rows (heldout_tokens, heldout_runs), each beside its baselines."))
    tests_rows = tuple((name, frm, tgt) for name, (frm, tgt) in TESTS.items())
    B.append(Block("table", header=("test", "predicted from", "targets"), rows=tests_rows))
    B.append(Block("p", f"Measured derivatives: {SMOOTHING}. Derivatives are with respect to "
                        "ln T, ln M and ln D. Derivatives across runs are estimated at matched T by "
                        "least squares of the loss differences between the held-out run and every "
                        "other run on their differences in ln M and ln D; predictions and "
                        "baselines go through the same estimator. R^2 is 1 - SS_res/SS_tot over "
                        "the targets pooled across runs; the relative error is |pred - meas| / "
                        "|meas|."))
    fitted = scores.get("fitted", {})
    law_rows = []
    for name in ("power_law_T", "power_law_D"):
        law = fitted.get(name)
        if law is None:
            continue
        if "reason" in law:
            law_rows.append((name, "-", "-", "-", "-", "-", "-", law["reason"]))
        else:
            law_rows.append((name, law["form"], *(_fmt(law[p]) for p in ("E", "A", "alpha", "B",
                                                                          "beta")),
                             f"rmse {_fmt(law['rmse'])} over {law['n_points']} points"
                             + (f"; fixed {law['fixed']}" if law["fixed"] else "")))
    if law_rows:
        B.append(Block("h3", "Baselines fitted on the fit runs"))
        B.append(Block("table", header=("baseline", "form", "E", "A", "alpha", "B", "beta", "fit"),
                       rows=tuple(law_rows)))
    pm = fitted.get("param_model")
    if pm:
        tau = pm["population_coefficients"].get("tau", [])
        coef = ", ".join(f"d tau / d {a} = {_fmt(v)}" for a, v in zip(pm["axes"], tau[1:]))
        B.append(Block("p", f"Parameter model: fitted on {', '.join(pm['fit_runs'])}; axes "
                            f"{', '.join(pm['axes']) or 'none'}; population dependence of the "
                            f"learning time: {coef or '-'}."))

    B.append(Block("h2", "Loss curves: measured and reconstructed"))
    B.append(Block("figure", "Measured mean loss (dots) per run; the mean of the run's own fitted "
                             "sigmoids (in-sample, identity check); for held-out runs the "
                             "parameter model's prediction and the power law in T, both fitted "
                             "on the fit runs only.",
                   png=figures.png_bytes(figures.loss_curves(preds, roles)), name="loss_curves"))
    B.append(Block("h2", "Held-out runs: predicted vs measured derivatives"))
    for target in ("dL/dlnT", "dL/dlnM", "dL/dlnD"):
        fig = figures.derivatives(preds, "heldout_runs", target)
        B.append(Block("figure", f"{target} of each held-out run: measured (dots), predicted by "
                                 "the parameter model fitted on the fit runs, and the power-law "
                                 "baselines.", png=figures.png_bytes(fig),
                       name=f"heldout_runs_{target.split('/')[1]}"))
    B.append(Block("h2", "Held-out tokens and the spectrum alone"))
    B.append(Block("figure", "dL/dlnT of one half of the sequences (dots) predicted from the "
                             "other half's spectrum (sharp and kernel), beside the power law "
                             "fitted to the other half's curve and the other half's own "
                             "measured derivative (reference).",
                   png=figures.png_bytes(figures.derivatives(preds, "heldout_tokens", "dL/dlnT")),
                   name="heldout_tokens"))
    B.append(Block("figure", "dL/dlnT of each run (dots) from its own spectrum alone.",
                   png=figures.png_bytes(figures.derivatives(preds, "spectrum_only", "dL/dlnT")),
                   name="spectrum_only"))

    B.append(Block("h2", "Learning-time spectra"))
    settings = scores.get("settings", {})
    B.append(Block("p", f"S(x) = (1/N) sum_i delta_i [tau_i in bin] / bin width, and the count "
                        f"density, on one grid of {len(edges) - 1} bins over ln T in "
                        f"[{edges[0]:.2f}, {edges[-1]:.2f}] (T {np.exp(edges[0]):.3g} to "
                        f"{np.exp(edges[-1]):.3g}) shared by all runs, derived from their "
                        f"checkpoint ranges. Tokens entering: kinds "
                        f"{', '.join(settings.get('kinds', []))}; N counts every token with a "
                        f"fit. Bands: 95% percentile bootstrap over sequences "
                        f"({settings.get('n_boot')} replicates)."))
    B.append(Block("figure", "Spectra of every run with bootstrap bands.",
                   png=figures.png_bytes(figures.spectra(spectra.table)), name="spectra"))
    B.append(Block("h2", "Which tokens are learned first"))
    comp_rows = [(run, c.question, c.a, c.b, _fmt(c.mean_a), _fmt(c.mean_b), _fmt(c.diff),
                  f"[{_fmt(c.lo)}, {_fmt(c.hi)}]", c.verdict)
                 for run, cs in spectra.comparisons.items() for c in cs]
    B.append(Block("p", "Amplitude-weighted mean learning time (ln T) of learned tokens in two "
                        "slices, their difference and its 95% bootstrap interval over sequences. "
                        "An interval that includes 0 means the data do not tell the slices "
                        "apart. Position in the context is the proxy for the range of a "
                        "prediction: early positions can only use short context."))
    by_question: dict[str, list[str]] = {}
    for cs in spectra.comparisons.values():
        for c in cs:
            by_question.setdefault(c.question, []).append(c.verdict)
    for question, verdicts in by_question.items():
        tally = ", ".join(f"{v}: {verdicts.count(v)} of {len(verdicts)} runs"
                          for v in dict.fromkeys(verdicts))
        B.append(Block("p", f"{question[0].upper()}{question[1:]} {tally}."))
    if comp_rows:
        B.append(Block("table", header=("run", "question", "slice a", "slice b", "mean tau a",
                                        "mean tau b", "a - b", "95% interval", "answer"),
                       rows=tuple(comp_rows)))
    else:
        B.append(Block("p", "No comparison: the evaluation set has no annotations or no fits."))
    B.append(Block("figure", "Difference of mean learning time per slice pair and run.",
                   png=figures.png_bytes(figures.comparisons(spectra.comparisons)),
                   name="slice_comparisons"))
    if spectra.spectra:
        ref = max((r for r in runs if r.name in spectra.spectra), key=lambda r: (r.M * r.D))
        B.append(Block("figure", f"Spectra of the annotation slices of {ref.name} (each slice "
                                 "normalised by its own token count), with bands.",
                       png=figures.png_bytes(figures.slices(spectra.table, ref.name)),
                       name="slices"))

    B.append(Block("h2", "Fit quality"))
    q_rows = []
    for run, f in fits.items():
        counts = dict(f.group_by("kind").len().iter_rows())
        r2 = f["r2"].drop_nulls().to_numpy().astype(float)
        learned = f.filter(pl.col("kind") == "learned")
        se = learned["tau_se"].drop_nulls().to_numpy().astype(float) \
            if "tau_se" in f.columns else np.array([])
        q_rows.append((run, str(f.height), ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                       _fmt(float(np.nanmedian(r2))) if r2.size else "-",
                       _fmt(float(np.nanmedian(se))) if se.size else "-"))
    B.append(Block("table", header=("run", "tokens", "by kind", "median R^2",
                                    "median SE of tau (learned)"), rows=tuple(q_rows)))
    thr = "; ".join(f"{k} = {v}" for k, v in (fit_settings or {}).items())
    B.append(Block("p", "Kind thresholds and fit settings (as recorded by the fit stage): "
                        + (thr or "not recorded in the fits' provenance.")))
    B.append(Block("figure", "Per-token fit R^2, counts by kind, and standard errors of tau.",
                   png=figures.png_bytes(figures.fit_quality(fits)), name="fit_quality"))
    if curriculum is not None:
        B.append(Block("h2", curriculum["title"]))
        B.append(Block("p", curriculum["intro"]))
        B.append(Block("table", header=tuple(curriculum["header"]), rows=tuple(curriculum["rows"])))
        if curriculum.get("figure") is not None:
            B.append(Block("figure", "Validation loss of each arm against training tokens, and its "
                                     "difference to the uniform run of the same seed.",
                           png=Path(curriculum["figure"]).read_bytes(), name="curriculum_test"))
    return B


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out += [("## " if b.kind == "h2" else "### ") + b.text, ""]
        elif b.kind in ("p", "html"):
            out += [b.text, ""]
        elif b.kind == "pre":
            out += ["```", b.text, "```", ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{_md_cell(b.name)}](figures/{b.name}.png)", "", f"*{b.text}*", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}
figcaption{font-size:0.9em;color:#444}"""


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "pre":
            out.append(f"<pre>{e(b.text)}</pre>")
        elif b.kind == "html":
            out.append(b.html)
        elif b.kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                    for row in b.rows]
            out.append("</table>")
        elif b.kind == "figure":
            data = base64.b64encode(b.png).decode()
            out.append(f"<figure><img alt=\"{e(b.name)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{e(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(folder: Path, blocks: list[Block], *,
                 title: str = "Learning-time spectra and held-out reconstruction") -> list[Path]:
    """Write report.md, index.html and figures/*.png under ``folder``; returns the paths."""
    folder = Path(folder)
    paths = []
    for b in blocks:
        if b.kind == "figure":
            paths.append(write_bytes(b.png, folder / "figures" / f"{b.name}.png"))
    paths.append(write_text(render_markdown(title, blocks), folder / "report.md"))
    paths.append(write_text(render_html(title, blocks), folder / "index.html"))
    return paths
