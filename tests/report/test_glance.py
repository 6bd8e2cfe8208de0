"""The report's first table (spectrum.report.tables.glance_rows) from hand-made verdict entries."""

from __future__ import annotations

from spectrum.report.tables import GLANCE_HEADER, glance_rows


def _entry(verdict, score, ci, snr, baselines, error=None):
    return {"verdict": verdict,
            "noise": {"snr": snr, "snr_ci": [snr / 2, snr * 2] if snr else None,
                      "oracle_ceiling": {"r2": 0.9 if snr else None,
                                         "ci": [0.8, 0.95] if snr else None},
                      "replicas": 4},
            "score_corrected": {"value": score, "ci": ci},
            "verdict_basis": {"baselines": baselines,
                              "error_over_noise": {"value": error, "ci": None}}}


def test_one_row_per_target_with_the_best_baseline():
    entry = {"targets": {
        "dL/dlnT": _entry("predicts", 0.91, [0.8, 1.02], 30.0,
                          {"aggregate_curve": {"value": 0.6, "ci": [0.5, 0.7]},
                           "zero": {"value": -1.0, "ci": None},
                           "chinchilla": {"value": None, "ci": None}}),
        "dL/dlnD": _entry("not_measurable", None, None, None, {}, error=1.3),
        "L": {"predictions": {}}}}  # an entry without a verdict has no row
    rows = glance_rows(entry)
    assert len(rows) == 2 and all(len(r) == len(GLANCE_HEADER) for r in rows)
    assert rows[0] == ("dL/dlnT", "predicts", "0.91 [0.8, 1.02]", "0.9 [0.8, 0.95]",
                       "30 [15, 60]", "4", "aggregate_curve: 0.6 [0.5, 0.7]")
    assert rows[1] == ("dL/dlnD", "not_measurable", "- (error 1.3 x noise)", "-", "-", "4", "-")
