"""The Head as a long-lived service over real worker processes: submit/ready/status/close, Busy, deadlines."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import wait

import numpy as np
import pytest

from edgeplan.runtime.head import Busy, HeadConfig, RequestFailed
from edgeplan.runtime.local import start_pipeline

from .fake_artifacts import WORKER, make_artifacts, reference

DIMS = [4, 6, 3]


def _x(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, DIMS[0])).astype(np.float32)


def test_submit_answers_concurrent_requests_and_status_counts_them(tmp_path):
    w = make_artifacts(tmp_path / "art", [[("a", 3), ("b", 5)], [("c", 6), ("d", 2)]], DIMS, microbatches=2)
    p = start_pipeline(tmp_path / "art", local=True, command=WORKER, log_dir=tmp_path / "logs",
                       config=HeadConfig(window=8))
    try:
        head = p.head
        assert head.ready() and head.batch == 16
        assert head.input_specs == [("in0", (4,), "float32")] and head.output_specs == [("out1", (3,), "float32")]
        xs = [_x(16, i) for i in range(20)]
        futs = []
        for x in xs:
            while True:
                try:
                    futs.append(head.submit([x]))
                    break
                except Busy as e:
                    time.sleep(e.retry_after_s / 10)
        for x, f in zip(xs, futs, strict=True):
            np.testing.assert_allclose(f.result(timeout=30)[0], reference(w, x), atol=1e-5)
        st = head.status()
        json.dumps(st)  # JSON-able
        assert st["requests_total"] == 20 and st["completed_total"] == 20 and st["failed_total"] == 0
        assert st["inflight"] == 0 and st["epoch"] == 1 and st["ready"] and st["window"] == 8
        assert st["latency_seconds"]["count"] == 20 and st["latency_seconds"]["buckets"][-1][1] == 20
        assert 0 < st["latency_seconds"]["sum"] < 20 * 30
        assert set(st["workers"]) == {"a/stage0", "b/stage0", "c/stage1", "d/stage1"}
        assert st["workers"]["c/stage1"]["predicted_compute_s"] == pytest.approx(0.002)  # plan.json's compute_s
        assert all(v["alive"] for v in st["workers"].values())
        # The head polls every worker's Monitor about once a second: its numbers agree with the run counters.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # each worker's snapshot arrives on its own; wait for both
            mon, mon_a = (head.status()["workers"][k]["monitor"] for k in ("c/stage1", "a/stage0"))
            if mon and mon_a and mon["compute_seconds"]["count"] == 40 and mon_a["compute_seconds"]["count"] == 40:
                break  # 20 requests x 2 micro-batches
            time.sleep(0.1)
        assert mon["compute_seconds"]["count"] == 40 and mon["samples_total"] == 40 * 6
        assert mon["device"] == "c" and mon["stage"] == 1 and mon["links"]["head"]["sent_bytes_total"] > 20 * 6 * 3 * 4
        assert mon_a["links"]["c/stage1"]["sent_bytes_total"] > 0
    finally:
        p.close()
        p.close()  # idempotent
    f = head.submit([_x(16, 0)])
    with pytest.raises(RequestFailed, match="closed"):
        f.result(timeout=1)
    assert all(x.process.returncode == 0 for x in p.workers)  # BYE: clean exits


def test_full_window_raises_busy_at_once_and_bad_inputs_name_the_input(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2)]], [4, 3], delay=0.3)
    head, stop = start_pipeline(tmp_path / "art", local=True, command=WORKER, log_dir=tmp_path / "logs",
                                config=HeadConfig(window=2))
    try:
        with pytest.raises(ValueError, match=r"input in0: shape \[3, 4\].*\[2, 4\]"):
            head.submit([_x(3, 0)])
        with pytest.raises(ValueError, match="takes 1 input"):
            head.submit([_x(2, 0), _x(2, 1)])
        a, b = head.submit([_x(2, 0)]), head.submit([_x(2, 1)])
        with pytest.raises(Busy) as e:
            head.submit([_x(2, 2)])
        # raised while both requests still ran (each takes the worker's 0.3 s): it did not wait for a slot
        assert not (a.done() or b.done()) and e.value.retry_after_s > 0
        assert head.status()["rejected_total"] == 1 and head.status()["inflight"] == 2
        wait([a, b], timeout=10)
        assert a.result().__len__() == 1 and b.result()[0].shape == (2, 3)
        assert head.submit([_x(2, 3).astype(np.float64)]).result(timeout=10)[0].dtype == np.float32  # cast
    finally:
        stop()


def test_request_fails_at_its_deadline_naming_the_stage_it_waits_on(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2)], [("c", 2)]], DIMS, delay=2.0)
    p = start_pipeline(tmp_path / "art", local=True, command=WORKER, log_dir=tmp_path / "logs")
    try:
        t0 = time.monotonic()
        f = p.head.submit([_x(2, 0)], deadline_s=0.5)
        with pytest.raises(RequestFailed) as e:
            f.result(timeout=5)
        took = time.monotonic() - t0
        assert 0.45 < took < 1.8, took  # at the deadline, not after the 2 s stage (margin for a loaded machine)
        assert "deadline of 0.5s" in e.value.reason and "board c stage 1" in e.value.reason
        assert p.head.status()["failed_total"] == 1
    finally:
        p.close()


def test_stage_without_live_replica_fails_requests_fast_and_is_not_ready(tmp_path):
    make_artifacts(tmp_path / "art", [[("a", 2)], [("c", 2)]], DIMS, delay=0.5)
    p = start_pipeline(tmp_path / "art", local=True, command=WORKER, log_dir=tmp_path / "logs")
    try:
        f = p.head.submit([_x(2, 0)])
        time.sleep(0.2)
        t0 = time.monotonic()
        next(w for w in p.workers if w.device == "c").process.kill()
        with pytest.raises(RequestFailed, match="board c stage 1") as e:
            f.result(timeout=10)
        assert time.monotonic() - t0 < 2.5
        assert "no live replica" in e.value.reason
        assert not p.head.ready()
        with pytest.raises(RequestFailed, match="not ready.*board c stage 1"):
            p.head.submit([_x(2, 1)]).result(timeout=2)
        st = p.head.status()
        assert not st["ready"] and not st["workers"]["c/stage1"]["alive"]
        assert [(x["device"], x["stage"]) for x in st["faults"]] == [("c", 1)]
    finally:
        p.close()


def test_run_deployed_drives_workers_already_running_at_the_compiled_addresses(tmp_path):
    """``run --cluster``: the head takes worker addresses from stage.json peers and head.json, starts nothing."""
    from edgeplan import jsonio
    from edgeplan.runtime.local import discover, run_deployed, start_workers, stop_workers
    from edgeplan.runtime.spec import StageSpec

    w = make_artifacts(tmp_path / "art", [[("a", 3), ("b", 5)], [("c", 6), ("d", 2)]], DIMS)
    art = discover(tmp_path / "art")
    workers = start_workers(art, tmp_path, command=WORKER)  # stand-ins for the boards' services
    try:
        where = {(x.device, x.stage): x.address for x in workers}
        with socket.create_server(("127.0.0.1", 0)) as s:
            head_at = f"127.0.0.1:{s.getsockname()[1]}"

        def peer(p):
            return {**p, "address": head_at if p["device"] == "head" else where[(p["device"], p["stage"])]}

        for stage_dir, spec in art.stages:  # what compile writes for a cluster: every address known
            d = spec.to_json()
            d["upstream"], d["downstream"] = [peer(p) for p in d["upstream"]], [peer(p) for p in d["downstream"]]
            StageSpec.from_json(d)
            jsonio.write(stage_dir / "stage.json", d)
        jsonio.write(tmp_path / "art" / "head.json", {
            "listen": head_at, "address": head_at,
            "downstream": [{"device": k[0], "stage": 0, "address": a} for k, a in where.items() if k[1] == 0]})
        xs = [[_x(8, i)] for i in range(12)]
        _, res = run_deployed(tmp_path / "art", inputs=xs, config=HeadConfig(window=4))
        assert res.ok and res.completed == 12, (res.failures, res.faults)
        for x, out in zip(xs, res.outputs, strict=True):
            np.testing.assert_allclose(out[0], reference(w, x[0]), atol=1e-5)
        assert all(x.process.poll() is None for x in workers)  # deployed workers keep running after the run
    finally:
        for x in workers:
            x.process.terminate()
        stop_workers(workers)


def test_a_closed_head_frees_its_address_for_the_next_head_at_once(tmp_path):
    """A deployed cluster's head listens on a fixed address (head.json); closing one head and starting
    another there (a second `connect`/`serve` in one process) must work at once, answers included."""
    from edgeplan.runtime.head import Head
    from edgeplan.runtime.local import discover, start_workers, stop_workers

    w = make_artifacts(tmp_path / "art", [[("a", 2)], [("b", 2)]], DIMS)
    art = discover(tmp_path / "art")
    workers = start_workers(art, tmp_path, command=WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fixed = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        for round_ in range(2):
            head = Head.from_specs([spec for _, spec in art.stages], art.microbatches, fixed,
                                   {(x.device, x.stage): x.address for x in workers}, HeadConfig())
            t0 = time.monotonic()
            head.start()
            try:
                x = _x(head.batch, round_)
                np.testing.assert_allclose(head.submit([x]).result(timeout=10)[0], reference(w, x), atol=1e-5)
                assert time.monotonic() - t0 < 5, "the first request waited for a re-send"
            finally:
                head.close()
    finally:
        stop_workers(workers, grace_s=0.0)
