"""Reliability across seeds on the planted world with the noise of real runs (tests.planted_noise):
residuals autocorrelated along each trajectory and a run-level curve shared by a seed's runs make
the fitted standard errors of tau too small; the factor estimated on other pairs of replicas
brings their coverage back near 95%."""

from __future__ import annotations

from pipelines.cli import main as cli
from spectrum.analysis.runs.reliability import reliability_summary
from spectrum.analysis.runs.run_data import load_runs
from spectrum.manifest import load_manifest
from tests.planted_noise import PlantedRun, planted_world, write_world
from tests.synthetic import SCALES, SIZES


def test_standard_errors_under_cover_and_the_correction_restores_them(tmp_path) -> None:
    runs = (PlantedRun("m1-d1", SIZES["m1"], SCALES["d1"], "fit", 0),
            *(PlantedRun(f"m3-d2-s{s}", SIZES["m3"], SCALES["d2"], "heldout", s)
              for s in (1, 2, 3, 4)))
    path = write_world(planted_world("step", runs=runs, n_seq=16, context=32, n_steps=16),
                       tmp_path)
    assert cli(["fit", "--config", str(path), "--device", "cpu"]) == 0
    out = reliability_summary(load_runs(load_manifest(path)))
    assert list(out) == ["m3-d2-s1"]  # m1-d1 has one seed
    point = out["m3-d2-s1"]
    assert len(point["pairs"]) == 6 and point["n_tokens"] > 6 * 400
    assert point["tau_corr"] > 0.8  # tau is the token's (planted), up to the noise
    assert point["se_coverage_uncorrected"] < 0.88  # the errors under-cover
    assert 0.9 <= point["se_coverage"] <= 0.98
    for pair in point["pairs"]:  # with 4 seeds, each from the pair that shares no run with it
        assert len(pair["se_factor_from"]) == 1
        assert not set(pair["se_factor_from"][0]) & set(pair["runs"])
        assert pair["se_factor"] > 1.2
    assert "share no run with it" in point["se_correction"]
