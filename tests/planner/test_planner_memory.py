"""Memory-aware sample shares (issue 13, item 3).

The greedy split used to ignore memory: when the fastest board of a group
could not hold its greedy share, the whole group was dropped. Shares now stop
at each board's capacity and the rest go to the others; DP, ILP and brute
force agree on the better plan.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.planner import dp, ilp, search
from edgeplan.planner.costmodel import Prefix, StageSpec, allocate, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import brute_force, rel_close


def _fast_board_short_of_ram(n_layers: int = 2):
    """Three boards; dev1 is 1.5x faster than the others but its RAM holds only 2 samples of workspace."""
    c = random_costs(3, n_layers, 3, 3)
    fwd = np.ones((3, n_layers)) * 0.01 / n_layers * np.array([1.5, 1.0, 1.5])[:, None]
    act, cut, params = np.full(n_layers, 1e5), np.full(n_layers + 1, 1e5), np.full(n_layers, 1e3)
    ram = np.full(3, 1e9)
    ram[1] = params.sum() + 2.5 * 2e5  # weights + 2.5 samples of (input cut + largest activation)
    return replace(c, fwd_s=fwd, bwd_s=2 * fwd, ram_bytes=ram, act_bytes=act, cut_bytes=cut, param_bytes=params,
                   bandwidth=c.bandwidth * 4, hop_s=c.hop_s * 0.01, hop_byte_s=c.hop_byte_s * 0,
                   fixed_s=c.fixed_s * 0)


def test_allocate_stops_at_a_boards_capacity():
    c = _fast_board_short_of_ram()
    pf = Prefix(c, Objective(batch=8))
    assert pf.capacity(1, 0, 2, stash=0) == 2
    assert allocate(pf, 0, 2, (0, 1, 2), 8, stash=None) == (2, 4, 2)  # speed alone: dev1 overflows
    assert allocate(pf, 0, 2, (0, 1, 2), 8, stash=0) == (3, 2, 3)
    ev = evaluate(c, (StageSpec(0, 2, ((0, 3), (1, 2), (2, 3))),), Objective(batch=8))
    assert ev.feasible and ev.stages[0].replicas[1].memory_bytes <= c.ram_bytes[1]


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_dp_ilp_and_brute_force_agree_on_the_memory_aware_plan(objective):
    c = _fast_board_short_of_ram()
    obj = Objective(objective=objective, batch=8)
    bf = brute_force(c, obj)
    old = brute_force(c, obj, memory_aware_shares=False)  # best plan when shares ignore memory
    res = search.solve(c, obj)
    got = ilp.solve(c, obj)
    assert res.exact
    assert rel_close(res.evaluation.value(obj), bf[0].value(obj))
    assert rel_close(got.evaluation.value(obj), bf[0].value(obj))
    devs = {c.units[u][0]: k for st in res.layout for u, k in st.replicas}
    assert devs.get(1) == 2  # the fast board works, at its capacity
    gain = old[0].value(obj) / bf[0].value(obj) - 1
    assert gain > 0.2, gain  # 33% on this instance for throughput


def test_training_shares_respect_the_1f1b_stash_per_depth():
    """1F1B: the first of two stages stashes 2 micro-batches, the last 1, so caps differ by depth."""
    c = _fast_board_short_of_ram(4)
    c = replace(c, ram_bytes=np.array([1e9, 4e3 + 2.5 * 3e5, 1e9]))  # dev1: caps that depend on the stash
    obj = Objective(mode="training", objective="time", batch=16, microbatches=2)
    assert dp.DPSolver(c, obj).nD == 2  # memory depends on the depth: the DP tracks it
    res = search.solve(c, obj)
    bf = brute_force(c, obj)
    assert res.exact and rel_close(res.evaluation.value(obj), bf[0].value(obj))
    assert res.evaluation.feasible
