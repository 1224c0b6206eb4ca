"""The training report's arithmetic (training/metrics.py, launch.report), without running ranks: the gathered
per-rank counters become per-replica figures in board seconds (x the testbed's dilation; per micro-batch or per
iteration), the predictions training.json carries stand beside them, and the table and the report file say both.
A run that measures these counters: tests/profiles/test_profiles_predict_training.py (local ranks) and
tests/profiles/test_profiles_calibrate_train_netns.py (emulated boards)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from edgeplan.training import launch, metrics
from edgeplan.training.config import TrainConfig
from edgeplan.training.routing import RankInfo


@dataclass
class _Job:
    dilation: float = 2.0
    local: bool = False
    power: tuple = ()


RANKS = (RankInfo(0, "pi0", 0, 0, "cpu", "arm-cpu", 0, 8, 1.0),
         RankInfo(1, "pi1", 1, 0, "cpu", "arm-cpu", 0, 6, 0.75),
         RankInfo(2, "pi2", 1, 1, "cpu", "arm-cpu", 6, 8, 0.25))


def _row(fwd, bwd, step, ar, mb, call, p2p_s, p2p_bytes, p2p_n) -> list[float]:
    c = metrics.EpochCounters(forward_s=fwd, backward_s=bwd, step_s=step, allreduce_s=ar, microbatches=mb,
                              call_s=call, p2p=[p2p_s, p2p_bytes, p2p_n], iter_times=[0.05, 0.04, 0.04])
    return c.row((0.0, 0, 0), 1.0)


def test_replica_figures_are_board_seconds_per_microbatch_and_iteration_beside_the_predictions():
    iters, mb = 10, 40
    t = np.array([_row(0.4, 0.8, 0.05, 0.0, mb, 0.2, 0.08, 40 * 12800, 80),
                  _row(0.2, 0.1, 0.30, 0.20, mb, 0.04, 0.04, 40 * 9600, 40),
                  _row(0.3, 0.1, 0.40, 0.25, mb, 0.04, 0.06, 40 * 3200, 40)])
    figures = metrics.replica_figures(t, iters, _Job(), RANKS, None)
    s0, s1 = figures
    r0 = s0["replicas"][0]
    assert r0["forward_s"] == [pytest.approx(0.4 / mb * 2), None]  # per micro-batch, x dilation 2
    assert r0["backward_s"][0] == pytest.approx(0.8 / mb * 2) and r0["call_s"][0] == pytest.approx(0.2 / mb * 2)
    assert r0["optimizer_s"][0] == pytest.approx(0.05 / iters * 2)  # per iteration, all-reduce excluded
    assert r0["p2p_s"][0] == pytest.approx(0.08 / mb * 2)
    assert (r0["p2p_bytes"], r0["p2p_transfers"]) == (12800, 2)
    pi1, pi2 = s1["replicas"]
    assert pi1["optimizer_s"][0] == pytest.approx((0.30 - 0.20) / iters * 2) and pi1["samples"] == 6
    # the stage's all-reduce: the fastest replica's (the slower also waited for the last backward)
    assert s1["allreduce_s"][0] == pytest.approx(0.20 / iters * 2) and s1["group"] == ["pi1", "pi2"]

    # under a CPU quota (the emulated testbed) a compute figure is the board's CPU / quota x dilation: a quota
    # only caps, so a rank that waited for a loaded machine's CPU does not count the wait
    t2 = t.copy()
    t2[0, -3:] = [0.1, 0.2, 0.02]  # forward, backward, call CPU seconds over the epoch
    cpu = metrics.board_seconds({"figures": metrics.replica_figures(t2, iters, _Job(), RANKS, None)},
                                {"pi0": 0.5, "pi1": 0.5}, 2.0)["figures"][0]["replicas"][0]
    assert cpu["forward_s"][0] == pytest.approx(0.1 / mb / 0.5 * 2) and cpu["call_s"][0] == pytest.approx(
        0.02 / mb / 0.5 * 2)
    assert cpu["forward_s_wall"][0] == pytest.approx(0.4 / mb * 2)

    predicted = {"iter_s": 0.05, "cluster_sha256": "c" * 64, "stages": [
        {"stage": 0, "param_bytes": 10288.0, "allreduce_s": 0.0, "allreduce_link_s": 0.0, "allreduce_bytes": 0.0,
         "group": ["pi0"], "replicas": [{"device": "pi0", "unit": "cpu", "forward_s": 0.03, "backward_s": 0.05,
                                         "call_s": 0.01, "optimizer_s": 0.002, "p2p_s": 0.004}]},
        {"stage": 1, "param_bytes": 236536.0, "allreduce_s": 0.021, "allreduce_link_s": 0.021,
         "allreduce_bytes": 236536.0, "group": ["pi1", "pi2"], "replicas": [
             {"device": d, "unit": "cpu", "forward_s": 0.01, "backward_s": 0.02, "call_s": 0.001,
              "optimizer_s": 0.001, "p2p_s": 0.002} for d in ("pi1", "pi2")]}]}
    row = {"board_iter_s": 0.08, "predicted_iter_s": 0.1, "figures": figures}
    got = metrics.with_predictions(row, predicted)
    assert got["figures"][0]["replicas"][0]["forward_s"] == [pytest.approx(0.02), 0.03]
    assert got["figures"][1]["allreduce_s"][1] == 0.021 and got["figures"][1]["allreduce_bytes"] == 236536.0
    assert got["predicted_iter_s_cluster"] == 0.05
    text = metrics.format_figures(got)
    assert "pi0:cpu" in text and "20.00/30.00 +50%" in text  # forward: 20 ms measured, 30 predicted
    assert "all-reduce of 0.237 MB over pi1, pi2" in text
    assert "iteration: measured 80.0 ms, predicted 50.0 ms (-38%)" in text

    plan = type("P", (), {})()  # launch.report reads these plan fields only
    plan.model, plan.cluster_sha256, plan.microbatches, plan.batch, plan.schedule = "lenet5", "c" * 64, 4, 32, "1f1b"
    plan.digest, plan.to_json = (lambda: "p" * 64), (lambda: {"mode": "training"})
    art = launch.Artifacts(plan, {"predicted": predicted, "sync": "sync"}, None)
    rep = launch.report(art, launch.TrainResult(({**got, "iterations": iters, "dilation": 2.0},), None, None),
                        TrainConfig())
    assert rep["kind"] == launch.REPORT_KIND == "edgeplan-train-report"
    assert rep["stages"] == got["figures"] and rep["measured_iter_s"] == 0.08 and rep["predicted_iter_s"] == 0.05
    assert (rep["plan_sha256"], rep["cluster_sha256"], rep["iterations"]) == ("p" * 64, "c" * 64, iters)
