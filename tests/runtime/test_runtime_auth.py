"""Replay-resistant authentication: frames captured on a live connection and replayed are refused.

A recording proxy on 127.0.0.1 sits between a client and a real stage worker (in-process, identity
module, a shared secret): it keeps every byte of both directions and can inject bytes into either, as
an attacker on the path could. Each replay must be refused with a FrameError naming what it was, and
must never reach the worker's downstream peer.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeplan.runtime import local, net, wire
from edgeplan.runtime.local import run_local
from edgeplan.runtime.spec import Peer, StageSpec, Tensor
from edgeplan.runtime.worker import Worker

from .fake_artifacts import WORKER, make_artifacts, reference

SECRET = b"replay-test-secret"
SHAPE = (2, 8)


def _addr(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def _frames(stream: bytes) -> list[bytes]:
    """Split a recorded byte stream into whole frames (by each header's body length)."""
    out, off = [], 0
    while off + wire.HEADER.size <= len(stream):
        body_len = wire.HEADER.unpack_from(stream, off)[-1]
        out.append(bytes(stream[off:off + wire.HEADER.size + body_len]))
        off += wire.HEADER.size + body_len
    assert off == len(stream), "recording ends mid-frame"
    return out


def _kind(frame: bytes) -> int:
    return wire.HEADER.unpack_from(frame)[2]


class Recorder:
    """TCP proxy for one connection: records what each side sent and injects bytes into either direction."""

    def __init__(self, target: str):
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.address = _addr(self._srv)
        self.sent = {"c2s": bytearray(), "s2c": bytearray()}
        self._out: dict[str, socket.socket] = {}
        self._locks = {"c2s": threading.Lock(), "s2c": threading.Lock()}
        self._target = target
        self._ready = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self._srv.accept()
        upstream = socket.create_connection(wire.parse_address(self._target))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._out = {"c2s": upstream, "s2c": client}
        self._ready.set()
        threading.Thread(target=self._pump, args=(client, "c2s"), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, "s2c"), daemon=True).start()

    def _pump(self, src: socket.socket, direction: str) -> None:
        try:
            while chunk := src.recv(1 << 16):
                with self._locks[direction]:
                    self.sent[direction] += chunk
                    self._out[direction].sendall(chunk)
        except OSError:
            pass
        for s in self._out.values():
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def inject(self, direction: str, data: bytes) -> None:
        assert self._ready.wait(5)
        with self._locks[direction]:
            self._out[direction].sendall(data)

    def close(self) -> None:
        self._srv.close()
        for s in self._out.values():
            s.close()


class Sink:
    """The worker's downstream peer: accepts authenticated connections and queues the frames it receives."""

    def __init__(self, secret: bytes | None):
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.address = _addr(self._srv)
        self.frames: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self._secret = secret
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            session = wire.handshake(conn, self._secret, server=True, timeout=5)
            while True:
                self.frames.put(wire.recv_frame(conn, session, 1 << 20))
        except (wire.FrameError, wire.ConnectionClosed, OSError) as e:
            self.errors.append(str(e))
        finally:
            conn.close()

    def close(self) -> None:
        self._srv.close()


