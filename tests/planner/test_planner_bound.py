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
    assert not res.exact and 0 < lb <= res.evaluation.value(obj)
    plan = plan_from_costs(costs, obj, min_gain=0.0, with_baselines=False)
    note = next(n for n in plan.notes if n.startswith("lower bound"))
    assert "gap" in note and "no stages, memory or links" in note
