"""The shipped manifests describe a suite whose held-out tests can fail (read from the files).

What the analysis needs of the default suite, checked on ``checkpoints.yaml`` and on the GPU
preset: a grid of fit runs wide enough for a Chinchilla fit, the largest size held out at every
data scale (extrapolation), a second held-out size inside the fit range at the same data scales
(so that dL/dlnM is measured among held-out runs only), three or more seeds of a held-out point
(the noise ceiling), each run annealed to its own D, and checkpoints mostly after the warmup.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import pytest

from spectrum.manifest import load_manifest
from spectrum.suite.config import plan_suite

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [ROOT / "checkpoints.yaml", ROOT / "configs" / "suite-gpu.yaml"]


@pytest.fixture(scope="module", params=MANIFESTS, ids=lambda p: p.name)
def plan(request):
    return plan_suite(load_manifest(request.param))  # also checks params and warmup_steps


def _ratios(values) -> list[float]:
    v = sorted(set(values))
    return [b / a for a, b in zip(v, v[1:])]


def test_sizes_and_data_scales_are_geometric(plan):
    runs = [p.run for p in plan.runs]
    m_ratios, d_ratios = _ratios(r.params for r in runs), _ratios(r.tokens for r in runs)
    assert len(m_ratios) >= 3 and len(d_ratios) >= 2  # >= 4 sizes, >= 3 data scales
    assert all(1.5 <= q <= 3.0 for q in m_ratios)
    assert max(d_ratios) == pytest.approx(min(d_ratios), rel=1e-9) and d_ratios[0] >= 1.5


def test_fit_runs_are_a_three_by_three_grid_of_single_seeds(plan):
    fit = [p.run for p in plan.runs if p.run.role == "fit"]
    sizes, scales = {r.params for r in fit}, {r.tokens for r in fit}
    assert len(sizes) >= 3 and len(scales) >= 3
    assert sorted((r.params, r.tokens) for r in fit) == sorted((m, d) for m in sizes for d in scales)


def test_largest_size_is_held_out_at_every_data_scale(plan):
    runs = [p.run for p in plan.runs]
    largest = max(r.params for r in runs)
    assert all(r.role == "heldout" for r in runs if r.params == largest)
    assert {r.tokens for r in runs if r.params == largest} == {r.tokens for r in runs}
    assert largest > max(r.params for r in runs if r.role == "fit")  # an extrapolation in ln M


def test_dlnm_can_be_measured_among_held_out_runs_inside_and_beyond_the_fit_range(plan):
    runs = [p.run for p in plan.runs]
    fit_sizes = sorted({r.params for r in runs if r.role == "fit"})
    largest = max(r.params for r in runs)
    inner = [r for r in runs if r.role == "heldout" and fit_sizes[0] < r.params < fit_sizes[-1]
             and r.params not in fit_sizes]
    assert inner, "no held-out size between two fit sizes"
    for r in inner:  # each interpolation run has a held-out partner of the largest size, same schedule
        partner = [p for p in runs if p.params == largest and p.tokens == r.tokens
                   and p.tokens_per_step == r.tokens_per_step]
        assert partner


def test_three_seeds_of_a_held_out_point_none_of_them_fit_data(plan):
    groups = defaultdict(list)
    for p in plan.runs:
        groups[(p.run.params, p.run.tokens, p.run.tokens_per_step)].append(p)
    replicated = [g for g in groups.values() if len(g) >= 3]
    assert replicated
    for g in replicated:
        assert all(p.run.role == "heldout" for p in g)
        assert len({p.seed for p in g}) == len(g)
        base = min(g, key=lambda p: len(p.run.name)).run.name
        assert sorted(p.run.name for p in g if p.run.name != base) == \
            [f"{base}-s{i}" for i in range(1, len(g))]
    for key, g in groups.items():  # no replica among the fit runs
        assert len(g) == 1 or all(p.run.role == "heldout" for p in g), key


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


def test_run_names_say_size_and_data_scale(plan):
    for p in plan.runs:
        m = re.fullmatch(r"(m\d+)-(d\d+)(-s\d+)?", p.run.name)
        assert m and m.group(1) == p.size.name
