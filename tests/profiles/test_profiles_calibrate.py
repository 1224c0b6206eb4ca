"""edgeplan calibrate without a run: the bounded solver, the fit on a synthetic graph, and bad input.

These check the fitting machinery (the solver against exhaustive search, the fit recovering a
board whose figures the test knows). Predictions against real measurements: test_profiles_calibrate_e2e.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.profiles import calibrate as cal
from edgeplan.profiles.load import load_cluster


def _layer(i: int, op: str, flops: int, prev: str, shape=(4, 64, 16, 16), params: int = 0) -> Layer:
    return Layer(name=f"l{i}", op=op, origin=f"m.l{i}", inputs=(prev,), output=TensorSpec(f"l{i}", shape),
                 flops_fwd=flops, flops_bwd=2 * flops, macs=flops // 2, param_count=params // 4, param_bytes=params)


def synthetic_graph() -> LayerGraph:
    """24 layers cycling conv / gemm / elementwise with unequal FLOPs (batch 4)."""
    ops = [("conv2d", 40_000_000, 147_456), ("linear", 20_000_000, 1_048_576), ("relu", 65_536, 0)]
    layers, prev = [], "x"
    for i in range(24):
        op, flops, params = ops[i % 3]
        layers.append(_layer(i, op, flops * (1 + i % 5), prev, params=params))
        prev = f"l{i}"
    return LayerGraph(name="synthetic", inputs=(TensorSpec("x", (4, 64, 16, 16)),), outputs=(prev,),
                      layers=tuple(layers), cut_bytes=tuple([262144] * 25))


def cluster_file(tmp_path, names=("a", "b")):
    doc = {"name": "synth", "devices": [{"name": n, "profile": "host", "address": "127.0.0.1"} for n in names],
           "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def plan_and_report(graph, cluster, cuts, device_of, times, runs=100, samples=4):
    """A plan dict with stages cut at ``cuts`` and a report whose stages measured ``times`` (s per call)."""
    bounds = [0, *cuts, len(graph.layers)]
    stages, rstages = [], []
    for s, (a, b) in enumerate(itertools.pairwise(bounds)):
        first, last = graph.layers[a].name, graph.layers[b - 1].name
        dev = device_of(s)
        stages.append({"index": s, "start": a, "stop": b, "first_layer": first, "last_layer": last,
                       "replicas": [{"device": dev, "unit": "cpu", "samples": samples}]})
        rstages.append({"index": s, "layers": f"{first}..{last}", "replicas": [{
            "device": dev, "samples": samples, "runs": runs, "measured_compute_s": times[s],
            "cpu_s": runs * (times[s] + 0.0004), "bytes_in": runs * 262144, "bytes_out": runs * 262144}]})
    plan = {"model": graph.name, "graph_sha256": graph.digest(), "cluster_sha256": cluster.digest(),
            "mode": "inference", "stages": stages}
    report = {"model": graph.name, "stages": rstages}
    return plan, report


def true_unit(unit):
    """A 'real' board unlike its profile: conv 2.5x faster, gemm 1.5x slower, elementwise 3x faster,
    memory 1.4x faster, 3 us per layer."""
    k = {"conv": 1 / 2.5, "gemm": 1.5, "elementwise": 1 / 3.0}
    return cal._scaled(unit, {c: k.get(c, 1.0) for c, _ in unit.throughput}, 1 / 1.4, 3e-6)


def test_bounded_lstsq_equals_exhaustive_active_sets():
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.standard_normal((7, 3))
        b = rng.standard_normal(7) * 3
        lo, hi = -rng.random(3), rng.random(3)
        x, _ = cal.bounded_lstsq(a, b, lo, hi)
        assert np.all(x >= lo - 1e-12) and np.all(x <= hi + 1e-12)
        best = np.inf
        for states in itertools.product((0, 1, 2), repeat=3):  # free / at lo / at hi
            y = np.array([lo[j] if s == 1 else hi[j] if s == 2 else 0.0 for j, s in enumerate(states)])
            free = np.array([s == 0 for s in states])
            if free.any():
                y[free] = np.linalg.lstsq(a[:, free], b - a[:, ~free] @ y[~free], rcond=None)[0]
            if np.all(y >= lo - 1e-12) and np.all(y <= hi + 1e-12):
                best = min(best, float(np.sum((a @ y - b) ** 2)))
        assert np.sum((a @ x - b) ** 2) <= best * (1 + 1e-9) + 1e-12


def test_per_class_fit_recovers_the_board_on_splits_it_never_saw(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path, ("a",)))
    unit = cluster.devices[0].unit("cpu")
    truth = true_unit(unit)
    layers = cal._Layers(graph)
    rng = np.random.default_rng(1)
    obs_runs = []
    for r in range(4):  # four runs with different cuts: 3 stages each, all on board a
        cuts = sorted(rng.choice(np.arange(2, 22), size=2, replace=False).tolist())
        bounds = [0, *cuts, 24]
        times = [layers.module_s(truth, a, b, 4) for a, b in itertools.pairwise(bounds)]
        plan, rep = plan_and_report(graph, cluster, cuts, lambda s: "a", times)
        obs, _ = cal.observations(plan, rep, f"r{r}.json")
        obs_runs.append((plan, graph, obs))
    result = cal.fit(cluster, obs_runs)
    (f,) = result.fits
    assert f.design == "per-class"
    assert result.mape("after") < 1.0 < result.mape("before")
    for a, b in [(0, 5), (5, 17), (17, 24), (0, 24)]:  # held out
        want = layers.module_s(truth, a, b, 4)
        assert abs(layers.module_s(f.after, a, b, 4) - want) / want < 0.02
    assert f.after.hop_overhead_s == pytest.approx(0.0004 - 2 / f.after.mem_bandwidth * 2 * 262144, rel=1e-6)


def test_one_call_per_board_fits_one_factor_and_a_faster_than_peak_fit_is_clamped(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    layers = cal._Layers(graph)
    unit = cluster.devices[0].unit("cpu")
    fast = layers.module_s(unit, 12, 24, 4) / 100  # 100x the profile: conv would pass the 166 GFLOP/s peak
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s],
                                [layers.module_s(unit, 0, 12, 4) * 0.5, fast])
    obs, _ = cal.observations(plan, rep, "r.json")
    result = cal.fit(cluster, [(plan, graph, obs)])
    fa, fb = result.fits
    assert fa.design == fb.design == "factor"
    assert fa.after.flops_per_s("conv") == pytest.approx(2 * unit.flops_per_s("conv"), rel=1e-6)
    assert fb.after.flops_per_s("conv") == pytest.approx(unit.peak_flops)
    assert any("faster than the unit's peak 166.4 GFLOP/s; clamped to the peak" in n for n in fb.notes)
    assert [n for n in fa.notes if "per-byte hop not fitted (1 replica(s)" not in n] == []  # one call: per call only


def test_bad_reports_are_refused_with_one_line_that_says_which(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.01, 0.01], runs=5)
    with pytest.raises(cal.CalibrationError, match=r"no stage replica .* enough calls .*5 call\(s\) measured, "
                                                   r"fewer than 20"):
        cal.fit(cluster, [(plan, graph, cal.observations(plan, rep, "r.json")[0])],
                cal.observations(plan, rep, "r.json")[1])
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.01, 0.01])
    other, _ = plan_and_report(graph, cluster, [10], lambda s: "ab"[s], [0.01, 0.01])
    with pytest.raises(cal.CalibrationError, match=r"r.json: stage 0 ran layers 'l0..l11', the plan's are "
                                                   r"'l0..l9'"):
        cal.observations(other, rep, "r.json")
    with pytest.raises(cal.CalibrationError, match=r"r.json: report is a run of plan sha256 0+, not of the given"):
        cal.observations(plan, {**rep, "plan_sha256": "0" * 64}, "r.json")
    moved = {**plan, "cluster_sha256": "f" * 64}
    with pytest.raises(cal.CalibrationError, match=r"plan.json: plan was made on cluster sha256 ffffffffffff, but "
                                                   r"c.yaml is [0-9a-f]{12}; give the cluster file the plan was made"):
        cal.check_plan_cluster(moved, cluster, "plan.json", "c.yaml")


def test_cli_refuses_a_report_from_another_cluster(tmp_path):
    graph = synthetic_graph()
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.01, 0.01])
    jsonio.write(tmp_path / "plan.json", {**plan, "cluster_sha256": "e" * 64})
    jsonio.write(tmp_path / "r.json", rep)
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "r.json"), "--plan", str(tmp_path / "plan.json"),
                                   "--cluster", str(path), "--out", str(tmp_path / "out.yaml")])
    assert res.exit_code == 2, res.output
    assert "plan was made on cluster sha256 eeeeeeeeeeee" in res.output
    assert not (tmp_path / "out.yaml").exists()


def test_calibrated_file_loads_back_with_provenance_and_the_fitted_figures(tmp_path):
    graph = synthetic_graph()
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    layers = cal._Layers(graph)
    unit = cluster.devices[0].unit("cpu")
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s],
                                [layers.module_s(unit, 0, 12, 4) * 0.5, layers.module_s(unit, 12, 24, 4) * 2])
    obs, _ = cal.observations(plan, rep, "r.json")
    result = cal.fit(cluster, [(plan, graph, obs)])
    out = tmp_path / "sub" / "cal.yaml"
    new = cal.write_calibrated(path, result, out, sources="r.json (plan x)", backend="onnxruntime",
                               when="2026-01-01T00:00:00Z")
    for f in result.fits:
        got = new.device(f.device).unit(f.unit)
        assert got.flops_per_s("conv") == pytest.approx(f.after.flops_per_s("conv"), rel=1e-5)
        assert got.hop_overhead_s == pytest.approx(f.after.hop_overhead_s, rel=1e-5)
        # every figure the fit touches is measured; power is not measured by a run, nor is the per-byte hop by
        # one replica per board, so the board stays an estimate
        assert got.estimated_figures() == ("hop_byte_ns", "busy_power_w")
        assert new.device(f.device).estimate
        m = got.measured[0]
        assert (m.when, m.backend, m.source) == ("2026-01-01T00:00:00Z", "onnxruntime", "r.json (plan x)")
    assert new.devices[0].unit("cpu").flops_per_s("conv") == pytest.approx(2 * unit.flops_per_s("conv"), rel=1e-5)


def test_hop_cost_leaves_out_start_up_cpu_and_counts_cpu_quota_as_board_time(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.004, 0.004], runs=100)
    for st in rep["stages"]:  # 100 calls x (4 ms module + 1 ms hop) of CPU, plus 0.3 s to start
        st["replicas"][0].update(cpu_s=100 * 0.005 + 0.3, cpu_startup_s=0.3)
    a, b = cal.observations(plan, rep, "r.json")[0]
    assert a.cpu_per_call_s == pytest.approx(0.005)
    rep["stages"][1]["replicas"][0].update(cpu_quota_cores=0.25, cpu_s=100 * 0.001 * 0.25 + 0.3)
    b = cal.observations(plan, rep, "r.json")[0][1]
    assert b.cpu_per_call_s == pytest.approx(0.001)  # 0.25 ms of CPU per call is 1 ms of a quarter-core board


def test_hop_cost_uses_the_modules_cpu_when_the_report_has_it(tmp_path):
    """A 2-thread module of 4 ms wall burns 8 ms of CPU: with compute_cpu_s the hop is what is left."""
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.004, 0.004], runs=100)
    for st in rep["stages"]:
        st["replicas"][0].update(cpu_s=100 * (0.008 + 0.001), compute_cpu_s=100 * 0.008)
    obs, _ = cal.observations(plan, rep, "r.json")
    assert [o.hop_s for o in obs] == [pytest.approx(0.001)] * 2
    del rep["stages"][0]["replicas"][0]["compute_cpu_s"]  # without it, the extra thread's CPU reads as hop
    assert cal.observations(plan, rep, "r.json")[0][0].hop_s == pytest.approx(0.005)


@pytest.mark.parametrize("slow", [2.0, 0.5])
def test_a_board_no_report_ran_takes_a_same_profile_boards_fit_as_an_estimate(tmp_path, slow):
    """a and b ran ``slow`` x the profile's time: c (not run; the same profile and figures: one board model) takes
    the same factor, as an estimate, slower or faster. (A scaled twin takes only slower figures:
    test_profiles_calibrate_twin.)"""
    graph = synthetic_graph()
    path = cluster_file(tmp_path, ("a", "b", "c"))
    cluster = load_cluster(path)
    layers = cal._Layers(graph)
    unit = cluster.devices[0].unit("cpu")
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s],
                                [layers.module_s(unit, 0, 12, 4) * slow, layers.module_s(unit, 12, 24, 4) * slow])
    result = cal.fit(cluster, [(plan, graph, cal.observations(plan, rep, "r.json")[0])])
    (c,) = [f for f in result.fits if f.device == "c"]
    assert c.inferred_from in ("a", "b") and c.calls == 0 and "not in the report(s)" in c.notes[0]
    new = cal.write_calibrated(path, result, tmp_path / "cal.yaml", sources="r.json", backend="onnxruntime")
    got = new.device("c").unit("cpu")
    assert got.flops_per_s("conv") == pytest.approx(unit.flops_per_s("conv") / slow, rel=1e-5)
    assert got.measured == () and new.device("a").unit("cpu").measured
    assert "c:cpu: as " in cal.format_fit(result)


def test_link_bandwidth_comes_from_the_monitors_passive_send_throughput(tmp_path):
    graph = synthetic_graph()
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.004, 0.004])
    plan["head"] = "a"
    rep["stages"][0]["replicas"][0]["links"] = {"b/stage1": {"throughput_bytes_per_second": 30e6}}
    rep["stages"][1]["replicas"][0]["links"] = {"head": {"throughput_bytes_per_second": 50e6},
                                                "a/stage9": {"throughput_bytes_per_second": None}}
    jsonio.write(tmp_path / "plan.json", plan)
    jsonio.write(tmp_path / "r.json", rep)
    result, new = cal.calibrate_files([tmp_path / "r.json"], [tmp_path / "plan.json"], path, tmp_path / "c.yaml",
                                      lambda p: graph)
    (lf,) = result.links
    assert (lf.a, lf.b, lf.sends) == ("a", "b", 2) and lf.after == pytest.approx(40e6)  # median of 30 and 50 MB/s
    assert new.link("a", "b").bandwidth == pytest.approx(40e6) and new.link("a", "b").latency_s == pytest.approx(1e-4)
    assert "link a <-> b: 1000 -> 320 Mbit/s (median of 2" in cal.format_fit(result)


def test_a_send_faster_than_the_link_is_a_copy_into_socket_buffers_and_keeps_the_files_bandwidth(tmp_path):
    """Seen in the emulated testbed: 262 KB sends timed at 1.7 GB/s on a link shaped to 62 MB/s; a
    calibrated link 10x too fast makes a re-plan's throughput prediction optimistic."""
    graph = synthetic_graph()
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.004, 0.004])
    rep["stages"][0]["replicas"][0]["links"] = {"b/stage1": {"throughput_bytes_per_second": 1.7e9}}
    jsonio.write(tmp_path / "plan.json", plan)
    jsonio.write(tmp_path / "r.json", rep)
    result, new = cal.calibrate_files([tmp_path / "r.json"], [tmp_path / "plan.json"], path, tmp_path / "c.yaml",
                                      lambda p: graph)
    (lf,) = result.links
    assert lf.after == lf.before == pytest.approx(125e6) and new.link("a", "b").bandwidth == pytest.approx(125e6)
    assert "time a copy, not the link; kept" in cal.format_fit(result)


