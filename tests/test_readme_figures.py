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
