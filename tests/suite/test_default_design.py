"""The shipped manifests describe a suite whose held-out tests can pass or fail (read from the files).

What the analysis needs of the default suite, checked on ``checkpoints.yaml`` and on the GPU
preset: geometric sizes and data scales spanning about 1 to 30 training tokens per parameter; a
3 x 3 grid of fit runs on one seed (a Chinchilla fit); two held-out sizes, one inside the fit
range (interpolation) and the largest (extrapolation), at common data scales, so that dL/dlnM
and dL/dlnD are measured among held-out runs only; at least 4 seed replicas of every held-out
point on seeds no fit run uses (the noise of every target, from the replicas' spread), the same
seeds at every held-out point (replica s of one point pairs with replica s of another); each run
annealed to its own D, with checkpoints after the warmup on a grid shared by every run.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from spectrum.manifest import load_manifest
from spectrum.suite.config import SuitePlan, plan_suite

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [ROOT / "checkpoints.yaml", ROOT / "configs" / "suite-gpu.yaml"]
MIN_REPLICAS = 4


@pytest.fixture(scope="module", params=MANIFESTS, ids=lambda p: p.name)
def plan(request) -> SuitePlan:
    return plan_suite(load_manifest(request.param))  # also checks params and warmup_steps


def _ratios(values) -> list[float]:
    v = sorted(set(values))
    return [b / a for a, b in zip(v, v[1:])]


def _heldout_points(plan: SuitePlan) -> dict[tuple, set[int]]:
    """Each held-out (M, D, schedule) and the seeds of its replicas."""
    points: dict[tuple, set[int]] = defaultdict(set)
    for p in plan.runs:
        if p.run.role == "heldout":
            points[p.run.point].add(p.seed)
    return points


def test_sizes_and_data_scales_are_geometric(plan):
    runs = [p.run for p in plan.runs]
    m_ratios, d_ratios = _ratios(r.params for r in runs), _ratios(r.tokens for r in runs)
    assert len(m_ratios) >= 4 and len(d_ratios) >= 2  # >= 5 sizes, >= 3 data scales
    assert all(1.5 <= q <= 3.0 for q in m_ratios)
    assert max(d_ratios) == pytest.approx(min(d_ratios), rel=1e-9) and d_ratios[0] >= 1.5


def test_tokens_per_parameter_span_about_one_to_thirty(plan):
    ratios = [p.run.tokens / p.run.params for p in plan.runs]
    assert 0.5 <= min(ratios) <= 1.0  # the largest size at the smallest D: not starved of data
    assert 30 <= max(ratios) <= 40


def test_fit_runs_are_a_three_by_three_grid_of_seed_zero(plan):
    fit = [p for p in plan.runs if p.run.role == "fit"]
    sizes, scales = {p.run.params for p in fit}, {p.run.tokens for p in fit}
    assert len(sizes) == 3 and len(scales) == 3
    assert sorted((p.run.params, p.run.tokens) for p in fit) == sorted(
        (m, d) for m in sizes for d in scales)  # each grid point exactly once: no replicas
    assert {p.seed for p in fit} == {0}


def test_the_largest_size_and_one_inside_the_fit_range_are_held_out(plan):
    runs = [p.run for p in plan.runs]
    fit_sizes = sorted({r.params for r in runs if r.role == "fit"})
    held_sizes = {r.params for r in runs if r.role == "heldout"}
    largest = max(r.params for r in runs)
    assert largest in held_sizes and largest > fit_sizes[-1]  # extrapolation in ln M
    inner = [m for m in held_sizes if fit_sizes[0] < m < fit_sizes[-1] and m not in fit_sizes]
    assert inner, "no held-out size between two fit sizes (interpolation in ln M)"
    assert not held_sizes & set(fit_sizes)  # a held-out size is never fit data
    fit_scales = {r.tokens for r in runs if r.role == "fit"}
    assert {r.tokens for r in runs if r.role == "heldout"} <= fit_scales


def test_every_held_out_point_has_replicas_on_seeds_no_fit_run_uses(plan):
    points = _heldout_points(plan)
    assert points
    fit_seeds = {p.seed for p in plan.runs if p.run.role == "fit"}
    for point, seeds in points.items():
        runs = [p for p in plan.runs if p.run.role == "heldout" and p.run.point == point]
        assert len(seeds) == len(runs) >= MIN_REPLICAS, point  # distinct seeds, one run each
        assert not seeds & fit_seeds, point


def test_replicas_pair_by_seed_across_every_derivative_pair(plan):
    """dL/dlnM pairs held-out points of one D, dL/dlnD points of one size: same seeds at each."""
    points = _heldout_points(plan)
    for a, b in ((a, b) for a in points for b in points if a < b):
        same_d, same_m = a[1] == b[1], a[0] == b[0]
        if same_d or same_m:
            assert points[a] == points[b], (a, b)
            assert a[2:] == b[2:], (a, b)  # same tokens per step and warmup: matched checkpoints


def test_dlnm_and_dlnd_are_measurable_among_held_out_runs_only(plan):
    points = _heldout_points(plan)
    sizes_at = defaultdict(set)  # D -> held-out sizes
    scales_of = defaultdict(set)  # M -> held-out data scales
    for m, d, *_ in points:
        sizes_at[d].add(m)
        scales_of[m].add(d)
    assert len(sizes_at) >= 2 and all(len(s) >= 2 for s in sizes_at.values())  # dL/dlnM at each D
    assert len(scales_of) >= 2 and all(len(s) >= 2 for s in scales_of.values())  # dL/dlnD per M


def test_checkpoints_lie_after_the_warmup_on_a_shared_grid(plan):
    warmup = plan.config.optim.warmup_steps
    assert warmup >= 1
    for p in plan.runs:
        assert p.run.warmup_steps == warmup
        steps = p.checkpoint_steps
        assert steps[0] == 0 and steps[-1] == p.steps == p.run.tokens / p.run.tokens_per_step
        scored = [s for s in steps if s > warmup]
        assert len(scored) >= 0.8 * len(steps) and len(scored) >= 12
        gaps = [math.log(b / a) for a, b in zip(scored, scored[1:])]
        assert max(gaps) <= math.log(2) / 3
    by_steps = {p.steps: p.checkpoint_steps for p in plan.runs}
    for short, long in ((a, b) for a in by_steps for b in by_steps if a < b):
        assert set(by_steps[short]) <= set(by_steps[long]) | {short}


def test_run_names_say_size_data_scale_and_seed(plan):
    sizes = sorted({p.run.params for p in plan.runs})
    scales = sorted({p.run.tokens for p in plan.runs})
    names = [p.run.name for p in plan.runs]
    assert len(set(names)) == len(names)
    for p in plan.runs:
        m = re.fullmatch(r"m(\d+)-d(\d+)(?:-s(\d+))?", p.run.name)
        assert m, p.run.name
        assert f"m{m.group(1)}" == p.size.name and int(m.group(1)) == sizes.index(p.run.params) + 1
        assert int(m.group(2)) == scales.index(p.run.tokens) + 1
        assert int(m.group(3) or 0) == p.seed and (m.group(3) is None) == (p.run.role == "fit")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_run_states_its_seed(path):
    """``seed:`` on every run, as written in the file, equal to the seed the suite trains it with."""
    for run in yaml.safe_load(path.read_text())["runs"]:
        assert "seed" in run and run["seed"] == run["train"]["seed"], run["name"]