def test_emulated_board_peak_is_the_cores_its_threads_burst_on_not_the_quota_average():
    """A board under a 0.3-core quota runs each call at a full core's speed until its quota is spent, so the
    emulated cluster's peak (the clamp `calibrate` applies) is one core, while its throughput is 0.3 cores;
    a 1.5-core board runs 2 threads (netns launch prefix) and bursts on 2 cores."""
    from pathlib import Path

    from edgeplan.testbed import emulate
    from edgeplan.testbed.calibrate import HostSpeed

    spec = load_cluster(Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml")
    host = HostSpeed((("conv", 20e9), ("gemm", 30e9), ("dwconv", 5e9)), 10e9)
    boards = tuple(emulate.BoardShape(d.name, 1.0, cores, 1e6)
                   for d, cores in zip(spec.devices, (0.3, 1.5, 1.0), strict=False))
    doc = emulate.emulated_cluster_doc(spec, emulate.Shape(0.5, 20e9, boards, (), 1e6), host)
    for dev, b in zip(doc["devices"], boards, strict=False):
        cpu = dev["overrides"]["units"]["cpu"]
        assert cpu["throughput_gflops"]["gemm"] == pytest.approx(30 * b.cores)
        assert cpu["peak_gflops"] == pytest.approx(30 * {0.3: 1, 1.5: 2, 1.0: 1}[b.cores])
        # the runtime's per-call and per-byte costs: the host's, on the board's share of a core
        assert cpu["hop_byte_ns"] == pytest.approx(emulate.TESTBED_HOP_BYTE_NS / b.cores, rel=1e-3)
        assert cpu["hop_send_byte_ns"] == pytest.approx(emulate.TESTBED_HOP_SEND_BYTE_NS / b.cores, rel=1e-3)
        assert cpu["hop_overhead_us"] == pytest.approx(850 / b.cores, rel=1e-3)


def test_module_time_under_a_quota_is_cpu_over_quota_when_calls_run_back_to_back():
    """A 0.3-core board ran a 1 ms call in 1 ms (burst on a full core) but 120 calls cost 120 ms of CPU, so
    back to back each call holds the board 1/0.3 = 3.3 ms: the figure the fit and the throughput use. The
    emulated run (resnet32-cifar, three-node-hetero) that showed it: fitted on burst times, a re-plan put
    twice the work on that board and measured 371 samples/s against 840 predicted."""
    r = {"measured_compute_s": 0.0009, "measured_mean_compute_s": 0.001, "runs": 120, "compute_cpu_s": 0.12}
    assert cal.board_module_s(r) == pytest.approx(0.001)  # no quota: the wall time
    assert cal.board_module_s({**r, "cpu_quota_cores": 0.3}) == pytest.approx(0.12 / 0.3 / 120)
    # a multi-threaded call under a 4-core quota: CPU / quota is below the wall time, which stays
    assert cal.board_module_s({**r, "cpu_quota_cores": 4.0}) == pytest.approx(0.001)
    assert cal.board_module_s({"runs": 3}) is None


def test_module_time_under_a_quota_of_one_core_or_less_leaves_out_waits_on_the_hop(tmp_path):
    """vit-tiny stage 0 on a 0.15-core board (bench_truth --emulate): 100 calls, mean wall 29.4 ms, module
    CPU 0.404 s (27.0 ms per call at the quota) and 0.459 s of CPU past start-up (30.6 ms per call). The
    board's seconds per call, what bounds the stage, are its whole CPU / quota: taking the wall for the
    module counted 2.4 ms of waiting on the hop's own CPU twice (33.0 ms per call)."""
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.0259, 0.0259], runs=100)
    r = rep["stages"][0]["replicas"][0]
    r.update(measured_mean_compute_s=0.02936, compute_cpu_s=0.4043, cpu_quota_cores=0.15, cpu_s=0.459 + 1.0,
             cpu_startup_s=1.0)
    o = cal.observations(plan, rep, "r.json")[0][0]
    assert o.module_s == pytest.approx(0.4043 / 0.15 / 100)
    assert o.module_s + o.hop_s == pytest.approx(0.459 / 0.15 / 100) == pytest.approx(o.cpu_per_call_s)
    # one core exactly still binds a one-thread call; above it the wall time of a call can be the larger
    assert cal.board_module_s({**r, "cpu_quota_cores": 1.0}) == pytest.approx(0.004043)
    assert cal.board_module_s({**r, "cpu_quota_cores": 2.0}) == pytest.approx(0.02936)
