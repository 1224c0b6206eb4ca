"""Issue 14 item 5 in the emulated testbed (netns tier): run, calibrate from that run, re-plan, run again.

Three models (residual, depthwise, transformer) on two example clusters (three-node-hetero, rpi4-jetson):
each board is a network namespace with a CPU quota and shaped links; plans are made against the cluster as
emulated (`edgeplan emulate --write-cluster`). The first plan rests on the emulator's micro-benchmark
figures, the second on figures fitted from the first run.
"""

from __future__ import annotations

import os
from pathlib import Path

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
from edgeplan.profiles.load import load_cluster  # noqa: E402
from edgeplan.runtime import report  # noqa: E402
from edgeplan.runtime.head import HeadConfig  # noqa: E402
from edgeplan.runtime.local import run_local  # noqa: E402
from edgeplan.testbed import calibrate as host_speed  # noqa: E402
from edgeplan.testbed import emulate, netns  # noqa: E402
from tests.tiers import netns_tier

CLUSTERS = Path(__file__).resolve().parents[2] / "examples" / "clusters"
EXAMPLE = CLUSTERS / "three-node-hetero.yaml"
REQUESTS = 120
SLOW = 3.0  # the datasheet error the first plan rests on (every board's compute and memory 3x slow)
BOARD_CORES = 0.5  # the fastest board's quota: boards, head and other tenants do not fight over 2 cores


def _round(traced, model, spec, host_flops, cluster_path, tmp, tag):
    cluster = load_cluster(cluster_path)
    plan = record_sources(make_plan(traced.graph, cluster, Objective(batch=4), min_gain=0.0), model_ref=model,
                          input_shape=None, cluster_path=str(cluster_path), cluster=cluster)
    art = compile_plan(plan, model, tmp / f"art-{tag}", cluster=cluster, backend="onnxruntime", traced=traced)
    with emulate.testbed(spec, host_core_flops=host_flops, echo=lambda *_: None,
                         max_board_cores=BOARD_CORES) as (bed, _):
        placement = {b.device: (b.launch_prefix(), b.address) for b in bed.boards}
        loaded, res = run_local(art, REQUESTS, config=HeadConfig(request_timeout_s=120), log_dir=tmp / f"logs-{tag}",
                                placement=placement, head_host=bed.host_address)
    assert res.ok, (res.failures, res.faults)
    rep = report.build(loaded.plan, res)
    jsonio.write(tmp / f"report-{tag}.json", rep)
    pj = plan.to_json()
    errs = []
    for st, got in zip(pj["stages"], rep["stages"], strict=True):
        measured = max(cal.board_module_s(r) for r in got["replicas"])  # board seconds per call, as predicted
        errs.append(abs(cal.predicted_module_s(traced.graph, cluster, st) - measured) / measured)
    measured, predicted = predict.paired(rep)["throughput_loaded"]
    return art, errs, abs(predicted - measured) / measured, plan


