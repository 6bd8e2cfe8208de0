"""`spectrum report`: spectra, held-out reconstruction tests and the report.

Reads ``evalset/tokens.parquet``, the loss shards and the fits of every run; writes
``spectra/spectra.parquet`` (+ ``grid.json``, ``comparisons.json``),
``reconstruction/predictions.parquet`` and ``reconstruction/scores.json``, then
``report/report.md``, ``report/index.html`` and ``report/figures/*.png``. Skipped when the outputs
were made from the same inputs with the same options (``--force`` recomputes).

How the work is distributed. Every analysis reads the per-token columns (annotations, fits) in
chunks of ``--token-chunk`` tokens and keeps only sums (:mod:`spectrum.analysis.runs.token_passes`). By
default everything runs in this process. With ``--executor ray`` (or a ``--ray-address``: ``auto``
or ``ip:port`` joins a cluster, ``local`` starts a local Ray), the heavy per-token passes are cut
into units of :data:`UNIT_CHUNKS` chunks (a token range; picklable, a few integers) and run by Ray
workers (``--workers``, ``--cpus-per-worker``) through the executor of every stage
(:func:`pipelines.executor.make_executor`); each worker reads the artifacts under the output folder
itself, and this process adds the partial sums in token order. Distributed, in six rounds of units:
the spectra and slice sums of every run; the in-sample fitted curves of every run; the token
models' first pass (the per-run sums of their population regressions) and, once this process has
fitted those regressions and sent them with the next round's workers, their second pass (each
token's predicted curves, summed per sequence) - once for the held-out-runs test and once for
leave-one-run-out. Kept in this process: loading each run (its loss shards summed per sequence, one
shard at a time, and its fit summary, whose medians need every value), the slice edges (quantiles
of the target frequency), the mean sigmoid kernels (weighted quantiles of k), the examples of the
token explorer, and every step that only combines per-run aggregates (scores, bootstrap, figures).
All distributed aggregates are sums, so a distributed run equals a local one up to the order of
additions (about 1e-12 relative, not bitwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import pyarrow as pa

from pipelines.executor import executor_kind, make_executor
from pipelines.options import not_positive
from pipelines.report_options import HELP, OPTIONS  # noqa: F401 - exposed by every stage
from pipelines.report_options import EXECUTOR, UNIT_CHUNKS, ReportOptions
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
from spectrum.analysis.runs.run_data import load_run
from spectrum.analysis.runs.token_passes import Mapper, TokenPass, in_process, token_ranges
from spectrum.analysis.spectra.spectrum import log_time_grid
from spectrum.store import is_current, read_provenance, write_json, write_parquet

log = logging.getLogger(__name__)


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
    problems += not_positive((("--token-chunk", options.token_chunk),
                              ("--cpus-per-worker", options.cpus_per_worker),
                              ("--workers", options.workers)))
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


def _fit_settings(manifest: Manifest) -> dict[str, dict]:
    """Per run, what the fit stage recorded in its fits file's provenance: the kind thresholds
    (as the fit stage describes them) and its scalar settings."""
    settings: dict[str, dict] = {}
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
        settings[spec.name] = flat
    return settings


# ---- units of work on Ray: (pass, token range) ------------------------------------------------

@dataclass(frozen=True)
class PassUnit:
    """The tokens ``start <= token_idx < stop`` of one pass of a round."""

    index: int  # the pass, in the round's list
    start: int
    stop: int


class PassWorker:
    """Runs units of one round's passes (sent once per worker); reads the artifacts itself."""

    def __init__(self, passes: Sequence[TokenPass]) -> None:
        self.passes = list(passes)

    def process(self, unit: PassUnit) -> Any:
        return self.passes[unit.index](unit.start, unit.stop)


def _make_worker(passes: Sequence[TokenPass]) -> PassWorker:
    return PassWorker(passes)


class ExecutorMapper:
    """A :data:`spectrum.analysis.runs.token_passes.Mapper` that cuts each pass into token ranges of
    ``unit_tokens`` and runs them through ``executor``; partials are combined in token order."""

    def __init__(self, executor: Any, unit_tokens: int) -> None:
        self.executor = executor
        self.unit_tokens = unit_tokens

    def __call__(self, passes: Sequence[TokenPass]) -> list[Any]:
        units = [PassUnit(i, a, b) for i, p in enumerate(passes)
                 for a, b in token_ranges(p.n_tokens, self.unit_tokens)]
        parts: list[list[tuple[int, Any]]] = [[] for _ in passes]
        failures = []
        names = ", ".join(sorted({type(p).__name__ for p in passes}))
        with progress(total=len(units), desc=f"report: {names}", unit="unit") as bar:
            for outcome in self.executor.map(partial(_make_worker, list(passes)), units):
                u: PassUnit = outcome.unit
                if outcome.ok:
                    parts[u.index].append((u.start, outcome.result))
                else:
                    failures.append(f"report: {type(passes[u.index]).__name__}, tokens "
                                    f"{u.start}-{u.stop - 1}: {outcome.error}")
                bar.update(1)
        if failures:
            raise SpectrumError(*failures)
        return [p.combine([r for _, r in sorted(got, key=lambda t: t[0])])
                for p, got in zip(passes, parts)]


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
    kind = executor_kind(options.executor, options.ray_address, EXECUTOR)
    if kind == "local":  # the passes run here, one after another, without units
        _report(manifest, options, opts, prov, in_process)
        return
    executor = make_executor(kind, ray_address=options.ray_address, workers=options.workers,
                             cpus_per_worker=options.cpus_per_worker, retries=1).executor
    with executor.connected():
        _report(manifest, options, opts, prov,
                ExecutorMapper(executor, options.token_chunk * UNIT_CHUNKS))


def _report(manifest: Manifest, options: ReportOptions, opts: Options, prov: dict,
            mapper: Mapper) -> None:
    out = manifest.out
    pred_path = layout.predictions_file(out)
    runs = []
    for spec in progress(manifest.runs, desc="report: load runs", unit="run"):
        r = load_run(out, spec, half_seed=opts.seed, chunk=options.token_chunk)
        if r is not None:
            runs.append(r)
    if not runs:
        raise SpectrumError(f"{layout.losses_dir(out)}: no run has loss shards at a step > 0; "
                            "run `spectrum losses` first")
    edges = log_time_grid([(float(r.x.min()), float(r.x.max())) for r in runs], opts.n_bins)
    spectra = run_spectra(runs, edges, opts, mapper)
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
    scores, preds = run_tests(runs, spectra.spectra, edges, opts, mapper)
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
