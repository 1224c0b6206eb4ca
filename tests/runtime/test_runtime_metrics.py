"""metrics.exposition: the head's status() as Prometheus text, read back with prometheus_client's parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from edgeplan.runtime.metrics import CONTENT_TYPE, exposition
from edgeplan.runtime.monitor import Monitor


def sample_status(tmp_path: Path | None = None) -> dict:
    """A status() as the head builds it, with real Monitor snapshots (fake /proc for fixed numbers)."""
    def snap(device: str, stage: int, unit: str = "cpu", **extra) -> dict:
        m = Monitor(device, stage, unit=unit, root=str(tmp_path) if tmp_path else "/")
        for sec in (0.004, 0.006, 0.02):
            m.record_compute(sec, 4)
        m.record_send("pi-b/stage1", 2_000_000, 0.16)  # 12.5 MB/s = 100 Mbit/s
        m.record_recv("head", 602_112)
        m.set_queue("ready", 2)
        m.count("frames_dropped", 3)
        s = m.snapshot()
        s.update(extra)
        return s

    jetson = snap("nano", 1, unit="gpu", power_watts={"POM_5V_IN": 4.5, "POM_5V_GPU": 1.25})
    rock = snap("rock5b", 2, unit="npu", npu_load_ratio=0.35)
    return {
        "model": "resnet18", "plan_sha256": "ab" * 32, "epoch": 3, "ready": False, "window": 16, "inflight": 5,
        "requests_total": 120, "completed_total": 110, "failed_total": 4, "resent_total": 2, "rejected_total": 1,
        "rejoined_total": 6,
        "latency_seconds": {"buckets": [[0.01, 3], [0.1, 90], [1.0, 110]], "sum": 7.25, "count": 114},
        "faults": [{"device": "pi-b", "stage": 1, "address": "10.0.0.2:7001", "reason": "no STATS for 2 s",
                    "detected_at_s": 12.5}],
        "workers": {
            "pi-a/stage0": {"device": "pi-a", "stage": 0, "address": "10.0.0.1:7000", "alive": True,
                            "predicted_compute_s": 0.0105, "monitor": snap("pi-a", 0)},
            "pi-a/stage3": {"device": "pi-a", "stage": 3, "address": "10.0.0.1:7003", "alive": True,
                            "predicted_compute_s": None, "monitor": snap("pi-a", 3)},
            "pi-b/stage1": {"device": "pi-b", "stage": 1, "address": "10.0.0.2:7001", "alive": False,
                            "predicted_compute_s": 0.02, "monitor": None},
            "nano/stage1": {"device": "nano", "stage": 1, "address": "10.0.0.3:7001", "alive": True,
                            "predicted_compute_s": 0.008, "monitor": jetson},
            "rock5b/stage2": {"device": "rock5b", "stage": 2, "address": "10.0.0.4:7002", "alive": True,
                              "predicted_compute_s": 0.003, "monitor": rock},
        },
    }


def parse(text: bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} plus the family types under ("TYPE", name)."""
    out: dict = {}
    for fam in text_string_to_metric_families(text.decode()):
        out[("TYPE", fam.name)] = fam.type
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def key(name: str, labels: dict | None = None, **more: str) -> tuple:
    return (name, tuple(sorted(dict(labels or {}, **more).items())))


def test_content_type_is_prometheus_text_0_0_4():
    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