@pytest.mark.netns
@netns_tier
@pytest.mark.parametrize("cluster", ["three-node-hetero", "rpi4-jetson"])
@pytest.mark.parametrize("model", ["resnet32-cifar", "mobilenet_v2-cifar", "vit-tiny"])
def test_emulated_run_calibrate_replan_run(model, cluster, tmp_path):
    """The issue's three models (a residual CNN, a depthwise CNN, a transformer) on two example clusters."""
    spec = load_cluster(CLUSTERS / f"{cluster}.yaml")
    host = host_speed.measure(0.3)  # this machine per core, so quotas and figures match what runs
    shape = emulate.shape(spec, host.of("conv"), max_board_cores=BOARD_CORES)
    emulated = emulate.write_emulated_cluster(tmp_path / "emulated.yaml", spec, shape, host)
    # the emulated cluster's figures are this machine's micro-benchmarks x quota, already within ~10-25% of
    # what runs (bench_truth "before"), which run-to-run noise on shared cores can hide; a datasheet error of
    # 3x slow compute on every board cannot be hidden, and calibration must remove it
    doc = yaml.safe_load(emulated.read_text())
    for dev in doc["devices"]:
        cpu = dev["overrides"]["units"]["cpu"]
        cpu["throughput_gflops"] = {c: round(v / SLOW, 4) for c, v in cpu["throughput_gflops"].items()}
        cpu["mem_bandwidth_gbs"] = round(cpu["mem_bandwidth_gbs"] / SLOW, 4)
    emulated.write_text(yaml.safe_dump(doc, sort_keys=False))
    traced = build(model)
    art0, errs0, thr0, plan0 = _round(traced, model, spec, host.of("conv"), emulated, tmp_path, "0")
    rep0 = jsonio.read(tmp_path / "report-0.json")  # each worker reports its board's CPU quota itself
    cores = {b.device: b.cores for b in shape.boards}
    assert {r["device"]: r["cpu_quota_cores"] for st in rep0["stages"] for r in st["replicas"]} == pytest.approx(
        {r["device"]: cores[r["device"]] for st in rep0["stages"] for r in st["replicas"]}, rel=0.01)
    cal.calibrate_files([tmp_path / "report-0.json"], [art0], emulated, tmp_path / "calibrated.yaml",
                        lambda p: traced.graph)
    _, errs1, thr1, plan1 = _round(traced, model, spec, host.of("conv"), tmp_path / "calibrated.yaml", tmp_path, "1")
    print(f"{model} on {cluster}: per-stage module error {np.mean(errs0):.0%} -> {np.mean(errs1):.0%} "
          f"({[f'{e:.0%}' for e in errs0]} -> {[f'{e:.0%}' for e in errs1]}); throughput error under the window "
          f"{thr0:.0%} -> {thr1:.0%}")
    assert netns.leftovers() == []
    # Margins: per stage the 3x error (~200%) must at least halve (seen 9-17% after on the bench's six model x
    # cluster pairs, stages the boards did not run in the first round included; here 155-178% -> 12-16%, and
    # once 1793% -> 54% (8% and 100%; its files were not kept: a uniformly 10-24x "before" points at a slow
    # host reading, and one factor fitted on a small stage scales its per-layer overhead with its compute).
    # End to end the throughput error must drop (seen 29% -> 10%; 49-80% -> 13-23% in three runs with the
    # host's memory bandwidth measured as ONNX Runtime reaches it, which leaves the 3x error in compute) and
    # stay under 35%: the testbed's CPU weight reserves each board's quota, but 2 cores shared with other
    # emulations still move a run's throughput by ~10% (reruns of one plan up to 15-31% apart in
    # bench_truth), and a re-plan moves the cut, so what one run could not separate (per call vs per byte)
    # is extrapolated. Seen on the six pairs (2026-12-01, load 0.5): 39-69% -> 2-21% (three-node-hetero
    # 13 / 2 / 21%, rpi4-jetson 2 / 14 / 3%); vit-tiny's 37% before the testbed's per-byte figure
    # (emulate.TESTBED_HOP_BYTE_NS) was measured; with bytes sent priced apart (TESTBED_HOP_SEND_BYTE_NS,
    # 06:02, load 0.8): 51-69% -> 0-22% (three-node-hetero 22 / 7 / 1%, rpi4-jetson 1 / 0 / 7%; the 22% a
    # re-plan onto npu-board alone whose per-call hop had held the first run's sends). The 10% / 5%
    # targets are measured by benchmarks/bench_truth.py --emulate on the emulator's own figures.
    assert np.mean(errs1) < 0.5 * np.mean(errs0)
    assert thr1 < thr0 and thr1 < 0.35


@pytest.mark.netns
@netns_tier
def test_testbed_reserves_its_quotas_and_the_head_against_other_tenants():
    """A quota only caps: on a machine other tenants load, a 1-core board got ~25% of its quota and a run
    measured the tenants (seen: npu-board 20 ms per call for 5 ms of CPU). The testbed's cgroup weighs the
    most a cgroup can, the boards weigh in proportion to their quotas, and the head runs in the testbed's
    `head` cgroup while it is up, back where it was afterwards."""
    spec = load_cluster(EXAMPLE)
    cpu_line = next(line for line in open("/proc/self/cgroup").read().splitlines()
                    if "cpu" in line.split(":")[1].split(",") or line.split(":")[1] == "")
    with emulate.testbed(spec, host_core_flops=1e10, echo=lambda *_: None) as (bed, shape):
        root = Path(bed.cgroup_root)
        shares = root / "cpu.shares" if (root / "cpu.shares").exists() else root / "cpu.weight"
        assert int(shares.read_text()) == (netns.MAX_SHARES_V1 if shares.name == "cpu.shares" else netns.MAX_WEIGHT_V2)
        for b in bed.boards:
            got = int((Path(b.cgroup) / shares.name).read_text())
            assert got == (max(2, int(1024 * b.cpu_quota)) if shares.name == "cpu.shares"
                           else max(1, int(100 * b.cpu_quota)))
        assert str(os.getpid()) in (root / "head" / "cgroup.procs").read_text().split()
    assert cpu_line in open("/proc/self/cgroup").read().splitlines()
