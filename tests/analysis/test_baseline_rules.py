"""Baselines follow the prediction's rules, through `spectrum fit` and `spectrum report` on
planted worlds (:mod:`tests.planted_noise`): where the fit runs cannot say how the loss depends on
M (one fit size), no baseline that reads the fit runs along ln M is scored or drawn; where they
can, the schedule-aware baseline is fitted from the manifest's schedules and scored."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines.cli import main as cli
from spectrum.layout import predictions_file, scores_file
from tests.planted_noise import PlantedRun, planted_world, write_world
from tests.synthetic import SCALES, SIZES

FAST = ["--bootstrap", "30", "--spectrum-bins", "12"]
SCHEDULE = {"kind": "cosine", "peak_lr": 3e-3, "warmup_steps": 2, "min_lr_ratio": 0.1}
ALONG_M = ("aggregate_curve", "power_law_T_interp", "chinchilla", "schedule_law")


def _report(root, runs) -> tuple[dict, pl.DataFrame]:
    manifest = write_world(planted_world("step", runs=tuple(runs)), root, schedule=SCHEDULE)
    assert cli(["fit", "--config", str(manifest), "--device", "cpu"]) == 0
    assert cli(["report", "--config", str(manifest), *FAST]) == 0
    out = root / "artifacts"
    return json.loads(scores_file(out).read_text()), pl.read_parquet(predictions_file(out))


def test_one_fit_size_refuses_every_baseline_that_extrapolates_in_M(tmp_path):
    runs = [PlantedRun("m1-d1", SIZES["m1"], SCALES["d1"], "fit", 0),
            PlantedRun("m3-d1-s1", SIZES["m3"], SCALES["d1"], "heldout", 1)]
    scores, preds = _report(tmp_path, runs)
    test = scores["tests"]["heldout_runs"]
    for target in ("L", "dL/dlnT"):
        block = test["targets"][target]
        assert "one model size only" in block["predictions"]["param_model"]["reason"]
        for model in ALONG_M:
            s = block["baselines"][model]
            assert s["r2"] is None and "one model size only" in s["reason"], (target, model, s)
    drawn = preds.filter(pl.col("model").is_in(ALONG_M) & pl.col("predicted").is_finite())
    assert drawn.height == 0
    for model in ALONG_M:
        assert "one model size only" in scores["fitted"][model]["reason"]


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    runs = [PlantedRun(f"{m}-d1", SIZES[m], SCALES["d1"], "fit", 0) for m in ("m1", "m2", "m4")]
    runs += [PlantedRun("m3-d1-s1", SIZES["m3"], SCALES["d1"], "heldout", 1)]
    return _report(tmp_path_factory.mktemp("sized"), runs)


def test_schedule_law_is_fitted_from_the_manifest_and_scored(sized):
    scores, preds = sized
    test = scores["tests"]["heldout_runs"]
    fitted = scores["fitted"]["schedule_law"]
    assert fitted["fit_runs"] == ["m1-d1", "m2-d1", "m4-d1"] and fitted["axes"] == ["lnM"]
    assert "manifest" in fitted["schedules"]["m1-d1"] and 0 < fitted["alpha"] <= 2
    s = test["targets"]["L"]["baselines"]["schedule_law"]
    assert s["r2"] is not None and s["n_targets"] > 5 and s["r2_ci"][0] < s["r2_ci"][1]
    assert preds.filter((pl.col("model") == "schedule_law")
                        & pl.col("predicted").is_finite()).height > 0


def test_comparisons_carry_holm_corrected_p_values(sized):
    scores, _ = sized
    for target, block in scores["tests"]["heldout_runs"]["targets"].items():
        for base, c in block.get("comparisons", {}).items():
            assert set(c) >= {"diff", "ci", "p", "p_holm", "survives_holm", "claim"}, (target, base)
            assert c["p_holm"] >= c["p"]
            assert not c["survives_holm"] or c["claim"] != "indistinguishable"
    chin = scores["fitted"]["chinchilla"]
    assert "reason" in chin or isinstance(chin["identifiable"], bool)
