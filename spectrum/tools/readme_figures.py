"""The README's figures of the default suite, generated from the files a run wrote.

``python -m spectrum.tools.readme_figures artifacts README.md`` rewrites the part of ``README.md``
between the markers ``<!-- figures:default-suite -->`` and ``<!-- /figures:default-suite -->``
with what ``reconstruction/scores.json`` under ``artifacts`` says (verdicts, scores with their
intervals, noise, the stepwise shares, the reliability across seeds), and, where the curriculum
commands have run, the part between ``<!-- figures:curriculum -->`` and
``<!-- /figures:curriculum -->`` with what ``curriculum/test/results.json`` and
``curriculum/coverage.json`` say (the test's tables and verdicts with the weights' hashes and the
commit of the code that trained them; the export's coverage). So every figure the README quotes
comes from a run and none is retyped. ``--check`` exits 1 when the README differs from what the
artifacts give (for a test or CI), without writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spectrum.curriculum.trial import RESULTS_JSON, comparison_table, context_sentences, markdown_table
from spectrum.layout import curriculum_coverage, curriculum_test_dir, scores_file
from spectrum.report.tables import fmt, interval

BEGIN, END = "<!-- figures:default-suite -->", "<!-- /figures:default-suite -->"
CURRICULUM_BEGIN, CURRICULUM_END = "<!-- figures:curriculum -->", "<!-- /figures:curriculum -->"
TARGETS = ("L", "dL/dlnT", "dL/dlnM", "dL/dlnD")
PREDICTION = "param_model"


def _interval(ci: Any) -> str:
    """`` [low, high]`` after a value, or nothing where the interval is not known."""
    return "" if not ci or None in ci else f" {interval(ci)}"


def _best_baseline(block: dict) -> str:
    """The best baseline by the same noise-corrected score as the prediction's verdict, or by raw
    R^2 where the target has no noise estimate."""
    corrected = [(name, b) for name, b in
                 ((block.get("verdict_basis") or {}).get("baselines") or {}).items()
                 if b.get("value") is not None]
    if corrected:
        name, b = max(corrected, key=lambda kv: kv[1]["value"])
        return f"{name} {fmt(b['value'])}{_interval(b.get('ci'))}"
    scored = [(name, s) for name, s in block.get("baselines", {}).items()
              if s.get("r2") is not None and name != "zero"]
    if not scored:
        return "none scored"
    name, s = max(scored, key=lambda kv: kv[1]["r2"])
    return f"{name} {fmt(s['r2'])}{_interval(s.get('r2_ci'))} (raw R^2)"


def heldout_table(scores: dict) -> list[str]:
    targets = scores["tests"]["heldout_runs"]["targets"]
    rows = ["| target | verdict | noise-corrected score | raw R^2 against one replica | "
            "oracle ceiling | snr | best baseline, noise-corrected |",
            "|---|---|---|---|---|---|---|"]
    for t in TARGETS:
        block = targets.get(t, {})
        pred = block.get("predictions", {}).get(PREDICTION, {})
        noise = block.get("noise") or {}
        corrected = block.get("score_corrected") or {}
        ceiling = (noise.get("oracle_ceiling") or {})
        rows.append(
            f"| {t} | {block.get('verdict', '-')} | {fmt(corrected.get('value'))}"
            f"{_interval(corrected.get('ci'))} | {fmt(pred.get('r2'))}"
            f"{_interval(pred.get('r2_ci'))} | {fmt(ceiling.get('r2'))}"
            f"{_interval(ceiling.get('ci'))} | {fmt(noise.get('snr'))}"
            f"{_interval(noise.get('snr_ci'))} | {_best_baseline(block)} |")
    return rows


def verdict_sentences(scores: dict) -> list[str]:
    verdicts = scores["tests"]["heldout_runs"].get("verdicts", {})
    out = []
    for t in TARGETS:
        lines = verdicts.get(t) or []
        if lines:
            out.append(f"- {lines[0]}")
    return out


def stepwise_lines(scores: dict) -> list[str]:
    step = scores.get("stepwise", {})
    out = []
    if step.get("verdict"):
        out.append(f"- **Is learning stepwise?** {step['verdict']}")
    cal = step.get("calibration") or {}
    if cal.get("false_step_rate") is not None:
        out.append(f"- The step call's false-step rate on null data with the noise of real runs: "
                   f"{fmt(cal['false_step_rate'])}.")
    rel = step.get("reliability") or {}
    for point, r in rel.items():
        pairs = len(r.get("pairs") or [])
        out.append(f"- **Across seeds** ({point}: {len(r.get('runs') or [])} replicas, {pairs} "
                   f"pairs, {r.get('n_tokens', '-')} token pairs): tau "
                   f"correlation {fmt(r.get('tau_corr'))}, kappa of the step call "
                   f"{fmt(r.get('kappa_step'))}, of the kinds {fmt(r.get('kappa_kind'))}; "
                   f"standard-error coverage {fmt(r.get('se_coverage_uncorrected'))} as fitted, "
                   f"{fmt(r.get('se_coverage'))} corrected.")
    return out


def figures(scores: dict) -> str:
    lines = [BEGIN, "", "Held-out runs (scored among held-out runs only; the verdict rests on the "
             "noise-corrected score and its interval over seeds and sequences):", ""]
    lines += heldout_table(scores) + [""] + verdict_sentences(scores) + stepwise_lines(scores)
    return "\n".join(lines + ["", END])


def _short(commit: str | None) -> str:
    if not commit:
        return "unknown (not a git checkout)"
    return commit[:12] + (" with uncommitted changes" if commit.endswith("-dirty") else "")


def curriculum_figures(results: dict, coverage: dict | None) -> str:
    """The curriculum block: the controlled test's setup, tables and verdicts, the weights'
    hashes and the code's commit; and the export's coverage where it ran."""
    setup, summary = results["setup"], results["summary"]
    exported = setup.get("exported") or {}
    seeds = setup.get("seeds") or []
    lines = [CURRICULUM_BEGIN, "",
             f"Controlled test (`spectrum curriculum-test --config checkpoints.yaml`, all defaults, "
             f"after `make run`), code at commit `{_short(setup.get('code_commit'))}`, curriculum "
             f"weights hash `{setup.get('weights_hash')}`"
             + (f", exported weights hash `{exported['weights_hash']}`" if exported else "")
             + f": size {setup['size']}, {setup['steps']} steps x {setup['tokens_per_step']} tokens, "
             f"a pool of {setup['pool_sequences']} training sequences, {setup['phases']} phases "
             f"starting at steps {', '.join(map(str, setup['phase_steps'][:-1]))}, learnability "
             f"from {', '.join(setup['learnability_runs'])}, {len(seeds)} seeds "
             f"({seeds[0] if seeds else '-'}..{seeds[-1] if seeds else '-'}), uniform budgets "
             f"{', '.join(f'{b:g}x' for b in setup['budgets'])}.", ""]
    if exported:
        measured = exported["pool_measured"]
        lines += [f"The `exported` arm trains on the export's weights for the pool: {measured} "
                  f"pool sequence{' was' if measured == 1 else 's were'} in the export's scored "
                  f"sample (learnability from {', '.join(exported['runs'])}); the other "
                  f"{exported['pool_predicted']} get predicted weights.", ""]
    lines += [markdown_table(summary), "", comparison_table(summary), "", "Verdicts:", ""]
    lines += [f"- {v}" for v in summary.get("verdicts", [])]
    lines += ["", context_sentences(summary, setup)]
    if coverage:
        lines += ["", export_sentence(coverage)]
    return "\n".join(lines + ["", CURRICULUM_END])


def export_sentence(coverage: dict) -> str:
    """The export's coverage, its learnability model and its two sources of shed in words."""
    model = coverage.get("shed_model") or {}
    shrink = coverage.get("shrinkage") or {}
    spread = coverage.get("spread") or []
    text = (f"Export (`spectrum export-curriculum --config checkpoints.yaml --target-steps 128`, "
            f"code at commit `{_short(coverage.get('code_commit'))}`): {coverage['documents']} "
            f"documents and {coverage['sequences']} sequences of {coverage['corpus']}, "
            f"{coverage['sequences_measured']} measured and the rest predicted; the learnability "
            f"model's R^2 on held-out documents per phase "
            f"{', '.join(fmt(v) for v in model.get('cv_r2', []))}.")
    if shrink.get("reliability"):
        text += (f" Measured sheds (the mean over {shrink['runs']} runs) have a reliability of "
                 f"{', '.join(fmt(v) for v in shrink['reliability'])} per phase and are shrunk "
                 f"toward the prediction by {', '.join(fmt(v) for v in shrink['factor'])}.")
    if spread:
        top = max(spread, key=lambda r: r["shed_max"])
        text += (f" The largest mean shed per token of any sequence in any phase is "
                 f"{fmt(top['shed_max'])} nats (phase {top['phase']}, {top['source']}), against "
                 f"ln V = {fmt(coverage.get('ln_vocab'))}.")
    return text


def rewrite(readme: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in readme or end not in readme:
        raise ValueError(f"the README has no {begin} ... {end} markers")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spectrum.tools.readme_figures",
                                description=__doc__.splitlines()[0])
    p.add_argument("artifacts", type=Path, help="the run's output folder (default run: artifacts)")
    p.add_argument("readme", type=Path, help="the README to rewrite")
    p.add_argument("--check", action="store_true", help="exit 1 if the README is not current")
    args = p.parse_args(argv)
    scores_path = scores_file(args.artifacts)
    if not scores_path.is_file():
        print(f"error: {scores_path}: not found (run `make run` first)", file=sys.stderr)
        return 2
    new = rewrite(args.readme.read_text(), figures(json.loads(scores_path.read_text())))
    results = curriculum_test_dir(args.artifacts) / RESULTS_JSON
    if results.is_file():
        coverage = curriculum_coverage(args.artifacts)
        block = curriculum_figures(json.loads(results.read_text()),
                                   json.loads(coverage.read_text()) if coverage.is_file() else None)
        new = rewrite(new, block, CURRICULUM_BEGIN, CURRICULUM_END)
    if args.check:
        return 0 if new == args.readme.read_text() else 1
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
