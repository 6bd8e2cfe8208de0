"""The README's default-suite figures are generated from scores.json, never retyped."""

from __future__ import annotations

import json

from spectrum.tools import readme_figures as rf


def _scores() -> dict:
    block = {"verdict": "predicts", "score_corrected": {"value": 0.91, "ci": [0.7, 0.99]},
             "noise": {"snr": 12.5, "snr_ci": [9.1, 17.0], "oracle_ceiling": {"r2": 0.9, "ci": [0.85, 0.93]}},
             "predictions": {"param_model": {"r2": 0.88, "r2_ci": [0.8, 0.9]}},
             "baselines": {"aggregate_curve": {"r2": 0.95, "r2_ci": [0.9, 0.97]},
                           "zero": {"r2": 0.99}, "chinchilla": {"r2": None}}}
    return {"tests": {"heldout_runs": {"targets": {"L": block},
                                       "verdicts": {"L": ["L: the spectrum predicts it."]}}},
            "stepwise": {"verdict": "Mostly smooth.", "calibration": {"false_step_rate": 0.04}}}


def test_rewrites_between_markers_only(tmp_path) -> None:
    out = tmp_path / "artifacts" / "reconstruction"
    out.mkdir(parents=True)
    (out / "scores.json").write_text(json.dumps(_scores()))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{rf.BEGIN}\nold figures 0.5\n{rf.END}\nafter\n")
    assert rf.main([str(tmp_path / "artifacts"), str(readme), "--check"]) == 1
    assert rf.main([str(tmp_path / "artifacts"), str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n") and text.endswith("after\n")
    assert "old figures" not in text
    assert "| L | predicts | 0.91 [0.7, 0.99] | 0.88 [0.8, 0.9] | 0.9 [0.85, 0.93] | 12.5 [9.1, 17] | " \
           "aggregate_curve 0.95 [0.9, 0.97] (raw R^2) |" in text  # zero is no baseline to beat
    assert "false-step rate on null data with the noise of real runs: 0.04" in text
    assert rf.main([str(tmp_path / "artifacts"), str(readme), "--check"]) == 0


def test_best_baseline_by_the_verdicts_own_score() -> None:
    block = {"baselines": {"aggregate_curve": {"r2": 0.99}},
             "verdict_basis": {"baselines": {"aggregate_curve": {"value": 0.4, "ci": [0.1, 0.6]},
                                             "chinchilla": {"value": 0.7, "ci": [0.5, 0.8]}}}}
    assert rf._best_baseline(block) == "chinchilla 0.7 [0.5, 0.8]"


def test_missing_scores_is_one_line(tmp_path, capsys) -> None:
    assert rf.main([str(tmp_path), str(tmp_path / "README.md")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _curriculum_results(tmp_path) -> dict:
    """A controlled test's results.json written by the trial's own code from planted curves."""
    import numpy as np

    from spectrum.curriculum.runner import write_results
    from spectrum.curriculum.trial import Curve

    rng = np.random.default_rng(0)
    curves = []
    for seed in range(1000, 1004):
        base = 5.0 + rng.normal(0, 0.02)
        for b in (0.5, 0.7, 1.0, 1.4):
            curves.append(Curve("uniform", seed, [1.0, 100.0 * b], [7.0, base - 0.6 * np.log(b)], b))
        for arm, gain in (("curriculum", -0.05), ("exported", 0.0)):
            curves.append(Curve(arm, seed, [1.0, 100.0], [7.0, base + gain + rng.normal(0, 0.01)]))
    setup = {"size": "m1", "steps": 128, "tokens_per_step": 1024, "pool_sequences": 512,
             "phases": 4, "phase_steps": [0, 27, 45, 76, 128], "floor": 0.25,
             "learnability_runs": ["m1-d1"], "budgets": [0.5, 0.7, 1.0, 1.4],
             "weights_hash": "abcd1234abcd1234", "code_commit": "0123456789abcdef0123",
             "exported": {"weights_hash": "feedbeef00000000", "pool_measured": 2,
                          "pool_predicted": 510, "runs": ["m1-d1", "m3-d1"]}}
    out = tmp_path / "artifacts" / "curriculum" / "test"
    return write_results(curves, setup, out, quiet=True)


def test_curriculum_figures_come_from_results_json(tmp_path) -> None:
    from spectrum.curriculum.trial import comparison_table, markdown_table

    (tmp_path / "artifacts" / "reconstruction").mkdir(parents=True)
    (tmp_path / "artifacts" / "reconstruction" / "scores.json").write_text(json.dumps(_scores()))
    readme = tmp_path / "README.md"
    body = f"{rf.BEGIN}\n{rf.END}\ntext\n{rf.CURRICULUM_BEGIN}\nold table -0.0196\n{rf.CURRICULUM_END}\n"
    readme.write_text(body)
    rf.main([str(tmp_path / "artifacts"), str(readme)])  # no curriculum results: block untouched
    assert "old table -0.0196" in readme.read_text()
    summary = _curriculum_results(tmp_path)
    (tmp_path / "artifacts" / "curriculum" / "coverage.json").write_text(json.dumps(
        {"documents": 9, "sequences": 40, "sequences_measured": 4, "corpus": "the train split",
         "shed_model": {"cv_r2": [0.5, 0.6]}, "ln_vocab": 6.93, "code_commit": "0123456789ab",
         "shrinkage": {"runs": 9, "reliability": [0.9, 0.8], "factor": [0.7, 0.4]},
         "spread": [{"phase": 0, "source": "measured", "shed_max": 1.3},
                    {"phase": 1, "source": "predicted", "shed_max": 2.5}]}))
    assert rf.main([str(tmp_path / "artifacts"), str(readme), "--check"]) == 1
    assert rf.main([str(tmp_path / "artifacts"), str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{rf.CURRICULUM_END}\n")
    assert markdown_table(summary) in text and comparison_table(summary) in text
    assert "`0123456789ab`" in text and "`abcd1234abcd1234`" in text and "`feedbeef00000000`" in text
    assert all(f"- {v}" in text for v in summary["verdicts"])
    assert "2.5 nats (phase 1, predicted), against ln V = 6.93" in text
    assert rf.main([str(tmp_path / "artifacts"), str(readme), "--check"]) == 0
