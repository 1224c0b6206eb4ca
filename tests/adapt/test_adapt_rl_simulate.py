"""The simulator the rl policy trains in and the benchmark runs (edgeplan/adapt/simulate.py): the true condition
follows a trace as `edgeplan emulate --trace` applies it, a switch costs its pause, a board that goes down loses
what was in flight on it, and what the boards report moves the Estimator to the true condition."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeplan.adapt import simulate as sm
from edgeplan.adapt.policy import heuristic
from edgeplan.planner import family as fm
from edgeplan.testbed.trace import parse

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "clusters" / "three-node-hetero.yaml"


@pytest.fixture(scope="module")
def world(resnet18_family):
    return resnet18_family.world()


def test_condition_at_follows_the_trace_semantics():
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(CLUSTER)
    nominal = cluster.link("gpu-board", "cpu-board").bandwidth
    tr = parse([{"at_s": 10, "link": "all", "scale": 0.5},
                {"at_s": 20, "link": ["gpu-board", "cpu-board"], "bandwidth_mbps": nominal * 8 / 1e6 / 4},
                {"at_s": 30, "device": "gpu-board", "cpu_scale": 0.25},
                {"at_s": 40, "device": "cpu-board", "down": True},
                {"at_s": 50, "link": "all", "scale": 1},
                {"at_s": 60, "device": "cpu-board", "down": False}], "t", cluster)
    at = {t: sm.condition_at(tr, t, cluster) for t in (5, 15, 25, 35, 45, 55, 65)}
    assert at[5] == fm.NOMINAL
    assert at[15].bandwidth_scale("npu-board", "gpu-board") == 0.5
    # a pair set absolutely keeps its own rate under the all-links scale (tc: its own class)
    assert at[25].bandwidth_scale("gpu-board", "cpu-board") == pytest.approx(0.25)
    assert at[25].bandwidth_scale("npu-board", "cpu-board") == 0.5
    assert at[35].slowdown_of("gpu-board") == 4.0
    assert at[45].absent == ("cpu-board",)
    assert at[55].bandwidth_scale("gpu-board", "cpu-board") == 1.0  # `link: all` resets pairs
    assert at[65] == fm.Condition(slowdown=(("gpu-board", 4.0),))


def test_switch_pause_and_lost_requests(world):
    cluster = world.cluster
    static = world.plans[world.static]
    used = sorted({r.device for s in static.stages for r in s.replicas} - {world.head})
    tr = parse({"duration_s": 20, "events": [{"at_s": 10, "device": used[0], "down": True}]}, "down", cluster)
    before = world.figures(world.static, fm.NOMINAL)
    st = sm.run(world, tr, "static")
    down = [s for s in st.steps if s.t_s >= 10]
    assert all(s.served == 0 for s in down) and sum(s.lost for s in st.steps) == pytest.approx(
        before.throughput * before.latency_s)  # what was in flight on the board (Little's law)
    orc = sm.run(world, tr, "oracle")
    sw = [s for s in orc.steps if s.switched]
    assert len(sw) == 1 and sw[0].t_s == 10 and used[0] not in world.pricer.devices_of(sw[0].plan)
    f = world.figures(sw[0].plan, fm.parse_condition(sw[0].condition))
    assert sw[0].served == pytest.approx(f.throughput * (0.5 - 0.5))  # the 0.5 s pause fills the epoch
    nxt = orc.steps[orc.steps.index(sw[0]) + 1]
    assert nxt.served == pytest.approx(f.throughput * 0.5)
    s = sm.Summary.of(orc)
    assert s.switches == 1 and s.recover_s == (0.5,) and s.lost == round(before.throughput * before.latency_s)
    assert sm.Summary.of(st).recover_s == (math.inf,)


def test_measurements_move_the_estimate_to_the_truth(world):
    tr = parse({"duration_s": 30, "events": [{"at_s": 10, "link": "all", "scale": 0.25}]}, "bw", world.cluster)
    sim = sm.Sim(world, tr, seed=3)
    while sim.t < 20:
        sim.step(world.static)
    est = sim.estimate.condition
    assert sim.estimate.change_id >= 1
    assert est.bandwidth_scale("npu-board", "gpu-board") == pytest.approx(0.25, rel=0.15)
    assert all(abs(math.log(f)) < math.log(1.3) for _, f in est.slowdown)  # no board is slower
    run = sm.run(world, tr, heuristic, seed=3)  # and the heuristic leaves the static plan once, after it
    sw = [s for s in run.steps if s.switched]
    assert len(sw) == 1 and 10 < sw[0].t_s <= 14


def test_random_traces_are_seeded_and_valid(world):
    a = sm.random_trace(world.cluster, np.random.default_rng(5), 300, world.head)
    b = sm.random_trace(world.cluster, np.random.default_rng(5), 300, world.head)
    c = sm.random_trace(world.cluster, np.random.default_rng(6), 300, world.head)
    assert a == b and a != c
    assert all(0 < ev.at_s < 300 for ev in a.events)
    assert not any(ev.kind == "down" and ev.device == world.head for ev in a.events)
    conds = {str(sm.condition_at(a, t, world.cluster)) for t in range(0, 300, 2)}
    assert "nominal" in conds and len(conds) >= 4
