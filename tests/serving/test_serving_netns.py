"""`edgeplan serve` inside `edgeplan emulate` (three emulated boards, shaped links, CPU quotas; root).

1,000 tritonclient.http requests of 1-3 samples each (8 in flight), every answer equal to
PyTorch within 1e-4, then /metrics parsed: per-board CPU and memory, link throughput and
per-stage compute time for every board of the plan. LeNet-5 in three stages, plan batch 8.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan.codegen.compile import compile_plan
from edgeplan.graph.load import build, load_model
from tests.tiers import netns_tier

from ..codegen.codegen_helpers import make_plan

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"
MODEL = "lenet5"
REQUESTS = 1000
TOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.netns
@netns_tier
def test_serve_inside_emulate_answers_1000_tritonclient_requests_like_torch(tmp_path):
    import httpx
    import tritonclient.http as triton
    from prometheus_client.parser import text_string_to_metric_families

    traced = build(MODEL)
    n = len(traced.graph.layers)
    assert n == 12
    # Cut after relu1 (6x28x28 floats a sample): gpu-board's 6 samples are a 113 KB send, large
    # enough for the monitor to time (>= 64 KiB), so the link throughput gauge has a value.
    plan = make_plan(traced.graph, [2, 6], [[("gpu-board", 6), ("npu-board", 2)], [("cpu-board", 8)],
                                            [("gpu-board", 8)]])
    art = compile_plan(plan, MODEL, tmp_path / "art", backend="onnxruntime", traced=traced)
    port = _free_port()
    edgeplan = [sys.executable, "-m", "edgeplan.cli"]
    proc = subprocess.Popen([*edgeplan, "emulate", str(CLUSTER), "--host-gflops", "40", "--",
                             *edgeplan, "serve", str(art), "--port", str(port), "--dead-after", "5"],
                            stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    client = None
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not get ready:\n" + (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        client = triton.InferenceServerClient(url, concurrency=8, network_timeout=120)
        out_name = client.get_model_metadata(MODEL)["outputs"][0]["name"]
        rng = np.random.default_rng(7)
        xs = [rng.standard_normal((int(rng.integers(1, 4)), 1, 32, 32)).astype(np.float32) for _ in range(REQUESTS)]
        model = load_model(MODEL).module.eval()
        worst, pending = 0.0, []

        def finish(i, p):
            y = p.get_result().as_numpy(out_name)
            with torch.no_grad():
                ref = model(torch.from_numpy(xs[i])).numpy()
            assert y.shape == ref.shape
            return float(np.abs(y - ref).max())

        t0 = time.monotonic()
        for i, x in enumerate(xs):
            inp = triton.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            pending.append((i, client.async_infer(MODEL, [inp])))
            if len(pending) >= 8:
                worst = max(worst, finish(*pending.pop(0)))
        for item in pending:
            worst = max(worst, finish(*item))
        wall = time.monotonic() - t0
        assert worst < TOL, f"max abs error {worst:g}"
        print(f"{REQUESTS} requests ({sum(len(x) for x in xs)} samples) in {wall:.1f}s, max abs error {worst:.3g}")

        every = {"gpu-board", "npu-board", "cpu-board"}

        def boards(name: str) -> set[str]:
            return {s.labels.get("board") for s in samples if s.name == name}

        # the head polls every worker's monitor about once a second: wait until every board has reported (a
        # loaded machine may take several polls), then check what it reported
        deadline = time.monotonic() + 30
        while True:
            text = httpx.get(f"http://{url}/metrics", timeout=10).text
            samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
            if boards("edgeplan_board_cpu_ratio") >= every or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert boards("edgeplan_board_cpu_ratio") == every
        assert boards("edgeplan_board_memory_used_bytes") == every
        assert every <= boards("edgeplan_link_sent_bytes_total")
        assert any(s.name == "edgeplan_link_throughput_bytes_per_second" and s.value > 0 for s in samples)
        counts = {(s.labels["board"], s.labels["stage"]): s.value for s in samples
                  if s.name == "edgeplan_stage_compute_seconds_count"}
        assert set(counts) == {("gpu-board", "0"), ("npu-board", "0"), ("cpu-board", "1"), ("gpu-board", "2")}
        assert all(v > 0 for v in counts.values()), counts
        served = {s.name: s.value for s in samples if s.name.startswith("edgeplan_serving_")}
        assert served["edgeplan_serving_requests_total"] == REQUESTS
    finally:
        if client is not None:
            client.close()
        proc.send_signal(signal.SIGTERM)  # emulate stops serve, then tears the testbed down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
