"""The relaxation lower bound (issue 13 item 2: report the gap to a lower bound where the DP is not exact)."""

from __future__ import annotations

import pytest

from edgeplan.planner import search
from edgeplan.planner.bound import lower_bound
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import brute_force

OBJECTIVES = {
    "throughput": Objective(objective="throughput", batch=4),
    "latency": Objective(objective="latency", batch=4, microbatches=2),
    "latency-1": Objective(objective="latency", batch=1),  # one sample: every stage on one board
    "energy": Objective(objective="energy", batch=4),
    "time": Objective(mode="training", objective="time", batch=8, microbatches=2),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bound_is_below_the_optimum_and_not_trivial(name):
    obj = OBJECTIVES[name]
    for seed in range(3):
        costs = random_costs(500 + seed, 6, 3, 2 + seed % 2, dag=True, units_per_device=1 + seed % 2, npu_gaps=True)
        best = brute_force(costs, obj)[0].value(obj)
        lb = lower_bound(costs, obj)
        assert 0 < lb <= best * (1 + 1e-12), (seed, lb, best)
        assert lb > 0.05 * best  # it says something


def test_bound_holds_on_a_large_instance_and_the_plan_reports_the_gap():
    from edgeplan.planner.api import plan_from_costs

    costs = random_costs(7, 120, 24, 5, dag=True, units_per_device=2, ram_mb=(512, 4096))
    obj = Objective(objective="throughput", batch=8)
    res = search.solve(costs, obj)
    lb = lower_bound(costs, obj)
    assert (not res.exact or res.coarse) and 0 < lb <= res.evaluation.value(obj)
    plan = plan_from_costs(costs, obj, min_gain=0.0, with_baselines=False)
    note = next(n for n in plan.notes if n.startswith("lower bound"))
    assert "gap" in note and "no stages, memory or links" in note


def test_path_bound_tightens_latency():
    """A micro-batch's path (its stages one after another, at most m replicas each) bounds latency more
    tightly than M x the period bound: with one sample, every layer on the board fastest at it."""
    from edgeplan.planner.bound import path_bound, period_bound

    obj = OBJECTIVES["latency-1"]
    costs = random_costs(501, 6, 3, 3, dag=True, units_per_device=2)
    s, b = path_bound(costs, obj)
    lb, best = lower_bound(costs, obj), brute_force(costs, obj)[0].value(obj)
    assert period_bound(costs, obj) < s == pytest.approx(lb) and b <= s
    assert lb <= best * (1 + 1e-12) and lb > 0.5 * best