def test_exposition_values_match_the_status_dict():
    status = sample_status()
    json.dumps(status, allow_nan=False)  # status() crosses HTTP as JSON too
    m = parse(exposition(status))
    assert m[("edgeplan_plan_info", (("model", "resnet18"), ("plan_sha256", "ab" * 32)))] == 1
    assert m[("edgeplan_ready", ())] == 0 and m[("edgeplan_routing_epoch", ())] == 3
    assert m[("edgeplan_inflight_requests", ())] == 5 and m[("edgeplan_inflight_limit_requests", ())] == 16
    assert m[("edgeplan_requests_total", ())] == 120
    assert m[("edgeplan_requests_completed_total", ())] == 110
    assert m[("edgeplan_requests_failed_total", ())] == 4
    assert m[("edgeplan_requests_resent_total", ())] == 2
    assert m[("edgeplan_requests_rejected_total", ())] == 1
    assert m[("edgeplan_workers_rejoined_total", ())] == 6
    assert m[("TYPE", "edgeplan_requests_completed")] == "counter"
    assert m[("edgeplan_faults", ())] == 1
    # head latency histogram, +Inf = count
    assert m[("TYPE", "edgeplan_request_latency_seconds")] == "histogram"
    assert m[("edgeplan_request_latency_seconds_bucket", (("le", "0.1"),))] == 90
    assert m[("edgeplan_request_latency_seconds_bucket", (("le", "+Inf"),))] == 114
    assert m[("edgeplan_request_latency_seconds_count", ())] == 114
    assert m[("edgeplan_request_latency_seconds_sum", ())] == 7.25

    a0 = {"board": "pi-a", "stage": "0"}
    snap = status["workers"]["pi-a/stage0"]["monitor"]
    assert m[key("edgeplan_worker_up", a0)] == 1
    assert m[("edgeplan_worker_up", (("board", "pi-b"), ("stage", "1")))] == 0
    assert m[key("edgeplan_stage_predicted_seconds", a0)] == 0.0105
    assert ("edgeplan_stage_predicted_seconds", (("board", "pi-a"), ("stage", "3"))) not in m  # None: absent
    assert m[key("edgeplan_process_cpu_seconds_total", a0)] == pytest.approx(snap["process_cpu_seconds_total"])
    assert m[key("edgeplan_process_resident_memory_bytes", a0)] == snap["process_resident_memory_bytes"]
    assert m[key("edgeplan_stage_compute_seconds_count", a0)] == 3
    assert m[key("edgeplan_stage_compute_seconds_sum", a0)] == pytest.approx(0.03)
    assert m[key("edgeplan_stage_compute_seconds_bucket", a0, le="0.005")] == 1
    assert m[key("edgeplan_stage_compute_seconds_bucket", a0, le="0.01")] == 2
    assert m[key("edgeplan_stage_compute_seconds_bucket", a0, le="+Inf")] == 3
    assert m[key("edgeplan_stage_samples_total", a0)] == 12
    link = dict(a0, peer="pi-b/stage1")
    assert m[key("edgeplan_link_sent_bytes_total", link)] == 2_000_000
    assert m[key("edgeplan_link_send_seconds_total", link)] == pytest.approx(0.16)
    assert m[key("edgeplan_link_throughput_bytes_per_second", link)] == pytest.approx(12.5e6)
    assert m[key("edgeplan_link_received_bytes_total", a0, peer="head")] == 602_112
    assert key("edgeplan_link_throughput_bytes_per_second", a0, peer="head") not in m  # never timed
    assert m[key("edgeplan_queue_depth", a0, queue="ready")] == 2
    assert m[key("edgeplan_worker_frames_dropped_total", a0)] == 3

    # board figures once per board, even with two stages on pi-a
    assert m[("edgeplan_board_memory_total_bytes", (("board", "pi-a"),))] == snap["board_memory_total_bytes"]
    assert m[("edgeplan_board_cpus", (("board", "pi-a"),))] == snap["board_cpus"]
    assert ("edgeplan_board_cpu_ratio", (("board", "pi-b"),)) not in m  # no monitor yet
    assert m[("edgeplan_board_power_watts", (("board", "nano"), ("rail", "POM_5V_GPU")))] == 1.25
    assert m[("edgeplan_board_npu_load_ratio", (("board", "rock5b"),))] == 0.35
    assert ("edgeplan_board_npu_load_ratio", (("board", "pi-a"),)) not in m


def test_base_units_and_total_suffixes():
    text = exposition(sample_status()).decode()
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("edgeplan_")
        if fam.type == "counter":
            assert f"{fam.name}_total" in {s.name for s in fam.samples}
        for bad in ("_ms", "_mb", "_kb", "_percent", "_mbit"):
            assert bad not in fam.name, fam.name


def test_minimal_status_before_any_worker_reports():
    m = parse(exposition({"model": "m", "plan_sha256": "x", "ready": False, "workers": {}}))
    assert m[("edgeplan_ready", ())] == 0 and ("edgeplan_requests_total", ()) not in m


def test_board_side_runtime_import_does_not_need_prometheus_client():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import edgeplan.runtime.metrics, edgeplan.runtime.monitor\n")
    subprocess.run([sys.executable, "-c", code], check=True)
