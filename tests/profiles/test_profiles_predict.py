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
