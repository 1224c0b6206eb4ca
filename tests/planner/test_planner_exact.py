"""Exact on a coarse graph (issue 13 item 2): the DP shrinks the graph, not the search.

When the full search does not fit its budget, the DP runs on blocks of layers
between cheap cuts with every group composition (mixed board types, no
bundles), so its result equals brute force over the same block boundaries; the
refinement then moves cuts on the full graph. ``exact`` means exact on the
coarse graph, whose size the result records.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeplan.planner import dp, search
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import brute_force, rel_close

OBJS = {
    "throughput": Objective(objective="throughput", batch=8),
    "latency": Objective(objective="latency", batch=8),  # one micro-batch (over several: the reduced search)
    "time": Objective(mode="training", objective="time", batch=8, microbatches=2),
    "energy": Objective(objective="energy", batch=8),
    "latency2": Objective(objective="latency", batch=8, microbatches=2),  # the bottleneck search's passes
}


def _kinds(costs, layout) -> list[int]:
    """Board kinds (hardware rows) per stage."""
    return [len({np.asarray(costs.fwd_s[u]).tobytes() for u, _ in st.replicas}) for st in layout]


def _budget_for(costs, obj, blocks: int) -> float:
    """A work budget whose coarse share fits ``blocks`` blocks and no more (the full graph does not fit)."""
    probe = dp.DPSolver(costs, obj)
    assert probe.exact and not probe.coarse
    wb = probe._work(blocks) * dp._passes(obj) * dp.WORK_BUDGET / dp.COARSE_WORK * (1 + 1e-9)
    assert probe._work(blocks + 1) * dp._passes(obj) * dp.WORK_BUDGET / dp.COARSE_WORK > wb
    return wb


@pytest.mark.parametrize("seed,name", [(0, "throughput"), (1, "time"), (3, "latency"), (4, "throughput"),
                                       (0, "energy"), (2, "energy"), (5, "energy"), (1, "latency2"),
                                       (6, "latency2")])
def test_coarse_dp_equals_brute_force_on_the_coarse_graph(seed, name, monkeypatch):
    monkeypatch.setattr(dp, "MIN_BLOCKS", 3)  # a 14-layer graph: 4 blocks keep the brute force small
    obj = OBJS[name]
    costs = random_costs(seed, 14, 4, 3, dag=True, units_per_device=2, ram_mb=(64, 1024))
    wb = _budget_for(costs, obj, 4)
    solver = dp.DPSolver(costs, obj, work_budget=wb)
    assert solver.coarse and solver.exact and solver.mixed and set(solver.bundle) == {1}
    assert len(solver.bnd) == 5
    raw = search.solve(costs, obj, work_budget=wb, refine=False)
    assert raw.exact and raw.coarse and (raw.blocks, raw.layers) == (4, 14)
    assert any("exact on a coarse graph of 4 blocks" in n for n in raw.notes)
    bf = brute_force(costs, obj, allowed=solver.bnd)
    assert rel_close(raw.evaluation.value(obj), bf[0].value(obj)), (raw.layout, bf[1])
    # the refinement on the full graph keeps or improves the coarse optimum, never past the full optimum
    done = search.solve(costs, obj, work_budget=wb)
    full = search.solve(costs, obj)  # the whole search fits the default budget: exact on the full graph
    assert full.exact and not full.coarse
    assert full.evaluation.value(obj) * (1 - 1e-9) <= done.evaluation.value(obj)
    assert done.evaluation.value(obj) <= raw.evaluation.value(obj) * (1 + 1e-12)


def test_a_mixed_type_group_wins_on_the_coarse_graph():
    """Seed 4: the coarse optimum puts two board kinds in one replica group; one kind per group is worse."""
    obj = OBJS["throughput"]
    costs = random_costs(4, 14, 4, 3, dag=True, units_per_device=2, ram_mb=(64, 1024))
    cuts = dp.block_cuts(dp.DPSolver(costs, obj).pf.cut, 4)
    res = search.solve(costs, obj, cuts=cuts, refine=False)
    bf = brute_force(costs, obj, allowed=cuts)
    assert rel_close(res.evaluation.value(obj), bf[0].value(obj))
    assert max(_kinds(costs, res.layout)) >= 2  # a group mixes board kinds
    single = dp.DPSolver(costs, obj, cuts=cuts)
    single.mixed = False
    single._build()
    one_kind = search.optimise(single, obj)
    assert one_kind.evaluation.value(obj) > res.evaluation.value(obj) * 1.01


def test_block_cuts_sit_at_cut_minima_spread_by_work():
    # a residual-block-like profile: cheap cuts (one live tensor) every 5 layers, dearer ones inside
    cut = np.array([4.0 if k % 5 == 0 else 9.0 + (k % 5) for k in range(31)])
    work = np.ones(30)
    work[:10] = 5.0  # the first ten layers are slow: more block boundaries there
    got = dp.block_cuts(cut, 4, work=work)
    assert got[0] == 0 and got[-1] == 30 and len(got) == 5
    assert all(int(x) % 5 == 0 for x in got)
    assert got[1] <= 10  # a quarter of the work ends within the slow layers
    every = dp.block_cuts(cut, 40)
    assert list(every) == list(range(31))  # more blocks than cuts: every boundary


def test_resnet50_on_sixteen_boards_keeps_and_picks_mixed_groups():
    """Issue 13's case: ResNet-50 on 16 boards of four types. The DP keeps every composition (mixed types,
    no bundles) on a coarse graph, and mixed groups that fit stay in its passes; at batch 16 (throughput)
    its optimum has a group of mixed board types (one type per group only ties it there)."""
    pytest.importorskip("torch", reason="traces resnet50")
    from pathlib import Path

    from edgeplan.graph.load import build
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    root = Path(__file__).resolve().parents[2]
    costs = build_cost_table(build("resnet50").graph,
                             load_cluster(root / "examples" / "clusters" / "sixteen-four-types.yaml"))
    obj = Objective(objective="throughput", batch=16)
    solver = dp.DPSolver(costs, obj)
    assert solver.coarse and solver.exact and solver.mixed and set(solver.bundle) == {1}
    res = search.solve(costs, obj, refine=False)
    assert res.exact and res.coarse and res.blocks == len(solver.bnd) - 1 and res.layers == costs.n_layers
    board = {d: name.split("-")[0] for d, name in enumerate(costs.devices)}  # pi4-a -> pi4
    mixed = [len({board[costs.units[u][0]] for u, _ in st.replicas}) > 1 for st in res.layout]
    assert any(mixed), res.layout
    stk = solver._stacked()  # compositions of several board types that fit somewhere and no other beats
    alive = [gi for gi, c in enumerate(solver.comps) if stk["alive"][gi] and stk["ok"][gi].any()]
    assert sum(1 for gi in alive if sum(1 for x in solver.comps[gi].devs if x) >= 3) > 100
    single = dp.DPSolver(costs, obj, cuts=solver.bnd)
    single.mixed = False
    single._build()
    assert search.optimise(single, obj).evaluation.value(obj) >= res.evaluation.value(obj) * (1 - 1e-12)


def _seeded(seed: int):
    return random_costs(seed, 16, 6, 2, dag=True, units_per_device=2, ram_mb=(64, 2048), uniform_links=seed % 2 == 0)


@pytest.mark.parametrize("name", ["throughput", "energy", "latency2", "time"])
def test_dropping_options_a_subset_beats_changes_no_result(name, monkeypatch):
    """``DPSolver._beaten`` (a stage option no cheaper than one on a strict subset of its devices) leaves every
    pass's value and layout as they were: the same search without it gives the same plans."""
    monkeypatch.setattr(dp, "PRUNE_GRID_SHARE", 0)  # small cases: prune even where it does not pay
    obj = OBJS[name]
    seeds = range(2 if name == "time" else 4)  # training passes are the slow ones
    got = []
    for seed in seeds:
        costs = _seeded(seed)
        solver = dp.DPSolver(costs, obj)
        assert solver._subsets()  # the pruning runs on these cases (else the test shows nothing)
        got.append(search.optimise(solver, obj))
    monkeypatch.setattr(dp.DPSolver, "_beaten", lambda self, c: c)
    for seed in seeds:
        plain = search.optimise(dp.DPSolver(_seeded(seed), obj), obj)
        assert plain.layout == got[seed].layout and plain.exact == got[seed].exact
        assert plain.evaluation.value(obj) == got[seed].evaluation.value(obj)


def test_state_peaks_are_the_plans_bottleneck():
    """What the energy search closes intervals with: each start state's optimum's largest key, as the DP
    tracks it along the path, equals the evaluator's period of that plan (uniform links: exact keys)."""
    from edgeplan.planner.costmodel import evaluate

    obj = OBJS["energy"]
    costs = _seeded(0)
    solver = dp.DPSolver(costs, obj)
    solver.peaks = True
    checked = 0
    for theta in (np.inf, solver.run_pass("max")[0] * 1.5):
        assert solver.run_pass("sum", cp=0.0, ce=1.0, theta=theta) is not None
        vals, peaks = solver.state_values(), solver.state_peaks()
        for r in np.nonzero(np.isfinite(vals))[0]:
            ev = evaluate(costs, solver.layout_from(int(r)), obj)
            assert ev.period_s == pytest.approx(peaks[r], rel=1e-12)
            assert ev.period_s <= theta
            checked += 1
    assert checked >= 10, checked
