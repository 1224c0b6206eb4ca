"""Monitor -> Head.status() -> metrics.exposition() -> `edgeplan top`, on a real local pipeline.

The workers are real processes on the numpy_test backend with a known per-call delay, so what the
monitors measured can be checked against what happened: calls and samples per worker, bytes per link,
the compute time against the injected delay, and the plan's predicted seconds beside them.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeplan import top
from edgeplan.runtime import local
from edgeplan.runtime.head import Busy, HeadConfig
from edgeplan.runtime.metrics import exposition

from .fake_artifacts import WORKER, make_artifacts

DELAY_S = 0.02
GROUPS = [[("a", 4)], [("b", 2), ("c", 2)]]
DIMS = [8, 16384, 4]  # a -> b/c: 2 samples x 16384 float32 = 128 KiB per send, enough to time the link
N = 12


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A local pipeline that has answered N requests, and a status() in which every worker reported them."""
    tmp_path = tmp_path_factory.mktemp("mon-e2e")
    make_artifacts(tmp_path / "art", GROUPS, DIMS, delay=DELAY_S)
    pipe = local.start_pipeline(tmp_path / "art", local=True, command=WORKER, log_dir=tmp_path / "logs",
                                config=HeadConfig(window=4))
    try:
        head = pipe.head
        rng = np.random.default_rng(0)
        futures = []
        for _ in range(N):
            x = rng.standard_normal((head.batch, DIMS[0])).astype(np.float32)
            while True:
                try:
                    futures.append(head.submit([x]))
                    break
                except Busy:  # the window is full: wait for answers
                    time.sleep(0.01)
        for f in futures:
            f.result(timeout=60)

        def reported_all(st: dict) -> bool:
            mons = [w["monitor"] for w in st["workers"].values()]
            return all(m and m["compute_seconds"]["count"] == N for m in mons)

        deadline = time.time() + 15
        status = head.status()
        while not reported_all(status) and time.time() < deadline:
            time.sleep(0.2)  # the head polls the workers' monitors about once a second
            status = head.status()
        assert reported_all(status), status["workers"]
        yield pipe, status
    finally:
        pipe.close()


def test_metrics_of_a_running_pipeline_match_what_it_did(ran):
    _, status = ran
    text = exposition(status).decode()
    m = _samples(text)

    def get(name, **labels):
        return m[(name, tuple(sorted(labels.items())))]

    assert get("edgeplan_requests_completed_total") == N
    assert get("edgeplan_request_latency_seconds_count") == N
    # every worker ran every request once, with its share of the samples
    for board, stage, samples in (("a", "0", 4), ("b", "1", 2), ("c", "1", 2)):
        assert get("edgeplan_worker_up", board=board, stage=stage) == 1
        assert get("edgeplan_stage_compute_seconds_count", board=board, stage=stage) == N
        assert get("edgeplan_stage_samples_total", board=board, stage=stage) == N * samples
        # measured compute time against the injected sleep: at least it, and not far above it
        mean = get("edgeplan_stage_compute_seconds_sum", board=board, stage=stage) / N
        assert DELAY_S <= mean < DELAY_S + 0.15, (board, mean)  # slack: a loaded 2-core CI machine
        assert get("edgeplan_process_resident_memory_bytes", board=board, stage=stage) > 10 * 2**20
    assert get("edgeplan_stage_predicted_seconds", board="a", stage="0") == 0.001  # plan.json's compute_s
    assert get("edgeplan_stage_predicted_seconds", board="b", stage="1") == 0.002
    # links: a sent each of b and c N x 128 KiB (plus frame headers), and that was large enough to time
    for peer in ("b/stage1", "c/stage1"):
        sent = get("edgeplan_link_sent_bytes_total", board="a", stage="0", peer=peer)
        assert N * 2 * DIMS[1] * 4 <= sent < N * (2 * DIMS[1] * 4 + 4096)
        assert get("edgeplan_link_throughput_bytes_per_second", board="a", stage="0", peer=peer) > 1e6
    for board in ("b", "c"):  # tensor bytes received, whatever the worker names its upstream
        got = sum(v for (name, labels), v in m.items() if name == "edgeplan_link_received_bytes_total"
                  and dict(labels)["board"] == board)
        assert got == N * 2 * DIMS[1] * 4
    # `top` reads the same numbers
    view = top.parse(text)
    assert view.requests["completed"] == N
    assert view.stages[("a", "0")].compute.mean_since(None) == (
        get("edgeplan_stage_compute_seconds_sum", board="a", stage="0") / N)


def test_top_reads_the_serving_endpoint_of_the_running_pipeline(ran):
    """The user's loop: `edgeplan serve` (starlette app over the head) -> /metrics -> `edgeplan top --once`."""
    import socket
    import threading

    import uvicorn
    from typer.testing import CliRunner

    from edgeplan.cli import app
    from edgeplan.runtime.batcher import Batcher
    from edgeplan.runtime.http import make_app

    pipe, status = ran
    batcher = Batcher(pipe.head)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(batcher, "toy"), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        res = CliRunner().invoke(app, ["top", "--url", url, "--once"])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        batcher.close()
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"requests {N}, completed {N}, failed 0" in out
    for board, stage, predicted_ms in (("a", "0", "1.00"), ("b", "1", "2.00"), ("c", "1", "2.00")):
        h = status["workers"][f"{board}/stage{stage}"]["monitor"]["compute_seconds"]
        measured_ms = f"{h['sum'] / h['count'] * 1e3:.2f}"
        lines = [ln for ln in out.splitlines() if re.search(
            rf"\b{board}\b.*\b{stage}\b.*up.*{re.escape(measured_ms)}.*{re.escape(predicted_ms)}", ln)]
        assert len(lines) == 1, (board, measured_ms, out)
    # one row in the senders' passive table, one in the receive-side table, each with a figure
    links = [ln for ln in out.splitlines() if "a/stage0" in ln and "b/stage1" in ln]
    assert len(links) == 2 and all(re.search(r"\d+\.\d", ln) for ln in links), out
