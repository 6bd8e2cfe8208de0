"""Seed families of the held-out targets (spectrum.analysis.heldout.targets.seed_family) and
the verdict entries built on them (spectrum.analysis.heldout.verdicts), against hand-made runs
whose curves are known."""

from __future__ import annotations

import json

import numpy as np

from spectrum.analysis.heldout.targets import heldout_targets, seed_family, seed_replicas
from spectrum.analysis.heldout.verdicts import (family_entry, heldout_verdicts, sequence_parts,
                                                verdict_sentence)
from spectrum.analysis.runs.run_data import RunData

STEPS = np.array([1, 2, 4, 8, 16])
SHIFT = {1: 0.0, 2: 0.05, 3: -0.02}  # a seed's run-level offset, shared by its runs


def _run(name, M, D, seed, role="heldout", steps=STEPS, slope=-0.1):
    steps = np.asarray(steps)
    x = np.log(steps * 100.0)
    curve = 5.0 - 0.3 * np.log(M) - 0.2 * np.log(D) + slope * x + SHIFT.get(seed, 0.0) * x
    sums = np.stack([curve * 3, curve * 5])  # two sequences: 3 and 5 tokens
    counts = np.stack([np.full(len(steps), 3.0), np.full(len(steps), 5.0)])
    return RunData(name=name, role=role, M=M, D=D, tokens_per_step=100, warmup_steps=1,
                   steps=steps, x=x, seq_ids=np.arange(2), seq_half=np.array([0, 1]),
                   seq_sums=sums, seq_counts=counts, pop_sums=sums, pop_counts=counts, seed=seed)


def test_sequence_parts_average_to_the_mean_curve():
    r = _run("a", 1e2, 1e3, 1)
    parts = sequence_parts(r)
    np.testing.assert_allclose(parts.mean(0), r.mean_loss_all)


def test_a_derivative_pair_takes_the_same_seed_from_both_runs():
    fit = [_run("f", 1e2, 1e3, 0, "fit"), _run("g", 1e4, 1e4, 0, "fit")]
    # seed 1 at both sizes; seed 2 at the larger only; seed 3 at the smaller only, listed first
    held = [_run("a-s3", 1e2, 1e3, 3), _run("a-s1", 1e2, 1e3, 1), _run("b-s1", 1e4, 1e3, 1),
            _run("b-s2", 1e4, 1e3, 2)]
    seeds, replicas = seed_replicas(held)
    assert seeds == [(0, 1), (0, 2), (0, 3)]
    assert replicas == {"a-s3": {(0, 3): "a-s3", (0, 1): "a-s1"},
                        "b-s1": {(0, 1): "b-s1", (0, 2): "b-s2"}}
    targets = [t for t in heldout_targets(held, fit) if t.target == "dL/dlnT"]
    curves = {r.name: r.mean_loss_all[None] for r in held}
    y = seed_family(targets, curves, held)  # (seeds, values, 1)
    assert y.shape == (3, 6, 1)  # two runs' dL/dlnT over 3 scored differences each
    # row = seed: its slope is -0.1 plus the seed's shift, NaN where the point lacks the seed
    expect = np.array([[-0.1] * 6, [np.nan] * 3 + [-0.05] * 3, [-0.12] * 3 + [np.nan] * 3])
    np.testing.assert_allclose(y[..., 0], expect, atol=1e-12)
    dm = [t for t in heldout_targets(held, fit) if t.target == "dL/dlnM"]
    ym = seed_family(dm, curves, held)[..., 0]
    # only seed 1 has both sizes: the pair is never formed across seeds
    assert np.isfinite(ym[0]).all() and np.isnan(ym[1:]).all()
    np.testing.assert_allclose(ym[0], -0.3)


def test_runs_without_a_seed_pair_by_manifest_order():
    held = [_run("a", 1e2, 1e3, None), _run("a2", 1e2, 1e3, None), _run("b", 1e4, 1e3, None)]
    seeds, replicas = seed_replicas(held)
    assert seeds == [(1, 0), (1, 1)]
    assert replicas["a"] == {(1, 0): "a", (1, 1): "a2"} and replicas["b"] == {(1, 0): "b"}


def test_family_entry_keeps_the_contract_and_says_what_is_needed():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 1, 12)
    y = (t[None, :, None] + rng.normal(0, 0.1, (4, 12, 6)))
    entry = family_entry(y, {"param_model": t, "aggregate_curve": t * 0.5, "zero": 0 * t})
    doc = json.loads(json.dumps(entry, allow_nan=False))
    assert doc["verdict"] == "predicts"
    assert set(doc["noise"]) >= {"snr", "snr_ci", "noise_var", "signal_var", "oracle_ceiling",
                                 "replicas"}
    assert doc["noise"]["replicas"] == 4 and doc["score_corrected"]["value"] > 0.9
    basis = doc["verdict_basis"]
    assert basis["baselines"]["aggregate_curve"]["value"] < doc["score_corrected"]["value"]
    assert basis["skill_vs_aggregate_curve"]["value"] > 0.9
    assert basis["unexplained_by_aggregate_curve"]["snr"] > 9
    sentence = verdict_sentence("L", doc)
    assert sentence.startswith("L: the spectrum predicts the held-out runs (predicts;")
    # one seed: not measurable, with what the suite would need
    one = family_entry(y[:1], {"param_model": t})
    assert one["verdict"] == "not_measurable" and one["noise"]["snr"] is None
    assert one["noise"]["reason"]
    assert "seeds at the held-out points" in one["verdict_basis"]["needed"]
    assert "The suite would need: seed replicas" in verdict_sentence("L", one)


def test_held_out_seeds_that_fit_runs_use_are_named():
    fit = [_run("f", 1e2, 1e3, 1, "fit"), _run("g", 1e4, 1e4, 9, "fit")]
    held = [_run(f"a-s{s}", 1e2, 1e3, s) for s in (1, 2, 3)]
    targets = heldout_targets(held, fit)
    out = heldout_verdicts(targets, held, {}, fit=fit)
    assert out["L"]["verdict_basis"]["seeds_shared_with_fit_runs"] == [1]
    assert out["L"]["verdict_basis"]["seeds"] == 3
    assert "Caution: seed(s) 1 of the held-out runs also train fit runs" in \
        verdict_sentence("L", out["L"])
    clean = heldout_verdicts(targets, held, {}, fit=fit[1:])
    assert clean["L"]["verdict_basis"]["seeds_shared_with_fit_runs"] == []


def test_without_held_out_runs_every_target_is_not_measurable_with_a_reason():
    from spectrum.analysis.heldout.heldout_runs import heldout_runs_test

    fit = [_run("f", 1e2, 1e3, 0, "fit")]
    entry = heldout_runs_test(fit, np.ones((1, 2)), 0.5, [], {})
    for block in entry["targets"].values():
        assert block["verdict"] == "not_measurable"
        assert "no heldout run" in block["noise"]["reason"]
        assert block["score_corrected"] == {"value": None, "ci": None,
                                            "reason": block["noise"]["reason"]}
