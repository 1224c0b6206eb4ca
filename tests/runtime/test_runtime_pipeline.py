"""Local pipelines of real worker processes on the numpy_test backend: routing, order, faults, bad frames."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeplan.runtime import local, report, wire
from edgeplan.runtime.head import Head, HeadConfig
from edgeplan.runtime.local import RandomInputs, discover, run_local, start_workers, stop_workers

from .fake_artifacts import WORKER, make_artifacts, reference

TWO_BY_TWO = [[("a", 3), ("b", 5)], [("c", 6), ("d", 2)]]  # unequal, misaligned ranges
DIMS = [4, 6, 3]


def _check_outputs(root, weights, result, art):
    inputs = RandomInputs(art.stages[0][1], art.batch, result.n_requests)
    for i in range(result.n_requests):
        if result.outputs[i] is None:
            continue
        want = reference(weights, inputs[i][0])
        np.testing.assert_allclose(result.outputs[i][0], want, atol=1e-5, err_msg=f"request {i}")


def test_two_stages_two_replicas_return_correct_outputs_in_order(tmp_path):
    w = make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS, microbatches=2)
    art, res = run_local(tmp_path / "art", 40, command=WORKER, log_dir=tmp_path / "logs")
    assert res.ok, (res.failures, res.faults)
    assert res.completed == 40 and all(o[0].shape == (16, 3) for o in res.outputs)
    _check_outputs(tmp_path, w, res, art)
    rep = report.build(art.plan, res)
    assert rep["completed"] == 40 and rep["latency_s"]["p99"] >= rep["latency_s"]["p50"] > 0
    assert {r["device"] for s in rep["stages"] for r in s["replicas"]} == {"a", "b", "c", "d"}
    assert all(r["runs"] == 80 for s in rep["stages"] for r in s["replicas"])  # 40 requests x 2 micro-batches
    table = report.format_table(rep)
    assert "latency p50" in table and "throughput" in table and "FAULT" not in table


def test_replica_forwards_past_a_downstream_replica_it_shares_no_samples_with(tmp_path):
    """Stage 0's b holds [3, 8) and stage 1's c only [0, 2): b must still feed d ([2, 8)), not stop at c."""
    w = make_artifacts(tmp_path / "art", [[("a", 3), ("b", 5)], [("c", 2), ("d", 6)]], DIMS)
    art, res = run_local(tmp_path / "art", 6, command=WORKER, log_dir=tmp_path / "logs",
                         config=HeadConfig(request_timeout_s=10.0))
    assert res.ok and res.completed == 6, (res.failures, res.faults)
    _check_outputs(tmp_path, w, res, art)


def test_hmac_pipeline_and_refused_frames(tmp_path):
    """Workers with a secret serve the head, and drop connections carrying garbage or a wrong HMAC."""
    w = make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS)
    art = discover(tmp_path / "art")
    workers = start_workers(art, tmp_path, secret=b"k1", command=WORKER)
    try:
        target = wire.parse_address(workers[0].address)
        for blob in (b"GET / HTTP/1.1\r\n\r\n" * 3, wire.encode(wire.Frame(wire.PING))):
            with socket.create_connection(target) as s:
                s.sendall(blob)
                s.settimeout(5)
                try:
                    assert s.recv(100) == b""  # closed by the worker, no PONG
                except ConnectionResetError:  # closed with our bytes unread: also a refusal
                    pass
        with socket.create_connection(target) as s:  # a wrong secret is refused at the handshake
            with pytest.raises(wire.FrameError, match="another secret"):
                wire.handshake(s, b"wrong", server=False, timeout=5)
        head = Head.from_specs([s for _, s in art.stages], art.microbatches, "127.0.0.1:0",
                               {(x.device, x.stage): x.address for x in workers},
                               HeadConfig(secret=b"k1", shutdown_workers=True))
        res = head.run(RandomInputs(art.stages[0][1], art.batch, 10))
    finally:
        stop_workers(workers)
    assert res.ok, (res.failures, res.faults)
    _check_outputs(tmp_path, w, res, art)
    assert res.stats["a/stage0"]["bad_frames"] == 3
    assert all(x.process.returncode == 0 for x in workers)


def test_killed_replica_is_reported_and_its_requests_retried_on_the_survivor(tmp_path):
    w = make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS, microbatches=2, delay=0.005)
    killed = {}

    def kill_c(i, workers):
        if i == 8 and not killed:
            victim = next(x for x in workers if x.device == "c")
            victim.process.kill()
            killed["t"] = time.monotonic()

    t0 = time.monotonic()
    art, res = run_local(tmp_path / "art", 40, command=WORKER, log_dir=tmp_path / "logs", on_complete=kill_c,
                         config=HeadConfig(dead_after_s=2.0, request_timeout_s=10.0))
    assert time.monotonic() - t0 < 30
    assert not res.ok
    assert [(f.device, f.stage) for f in res.faults] == [("c", 1)]
    assert "c" in res.faults[0].describe() and "stage 1" in res.faults[0].describe()
    assert res.completed + len(res.failures) == 40  # nothing lost
    assert res.completed == 40  # d took over c's samples (chunked over its compiled batch of 2)
    assert res.resent > 0
    _check_outputs(tmp_path, w, res, art)
    assert res.stats["d/stage1"]["chunked_runs"] > 0


def test_last_replica_of_a_stage_dying_fails_every_open_request_explicitly(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2), ("b", 2)], [("c", 4)]], DIMS, delay=0.005)

    def kill_c(i, workers):
        if i == 5:
            next(x for x in workers if x.device == "c").process.kill()

    t0 = time.monotonic()
    art, res = run_local(tmp_path / "art", 50, command=WORKER, log_dir=tmp_path / "logs", on_complete=kill_c)
    assert time.monotonic() - t0 < 20
    assert res.completed >= 6 and res.failures
    assert res.completed + len(res.failures) == 50
    assert all("board c stage 1" in r for r in res.failures.values())


def test_stopped_worker_is_detected_by_missed_heartbeats(tmp_path):
    make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS, delay=0.005)
    stopped = []

    def stop_b(i, workers):
        if i == 5:
            b = next(x for x in workers if x.device == "b")
            os.kill(b.process.pid, signal.SIGSTOP)
            stopped.append(b)

    # dead after 2 s without heartbeats (the detection bound): with less, a live worker that a loaded
    # machine starves of CPU for a moment is reported too, and the test expects exactly one fault
    try:
        art, res = run_local(tmp_path / "art", 30, command=WORKER, log_dir=tmp_path / "logs", on_complete=stop_b,
                             config=HeadConfig(dead_after_s=2.0, request_timeout_s=5.0))
    finally:
        for b in stopped:
            if b.process.poll() is None:
                os.kill(b.process.pid, signal.SIGCONT)
    assert [(f.device, f.stage) for f in res.faults] == [("b", 0)]
    assert "heartbeat" in res.faults[0].reason or "send" in res.faults[0].reason
    assert res.completed == 30


def test_cli_run_local_prints_table_and_writes_report(tmp_path, monkeypatch):
    from edgeplan.cli import app

    make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS)
    monkeypatch.setattr(local, "_default_command", lambda board: (WORKER, {}))
    out = CliRunner().invoke(app, ["run", str(tmp_path / "art"), "--local", "--requests", "12",
                                   "--report", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    assert "latency p50" in out.output and "12/12 requests answered" in out.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["completed"] == 12 and rep["ok"] and rep["predicted"]["throughput"] == 2000.0


def test_cli_run_refuses_altered_module_naming_the_file(tmp_path, monkeypatch):
    from edgeplan.cli import app

    make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS)
    with open(tmp_path / "art" / "d" / "stage1" / "stage.npz", "ab") as f:
        f.write(b"x")
    monkeypatch.setattr(local, "_default_command", lambda board: (WORKER, {}))
    out = CliRunner().invoke(app, ["run", str(tmp_path / "art"), "--local", "--requests", "3"])
    assert out.exit_code != 0
    assert "d/stage1" in out.output and "sha256" in out.output


@pytest.mark.parametrize("flags", [[], ["--local", "--cluster", "x.yaml"]])
def test_cli_run_needs_exactly_one_mode(tmp_path, flags):
    from edgeplan.cli import app

    (tmp_path / "x.yaml").write_text("")
    out = CliRunner().invoke(app, ["run", str(tmp_path), *[str(tmp_path / f) if f.endswith(".yaml") else f
                                                            for f in flags]])
    assert out.exit_code != 0


def test_run_local_accepts_a_relative_artifact_path(tmp_path, monkeypatch):
    make_artifacts(tmp_path / "art", [[("a", 2)]], [4, 3])
    monkeypatch.chdir(tmp_path)
    art, res = run_local("art", 3, command=WORKER, log_dir=tmp_path / "logs")
    assert res.ok and res.completed == 3
