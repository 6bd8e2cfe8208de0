"""Curriculum weights: phases, learnability from fits, normalisation, the export round trip, the
missing-id report, the sampler and the per-token loss-weight helper."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from spectrum.curriculum.weights import (DOCUMENTS_FILE, PHASES_FILE, WEIGHTS_FILE, CurriculumWeights,
                                         Learnability, learnability, phase_schedule, phase_weights,
                                         readme_text, token_phase_shed, weight_columns)
from spectrum.curriculum.sampling import PhaseSampler, weighted_token_loss
from spectrum.errors import SpectrumError
from spectrum.store import write_json, write_parquet, write_text


def write_export(learn: Learnability, folder: str | Path, *, floor: float = 0.25,
                 provenance: dict[str, Any] | None = None) -> dict[str, Path]:
    """A curriculum export written straight from a learnability table (every item scored, the
    weights of :func:`phase_weights`), in the files and with the provenance that
    :class:`CurriculumWeights` reads; returns the paths written."""
    folder = Path(folder)
    P = learn.phases.n
    prov = {"phases": learn.phases.to_dict(), "floor": floor, "runs": list(learn.runs),
            **(provenance or {})}
    paths = {}
    for name, df, fname in (("sequences", learn.sequences, WEIGHTS_FILE),
                            ("documents", learn.documents, DOCUMENTS_FILE)):
        w = phase_weights(learn.shed(name), floor)
        out = df.with_columns([pl.Series(c, w[:, p]) for p, c in enumerate(weight_columns(P))])
        paths[name] = write_parquet(out.to_arrow(), folder / fname, prov)
    paths["phases"] = write_json(learn.phases.to_dict(), folder / PHASES_FILE)
    paths["readme"] = write_text(readme_text(learn, floor), folder / "README.md")
    return paths


def sigmoid_loss(x: float, lo: float, hi: float, tau: float, k: float) -> float:
    return lo + (hi - lo) / (1.0 + math.exp(k * (x - tau)))


def synthetic(n_seq: int = 40, ctx: int = 8, seed: int = 0, runs: int = 2):
    """Tokens of n_seq sequences (4 per document) and per-run fits with known parameters."""
    rng = np.random.default_rng(seed)
    n = n_seq * ctx
    tokens = pl.DataFrame({"token_idx": np.arange(n), "seq_id": np.repeat(np.arange(n_seq), ctx),
                           "doc_id": [f"doc{s // 4}" for s in np.repeat(np.arange(n_seq), ctx)]})
    fits = {}
    for r in range(runs):
        lo = rng.uniform(0.5, 2.0, n)
        fits[f"run{r}"] = pl.DataFrame({
            "token_idx": np.arange(n), "lo": lo, "hi": lo + rng.uniform(0, 3, n),
            "tau": rng.uniform(8, 16, n), "k": rng.uniform(0.5, 4, n),
            "kind": rng.choice(["learned", "flat", "nonmonotone"], n, p=[0.7, 0.2, 0.1])})
    return tokens, fits


def test_phase_schedule_covers_the_run_in_equal_log_bins():
    ph = phase_schedule(1000, 256, 4)
    assert ph.step_edges[0] == 0 and ph.step_edges[-1] == 1000
    assert all(a < b for a, b in zip(ph.step_edges, ph.step_edges[1:]))
    # equal widths in ln T between step 1 and step 1000: edges at 1000**(i/4) steps
    assert ph.step_edges[1:-1] == tuple(round(1000 ** (i / 4)) for i in (1, 2, 3))
    assert [ph.phase_of(s) for s in (0, 5, 6, 31, 32, 999, 5000)] == [0, 0, 1, 1, 2, 3, 3]
    short = phase_schedule(5, 10, 5)  # rounding would collide: one step per phase
    assert short.step_edges == (0, 1, 2, 3, 4, 5)
    with pytest.raises(SpectrumError):
        phase_schedule(3, 10, 4)


def test_token_phase_shed_equals_the_loss_drop_across_each_phase():
    ph = phase_schedule(2000, 512, 5)
    lo, hi, tau, k = np.array([1.0, 2.0, 0.5]), np.array([4.0, 2.5, 0.4]), \
        np.array([10.0, 13.0, 9.0]), np.array([2.0, 0.7, 1.0])
    shed, beyond = token_phase_shed(lo, hi, tau, k, ph)
    for i in range(3):
        d = max(hi[i] - lo[i], 0.0)
        edges = [-math.inf, *ph.x_edges[1:]]
        for p in range(ph.n):
            start = hi[i] if p == 0 else sigmoid_loss(edges[p], lo[i], hi[i], tau[i], k[i])
            end = sigmoid_loss(edges[p + 1], lo[i], hi[i], tau[i], k[i])
            expected = start - end if d > 0 else 0.0
            assert shed[i, p] == pytest.approx(expected, abs=1e-12)
        assert shed[i].sum() + beyond[i] == pytest.approx(d, abs=1e-12)
    # non-finite parameters shed nothing
    shed, beyond = token_phase_shed([np.nan], [1.0], [3.0], [1.0], ph)
    assert not shed.any() and beyond[0] == 0


def test_learnability_aggregates_tokens_per_sequence_and_document():
    ph = phase_schedule(1000, 1000, 3)
    tokens, fits = synthetic()
    # the fit tables in another row order than the tokens: rows are matched by token_idx
    shuffled = {r: f.sample(fraction=1.0, shuffle=True, seed=5) for r, f in fits.items()}
    learn = learnability(tokens.sample(fraction=1.0, shuffle=True, seed=6), shuffled, ph)
    seq, doc = learn.sequences, learn.documents
    assert seq.height == 40 and doc.height == 10 and (doc["n_sequences"] == 4).all()
    # by hand for sequence 7: mean over its tokens of the run-averaged shed; usable kinds only
    rows = tokens.filter(pl.col("seq_id") == 7)["token_idx"].to_numpy()
    shed_runs, dtau, dsum = [], 0.0, 0.0
    for f in fits.values():
        f = f[rows]
        ok = f["kind"].is_in(["learned", "flat"]).to_numpy()
        nan = np.where(ok, 1.0, np.nan)
        s, _ = token_phase_shed(f["lo"].to_numpy() * nan, f["hi"].to_numpy(), f["tau"].to_numpy(),
                                f["k"].to_numpy(), ph)
        shed_runs.append(s)
        d = np.where(ok, f["hi"].to_numpy() - f["lo"].to_numpy(), 0.0)
        dtau += (d * f["tau"].to_numpy()).sum()
        dsum += d.sum()
    expected = np.mean(shed_runs, axis=0).mean(axis=0)
    row = seq.filter(pl.col("seq_id") == 7)
    got = row.select([f"shed_p{p}" for p in range(3)]).to_numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert row["tau_mean"][0] == pytest.approx(dtau / dsum)
    shares = row.select([f"share_p{p}" for p in range(3)]).to_numpy()[0]
    np.testing.assert_allclose(shares, expected / expected.sum())
    # a document's shed is the mean over its tokens = mean of its (equal-length) sequences
    d0 = doc.filter(pl.col("doc_id") == "doc1").select([f"shed_p{p}" for p in range(3)]).to_numpy()[0]
    s0 = seq.filter(pl.col("doc_id") == "doc1").select([f"shed_p{p}" for p in range(3)]).to_numpy()
    np.testing.assert_allclose(d0, s0.mean(axis=0))


def _measured_curve(x, lo, hi, tau, k, x_first, initial):
    """The curve a token sheds along, written out from its definition with scipy's expit:
    the measured initial loss before everything, the fitted sigmoid from x_first on, held at its
    x_first value before, never above the initial loss."""
    from scipy.special import expit

    d = max(hi - lo, 0.0)
    x = max(x, x_first)
    return min(initial, lo + d * expit(-k * (x - tau)))


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 6.0), st.floats(-3.0, 300.0), st.floats(4.0, 20.0), st.floats(0.01, 30.0),
       st.floats(5.0, 8.0), st.floats(6.0, 16.0))
def test_shed_starts_from_the_measured_loss_and_never_exceeds_it(lo, hi, tau, k, initial, x_first):
    ph = phase_schedule(4000, 256, 4, first_step=16)
    shed, beyond = token_phase_shed([lo], [hi], [tau], [k], ph, x_first=x_first,
                                    initial=np.array([initial]))
    assert (shed >= 0).all() and beyond[0] >= 0
    assert shed.sum() + beyond[0] <= initial + 1e-12
    edges = [None, *ph.x_edges[1:]]
    level = [initial] + [_measured_curve(x, lo, hi, tau, k, x_first, initial) for x in edges[1:]]
    for p in range(ph.n):
        assert shed[0, p] == pytest.approx(level[p] - level[p + 1], abs=1e-9)
    assert beyond[0] == pytest.approx(level[-1] - min(lo, initial), abs=1e-9)


def test_a_shallow_sigmoid_with_an_extrapolated_asymptote_sheds_only_what_was_measured():
    """The referee's case: a fitted drop of hundreds of nats (hi far above ln V) from a shallow
    slope; measured at step 0 the token's loss was 6.9 nats."""
    ph = phase_schedule(128, 1024, 4, first_step=16)
    x_first = math.log(19 * 1024)
    lo, hi, tau, k, initial = 3.1, 288.0, 8.0, 0.35, 6.9
    old, _ = token_phase_shed([lo], [hi], [tau], [k], ph)
    new, beyond = token_phase_shed([lo], [hi], [tau], [k], ph, x_first=x_first,
                                   initial=np.array([initial]))
    assert old[0, 0] > 100  # from the asymptote
    seen = lo + (hi - lo) / (1 + math.exp(k * (x_first - tau)))
    assert new[0, 0] == pytest.approx(initial - min(initial, lo + (hi - lo) / (
        1 + math.exp(k * (ph.x_edges[1] - tau)))), abs=1e-9)
    assert new.sum() + beyond[0] == pytest.approx(initial - lo, abs=1e-9) and seen > initial


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 5)),
              elements=st.one_of(st.floats(0, 1e6), st.just(np.nan), st.just(0.0))),
       st.floats(0.01, 1.0))
