"""The planted worlds with realistic run-level noise (tests.planted_noise) through `spectrum fit`
and `spectrum report`: the three-way verdict of ``scores.json`` where the answer is known.

- ``step``: the held-out runs follow the laws the fit runs teach, with the noise of real runs:
  ``predicts`` (L, dL/dlnT, dL/dlnM; dL/dlnD has 4 targets, too few for an R^2);
- ``other_law``: the held-out runs follow the opposite laws in ln M and ln D:
  ``does_not_predict``;
- ``step`` with a run-level noise 15 times larger: the seed noise swamps the signal of the
  derivatives: ``not_measurable``, with what the suite would need.

Each world: fit runs on seed 0, held-out points on seeds 1-4 (paired across the runs of a
derivative), 8 sequences of 16 tokens, 16 checkpoints a run.
"""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main as cli
from tests.planted_noise import NoiseSpec, planted_world, write_world

FAST = ["--bootstrap", "30", "--spectrum-bins", "12"]


def _run(root, world: str, noise: NoiseSpec = NoiseSpec()) -> tuple[dict, str]:
    manifest = write_world(planted_world(world, noise=noise, n_seq=8, context=16), root)
    assert cli(["fit", "--config", str(manifest), "--device", "cpu"]) == 0
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    out = root / "artifacts"
    return (json.loads((out / "reconstruction/scores.json").read_text()),
            (out / "report/report.md").read_text())


def _block(scores: dict, target: str) -> dict:
    return scores["tests"]["heldout_runs"]["targets"][target]


def test_the_signal_is_predicted_and_the_report_opens_with_the_verdicts(tmp_path):
    scores, report = _run(tmp_path, "step")
    assert scores["schema_version"] == 2
    for target in ("L", "dL/dlnT", "dL/dlnM"):
        b = _block(scores, target)
        assert b["verdict"] == "predicts", (target, b["score_corrected"], b["noise"])
        assert b["noise"]["replicas"] == 4 and b["noise"]["snr"] >= 9, target
        assert b["score_corrected"]["ci"][0] >= 0.5
        # the prediction is at least as good as the tokenless null, in excess of the noise
        assert b["verdict_basis"]["skill_vs_aggregate_curve"]["value"] > 0
    assert _block(scores, "L")["verdict_basis"]["seeds_shared_with_fit_runs"] == []
    d = _block(scores, "dL/dlnD")
    assert d["verdict"] == "not_measurable" and d["score_corrected"]["value"] is None
    assert "fewer than 5" in d["noise"]["reason"]
    verdicts = scores["tests"]["heldout_runs"]["verdicts"]
    assert verdicts["dL/dlnT"][0].startswith("dL/dlnT: the spectrum predicts the held-out runs")
    assert "The suite would need: more targets" in verdicts["dL/dlnD"][0]
    glance = report.index("At a glance")
    assert glance < report.index("Results in words") < report.index("What was measured")
    table = report[glance:].split("\n\n")[1].splitlines()
    assert table[0].startswith("| target | verdict | noise-corrected score")
    assert any(row.startswith("| dL/dlnT | predicts |") for row in table)


def test_held_out_runs_that_follow_another_law_are_not_predicted(tmp_path):
    scores, _ = _run(tmp_path, "other_law")
    for target in ("dL/dlnT", "dL/dlnM"):
        b = _block(scores, target)
        assert b["verdict"] == "does_not_predict", (target, b["score_corrected"])
        # measurable: the noise leaves room for a verdict either way
        assert b["noise"]["oracle_ceiling"]["r2"] > 0.5 and b["noise"]["snr"] >= 9


@pytest.mark.slow
def test_noise_that_swamps_the_signal_is_not_measurable(tmp_path):
    scores, _ = _run(tmp_path, "step", NoiseSpec(run_sd=0.6))
    for target in ("dL/dlnT", "dL/dlnM"):
        b = _block(scores, target)
        assert b["verdict"] == "not_measurable", (target, b["score_corrected"], b["noise"])
        assert b["noise"]["snr"] < 9
        assert "replicas per point give snr 9" in b["verdict_basis"]["needed"]
        assert "The suite would need" in scores["tests"]["heldout_runs"]["verdicts"][target][0]
