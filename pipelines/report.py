"""`spectrum report`: spectra, held-out reconstruction tests and the report.

Reads ``evalset/tokens.parquet``, the loss shards and the fits of every run; writes
``spectra/spectra.parquet`` (+ ``grid.json``, ``comparisons.json``),
``reconstruction/predictions.parquet`` and ``reconstruction/scores.json``, then
``report/report.md``, ``report/index.html`` and ``report/figures/*.png``. Skipped when the outputs
were made from the same inputs with the same options (``--force`` recomputes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from pipelines.options import force_option, option
from spectrum import layout
from spectrum.console import progress
from spectrum.errors import SpectrumError
from spectrum.curriculum.trial import RESULTS_JSON, report_section
from spectrum.analysis.evaluation import Options, run_spectra, run_tests
from spectrum.fit.kinds import KINDS, KindThresholds
from spectrum.manifest import Manifest
from spectrum.report.blocks import write_report
from spectrum.report.explorer import explorer_blocks
from spectrum.report.sections import Inputs, build_blocks, heldout_coverage
from spectrum.analysis.run_data import load_run
from spectrum.analysis.spectra import DEFAULT_KINDS, log_time_grid
from spectrum.store import is_current, read_provenance, write_json, write_parquet

HELP = "learning-time spectra, held-out reconstruction of dL/dT, dL/dD, dL/dM, and the report"
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    spectrum_bins: int = option(40, "bins of the shared ln T grid (default 40)")
    bootstrap: int = option(200, "bootstrap replicates over sequences for bands (default 200)")
    spectrum_kinds: str = option(",".join(DEFAULT_KINDS), "fit kinds that enter the spectra "
                                                          f"(default {','.join(DEFAULT_KINDS)})")
    split_seed: int = option(0, "seed of the sequence halves and the bootstrap (default 0)")
    ridge: float = option(0.5, "shrinkage of per-token slopes towards the population "
                               "(default 0.5)")
    force: bool = force_option()

    def __post_init__(self) -> None:
        analysis_options(self)  # a bad value is refused before any work


OPTIONS = ReportOptions


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def analysis_options(options: ReportOptions) -> Options:
    """The analysis options of :mod:`spectrum.analysis.evaluation`; every bad value at once."""
    kinds = _kinds(options.spectrum_kinds)
    bad = [k for k in kinds if k not in KINDS]
    problems = []
    if bad or not kinds:
        problems.append(f"--spectrum-kinds: unknown kind(s) {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(KINDS)}")
    if options.spectrum_bins < 2:
        problems.append(f"--spectrum-bins must be at least 2, got {options.spectrum_bins}")
    if options.bootstrap < 0:
        problems.append(f"--bootstrap must be >= 0, got {options.bootstrap}")
    if options.ridge < 0:
        problems.append(f"--ridge must be >= 0, got {options.ridge}")
    if problems:
        raise SpectrumError(*problems)
    return Options(n_bins=options.spectrum_bins, n_boot=options.bootstrap, kinds=kinds,
                   seed=options.split_seed, ridge=options.ridge)


def input_stamps(manifest: Manifest) -> list:
    """Names, sizes and modification times of every input file (cheap, detects rewrites)."""
    out = manifest.out
    files = [layout.evalset_tokens(out)]
    for spec in manifest.runs:
        files += [layout.loss_shard(out, spec.name, s) for s in layout.shard_steps(out, spec.name)]
        files.append(layout.fits_file(out, spec.name))
    files.append(layout.curriculum_test_dir(out) / RESULTS_JSON)  # the report includes it when present
    return [(str(p.relative_to(out)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in files if p.is_file()]


def _fit_settings(manifest: Manifest) -> dict:
    """What the fit stage recorded in a fits file's provenance: the kind thresholds (as the fit
    stage describes them) and its scalar settings."""
    for spec in manifest.runs:
        prov = read_provenance(layout.fits_file(manifest.out, spec.name))
        if not prov:
            continue
        flat: dict = {}
        thresholds = prov.get("thresholds")
        if isinstance(thresholds, dict):
            try:
                flat["kinds"] = KindThresholds(**thresholds).describe()
            except TypeError:
                pass
        for k, v in prov.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()
                             if isinstance(vv, (int, float, str, bool))})
            elif isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) < 60):
                flat[k] = v
        return flat
    return {}


def main(manifest: Manifest, options: ReportOptions) -> None:
    opts = analysis_options(options)
    out = manifest.out
    prov = {"stage": "report", "options": opts.as_dict(), "inputs": input_stamps(manifest),
            "runs": [(r.name, r.params, r.tokens, r.tokens_per_step, r.role, r.warmup_steps)
                     for r in manifest.runs]}
    pred_path = layout.predictions_file(out)
    done = [pred_path, layout.scores_file(out), layout.report_index(out), layout.spectra_table(out)]
    if not options.force and is_current(pred_path, prov) and all(p.is_file() for p in done):
        log.info(f"report: current ({layout.report_index(out)}); --force to recompute")
        return
    runs = []
    for spec in progress(manifest.runs, desc="report: load runs", unit="run"):
        r = load_run(out, spec, half_seed=opts.seed)
        if r is not None:
            runs.append(r)
    if not runs:
        raise SpectrumError(f"{layout.losses_dir(out)}: no run has loss shards at a step > 0; "
                            "run `spectrum losses` first")
    edges = log_time_grid([(float(r.x.min()), float(r.x.max())) for r in runs], opts.n_bins)
    spectra = run_spectra(runs, edges, opts)
    if spectra.table.height:
        write_parquet(spectra.table.to_arrow(), layout.spectra_table(out), prov)
    else:
        write_parquet(pa.table({"run": pa.array([], pa.string())}),
                      layout.spectra_table(out), prov)
    write_json({"edges": edges.tolist(), "axis": "x = ln T (T: training tokens seen)",
                "source": "union of the runs' checkpoint ranges (T > 0)"},
               layout.spectra_grid(out))
    write_json({run: [c.as_dict() for c in cs] for run, cs in spectra.comparisons.items()},
               layout.spectra_comparisons(out))
    scores, preds = run_tests(runs, spectra.spectra, edges, opts)
    scores["grid"] = {"edges": edges.tolist()}
    scores["runs"] = [{"name": r.name, "params": r.params, "tokens": r.tokens,
                       "tokens_per_step": r.tokens_per_step, "role": r.role,
                       "warmup_steps": r.warmup_steps} for r in manifest.runs]
    write_json(scores, layout.scores_file(out))
    fits = {r.name: r.summary for r in runs if r.summary is not None}
    blocks = build_blocks(Inputs(manifest_path=str(manifest.path), runs=runs, spectra=spectra,
                                 scores=scores, preds=preds, fits=fits,
                                 fit_settings=_fit_settings(manifest), edges=edges,
                                 curriculum=report_section(out)))
    blocks += explorer_blocks(out, runs)  # the token explorer, last in the report
    write_report(layout.report_dir(out), blocks)
    # written last: its provenance marks the whole stage as current
    write_parquet(preds.to_arrow(), pred_path, prov)
    n_null = sum(1 for t in scores["tests"].values() for b in t["targets"].values()
                 for s in b["predictions"].values() if s.get("r2") is None)
    log.info(f"report: {layout.report_index(out)} ({len(runs)} runs; "
             f"{n_null} prediction score(s) null with a reason in scores.json)")
    log.info(f"report: {scores['stepwise']['verdict']}")
    coverage = heldout_coverage(scores)
    if coverage:
        log.info(f"report: {coverage}")
    for lines in scores["tests"]["heldout_runs"].get("verdicts", {}).values():
        log.info(f"report: held-out runs, {lines[0]}")
