"""Calibration against real runs: plan on the datasheet host profile, compile (ONNX Runtime), run every stage
as a local process, calibrate from that run's report, re-plan on the calibrated cluster, run that plan, and
compare each stage's measured module time with what the cost model predicted before and after calibration.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytest.importorskip("onnxruntime")

from edgeplan import jsonio  # noqa: E402
from edgeplan.codegen.compile import compile_plan  # noqa: E402
from edgeplan.graph.load import build  # noqa: E402
from edgeplan.planner.api import make_plan  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.planner.plan import record_sources  # noqa: E402
from edgeplan.profiles import calibrate as cal  # noqa: E402
from edgeplan.profiles import predict  # noqa: E402
from edgeplan.profiles.cost import build_cost_table  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from edgeplan.runtime import report  # noqa: E402
from edgeplan.runtime.head import HeadConfig  # noqa: E402
from edgeplan.runtime.local import run_local  # noqa: E402

MODEL = "resnet32-cifar"
REQUESTS = 300  # a few seconds per run: other tenants' bursts on this machine average out, start-up CPU too


def _plan_compile_run(traced, cluster_path, tmp, tag):
    cluster = load_cluster(cluster_path)
    obj = Objective(mode="inference", objective="throughput", batch=4)
    plan = record_sources(make_plan(traced.graph, cluster, obj, min_gain=0.0), model_ref=MODEL, input_shape=None,
                          cluster_path=str(cluster_path), cluster=cluster)
    art = compile_plan(plan, MODEL, tmp / f"art-{tag}", cluster=cluster, backend="onnxruntime", traced=traced)
    loaded, res = run_local(art, REQUESTS, config=HeadConfig(request_timeout_s=60), log_dir=tmp / f"logs-{tag}")
    assert res.ok, (res.failures, res.faults)
    rep = report.build(loaded.plan, res)
    jsonio.write(tmp / f"report-{tag}.json", rep)
    return plan, art, rep


def _module_s(graph, cluster, stage) -> float:
    """The cost model's module time (no runtime hop) of the stage's slowest replica, per call."""
    costs = build_cost_table(graph, cluster)
    worst = 0.0
    for r in stage.replicas:
        u = next(i for i, (d, name, _) in enumerate(costs.units) if costs.devices[d] == r.device and name == r.unit)
        sl = slice(stage.start, stage.stop)
        worst = max(worst, r.samples * costs.fwd_s[u, sl].sum() + costs.fixed_s[u, sl].sum())
    return float(worst)


# the host profile made 5x too slow: a datasheet error that run-to-run noise on shared cores (+-50%) cannot hide
SLOW = {"units": {"cpu": {"mem_bandwidth_gbs": 3, "throughput_gflops": {
    "conv": 6, "dwconv": 1.2, "gemm": 8, "norm": 1.6, "pool": 1.6, "elementwise": 1.6, "reduce": 1, "data": 1.6}}}}


def test_calibrating_from_a_run_brings_the_next_plans_stage_predictions_closer_to_measurements(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setenv("EDGEPLAN_THREADS", "1")  # one compute thread per worker: the two boards share 2 cores
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": "two-hosts", "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}},
        "devices": [{"name": n, "profile": "host", "address": "127.0.0.1", "overrides": SLOW}
                    for n in ("h1", "h2")]}))
    traced = build(MODEL)
    plan1, art1, _ = _plan_compile_run(traced, path, tmp_path, "1")

    out = tmp_path / "calibrated.yaml"
    result, calibrated = cal.calibrate_files([tmp_path / "report-1.json"], [art1], path, out,
                                             lambda p: traced.graph)
    assert {(f.device, f.unit) for f in result.fits} == {(r.device, r.unit) for s in plan1.stages for r in s.replicas}
    figures = calibrated.device("h1").unit("cpu").measured
    assert figures and all(m.backend == "onnxruntime" and "report-1.json" in m.source for m in figures)

    plan2, _, rep2 = _plan_compile_run(traced, out, tmp_path, "2")
    original = load_cluster(path)
    before, after = [], []
    for st, measured in zip(plan2.stages, rep2["stages"], strict=True):
        m = measured["measured_compute_s"]
        before.append(abs(_module_s(traced.graph, original, st) - m) / m)
        after.append(abs(_module_s(traced.graph, calibrated, st) - m) / m)
    print(f"per-stage module time error on the re-planned run: before {np.mean(before):.0%}, after "
          f"{np.mean(after):.0%} ({[f'{b:.0%}->{a:.0%}' for b, a in zip(before, after, strict=True)]})")
    assert np.mean(after) < 0.5 * np.mean(before)
    # one call per board fits one factor per board; stages of another mix of layers, timed on CPUs shared
    # with other processes, are typically 5-40% off after (~1600% before; seen 9-12% after)
    assert np.mean(after) < 1.0

    # the run kept a window of requests in flight: its p50 is the loaded latency, not the plan's unloaded one
    measured_p50, loaded = predict.paired(rep2)["latency_p50_loaded_s"]
    unloaded = rep2["predicted"]["latency_s"]
    print(f"p50 {measured_p50 * 1e3:.1f} ms: predicted {loaded * 1e3:.1f} ms under the window, "
          f"{unloaded * 1e3:.1f} ms unloaded")
    assert abs(loaded - measured_p50) < abs(unloaded - measured_p50)
