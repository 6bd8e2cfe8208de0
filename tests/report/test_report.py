import json
import re

import polars as pl
import pytest

from pipelines.cli import main as cli
from tests.synthetic import DEFAULT_RUNS, make_synthetic_artifacts

FAST = ["--bootstrap", "20", "--spectrum-bins", "20"]


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = [r for r in DEFAULT_RUNS if r[0] != "m1-d1-s1"]
    manifest = make_synthetic_artifacts(root, n_seq=12, context=24, n_steps=16, runs=runs)
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    return manifest, root / "artifacts"


def _every_score(scores):
    for test, entry in scores["tests"].items():
        for target, block in entry["targets"].items():
            for group in ("predictions", "baselines", "references"):
                for model, s in block[group].items():
                    yield test, target, model, s


def test_report_stage_writes_every_artifact(synthetic_report):
    _, out = synthetic_report
    for rel in ("report/report.md", "report/index.html", "reconstruction/scores.json",
                "reconstruction/predictions.parquet", "spectra/spectra.parquet",
                "spectra/grid.json", "report/figures/spectra.png",
                "report/figures/loss_curves.png", "report/figures/fit_quality.png"):
        assert (out / rel).is_file(), rel
    scores = json.loads((out / "reconstruction/scores.json").read_text())
    assert set(scores["tests"]) == {"in_sample", "spectrum_only", "heldout_tokens", "heldout_runs",
                                    "leave_one_run_out"}
    for test, target, model, s in _every_score(scores):
        assert s["r2"] is not None or s["reason"], (test, target, model)
        assert s["n_targets"] >= (1 if s["r2"] is not None else 0)
    assert scores["tests"]["in_sample"]["label"].startswith("identity check")
    hr = scores["tests"]["heldout_runs"]["targets"]
    assert {"chinchilla", "power_law_T_interp", "aggregate_curve",
            "token_power_law"} <= set(hr["L"]["baselines"])
    assert "seed_replicas" in hr["L"]["references"]
    for test, target, model, s in _every_score(scores):
        assert {"r2", "r2_ci", "rmse_nats"} <= set(s), (test, target, model)
    assert scores["tests"]["heldout_runs"]["runs"][0]["regime"] == "interpolation"
    # the fits of this world are the planted parameters, without the smooth alternatives
    assert scores["stepwise"]["runs"]["m2-d2"]["share_step"] is None
    assert "not tested" in scores["stepwise"]["verdict"]
    spectra = pl.read_parquet(out / "spectra/spectra.parquet")
    assert set(spectra["run"].unique()) == {r[0] for r in DEFAULT_RUNS if r[0] != "m1-d1-s1"}
    assert {"all", "frequency", "position", "word_start"} <= set(spectra["slice_axis"].unique())
    assert (spectra["S_lo"] <= spectra["S_hi"]).all()


def test_html_is_self_contained_and_explains_itself(synthetic_report):
    _, out = synthetic_report
    page = (out / "report/index.html").read_text()
    srcs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), srcs[:3]
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc", page)
    assert page.count("<img") >= 8
    for phrase in ("identity check", "heldout_runs", "chinchilla", "bootstrap", "R^2",
                   "learning time", "Fit quality", "Is learning stepwise?", "end-of-run losses",
                   "seed_replicas", "95% interval"):
        assert phrase in page, phrase
    md = (out / "report/report.md").read_text()
    assert "figures/spectra.png" in md and "| L | param_model | prediction |" in md


def test_report_resumes_and_recomputes_on_force(synthetic_report, capsys):
    manifest, out = synthetic_report
    before = (out / "reconstruction/scores.json").stat().st_mtime_ns
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    assert "current" in capsys.readouterr().err
    assert (out / "reconstruction/scores.json").stat().st_mtime_ns == before


