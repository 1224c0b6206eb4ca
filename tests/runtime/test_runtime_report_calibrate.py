"""A real run report feeds `edgeplan calibrate` every field it reads: lenet5 planned on two local hosts,
compiled for ONNX Runtime, run as local processes; the report's plan digest, window and per-replica CPU
figures are what calibrate's hop cost and end-to-end table use (none falls back to its guess)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from edgeplan import jsonio  # noqa: E402
from edgeplan.cli import app  # noqa: E402
from edgeplan.codegen.compile import compile_plan  # noqa: E402
from edgeplan.graph.load import build  # noqa: E402
from edgeplan.planner.api import make_plan  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.planner.plan import record_sources  # noqa: E402
from edgeplan.profiles import calibrate as cal  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from edgeplan.runtime import report  # noqa: E402
from edgeplan.runtime.head import HeadConfig  # noqa: E402
from edgeplan.runtime.local import run_local  # noqa: E402

MODEL = "lenet5"
REQUESTS = 40  # > calibrate.MIN_RUNS calls per replica


def test_calibrate_reads_every_field_of_a_real_run_report(tmp_path):
    cpath = tmp_path / "cluster.yaml"
    cpath.write_text(yaml.safe_dump({
        "name": "two-hosts", "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}},
        "devices": [{"name": n, "profile": "host", "address": "127.0.0.1"} for n in ("h1", "h2")]}))
    cluster = load_cluster(cpath)
    traced = build(MODEL)
    plan = record_sources(make_plan(traced.graph, cluster, Objective(batch=4), min_gain=0.0),
                          model_ref=MODEL, input_shape=None, cluster_path=str(cpath), cluster=cluster)
    assert len(plan.stages) == 2, "the test needs two stages (two workers, a link between them)"
    art = compile_plan(plan, MODEL, tmp_path / "art", cluster=cluster, backend="onnxruntime", traced=traced)
    loaded, res = run_local(art, REQUESTS, config=HeadConfig(window=3, request_timeout_s=60),
                            log_dir=tmp_path / "logs")
    assert res.ok, (res.failures, res.faults)
    rep = report.build(loaded.plan, res)
    jsonio.write(tmp_path / "report.json", rep)
    assert rep["window"] == 3 and rep["plan_sha256"] == cal.plan_digest(loaded.plan)

    obs, skipped = cal.observations(loaded.plan, rep, "report.json")
    assert skipped == [] and len(obs) == sum(len(st["replicas"]) for st in rep["stages"])
    by = {(o.stage, o.device): o for o in obs}
    for st in rep["stages"]:
        for r in st["replicas"]:
            for field in ("cpu_startup_s", "compute_cpu_s", "measured_mean_compute_s", "links"):
                assert r[field] is not None, f"stage {st['index']} {r['device']}: {field} missing"
            assert "cpu_quota_cores" in r  # None: no quota on this machine (one core assumed)
            q = r["cpu_quota_cores"] or 1.0
            o = by[(st["index"], r["device"])]
            # calibrate's hop: CPU past start-up, less the module's own CPU, per call (not the fallback guess)
            assert o.module_s == r["measured_mean_compute_s"]
            assert o.hop_s == pytest.approx(((r["cpu_s"] - r["cpu_startup_s"]) / q - r["compute_cpu_s"] / q)
                                            / r["runs"])
            assert o.cpu_per_call_s < r["cpu_s"] / q / r["runs"]  # start-up CPU no longer spread over calls

    # the digest ties the report to its plan: a report of another plan is refused, naming both
    other = {**rep, "plan_sha256": "f" * 64}
    with pytest.raises(cal.CalibrationError, match="plan sha256 ffffffffffff"):
        cal.observations(loaded.plan, other, "other.json")

    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "report.json"), "--cluster", str(cpath),
                                 "--out", str(tmp_path / "cal.yaml"), "--plan", str(art)])
    assert r.exit_code == 0, r.output
    assert "not used" not in r.output  # every replica's calls were used
    # the end-to-end table predicts under the window the report recorded
    end_to_end = r.output.split("end to end, predicted under the run's window")[1]
    row = next(line for line in end_to_end.splitlines() if line.startswith("report.json"))
    assert row.split()[1] == "3", r.output
