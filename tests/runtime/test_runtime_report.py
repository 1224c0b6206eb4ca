"""The run report's measured-vs-predicted pairs (issue 14 item 4) and the fields `edgeplan calibrate` reads.

Real local runs of the numpy test workers (a known sleep per module call), a worker whose module burns a
known amount of CPU, a fake cgroup tree for the CPU quota, and the run report fed to `edgeplan calibrate`.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

from edgeplan import jsonio
from edgeplan.profiles import calibrate as cal
from edgeplan.profiles import predict
from edgeplan.runtime import report
from edgeplan.runtime.head import HeadConfig
from edgeplan.runtime.local import run_local
from edgeplan.runtime.spec import StageSpec
from edgeplan.runtime.worker import Worker, cpu_quota_cores

from .fake_artifacts import WORKER, make_artifacts

DIMS = (8, 16, 4)


def test_window_formulas_equal_profiles_predict():
    """report.py inlines predict.py's formulas (the runtime cannot import edgeplan.profiles): both agree."""
    for lat, thr, b, w in itertools.product((0.0, 0.002, 0.05, 1.3), (0.0, 10.0, 2000.0), (1, 4, 16), (1, 2, 8)):
        assert report.window_latency_s(lat, thr, b, w) == predict.loaded_latency_s(lat, thr, b, w)
        assert report.window_throughput(lat, thr, b, w) == predict.loaded_throughput(lat, thr, b, w)


def test_plan_digest_equals_edgeplans_digest(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2)], [("b", 2)]], DIMS)
    plan = jsonio.read(tmp_path / "art" / "plan.json")
    plan["predicted"]["latency_s"] = 1 / 3  # a float jsonio rounds
    assert report.plan_digest(plan) == jsonio.sha256_of(plan) == cal.plan_digest(plan)


def _set_prediction(root, latency_s, throughput):
    plan = jsonio.read(root / "plan.json")
    plan["predicted"].update(latency_s=latency_s, throughput=throughput)
    jsonio.write(root / "plan.json", plan)


@pytest.mark.parametrize("window", [1, 8])
def test_measured_latency_and_throughput_match_the_prediction_under_the_runs_window(tmp_path, window):
    """Two stages of one replica each sleeping DELAY per call: the plan's unloaded latency is 2 x DELAY and
    its throughput one request per DELAY. Under window 8 the pipeline saturates and a request waits behind
    the others: p50 ~ 8 x DELAY (4x the unloaded figure), which the report predicts and pairs with the
    measurement."""
    delay, b = 0.02, 4
    root = tmp_path / "art"
    make_artifacts(root, [[("a", b)], [("b", b)]], DIMS, delay=delay)
    _set_prediction(root, 2 * delay, b / delay)
    art, res = run_local(root, 30 if window > 1 else 15, command=WORKER, log_dir=tmp_path / "logs",
                         config=HeadConfig(window=window, request_timeout_s=30))
    assert res.ok, (res.failures, res.faults)
    rep = report.build(art.plan, res)
    assert rep["window"] == window and rep["plan_sha256"] == jsonio.sha256_of(art.plan)
    pred = rep["predicted"]
    assert pred["latency_s"] == pytest.approx(2 * delay) and pred["throughput"] == pytest.approx(b / delay)
    assert pred["window_latency_s"] == pytest.approx(max(2, window) * delay)
    assert pred["window_throughput"] == pytest.approx(b / delay * min(1, window / 2))
    # measured vs predicted, the same quantity: sleeps are exact lower bounds, the runtime adds its hops
    assert 0.95 <= rep["ratio"]["latency_p50"] <= 1.6, rep["latency_s"]
    assert 0.5 <= rep["ratio"]["throughput"] <= 1.05, rep["throughput"]
    if window == 1:
        assert rep["ratio"]["latency_unloaded"] == rep["ratio"]["latency_p50"]
    else:
        assert rep["ratio"]["latency_unloaded"] is None  # p50 under load is not the unloaded latency
        assert rep["latency_s"]["p50"] > 3 * pred["latency_s"]  # the queueing the window formula predicts
    table = report.format_table(rep)
    assert f"latency p50, window {window} (ms)" in table and "unloaded latency (ms)" in table
    assert "compute incl. hop" in table  # the fake plan has compute_s only, which prices the hop too
    for st in rep["stages"]:
        assert st["predicted_basis"] == "compute incl. hop" and st["predicted_module_s"] is None
        (r,) = st["replicas"]
        assert r["runs"] == res.n_requests
        assert r["measured_mean_compute_s"] >= delay
        assert r["cpu_startup_s"] > 0  # imports and loading before the first call
        assert 0 <= r["compute_cpu_s"] < 0.5 * r["runs"] * delay  # sleeping burns no CPU
        assert r["cpu_startup_s"] + r["compute_cpu_s"] <= r["cpu_s"] + 0.01
        peers = r["links"]
        want = "b/stage1" if st["index"] == 0 else "head"
        assert set(peers) >= {want} and peers[want]["sent_bytes_total"] > 0