class Stage:
    """A real worker (identity module) whose outputs go to a Sink; ``log`` keeps what it says."""

    def __init__(self, secret: bytes | None, sink_secret: bytes | None = None):
        self.sink = Sink(secret if sink_secret is None else sink_secret)
        self.log: list[str] = []
        spec = StageSpec(model="auth", plan_sha256="0", stage=0, n_stages=1, device="w", unit="cpu", target="x86",
                         backend="identity", module="-", listen="127.0.0.1:0", microbatch=SHAPE[0], lo=0,
                         hi=SHAPE[0], inputs=(Tensor("x", SHAPE, "float32"),), outputs=(Tensor("y", SHAPE, "float32"),),
                         upstream=(Peer("head", -1, self.sink.address, 0, SHAPE[0]),),
                         downstream=(Peer("head", -1, self.sink.address, 0, SHAPE[0]),))
        self.worker = Worker(spec, lambda xs: list(xs), secret=secret, log=self.log.append)
        self.address = self.worker.bind()
        threading.Thread(target=self.worker.serve_forever, daemon=True).start()

    def said(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((m for m in self.log if text in m), None)
            if hit:
                return hit
            time.sleep(0.01)
        raise AssertionError(f"worker never said {text!r}; it said {self.log}")

    def close(self) -> None:
        self.worker.stop()
        self.sink.close()


def _data(rid: int) -> wire.Frame:
    x = np.full(SHAPE, rid, np.float32)
    return wire.Frame(wire.DATA, request_id=rid, lo=0, hi=SHAPE[0], tensors=(x,))


def _nothing_arrives(sink: Sink, wait: float = 0.3) -> None:
    with pytest.raises(queue.Empty):
        f = sink.frames.get(timeout=wait)
        raise AssertionError(f"a replayed frame went through: request {f.request_id}")


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def stage():
    s = Stage(SECRET)
    yield s
    s.close()


def _live_connection(stage: Stage) -> tuple[Recorder, socket.socket, wire.Session]:
    """A client connected to the worker through a recorder, after one request went through end to end."""
    rec = Recorder(stage.address)
    sock, session = net.open_connection(rec.address, SECRET, timeout=5)
    wire.send_frame(sock, _data(1), session)
    got = stage.sink.frames.get(timeout=5)
    assert got.request_id == 1 and float(got.tensors[0][0, 0]) == 1.0
    return rec, sock, session


def test_frame_replayed_on_the_same_connection_is_refused(stage):
    rec, sock, session = _live_connection(stage)
    hello_c, proof_c, data = _frames(bytes(rec.sent["c2s"]))
    assert (_kind(hello_c), _kind(proof_c), _kind(data)) == (wire.HELLO, wire.HELLO, wire.DATA)
    rec.inject("c2s", data)  # the same bytes again, on the connection they were captured from
    assert "sequence 0 was already received" in stage.said("replayed on this connection")
    _nothing_arrives(stage.sink)
    assert _closed_by_peer(sock)
    assert stage.worker.stats["bad_frames"] == 1
    rec.close()


def test_frame_replayed_on_a_new_connection_is_refused(stage):
    rec, sock, _ = _live_connection(stage)
    recorded_c2s, recorded_s2c = bytes(rec.sent["c2s"]), bytes(rec.sent["s2c"])
    data = _frames(recorded_c2s)[-1]
    sock.close()
    # spliced into another, properly authenticated connection
    rec2 = Recorder(stage.address)
    sock2, session2 = net.open_connection(rec2.address, SECRET, timeout=5)
    wire.send_frame(sock2, wire.Frame(wire.PING), session2)  # the proxy has passed the handshake on
    assert wire.recv_frame(sock2, session2, wire.MAX_META_BYTES).kind == wire.PONG
    rec2.inject("c2s", data)
    stage.said("signed for another connection")
    _nothing_arrives(stage.sink)
    # the whole recorded client session, replayed on a fresh connection: the worker's nonce is new
    with socket.create_connection(wire.parse_address(stage.address)) as raw:
        raw.sendall(recorded_c2s)
        stage.said("recorded session replayed")
        assert _closed_by_peer(raw)
    _nothing_arrives(stage.sink)
    # a recorded server session, replayed to a connecting client: the client's nonce is new
    with socket.create_server(("127.0.0.1", 0)) as fake:
        def replay():
            conn, _ = fake.accept()
            with conn:
                conn.sendall(recorded_s2c)
                time.sleep(0.5)

        threading.Thread(target=replay, daemon=True).start()
        with pytest.raises(wire.FrameError, match="recorded handshake replayed"):
            net.open_connection(_addr(fake), SECRET, timeout=5)
    assert stage.worker.stats["bad_frames"] == 2
    sock2.close()
    rec.close()
    rec2.close()


def test_frame_reflected_to_its_sender_is_refused(stage):
    rec, sock, session = _live_connection(stage)
    wire.send_frame(sock, wire.Frame(wire.PING, request_id=7), session)
    pong = wire.recv_frame(sock, session, wire.MAX_META_BYTES)
    assert pong.kind == wire.PONG and pong.request_id == 7
    ping = _frames(bytes(rec.sent["c2s"]))[-1]
    # the client's own PING sent back to it, as if the worker had sent it
    rec.inject("s2c", ping)
    with pytest.raises(wire.FrameError, match="reflected"):
        wire.recv_frame(sock, session, wire.MAX_META_BYTES)
    # the worker's PONG sent back to the worker
    pong_bytes = _frames(bytes(rec.sent["s2c"]))[-1]
    assert _kind(pong_bytes) == wire.PONG
    rec.inject("c2s", pong_bytes)
    stage.said("reflected")
    _nothing_arrives(stage.sink)
    rec.close()


def test_wrong_or_missing_secret_is_refused_at_the_handshake(stage):
    with pytest.raises(wire.FrameError, match="another secret"):
        net.open_connection(stage.address, b"not the secret", timeout=5)
    stage.said("another secret")
    sock = net.connect(stage.address, timeout=5)  # no secret: frames without a handshake
    wire.send_frame(sock, _data(3))
    stage.said("requires authentication")
    assert _closed_by_peer(sock)
    sock.close()
    _nothing_arrives(stage.sink)
    plain = Stage(None)  # a worker without a secret refuses a peer that wants to authenticate
    try:
        with pytest.raises(wire.FrameError, match="closed the connection during the handshake"):
            net.open_connection(plain.address, SECRET, timeout=5)
        plain.said("no secret configured")
    finally:
        plain.close()


def test_worker_outputs_to_a_peer_with_another_secret_are_reported_not_delivered():
    s = Stage(SECRET, sink_secret=b"the sink's other secret")
    try:
        sock, session = net.open_connection(s.address, SECRET, timeout=5)
        wire.send_frame(sock, _data(4), session)
        assert "another secret" in s.said("cannot send to")
        _nothing_arrives(s.sink)
        assert any("another secret" in e for e in s.sink.errors)
        sock.close()
    finally:
        s.close()


def test_sender_handshakes_again_after_the_peer_restarts():
    """A new connection gets a new handshake (fresh nonces, sequence numbers from 0)."""
    sink = Sink(SECRET)
    errors = []
    sender = net.Sender(sink.address, secret=SECRET, send_timeout_s=2.0, max_queue=8,
                        on_error=lambda f, m: errors.append(m))
    try:
        assert sender.put(_data(1))
        assert sink.frames.get(timeout=5).request_id == 1
        first = sender._sock
        first.shutdown(socket.SHUT_RDWR)  # the connection dies under the sender
        time.sleep(0.1)
        assert sender.put(_data(2))
        assert sink.frames.get(timeout=5).request_id == 2
        assert not errors
    finally:
        sender.close()
        sink.close()


TWO_BY_TWO = [[("a", 3), ("b", 5)], [("c", 6), ("d", 2)]]
DIMS = [4, 6, 3]


def test_local_pipeline_with_a_secret_answers_every_request(tmp_path):
    w = make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS, microbatches=2)
    art, res = run_local(tmp_path / "art", 30, command=WORKER, log_dir=tmp_path / "logs", secret=b"k" * 16)
    assert res.ok and res.completed == 30, (res.failures, res.faults)
    inputs = local.RandomInputs(art.stages[0][1], art.batch, res.n_requests)
    for i in range(res.n_requests):
        np.testing.assert_allclose(res.outputs[i][0], reference(w, inputs[i][0]), atol=1e-5)
    assert all(s["bad_frames"] == 0 for s in res.stats.values())


def test_cli_run_secret_env_signs_frames_and_an_unset_variable_is_named(tmp_path, monkeypatch):
    from edgeplan.cli import app

    make_artifacts(tmp_path / "art", TWO_BY_TWO, DIMS)
    monkeypatch.setattr(local, "_default_command", lambda board: (WORKER, {}))
    monkeypatch.setenv("EDGEPLAN_TEST_SECRET", "from-the-environment")
    out = CliRunner().invoke(app, ["run", str(tmp_path / "art"), "--local", "--requests", "6",
                                   "--secret-env", "EDGEPLAN_TEST_SECRET"])
    assert out.exit_code == 0, out.output
    assert "6/6 requests answered" in out.output
    monkeypatch.delenv("EDGEPLAN_TEST_SECRET")
    out = CliRunner().invoke(app, ["run", str(tmp_path / "art"), "--local", "--requests", "1",
                                   "--secret-env", "EDGEPLAN_TEST_SECRET"])
    assert out.exit_code != 0 and "EDGEPLAN_TEST_SECRET" in out.output
