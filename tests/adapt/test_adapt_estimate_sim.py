"""The simulator's statuses against the Estimator's bookkeeping (issue 12): a board down that the running plan does
not use still reads as down (the head lists every variant's workers), and a board the plan left because it was
slow is found again once it recovers (its slowdown expires unmeasured and is re-checked by real requests)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgeplan.adapt import simulate as sm
from edgeplan.adapt.estimate import STALE
from edgeplan.adapt.policy import heuristic
from edgeplan.planner import family as fm
from edgeplan.testbed.trace import parse

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"


@pytest.fixture(scope="module")
def world(resnet18_family):
    return resnet18_family.world()


def test_a_down_board_the_plan_does_not_use_stays_down(world):
    trace = parse({"duration_s": 60, "events": [{"at_s": 10, "device": "cpu-board", "down": True},
                                                {"at_s": 10, "device": "gpu-board", "cpu_scale": 0.33}]},
                  "down", world.cluster)
    run = sm.run(world, trace, heuristic, seed=0)
    assert sum(s.switched for s in run.steps) <= 2, [(s.t_s, s.plan) for s in run.steps if s.switched]
    assert all(world.figures(s.plan, fm.parse_condition(s.condition)).throughput > 0 for s in run.steps if s.t_s > 12)


def test_a_slow_board_the_plan_left_is_found_again_when_it_recovers(world):
    trace = parse({"duration_s": 60, "events": [{"at_s": 10, "device": "gpu-board", "cpu_scale": 0.25},
                                                {"at_s": 25, "device": "gpu-board", "cpu_scale": 1}]},
                  "hog", world.cluster)
    run = sm.run(world, trace, heuristic, seed=0)
    left = [s.plan for s in run.steps if 10 <= s.t_s < 25 and s.switched]
    assert left and "gpu-board" not in world.pricer.devices_of(left[-1])  # it left gpu-board altogether
    rec = sm.Summary.of(run).recover_s
    # one probe found it still slow (at STALE epochs), so the next comes 2 x STALE epochs later, at the latest
    assert len(rec) == 2 and not math.isinf(rec[1]) and rec[1] <= 2 * STALE * sm.EPOCH_S + 2, rec
