"""rl's precomputed nearest contexts (issue 12: a decision <= 1 ms on a Pi): the row looked up in the grid built at
load is the row the nearest-context search finds, for any pair-free condition, and an estimate with expired factors
(not in the grid) still gets a trained row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeplan.adapt import rl
from edgeplan.adapt.estimate import Estimate
from edgeplan.planner import family as fm

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"


@pytest.fixture(scope="module")
def table(resnet18_family):
    world = resnet18_family.world()
    return rl.train(world, rl.family_digest(resnet18_family.family), episodes=20, episode_s=60), world.pricer


def test_the_grid_gives_the_searched_nearest_context(table):
    table, _ = table
    assert table._grid  # three boards: 6 x 5^3 x 2^3 contexts, within GRID_LIMIT
    rng = np.random.default_rng(5)
    devs = ["cpu-board", "gpu-board", "npu-board"]
    for _ in range(300):
        cond = fm.Condition(bandwidth=(((fm.ALL, fm.ALL), float(2 ** rng.uniform(-5, 2))),),
                            slowdown=tuple((d, float(2 ** rng.uniform(-1.5, 3.5))) for d in devs if rng.random() < 0.6),
                            absent=tuple(d for d in devs[:2] if rng.random() < 0.2))
        vals, counts, ctx, near, best = table.row(Estimate(cond, 1))
        assert ctx == rl.context(Estimate(cond, 1)) and best == rl._greedy(vals, counts)
        searched = ctx if ctx in table._rows else table._nearest(rl._vector(rl.state_condition(cond)))
        assert near == searched, (str(cond), near, searched)
        assert (vals, counts) == table._rows[near]


def test_an_estimate_with_expired_factors_is_searched(table):
    table, _ = table
    est = Estimate(fm.parse_condition("bandwidth=0.5"), 3, ("slowdown:gpu-board",))
    vals, counts, ctx, near, _ = table.row(est)
    assert ctx.endswith(" unmeasured:slowdown:gpu-board") and near in table._rows


def test_a_probe_is_decided_by_pricing(table):
    """The change that expires a factor unmeasured is priced (the table cannot know whether going back pays)."""
    from edgeplan.adapt.policy import heuristic

    table, pricer = table
    for text in ("nominal", "bandwidth=0.25", "slowdown:cpu-board=3"):
        est = Estimate(fm.parse_condition(text), 4, ("slowdown:gpu-board",), ("slowdown:gpu-board",))
        for current in ("plan-5.json", "plan-6.json"):
            d, h = table(pricer, est, current, 3), heuristic(pricer, est, current, 3)
            assert (d.plan, d.switch) == (h.plan, h.switch) and d.reason.startswith("probe (slowdown:gpu-board")


def test_the_fast_decision_is_the_scanned_one(table):
    """A decision takes the row's precomputed greedy arm and the current plan's margin (no scan of the row, and
    the sticky bins inlined): for every grid row and current plan, the plan ``_choose`` picks by scanning the
    row, with every plan runnable or with a board absent."""
    table, pricer = table
    assert table._grid
    rng = np.random.default_rng(7)
    keys = list(table._grid)
    for k in rng.choice(len(keys), 300, replace=False):
        vals, counts, text, near, _ = table._grid[keys[int(k)]]
        est = Estimate(fm.parse_condition(text), 1)
        gone = set(est.condition.absent)
        ok = [not (gone & pricer.devices_of(p)) for p in table.plans]
        for ci, current in enumerate(table.plans):
            table.reset()  # fresh bins: the binned text reads back as its own bin
            d = table(pricer, est, current, 0)
            a = rl._choose(vals, counts, ci, ok, table.gain)
            assert (d.plan, d.switch) == ((table.plans[a], True) if a >= 0 and a != ci else (current, False)), \
                (text, current, d)