def test_phase_weights_are_finite_positive_and_mean_one_per_phase(shed, floor):
    w = phase_weights(shed, floor)
    assert w.shape == shed.shape
    assert np.isfinite(w).all()
    assert (w >= floor * (1 - 1e-9)).all()
    np.testing.assert_allclose(w.mean(axis=0), 1.0, rtol=1e-9)
    # more shed in a phase never means a smaller weight in that phase
    s = np.nan_to_num(shed)
    for p in range(shed.shape[1]):
        order = np.argsort(s[:, p], kind="stable")
        assert (np.diff(w[order, p]) >= -1e-9).all()


def test_phase_weights_reject_a_floor_outside_the_unit_interval():
    with pytest.raises(SpectrumError):
        phase_weights(np.ones((3, 2)), 0.0)


def test_export_round_trip_sampler_frequencies_match_the_weights(tmp_path):
    ph = phase_schedule(400, 64, 3)
    tokens, fits = synthetic(n_seq=24)
    learn = learnability(tokens, fits, ph)
    write_export(learn, tmp_path, floor=0.2)
    assert (tmp_path / "README.md").read_text().startswith("# Curriculum weights")
    cw = CurriculumWeights.read(tmp_path)
    assert cw.phases == ph
    W = cw.weight_matrix()
    np.testing.assert_allclose(W.mean(axis=0), 1.0)
    # the dataset: the same sequences, in another order
    order = np.random.default_rng(1).permutation(cw.sequences.height)
    ds = cw.sequences[order]
    al = cw.align(ds["doc_id"].to_list(), ds["seq_id"].to_list())
    assert al.matched_items == 24 and al.unweighted_items == 0 and not al.missing_ids
    np.testing.assert_allclose(al.weights, W[order])
    batch = 500
    sampler = PhaseSampler(al.weights, ph.step_starts, batch_size=batch, num_steps=ph.step_edges[-1],
                           seed=3)
    draws = np.array(list(sampler)).reshape(-1, batch)
    assert len(draws) == 400
    for p in range(ph.n):
        steps = slice(ph.step_edges[p], ph.step_edges[p + 1])
        counts = np.bincount(draws[steps].ravel(), minlength=24)
        expected = al.weights[:, p] / al.weights[:, p].sum() * counts.sum()
        assert stats.chisquare(counts, expected).pvalue > 1e-4
    # deterministic for a seed, and resumable at any step
    again = PhaseSampler(al.weights, ph.step_starts, batch_size=batch, num_steps=400, seed=3)
    again.set_start_step(37)
    np.testing.assert_array_equal(np.array(list(again)).reshape(-1, batch), draws[37:])
    other = PhaseSampler(al.weights, ph.step_starts, batch_size=batch, num_steps=400, seed=4)
    assert not torch.equal(other.batch(0), sampler.batch(0))


