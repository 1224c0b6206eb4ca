"""The DP against brute force and the ILP on seeded random instances (chains and DAG-shaped cuts)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeplan.planner import dp, ilp, search
from edgeplan.planner.api import plan_from_costs
from edgeplan.planner.costmodel import evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import brute_force, rel_close

OBJECTIVES = {
    "throughput": Objective(objective="throughput", batch=4),
    "latency": Objective(objective="latency", batch=4),
    "latency-mb": Objective(objective="latency", batch=4, microbatches=2),
    "energy": Objective(objective="energy", batch=4),
    "train-1f1b": Objective(mode="training", objective="time", batch=8, microbatches=4, schedule="1f1b"),
    "train-gpipe": Objective(mode="training", objective="time", batch=4, microbatches=2, schedule="gpipe"),
}

# (devices, board kinds, layers): small enough for exhaustive search
BF_SIZES = [(2, 2, 30), (2, 1, 12), (3, 2, 9), (3, 3, 7), (4, 3, 6)]


def _instance(seed: int, d: int, kinds: int, n: int, **kw):
    return random_costs(seed, n, d, kinds, dag=seed % 2 == 0, units_per_device=1 + seed % 2, npu_gaps=True,
                        ram_mb=(4, 48), **kw)


def _value(res, obj):
    return None if res is None or res.evaluation is None else res.evaluation.value(obj)


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and rel_close(a, b))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("size", BF_SIZES, ids=lambda s: f"d{s[0]}k{s[1]}n{s[2]}")
def test_dp_equals_brute_force(name, size):
    obj = OBJECTIVES[name]
    d, kinds, n = size
    exact = 0
    for seed in range(2):
        costs = _instance(seed * 7 + d, d, kinds, n, uniform_links=seed == 0)
        res = search.solve(costs, obj)
        bf = brute_force(costs, obj)
        if not res.exact:
            continue
        exact += 1
        want = None if bf is None else bf[0].value(obj)
        assert _same(_value(res, obj), want), (seed, res.layout, bf and bf[1])
    assert exact >= 1, "the DP should be exact on instances this small"


ILP_CASES = [(name, d, n) for name in ("throughput", "latency", "latency-mb", "train-gpipe")
             for d, n in ((5, 6), (6, 5), (4, 10))]
ILP_CASES += [("energy", 4, 6), ("energy", 5, 5), ("train-1f1b", 4, 6), ("train-1f1b", 6, 5)]


@pytest.mark.parametrize("name,d,n", ILP_CASES)
def test_dp_equals_ilp(name, d, n):
    obj = OBJECTIVES[name]
    costs = _instance(d * 11 + n, d, max(2, d - 2), n)
    assert ilp.applicable(costs, obj, 200000)
    res = search.solve(costs, obj)
    got = ilp.solve(costs, obj, cuts=np.arange(costs.n_layers + 1))  # every boundary: the full graph
    assert res.exact and got.exact
    assert _same(_value(res, obj), _value(got, obj)), (res.layout, got.layout)


def test_dp_value_is_the_evaluator_value():
    """The plan the DP rebuilds prices (by the one evaluator) at what the DP optimised."""
    costs = _instance(3, 4, 2, 12)
    obj = Objective(objective="latency", batch=4)
    solver = dp.DPSolver(costs, obj)
    value, layout = solver.run_pass("sum")
    assert rel_close(value, evaluate(costs, layout, obj).latency_s)
    value, layout = solver.run_pass("max")
    assert rel_close(value, evaluate(costs, layout, obj).period_s)


def test_reductions_say_heuristic_and_print_ilp_gap():
    costs = _instance(5, 4, 2, 10)
    obj = Objective(objective="throughput", batch=4)
    plan = plan_from_costs(costs, obj, work_budget=10.0, with_baselines=False)
    notes = " ".join(plan.notes)
    assert "DP heuristic" in notes and "ILP optimum" in notes and "gap" in notes
    exact = plan_from_costs(costs, obj, with_baselines=False)
    assert not exact.notes
    assert exact.predicted.throughput >= plan.predicted.throughput * (1 - 1e-9)


def test_unused_devices_when_links_are_slow():
    """With a very slow network, one fast board alone beats any pipeline."""
    costs = _instance(1, 3, 3, 8)
    costs.bandwidth[costs.bandwidth < float("inf")] = 1e3
    obj = Objective(objective="latency", batch=1)
    res = search.solve(costs, obj)
    assert len(res.layout) == 1 and len(res.layout[0].replicas) == 1


def test_type_grouping_keeps_state_small():
    costs = random_costs(0, 20, 16, 2)
    solver = dp.DPSolver(costs, Objective(objective="throughput", batch=8))
    assert len(solver.types.members) <= 3  # head + two board kinds
    assert solver.R <= 2 * 16 * 16


def test_non_uniform_links_are_exact_against_brute_force():
    costs = random_costs(4, 6, 3, 3, uniform_links=False)
    obj = Objective(objective="throughput", batch=2)
    assert not dp.DPSolver(costs, obj).types.uniform
    bf = brute_force(costs, obj)
    assert _same(_value(search.solve(costs, obj), obj), bf[0].value(obj))


def test_ilp_time_out_is_reported_as_a_time_out_not_as_memory():
    """Issue 13 item 7: HiGHS stopping at its time limit is not "no plan fits in memory"."""
    from edgeplan.errors import PlanError

    costs = random_costs(5, 14, 7, 3)
    obj = Objective(objective="latency", batch=8, microbatches=4)
    with pytest.raises(ilp.ILPTimeLimit, match="time limit of 0.001 s reached before any plan was found"):
        ilp.solve(costs, obj, time_limit_s=1e-3)
    with pytest.raises(PlanError) as e:
        plan_from_costs(costs, obj, solver="ilp", ilp_time_limit=1e-3)
    assert "time limit" in str(e.value) and "memory" not in str(e.value)
    done = ilp.solve(costs, obj, cuts=np.arange(costs.n_layers + 1))  # the default limit is ample here
    assert done.exact and done.layout is not None


@pytest.mark.parametrize("bad", [0.0, -5.0])
def test_ilp_time_limit_must_be_positive(bad):
    from edgeplan.errors import PlanError

    with pytest.raises(PlanError, match="--ilp-time-limit .*positive number of seconds"):
        plan_from_costs(random_costs(0, 4, 2, 2), Objective(), solver="ilp", ilp_time_limit=bad)


def test_ilp_prices_per_link_energy():
    """Links whose energy per byte differs: the ILP prices each send by the pair of groups it joins (pair
    rows) and agrees with the brute force and the DP."""
    costs = random_costs(3, 5, 4, 2)
    obj = Objective(objective="energy", batch=4)
    costs.energy_per_byte_j[1, 2] = costs.energy_per_byte_j[2, 1] = 4 * costs.energy_per_byte_j[0, 1]
    assert ilp.applicable(costs, obj, 200000)
    bf = brute_force(costs, obj)
    got = ilp.solve(costs, obj)
    assert got.exact and _same(_value(got, obj), bf[0].value(obj))
    assert _same(_value(search.solve(costs, obj), obj), bf[0].value(obj))
