"""The chosen plan is never predicted worse than a feasible baseline (issue 13, item 1).

The baselines are priced by the one evaluator; the final choice considers them,
so however much the DP had to reduce its search on a large cluster, the plan a
user gets is at least as good as every feasible baseline in the same report.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeplan.planner import dp, search
from edgeplan.planner.api import plan_from_costs
from edgeplan.planner.baselines import baselines
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs

OBJECTIVES = {
    "throughput": Objective(objective="throughput", batch=8),
    "latency": Objective(objective="latency", batch=8, microbatches=2),
    "energy": Objective(objective="energy", batch=8),
    "time": Objective(mode="training", objective="time", batch=16, microbatches=4),
}


def _not_worse(plan, base, objective: str) -> bool:
    """The plan's figure is at least as good as the baseline's (JSON rounds to 6 significant digits)."""
    mine, theirs = plan.predicted, base.predicted
    tol = 1 + 1e-5
    if objective == "throughput":
        return mine.throughput * tol >= theirs.throughput
    key = {"latency": "latency_s", "energy": "energy_j", "time": "iter_s"}[objective]
    return getattr(mine, key) <= getattr(theirs, key) * tol


def _clusters(count: int):
    """Seeded random clusters of 2-64 boards of 1-8 types, uniform and non-uniform links."""
    rng = np.random.default_rng(13)
    for case in range(count):
        d = int(rng.integers(2, 65)) if case else 64
        t = int(rng.integers(1, min(8, d) + 1)) if case else 8
        n = int(rng.integers(6, 24))
        yield case, d, t, random_costs(1300 + case, n, d, t, dag=True, units_per_device=1 + case % 2,
                                       ram_mb=(16, 1024), uniform_links=case % 3 != 0)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_plan_is_never_worse_than_a_feasible_baseline(objective):
    obj = OBJECTIVES[objective]
    guarded = 0
    for case, d, t, costs in _clusters(8):
        # a small work budget forces the DP's reductions, where it used to lose to baselines
        plan = plan_from_costs(costs, obj, work_budget=dp.WORK_BUDGET / 16, min_gain=0.0)
        feasible = [b for b in plan.baselines if b.feasible]
        for b in feasible:
            assert _not_worse(plan, b, objective), (case, d, t, b.name, plan.predicted, b.predicted, plan.notes)
        guarded += any(n.startswith("baseline ") for n in plan.notes)
    print(f"{objective}: baseline used in {guarded} of 8 clusters")


def test_guard_replaces_a_reduced_search_that_lost_to_a_baseline():
    """An instance where the reduced DP alone is worse than best-single-device: the plan is the baseline."""
    obj = OBJECTIVES["energy"]
    costs = random_costs(1000, 34, 55, 6, dag=True, units_per_device=1, ram_mb=(32, 2048))
    res = search.solve(costs, obj)
    single = next(b for b in baselines(costs, obj) if b[0] == "best-single-device")
    assert not res.exact and search.better(single[2], res.evaluation, obj)  # the DP alone loses
    plan = plan_from_costs(costs, obj, min_gain=0.0)
    assert any(n.startswith("baseline best-single-device used") for n in plan.notes), plan.notes
    assert plan.predicted.energy_j == pytest.approx(single[2].energy_j, rel=1e-5)