def test_sampler_never_draws_a_zero_weight_item():
    w = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    s = PhaseSampler(w, [0, 10], batch_size=1000, num_steps=20)
    assert set(s.batch(0).tolist()) == {1, 2} and set(s.batch(15).tolist()) == {0}
    with pytest.raises(ValueError):
        PhaseSampler(np.array([[1.0], [np.inf]]), [0], batch_size=1, num_steps=1)


def test_missing_ids_are_reported_not_dropped(tmp_path):
    ph = phase_schedule(100, 10, 2)
    tokens, fits = synthetic(n_seq=12)
    write_export(learnability(tokens, fits, ph), tmp_path)
    cw = CurriculumWeights.read(tmp_path)
    # a target dataset with documents doc0, doc2 and a new one; doc1 is missing
    al = cw.align(["doc0", "doc0", "doc2", "new"])
    assert al.level == "document"
    assert al.missing_ids == ["doc1"]
    assert al.matched_items == 3 and al.unweighted_items == 1
    np.testing.assert_allclose(al.weights[3], 1.0)
    dw = cw.weight_matrix("documents")
    np.testing.assert_allclose(al.weights[2], dw[2])
    rep = al.report()
    assert rep["missing_ids"] == 1 and rep["missing_examples"] == ["doc1"]
    assert "doc1" in al.summary()
    # by sequence: ids of doc0's sequences only
    seq = cw.sequences.filter(pl.col("doc_id") == "doc0")
    al = cw.align(seq["doc_id"].to_list(), seq["seq_id"].to_list())
    assert len(al.missing_ids) == 12 - seq.height and al.unweighted_items == 0


