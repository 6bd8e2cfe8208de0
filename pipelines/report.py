"""`spectrum report`: spectra, held-out reconstruction tests and the report.

Reads ``evalset/tokens.parquet``, the loss shards and the fits of every run; writes
``spectra/spectra.parquet`` (+ ``grid.json``, ``comparisons.json``),
``reconstruction/predictions.parquet`` and ``reconstruction/scores.json``, then
``report/report.md``, ``report/index.html`` and ``report/figures/*.png``. Skipped when the outputs
were made from the same inputs with the same options (``--force`` recomputes).
"""

from __future__ import annotations

import argparse

import pyarrow as pa
from tqdm.auto import tqdm

from spectrum import layout
from spectrum.errors import SpectrumError
from spectrum.curriculum.trial import RESULTS_JSON, report_section
from spectrum.analysis.evaluation import Options, run_spectra, run_tests
from spectrum.fit.kinds import KindThresholds
from spectrum.manifest import Manifest
from spectrum.report.blocks import write_report
from spectrum.report.sections import Inputs, build_blocks
from spectrum.analysis.run_data import load_run, read_tokens
from spectrum.analysis.spectra import DEFAULT_KINDS, log_time_grid
from spectrum.store import is_current, read_provenance, write_json, write_parquet

HELP = "learning-time spectra, held-out reconstruction of dL/dT, dL/dD, dL/dM, and the report"
KINDS = ("learned", "flat", "forgotten", "nonmonotone", "unfinished", "unfit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spectrum-bins", type=int, default=40,
                   help="bins of the shared ln T grid (default 40)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap replicates over sequences for bands (default 200)")
    p.add_argument("--spectrum-kinds", default=",".join(DEFAULT_KINDS),
                   help=f"fit kinds that enter the spectra (default {','.join(DEFAULT_KINDS)})")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the sequence halves and the bootstrap (default 0)")
    p.add_argument("--ridge", type=float, default=0.5,
                   help="shrinkage of per-token slopes towards the population (default 0.5)")
    p.add_argument("--force", action="store_true", help="recompute even if current")


def options(args: argparse.Namespace) -> Options:
    kinds = tuple(k.strip() for k in str(args.spectrum_kinds).split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    problems = []
    if bad or not kinds:
        problems.append(f"--spectrum-kinds: unknown kind(s) {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(KINDS)}")
    if args.spectrum_bins < 2:
        problems.append(f"--spectrum-bins must be at least 2, got {args.spectrum_bins}")
    if args.bootstrap < 0:
        problems.append(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.ridge < 0:
        problems.append(f"--ridge must be >= 0, got {args.ridge}")
    if problems:
        raise SpectrumError(*problems)
    return Options(n_bins=args.spectrum_bins, n_boot=args.bootstrap, kinds=kinds,
                   seed=args.split_seed, ridge=args.ridge)


def _fingerprint(manifest: Manifest) -> list:
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


def main(manifest: Manifest, args: argparse.Namespace) -> None:
    opts = options(args)
    out = manifest.out
    prov = {"stage": "report", "options": opts.as_dict(), "inputs": _fingerprint(manifest),
            "runs": [(r.name, r.params, r.tokens, r.tokens_per_step, r.role,
                      getattr(r, "warmup_steps", 0)) for r in manifest.runs]}
    pred_path = layout.predictions_file(out)
    done = [pred_path, layout.scores_file(out), layout.report_index(out), layout.spectra_table(out)]
    if not args.force and is_current(pred_path, prov) and all(p.is_file() for p in done):
        print(f"report: current ({layout.report_index(out)}); --force to recompute")
        return
    tokens = read_tokens(out)
    runs = []
    for spec in tqdm(manifest.runs, desc="report: load runs", unit="run"):
        r = load_run(out, spec, tokens, half_seed=opts.seed)
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
                       "warmup_steps": getattr(r, "warmup_steps", 0)} for r in manifest.runs]
    write_json(scores, layout.scores_file(out))
    fits = {r.name: r.fits for r in runs if r.fits is not None}
    blocks = build_blocks(Inputs(manifest_path=str(manifest.path), runs=runs, spectra=spectra,
                                 scores=scores, preds=preds, fits=fits,
                                 fit_settings=_fit_settings(manifest), edges=edges,
                                 curriculum=report_section(out)))
    write_report(layout.report_dir(out), blocks)
    # written last: its provenance marks the whole stage as current
    write_parquet(preds.to_arrow(), pred_path, prov)
    n_null = sum(1 for t in scores["tests"].values() for b in t["targets"].values()
                 for s in b["predictions"].values() if s.get("r2") is None)
    print(f"report: {layout.report_index(out)} ({len(runs)} runs; "
          f"{n_null} prediction score(s) null with a reason in scores.json)")
    print(f"report: {scores['stepwise']['verdict']}")
    for lines in scores["tests"]["heldout_runs"].get("verdicts", {}).values():
        print(f"report: held-out runs, {lines[0]}")
