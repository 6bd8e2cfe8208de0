"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display needed).

Each function takes the stage's tables and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from spectrum.analysis.runs.fit_summary import FitSummary, Histogram
from spectrum.analysis.spectra.slices import Comparison

MODEL_STYLE = {
    "fitted_sigmoids": dict(color="C0", ls="-"),
    "param_model": dict(color="C3", ls="-"),
    "param_model_analytic": dict(color="C3", ls=":", lw=0.8),
    "chinchilla": dict(color="C4", ls="-."),
    "power_law_T_interp": dict(color="C2", ls=":"),
    "aggregate_curve": dict(color="C8", ls="--"),
    "schedule_law": dict(color="C6", ls="-."),
    "token_power_law": dict(color="C5", ls="--"),
    "zero": dict(color="0.6", ls="-", lw=0.6),
    "spectrum_sharp": dict(color="C1", ls="--"),
    "spectrum_kernel": dict(color="C3", ls="-"),
    "power_law_T": dict(color="C2", ls=":"),
    "power_law_D": dict(color="C4", ls="-."),
    "power_law_T_own_curve": dict(color="C2", ls=":"),
    "power_law_T_other_half": dict(color="C2", ls=":"),
    "measured_other_half": dict(color="0.5", ls="-", lw=0.8),
}



def _log_x(ax) -> None:
    """A log x axis with labels at the powers of ten only (the minor labels of a short log axis
    collide); an axis between two powers of ten (the model sizes of a small suite) keeps
    matplotlib's labels of its minor ticks, which are then few."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if lo > 0 and np.floor(np.log10(hi)) < np.ceil(np.log10(lo)):
        return
    ax.xaxis.set_minor_formatter(NullFormatter())

def _figure(n_panels: int, *, ncols: int = 3, w: float = 4.2, h: float = 3.2,
            left: float = 0.75, top: float = 0.35) -> tuple[Figure, list]:
    """A grid of panels with fixed margins in inches (a layout engine costs more than drawing)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols)) if n_panels else 1
    W, H = w * ncols, h * nrows
    fig = Figure(figsize=(W, H))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / W, right=1 - 0.15 / W, bottom=0.55 / H, top=1 - top / H,
                        wspace=0.9 / (w - 0.9), hspace=1.15 / (h - 1.15))
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(max(n_panels, 1))]
    return fig, axes