def test_read_reports_a_missing_export(tmp_path):
    with pytest.raises(SpectrumError, match="export-curriculum"):
        CurriculumWeights.read(tmp_path)


def test_weighted_token_loss_against_a_hand_computed_weighted_loss():
    torch.manual_seed(0)
    B, L, V = 3, 5, 7
    logits, targets = torch.randn(B, L, V), torch.randint(0, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    w = torch.tensor([0.5, 2.0, 1.25])
    per_token = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(B, L)
    num = den_w = 0.0
    n = 0
    for b in range(B):
        for t in range(L):
            if mask[b, t]:
                lp = logits[b, t].log_softmax(-1)[targets[b, t]].item()
                num += w[b].item() * -lp
                den_w += w[b].item()
                n += 1
    got = weighted_token_loss(per_token, w, mask)
    assert got.item() == pytest.approx(num / n, rel=1e-5)
    got = weighted_token_loss(per_token, w, mask, normalize="weights")
    assert got.item() == pytest.approx(num / den_w, rel=1e-5)
    # with unit weights it is the ordinary mean loss over counted tokens
    assert weighted_token_loss(per_token, torch.ones(B), mask).item() == pytest.approx(
        per_token[mask].mean().item(), rel=1e-6)
    # gradients flow to the logits
    logits.requires_grad_(True)
    pt = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(B, L)
    weighted_token_loss(pt, w, mask).backward()
    assert logits.grad is not None and logits.grad[1, 4].abs().sum() == 0


def test_weight_columns_in_the_export_table(tmp_path):
    ph = phase_schedule(100, 10, 3)
    tokens, fits = synthetic(n_seq=8)
    write_export(learnability(tokens, fits, ph), tmp_path, provenance={"source": "synthetic"})
    t = pl.read_parquet(tmp_path / "weights.parquet")
    assert {"doc_id", "seq_id", *weight_columns(3)} <= set(t.columns)
    cw = CurriculumWeights.read(tmp_path)
    assert cw.meta["source"] == "synthetic" and cw.meta["floor"] == 0.25


@pytest.mark.slow
def test_export_command_on_the_micro_suite(micro_suite, tmp_path, capsys):
    import json
    import shutil

    from pipelines.cli import main

    shutil.copytree(micro_suite.parent, tmp_path / "suite")
    config = tmp_path / "suite" / micro_suite.name
    out = tmp_path / "suite" / "artifacts" / "curriculum"
    args = ["export-curriculum", "--config", str(config), "--target-steps", "40", "--phases", "3",
            "--executor", "local", "--device", "cpu", "--sequences", "24"]
    assert main(args) == 0
    cw = CurriculumWeights.read(out)
    # every window of the training split is weighted: the 24 scored ones with their measured shed
    assert cw.sequences.height > 24 and cw.phases.target_steps == 40
    assert (cw.sequences["source"] == "measured").sum() == 24
    coverage = json.loads((out / "coverage.json").read_text())
    assert coverage["documents_weighted"] == coverage["documents"] == cw.documents.height
    assert len(coverage["shed_model"]["cv_r2"]) == 3
    assert cw.phases.tokens_per_step == 256  # the first fit run's
    w = cw.weight_matrix()
    assert np.isfinite(w).all() and (w > 0).all()
    np.testing.assert_allclose(w.mean(0), 1.0)
    assert set(cw.meta["runs"]) == {"m1-d1", "m2-d1"}  # the manifest's fit runs
    report = json.loads((out / "missing_ids.json").read_text())
    assert report["missing_ids"] == 0  # the default target: the same corpus's training split
    # a target dataset that lacks one exported document: counted, named, written
    docs = cw.documents["doc_id"].to_list()
    (tmp_path / "ids.txt").write_text("\n".join(docs[1:]) + "\nnot-exported\n")
    capsys.readouterr()
    assert main(args + ["--target-ids", str(tmp_path / "ids.txt")]) == 0
    printed = capsys.readouterr().err
    report = json.loads((out / "missing_ids.json").read_text())
    assert report["missing_ids"] == 1 and report["missing_examples"] == [docs[0]]
    assert report["unweighted_items"] == 1
    assert docs[0] in printed and "not in the target dataset" in printed