def test_without_heldout_runs_the_test_is_null_with_a_reason(tmp_path):
    runs = [r for r in DEFAULT_RUNS if r[3] == "fit"][:2]
    manifest = make_synthetic_artifacts(tmp_path, n_seq=6, context=16, n_steps=10, runs=runs)
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    scores = json.loads((tmp_path / "artifacts/reconstruction/scores.json").read_text())
    hr = scores["tests"]["heldout_runs"]
    assert "no heldout run" in hr["reason"]
    for target, block in hr["targets"].items():
        assert all(s["r2"] is None and s["reason"] for s in block["predictions"].values())
    assert (tmp_path / "artifacts/report/index.html").is_file()
    # a different option is a different result: recomputed
    before = (tmp_path / "artifacts/reconstruction/scores.json").stat().st_mtime_ns
    assert cli(["report", "--config", str(manifest), "--bootstrap", "10",
                "--spectrum-bins", "20"]) == 0
    assert (tmp_path / "artifacts/reconstruction/scores.json").stat().st_mtime_ns != before


def test_bad_input_is_one_sentence(tmp_path, capsys):
    manifest = make_synthetic_artifacts(tmp_path, n_seq=4, context=8, n_steps=6,
                                        runs=DEFAULT_RUNS[:1])
    (tmp_path / "artifacts/evalset/tokens.parquet").unlink()
    assert cli(["report", "--config", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "tokens.parquet" in err and "Traceback" not in err
    assert cli(["report", "--config", str(manifest), "--spectrum-kinds", "learnt"]) == 2
    assert "--spectrum-kinds" in capsys.readouterr().err


@pytest.mark.slow
def test_main_command_on_a_micro_suite(micro_suite, tmp_path):
    """Every stage on real (tiny) checkpoints: the report fills each test or says why not."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pipelines.fit") is None:
        pytest.skip("the fit stage is not available")
    root = tmp_path / "suite"
    shutil.copytree(micro_suite.parent, root)
    assert cli(["run", "--config", str(root / micro_suite.name), "--executor", "local",
                "--device", "cpu", "--bootstrap", "20"]) == 0
    out = root / "artifacts"
    scores = json.loads((out / "reconstruction/scores.json").read_text())
    for test, target, model, s in _every_score(scores):
        assert s["r2"] is not None or s["reason"], (test, target, model)
    assert scores["tests"]["in_sample"]["targets"]["L"]["predictions"]["fitted_sigmoids"]["r2"] > 0.9
    # the micro suite's fit runs share one data scale: the held-out run's D cannot be predicted
    assert "one data scale only" in scores["tests"]["heldout_runs"]["reason"]
    page = (out / "report/index.html").read_text()
    assert all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', page))


def test_report_includes_the_curriculum_test_when_it_exists(tmp_path):
    from spectrum.curriculum.runner import write_results
    from spectrum.curriculum.trial import Curve

    manifest = make_synthetic_artifacts(tmp_path, n_seq=8, context=16, n_steps=10,
                                        runs=[r for r in DEFAULT_RUNS if r[0] != "m1-d1-s1"])
    out = tmp_path / "artifacts"
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    assert "Controlled test" not in (out / "report/report.md").read_text()
    tokens = [0.0, 100.0, 200.0, 400.0]
    # in both seeds the curriculum ends 0.05 nats below uniform and freq_shuffled and 0.10 below
    # random (seed 1 a little lower overall)
    curves = [Curve(arm, seed, tokens, [5.0, 4.0 - d - e, 3.5 - d - e, 3.2 - d - e])
              for seed, e in ((0, 0.0), (1, 0.01))
              for arm, d in (("uniform", 0.0), ("curriculum", 0.05), ("freq_shuffled", 0.0),
                             ("random", -0.05))]
    setup = {"size": "m1", "steps": 4, "tokens_per_step": 100, "pool_sequences": 10, "phases": 2,
             "floor": 0.25, "seeds": [0, 1], "buckets": 2, "eval_sequences": 4}
    (out / "curriculum/test").mkdir(parents=True)
    write_results(curves, setup, out / "curriculum/test")
    # the report is no longer current once the test has results, and then shows them
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    md = (out / "report/report.md").read_text()
    assert "## Controlled test of the learnability curriculum" in md
    assert "| curriculum |" in md and "figures/curriculum_test.png" in md
    page = (out / "report/index.html").read_text()
    assert 'alt="curriculum_test"' in page
    # the curriculum against each control, by the numbers of the curves above
    table = md[md.index("| curriculum vs |"):].split("\n\n")[0].splitlines()
    assert table[0].startswith("| curriculum vs | curriculum - control (nats, 95% CI) |")
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"uniform", "freq_shuffled", "random"}
    assert rows["uniform"].split(" | ")[1].startswith("-0.0500 ")
    assert rows["freq_shuffled"].split(" | ")[1].startswith("-0.0500 ")
    assert rows["random"].split(" | ")[1].startswith("-0.1000 ")
    assert "<th>curriculum vs</th>" in page and "<td>freq_shuffled</td>" in page
    assert "Verdict: the curriculum beats random beyond the 95% interval" in md


# ---- a suite of two runs written by Trainer: one fit run, one held-out run ----------------------

LOCAL = ["--executor", "local", "--device", "cpu"]
# placeholders that stood where a number or a reason belongs
PLACEHOLDERS = ("rest on all 1 held-out", "Fitted to ? end-of-run", "from no refits",
                "learning time: -.", "= -;", "= -.", ": -.", "= ?", "= None", "= nan")
# a value that is a placeholder: "?", "-", None or nan after ": ", "= " or "(", or a lone "?"
PLACEHOLDER_VALUE = r"(?:[:=] |\()(?:\?|-|None|nan)(?=[.;,)\s]|$)|\s\?(?=[.;,\s]|$)"


@pytest.fixture(scope="module")
def two_run_report(trainer_runs, tmp_path_factory):
    """A user's smallest suite: ``gpt2-tied`` fitted, ``llama-tied`` held out, every stage run
    on it as the README says."""
    import yaml

    from tests.trainer_checkpoints import write_manifest

    path = write_manifest(trainer_runs, tmp_path_factory.mktemp("two_runs"),
                          ["gpt2-tied", "llama-tied"])
    manifest = yaml.safe_load(path.read_text())
    for run in manifest["runs"]:
        run["role"] = "heldout" if run["name"] == "llama-tied" else "fit"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert cli(["evalset", "--config", str(path)]) == 0
    assert cli(["losses", "--config", str(path), *LOCAL]) == 0
    assert cli(["fit", "--config", str(path), *LOCAL]) == 0
    assert cli(["report", "--config", str(path), *FAST]) == 0
    return path.parent / "artifacts"


def _prose(md: str) -> list[str]:
    """The report's sentences: paragraphs and captions, no headings, tables or figure links."""
    return [line for line in md.splitlines()
            if line and not line.startswith(("#", "|", "![", "```"))]


def test_a_two_run_report_has_no_placeholder(two_run_report):
    md = (two_run_report / "report/report.md").read_text()
    prose = _prose(md)
    for line in prose:
        for placeholder in PLACEHOLDERS:
            assert placeholder not in line, (placeholder, line)
        assert not re.search(PLACEHOLDER_VALUE, line), line
    text = "\n".join(prose)
    # each sentence that had a placeholder says what is true of this suite instead
    assert "The held-out scores rest on one held-out run, llama-tied, the only one of the " \
           "manifest." in text
    scores = json.loads((two_run_report / "reconstruction/scores.json").read_text())
    law = scores["fitted"]["chinchilla"]
    assert "reason" in law  # one fit run: one (M, D) point
    assert f"Not fitted: {law['reason']}." in text
    assert "Fitted to" not in text
    runs = {r["name"]: r for r in scores["runs"]}
    assert ("Parameter model: fitted on gpt2-tied; the fit runs share one model size "
            f"(M = {runs['gpt2-tied']['params']:.3g}) and one data scale "
            f"(D = {runs['gpt2-tied']['tokens']:.3g}), so the learning time's dependence on M "
            "and D is not estimated.") in text
    # the fit settings of both runs, and no run's name standing for all of them
    settings = next(line for line in prose if line.startswith("Kind thresholds and fit settings"))
    assert "as recorded by the fit stage for gpt2-tied and llama-tied: " in settings
    assert "run = " not in settings and "tokens_per_step = 256" in settings


def _legend(fig) -> list[str]:
    """The entries of the figure's shared legend."""
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def _drawn_labels(fig) -> set[str]:
    """The labels of the lines a figure draws: a line with at least one finite point."""
    import numpy as np

    return {line.get_label() for ax in fig.axes for line in ax.get_lines()
            if not line.get_label().startswith("_")
            and np.isfinite(np.asarray(line.get_ydata(), float)).any()}


def _predicted(preds, test: str, target: str) -> set[str]:
    """The models of one test whose predictions at ``target`` have a finite value somewhere."""
    rows = preds.filter((pl.col("test") == test) & (pl.col("target") == target)
                        & pl.col("predicted").is_finite())
    return set(rows["model"].to_list())


def test_the_legends_of_a_two_run_report_list_what_is_drawn(two_run_report):
    from spectrum.report import figures

    preds = pl.read_parquet(two_run_report / "reconstruction/predictions.parquet")
    heldout = _predicted(preds, "heldout_runs", "L")
    assert "param_model" not in heldout  # one fit run: the held-out run cannot be predicted
    fig = figures.loss_curves(preds, {"gpt2-tied": "fit", "llama-tied": "heldout"})
    legend = _legend(fig)
    assert len(legend) == len(set(legend))
    assert set(legend) == _drawn_labels(fig) == (
        {"measured", "fitted_sigmoids (in sample)"}
        | {f"{m} (heldout runs)" for m in heldout})
    fig = figures.derivatives(preds, "heldout_runs", "dL/dlnT")
    kinds = dict(preds.select("model", "model_kind").unique().iter_rows())
    assert set(_legend(fig)) == _drawn_labels(fig) == (
        {"measured"} | {f"{m} ({kinds[m]})" for m in _predicted(preds, "heldout_runs", "dL/dlnT")})
    # the captions name what is left out
    md = (two_run_report / "report/report.md").read_text()
    caption = md[md.index("](figures/loss_curves.png)"):].split("\n\n")[1]
    assert "param_model (held-out runs)" in caption.split("Not drawn")[1]


def test_fit_settings_cover_every_run():
    from spectrum.report.tables import fit_settings_text

    settings = {"a": {"run": "a", "dtype": "float32", "tokens_per_step": 256},
                "b": {"run": "b", "dtype": "float32", "tokens_per_step": 512},
                "c": {"run": "c", "dtype": "float32", "tokens_per_step": 256}}
    assert fit_settings_text(settings, ["a", "b", "c", "d"]) == (
        "for a, b and c: dtype = float32; tokens_per_step = 256 (a and c), 512 (b); "
        "not recorded for d.")
    assert fit_settings_text({}, ["a"]) == "not recorded in the fits' provenance."


def test_the_parameter_model_sentence_names_what_the_fit_runs_vary():
    from spectrum.report.sections import param_model_sentence

    pm = {"axes": ["lnM"], "fit_runs": ["a", "b"], "fixed": {"lnD": 2.0e9},
          "population_coefficients": {"tau": [7.0, -0.25]}}
    assert param_model_sentence(pm) == (
        "Parameter model: fitted on a, b; population dependence of the learning time: "
        "d tau / d lnM = -0.25; the fit runs share one data scale (D = 2e+09), so the learning "
        "time's dependence on D is not estimated.")
    pm = {**pm, "axes": ["lnM", "lnD"], "fixed": {},
          "population_coefficients": {"tau": [7.0, -0.25, 0.5]}}
    assert param_model_sentence(pm) == (
        "Parameter model: fitted on a, b; population dependence of the learning time: "
        "d tau / d lnM = -0.25, d tau / d lnD = 0.5.")


def test_the_chinchilla_paragraph_says_what_was_fitted_or_why_not():
    from spectrum.report.sections import _chinchilla_blocks

    law = {"E": 1.0, "A": 2.0, "alpha": 0.3, "B": 4.0, "beta": 0.5, "n_end_losses": 6,
           "intervals": {}, "interval_method": "refits on 0 bootstrap replicates over sequences"}
    texts = [b.text for b in _chinchilla_blocks(law) if b.kind == "p"]
    assert texts == ["Fitted to 6 end-of-run losses of the fit runs; no 95% intervals (refits on "
                     "0 bootstrap replicates over sequences)."]
    texts = [b.text for b in _chinchilla_blocks({"reason": "too few points"})]
    assert texts == ["The Chinchilla baseline's parameters", "Not fitted: too few points."]