def test_module_only_prediction_is_used_when_the_plan_has_it(tmp_path):
    root = tmp_path / "art"
    make_artifacts(root, [[("a", 2)], [("b", 2)]], DIMS)
    plan = jsonio.read(root / "plan.json")
    plan["stages"][0]["module_s"] = 0.0005
    jsonio.write(root / "plan.json", plan)
    art, res = run_local(root, 4, command=WORKER, log_dir=tmp_path / "logs")
    rep = report.build(art.plan, res)
    s0, s1 = rep["stages"]
    assert s0["predicted_basis"] == "module" and s0["ratio"] == pytest.approx(s0["measured_compute_s"] / 0.0005)
    assert s1["predicted_basis"] == "compute incl. hop"
    assert s1["ratio"] == pytest.approx(s1["measured_compute_s"] / s1["predicted_compute_s"])


def test_worker_counts_the_cpu_its_module_burns_and_its_start_up_apart(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2)]], DIMS[:2])
    spec = StageSpec.load(str(tmp_path / "art" / "a" / "stage0" / "stage.json"))
    burn = 0.02

    def runner(inputs):  # a module that spends `burn` seconds of CPU per call
        t = time.process_time()
        while time.process_time() - t < burn:
            pass
        return [np.zeros((2, DIMS[1]), np.float32)]

    w = Worker(spec, runner)
    before = time.process_time()
    x = [np.zeros((2, DIMS[0]), np.float32)]
    for _ in range(5):
        w.run_range(x)
    w.run_range([np.zeros((3, DIMS[0]), np.float32)])  # 3 samples on a 2-sample module: two calls
    snap = w.snapshot()
    assert snap["cpu_startup_s"] >= before > 0
    assert 7 * burn <= snap["compute_cpu_s"] <= 7 * burn + 0.1
    assert snap["cpu_quota_cores"] == cpu_quota_cores()


def _tree(root, cgroup_lines, files):
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    for rel, text in files.items():
        p = root / "sys" / "fs" / "cgroup" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def test_cpu_quota_from_cgroup_v2_v1_and_none(tmp_path):
    # v2: the worker's own cgroup (the testbed's per-board one) is limited, its parents are not
    v2 = _tree(tmp_path / "v2", ["0::/edgeplan-t/pi"], {
        "cgroup.controllers": "cpu io", "cpu.max": "max 100000", "edgeplan-t/cpu.max": "max 100000",
        "edgeplan-t/pi/cpu.max": "25000 100000"})
    assert cpu_quota_cores(v2) == pytest.approx(0.25)
    # nested quotas: the smallest on the way up wins
    nested = _tree(tmp_path / "nest", ["0::/a/b"], {
        "cgroup.controllers": "cpu", "a/cpu.max": "50000 100000", "a/b/cpu.max": "150000 100000"})
    assert cpu_quota_cores(nested) == pytest.approx(0.5)
    v1 = _tree(tmp_path / "v1", ["4:memory:/x", "1:cpu,cpuacct:/edgeplan-t/pi", "0::/"], {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/edgeplan-t/pi/cpu.cfs_quota_us": "150000",
        "cpu,cpuacct/edgeplan-t/pi/cpu.cfs_period_us": "100000"})
    assert cpu_quota_cores(v1) == pytest.approx(1.5)
    unlimited = _tree(tmp_path / "none", ["1:cpu:/"], {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "1"})
    assert cpu_quota_cores(unlimited) is None
    # inside `ip netns exec` /sys/fs/cgroup is empty: the parent's (the head's) view of the cgroup is read
    netns = _tree(tmp_path / "netns", ["1:cpu:/edgeplan-t/pi", "0::/"], {})
    for rel, text in {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
                      "cpu/edgeplan-t/pi/cpu.cfs_quota_us": "30000", "cpu/edgeplan-t/pi/cpu.cfs_period_us": "100000"
                      }.items():
        f = tmp_path / "netns" / "proc" / str(os.getppid()) / "root" / "sys" / "fs" / "cgroup" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    assert cpu_quota_cores(netns) == pytest.approx(0.3)
    assert cpu_quota_cores(str(tmp_path / "missing")) is None
