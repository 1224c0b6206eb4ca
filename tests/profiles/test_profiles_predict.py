"""Latency and throughput under a window of requests in flight, against a simulated closed-loop pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from edgeplan.profiles.predict import default_window, loaded_latency_s, loaded_throughput, paired


def simulate(stage_s: list[float], window: int, requests: int = 400) -> tuple[float, float]:
    """A tandem of single-server stages fed by a closed loop of ``window`` requests (FIFO everywhere):
    (median latency, requests per second) over the second half of the run."""
    free = [0.0] * len(stage_s)
    start, done = [], []
    for i in range(requests):
        t = 0.0 if i < window else done[i - window]  # a request enters when one of the window leaves
        start.append(t)
        for s, p in enumerate(stage_s):
            t = max(t, free[s]) + p
            free[s] = t
        done.append(t)
    half = requests // 2
    lat = np.array(done[half:]) - np.array(start[half:])
    return float(np.median(lat)), (requests - half) / (done[-1] - done[half - 1])


@pytest.mark.parametrize("stage_s, window", [([0.004, 0.010, 0.003], 1), ([0.004, 0.010, 0.003], 2),
                                             ([0.004, 0.010, 0.003], 6), ([0.002, 0.002], 4),
                                             ([0.001, 0.020, 0.001, 0.005], 3)])
def test_loaded_prediction_matches_a_simulated_closed_loop(stage_s, window):
    latency, throughput = sum(stage_s), 1.0 / max(stage_s)  # what a plan predicts (1 sample per request)
    sim_lat, sim_thr = simulate(stage_s, window)
    assert loaded_latency_s(latency, throughput, 1, window) == pytest.approx(sim_lat, rel=1e-6)
    assert loaded_throughput(latency, throughput, 1, window) == pytest.approx(sim_thr, rel=1e-6)


def test_paired_uses_the_reports_window_or_the_heads_default():
    rep = {"predicted": {"latency_s": 0.02, "throughput": 400.0}, "samples_per_request": 4,
           "latency_s": {"p50": 0.05}, "throughput": 300.0, "stages": [{}, {}]}
    got = paired(rep)
    assert got["window"] == (4.0, 4.0) == (default_window(2),) * 2
    assert got["latency_p50_loaded_s"] == (0.05, pytest.approx(4 * 4 / 400.0))
    assert got["throughput_loaded"] == (300.0, 400.0)
    assert got["latency_unloaded_s"] == (None, 0.02)
    one = paired({**rep, "window": 1})
    assert one["latency_unloaded_s"] == (0.05, 0.02) and one["latency_p50_loaded_s"][1] == 0.02


def test_an_off_board_heads_links_are_resources_of_the_closed_loop(tmp_path):
    """The cluster's ``head:`` host (the testbed's head on this machine) sends every input over its own link:
    the plan's latency and throughput, taken under a window by ``loaded_*``, match a closed loop whose
    resources are that input link, the stage and the output link back (head link the bottleneck here, as
    wide_stem's 1.5 MiB per call on the testbed's 268 Mbit/s head leg)."""
    import yaml

    from edgeplan.planner.costmodel import StageSpec, evaluate
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster
    from tests.planner.test_planner_head_link import wide_graph

    doc = {"name": "wide", "devices": [{"name": "a", "profile": "host", "address": "127.0.0.1"}],
           "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}},
           "head": {"name": "gw", "address": "127.0.0.1", "bandwidth_mbps": 268, "latency_ms": 0.2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    costs = build_cost_table(wide_graph(), load_cluster(tmp_path / "c.yaml"))
    ev = evaluate(costs, (StageSpec(0, 4, ((0, 2),)),), Objective(batch=2))
    resources = [ev.input_s, ev.stages[0].compute_s, ev.stages[0].send_s]
    assert ev.input_s == max(resources) == pytest.approx(2 * 3 * 256 * 256 * 4 / 33.5e6 + 0.0002)
    for window in (1, 2, 4):
        sim_lat, sim_thr = simulate(resources, window)
        assert loaded_latency_s(ev.latency_s, ev.throughput / 2, 1, window) == pytest.approx(sim_lat, rel=1e-6)
        assert loaded_throughput(ev.latency_s, ev.throughput / 2, 1, window) == pytest.approx(sim_thr, rel=1e-6)