def _shared_legend(fig: Figure, axes: list) -> None:
    """One legend for all panels, above them (labels in order of first appearance)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        per_row = max(1, int(fig.get_figwidth() // 2.6))
        fig.legend(list(seen.values()), list(seen), loc="upper center",
                   ncol=min(len(seen), per_row), fontsize=8, frameon=False)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _drawable(values: pl.Series) -> bool:
    """Whether a curve has a point to draw: a null prediction (all NaN) draws nothing, and is left
    out of the plot so that the legend lists only what is drawn."""
    return bool(np.isfinite(values.cast(pl.Float64).fill_null(np.nan).to_numpy()).any())


def curves(preds: pl.DataFrame, target: str, tests: tuple[str, ...]) -> dict[str, list[str]]:
    """For each model of the given tests at ``target``, in order of appearance: "drawn" when it
    has a point to draw in some run, else "not drawn"."""
    sub = preds.filter(pl.col("target") == target)
    out: dict[str, list[str]] = {"drawn": [], "not drawn": []}
    seen: dict[str, bool] = {}
    for (test, model), g in sub.group_by(["test", "model"], maintain_order=True):
        if test in tests:
            seen[model] = seen.get(model, False) or _drawable(g["predicted"])
    for model, drawn in seen.items():
        out["drawn" if drawn else "not drawn"].append(model)
    return out


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def loss_curves(preds: pl.DataFrame, roles: dict[str, str]) -> Figure:
    """Measured mean loss and its reconstructions, one panel per run."""
    rows = preds.filter(pl.col("target") == "L")
    runs = [r for r in roles if r in set(rows["run"].to_list())]
    fig, axes = _figure(len(runs), top=0.85)
    if not runs:
        _empty(axes[0], "no loss curves")
    for ax, run in zip(axes, runs):
        sub = rows.filter(pl.col("run") == run).sort("T")
        first = sub.filter(pl.col("model") == sub["model"][0])
        ax.plot(first["T"], first["measured"], "k.", ms=4, label="measured")
        for (test, model), g in sub.group_by(["test", "model"], maintain_order=True):
            if not _drawable(g["predicted"]):
                continue
            label = f"{model} ({test.replace('_', ' ')})"
            ax.plot(g["T"], g["predicted"], label=label, **MODEL_STYLE.get(model, {}))
        _log_x(ax)
        ax.set_title(f"{run} ({roles[run]})")
        ax.set_xlabel("T (training tokens)")
        ax.set_ylabel("mean loss (nats)")
    _shared_legend(fig, axes)
    return fig


def spectra(table: pl.DataFrame) -> Figure:
    """Amplitude-weighted spectrum and count density of every run, with bootstrap bands."""
    fig, (a1, a2) = _figure(2, ncols=2, w=5.5, h=3.6)
    all_ = table.filter(pl.col("slice") == "all") if table.height else table
    if not all_.height:
        _empty(a1, "no spectra (no fits)")
        return fig
    for i, (run,) in enumerate(all_.select("run").unique(maintain_order=True).iter_rows()):
        g = all_.filter(pl.col("run") == run).sort("center")
        T = np.exp(g["center"].to_numpy())
        for ax, col in ((a1, "S"), (a2, "count")):
            y = g[col if col == "S" else "count_density"].to_numpy()
            ax.plot(T, y, color=f"C{i}", label=run)
            ax.fill_between(T, g[f"{col}_lo"].to_numpy(), g[f"{col}_hi"].to_numpy(),
                            color=f"C{i}", alpha=0.2, lw=0)
    a1.set_ylabel("S: loss shed per unit ln T (nats)")
    a2.set_ylabel("tokens learned per unit ln T (fraction)")
    for ax in (a1, a2):
        _log_x(ax)
        ax.set_xlabel("learning time T (tokens)")
        ax.legend(fontsize=7, loc="upper right")
    a1.set_title("amplitude-weighted spectrum S")
    a2.set_title("count density")
    return fig


def slices(table: pl.DataFrame, run: str) -> Figure:
    """Spectra of the annotation slices of one run, one panel per annotation."""
    sub = table.filter((pl.col("run") == run) & (pl.col("slice_axis") != "all")) \
        if table.height else table
    axes_names = sub["slice_axis"].unique(maintain_order=True).to_list() if sub.height else []
    fig, axes = _figure(len(axes_names))
    if not axes_names:
        _empty(axes[0], "no annotation slices")
    for ax, name in zip(axes, axes_names):
        g_axis = sub.filter(pl.col("slice_axis") == name)
        for i, sl in enumerate(g_axis["slice"].unique(maintain_order=True).to_list()):
            g = g_axis.filter(pl.col("slice") == sl).sort("center")
            T = np.exp(g["center"].to_numpy())
            ax.plot(T, g["S"], color=f"C{i}", label=sl)
            ax.fill_between(T, g["S_lo"].to_numpy(), g["S_hi"].to_numpy(), color=f"C{i}",
                            alpha=0.2, lw=0)
        _log_x(ax)
        ax.set_title(f"{run}: by {name.replace('_', ' ')}")
        ax.set_xlabel("learning time T (tokens)")
        ax.set_ylabel("S within the slice")
        ax.legend(fontsize=7, loc="upper right")
    return fig


def comparisons(comps: dict[str, list[Comparison]]) -> Figure:
    """Difference of amplitude-weighted mean learning time between slices, with bootstrap CIs."""
    items = [(run, c) for run, cs in comps.items() for c in cs]
    fig, (ax,) = _figure(1, w=10.0, h=0.3 * max(len(items), 3) + 1.2, left=4.2)
    if not items:
        _empty(ax, "no slice comparisons")
        return fig
    y = np.arange(len(items))
    d = np.array([c.diff for _, c in items])
    lo = np.array([c.lo for _, c in items])
    hi = np.array([c.hi for _, c in items])
    colors = ["C3" if (h < 0 or l > 0) else "0.5" for l, h in zip(lo, hi)]
    ax.errorbar(d, y, xerr=[np.nan_to_num(d - lo), np.nan_to_num(hi - d)], fmt="none",
                ecolor=colors)
    ax.scatter(d, y, c=colors, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{run}: {c.a} - {c.b}" for run, c in items], fontsize=7)
    ax.set_xlabel("difference of mean learning time (ln T); < 0: first slice learned earlier")
    ax.set_title("95% bootstrap intervals over sequences (red: excludes 0)")
    return fig


def derivatives(preds: pl.DataFrame, test: str, target: str, *, max_panels: int = 6) -> Figure:
    """Measured vs predicted derivatives (and baselines) for every run of one test."""
    sub = preds.filter((pl.col("test") == test) & (pl.col("target") == target))
    runs = sub["run"].unique(maintain_order=True).to_list()[:max_panels] if sub.height else []
    fig, axes = _figure(len(runs), top=0.85, w=4.2 if len(runs) > 1 else 6.5)
    if not runs:
        _empty(axes[0], f"{test}: no {target} targets")
    for ax, run in zip(axes, runs):
        g_run = sub.filter(pl.col("run") == run).sort("T")
        first = g_run.filter(pl.col("model") == g_run["model"][0])
        ax.plot(first["T"], first["measured"], "k.", ms=5, label="measured")
        for (model, kind), g in g_run.group_by(["model", "model_kind"], maintain_order=True):
            if not _drawable(g["predicted"]):
                continue
            ax.plot(g["T"], g["predicted"], label=f"{model} ({kind})",
                    **MODEL_STYLE.get(model, {}))
        ax.axhline(0, color="k", lw=0.5)
        _log_x(ax)
        ax.set_title(f"{run}", fontsize=9)
        ax.set_xlabel("T (training tokens)")
        ax.set_ylabel(target)
    _shared_legend(fig, axes)
    return fig


def fit_quality(fits: dict[str, FitSummary]) -> Figure:
    """R^2 distribution, counts by kind and standard errors of tau, per run (from each run's
    summary: the histograms were counted when the run was loaded)."""
    fig, (a1, a2, a3) = _figure(3, w=4.6, h=3.4)
    if not fits:
        _empty(a1, "no fits")
        return fig
    kinds = sorted({k for f in fits.values() for k in f.kinds})
    width = 0.8 / max(len(fits), 1)
    for i, (run, f) in enumerate(fits.items()):
        if f.r2_hist is not None:
            _hist(a1, f.r2_hist, color=f"C{i}", label=run)
        counts = f.kind_counts
        a2.bar(np.arange(len(kinds)) + i * width, [counts.get(k, 0) for k in kinds], width,
               color=f"C{i}", label=run)
        if f.tau_se_hist is not None:
            _hist(a3, f.tau_se_hist, color=f"C{i}", label=run)
    a1.set_xlabel("R^2 of the per-token fit (clipped at -0.5)")
    a1.set_title("fit quality")
    a2.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, rotation=20, fontsize=8)
    a2.set_title("tokens by kind")
    a2.set_yscale("log")
    a3.set_xlabel("log10 standard error of tau (learned tokens)")
    a3.set_title("uncertainty of learning times")
    for ax, loc in ((a1, "upper left"), (a2, "upper right"), (a3, "upper right")):
        ax.legend(fontsize=7, loc=loc)
    return fig


def _hist(ax, h: Histogram, **style) -> None:
    """A histogram counted beforehand, drawn as ``ax.hist`` draws the values themselves."""
    ax.hist(h.edges[:-1], bins=h.edges, weights=h.counts, histtype="step", **style)


def stepwise(shares: dict) -> Figure:
    """Share of tokens (and of loss shed) for which the step is preferred, per run against M."""
    fig, (a1, a2) = _figure(2, ncols=2, w=5.0, h=3.4)
    runs = {r: v for r, v in shares.items() if v.get("share_step") is not None}
    if not runs:
        _empty(a1, "no step-vs-smooth comparison in the fits")
        return fig
    scales = sorted({v["tokens"] for v in runs.values()})
    for ax, key, title in ((a1, "share_step", "share of tokens that change"),
                           (a2, "share_step_shed", "share of loss shed")):
        for i, D in enumerate(scales):
            pts = sorted((v["params"], v[key]) for v in runs.values()
                         if v["tokens"] == D and v.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{i}", label=f"D = {D:.3g}")
        _log_x(ax)
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_xlabel("M (parameters)")
        ax.set_ylabel("step preferred")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig
