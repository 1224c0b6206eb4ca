"""Frame codec: round trips, HMAC, limits enforced before allocation, fuzzed decoder (replay: test_runtime_auth)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplan.runtime import wire

SECRET = b"s3cret"


def _sessions(secret: bytes = SECRET) -> tuple[wire.Session, wire.Session]:
    """Both ends of one authenticated connection (fixed nonces; the handshake is tested in test_runtime_auth)."""
    nc, ns = b"c" * wire.NONCE_BYTES, b"s" * wire.NONCE_BYTES
    return wire.Session(secret, nc, ns, server=False), wire.Session(secret, nc, ns, server=True)


def _data_frame(**kw) -> wire.Frame:
    rng = np.random.default_rng(0)
    tensors = (rng.standard_normal((3, 4, 5)).astype(np.float32), np.arange(3, dtype=np.int64),
               np.array([True, False, True]), np.zeros((3, 0), np.float16))
    return wire.Frame(wire.DATA, request_id=2**40 + 7, microbatch=3, epoch=9, lo=2, hi=5, stage=1, attempt=4,
                      tensors=tensors, **kw)


@pytest.mark.parametrize("signed", [False, True])
def test_data_frame_round_trips(signed):
    f = _data_frame()
    cli, srv = _sessions() if signed else (None, None)
    g = wire.decode(wire.encode(f, cli), srv)
    assert (g.kind, g.request_id, g.microbatch, g.epoch, g.lo, g.hi, g.stage, g.attempt) == \
        (f.kind, f.request_id, f.microbatch, f.epoch, f.lo, f.hi, f.stage, f.attempt)
    assert len(g.tensors) == len(f.tensors)
    for a, b in zip(f.tensors, g.tensors, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_and_big_endian_tensors_travel_as_values():
    a = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    g = wire.decode(wire.encode(wire.Frame(wire.DATA, tensors=(a,))))
    np.testing.assert_array_equal(g.tensors[0], a)
    assert g.tensors[0].dtype == np.float32


def test_control_frame_round_trips_meta():
    f = wire.Frame(wire.ROUTE, epoch=3, meta={"epoch": 3, "stages": {"0": [["a", "h:1", 0, 2]]}})
    cli, srv = _sessions()
    assert wire.decode(wire.encode(f, cli), srv).meta == f.meta


def test_unsupported_dtype_is_refused_when_encoding():
    with pytest.raises(wire.FrameError, match="cannot travel"):
        wire.encode(wire.Frame(wire.DATA, tensors=(np.array(["x"]),)))


def test_bad_hmac_is_refused():
    blob = wire.encode(_data_frame(), _sessions()[0])
    with pytest.raises(wire.FrameError, match="another connection"):
        wire.decode(blob, _sessions(b"other secret")[1])
    wire.decode(blob, _sessions()[1])  # intact: accepted
    tampered = bytearray(blob)
    tampered[wire.HEADER.size + 40] ^= 1  # one payload bit
    with pytest.raises(wire.FrameError, match="bad HMAC"):
        wire.decode(bytes(tampered), _sessions()[1])
    tampered = bytearray(blob)
    tampered[8] ^= 1  # the request id in the header is covered too
    with pytest.raises(wire.FrameError, match="bad HMAC"):
        wire.decode(bytes(tampered), _sessions()[1])
    tampered = bytearray(blob)
    tampered[-wire.MAC_BYTES - 1] ^= 1  # and so is the sequence number
    with pytest.raises(wire.FrameError, match="bad HMAC"):
        wire.decode(bytes(tampered), _sessions()[1])


def test_missing_or_unexpected_hmac_is_refused():
    with pytest.raises(wire.FrameError, match="requires an HMAC"):
        wire.decode(wire.encode(_data_frame()), _sessions()[1])
    with pytest.raises(wire.FrameError, match="no secret"):
        wire.decode(wire.encode(_data_frame(), _sessions()[0]), None)


def test_the_secret_itself_is_not_a_session():
    with pytest.raises(TypeError, match="handshake"):
        wire.encode(_data_frame(), SECRET)


def test_oversized_frame_is_refused_from_the_header_alone():
    """A header announcing 1 GiB is refused before the body is read or allocated."""
    a, b = socket.socketpair()
    try:
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.DATA, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1 << 30)
        a.sendall(header)
        tracemalloc.start()
        with pytest.raises(wire.FrameError, match="exceeds the limit"):
            wire.recv_frame(b, None, max_frame=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 * 1024
    finally:
        a.close()
        b.close()


def test_shape_product_must_match_the_body():
    """Descriptors claiming a huge tensor in a small body are refused (no allocation from the shape)."""
    desc = struct.pack("<BB2I", 1, 2, 1 << 30, 1 << 30) + b"\0" * 6
    header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.DATA, 0, 0, 1, 0, 0, 0, 1, 0, 1, len(desc))
    with pytest.raises(wire.FrameError, match="need more"):
        wire.decode(header + desc)


def test_socket_round_trip_and_clean_close():
    a, b = socket.socketpair()
    cli, srv = _sessions()
    try:
        f = _data_frame()
        wire.send_frame(a, f, cli)
        wire.send_frame(a, wire.Frame(wire.PING), cli)
        g = wire.recv_frame(b, srv)
        np.testing.assert_array_equal(g.tensors[0], f.tensors[0])
        assert wire.recv_frame(b, srv).kind == wire.PING
        a.close()
        with pytest.raises(wire.ConnectionClosed):
            wire.recv_frame(b, srv)
    finally:
        b.close()


def test_truncated_stream_is_a_frame_error():
    a, b = socket.socketpair()
    try:
        a.sendall(wire.encode(_data_frame())[:-3])
        a.close()
        with pytest.raises(wire.FrameError, match="mid-frame"):
            wire.recv_frame(b)
    finally:
        b.close()


def _stream_of_frames(largest: int):
    rng = np.random.default_rng(1)
    frames = []
    for i, n in enumerate(k for k in [1, 1000, 9000, 1, 70_000, 3, 20_000, 8191, 8192, 300_000, 5] if k <= largest):
        frames.append(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1,
                                 tensors=(rng.standard_normal((1, n)).astype(np.float32),)))
        if i % 3 == 0:
            frames.append(wire.Frame(wire.STATS, request_id=i, meta={"i": i, "pad": "x" * (i * 50)}))
    return frames


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_reader_reads_what_recv_frame_reads_however_the_bytes_arrive(signed, piece):
    """Frames of every size, delivered in pieces of ``piece`` bytes: same frames, earlier tensors intact."""
    import threading

    frames = _stream_of_frames(9000 if piece < 100 else 300_000)  # byte by byte: small frames only (time)
    cli, srv = _sessions() if signed else (None, None)
    blob = b"".join(wire.encode(f, cli) for f in frames)
    a, b = socket.socketpair()

    def feed():
        for i in range(0, len(blob), piece):
            a.sendall(blob[i:i + piece])
        a.close()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    reader = wire.Reader(b, srv, max_frame=2 << 20, chunk=16 << 10)
    got = [reader.recv() for _ in frames]
    with pytest.raises(wire.ConnectionClosed):
        reader.recv()
    t.join()
    b.close()
    for f, g in zip(frames, got, strict=True):  # compared after all were read: no buffer was reused
        assert (g.kind, g.request_id, g.meta) == (f.kind, f.request_id, f.meta)
        for x, y in zip(f.tensors, g.tensors, strict=True):
            np.testing.assert_array_equal(x, y)


def test_reader_reuses_a_large_body_buffer_only_when_no_tensor_refers_to_it():
    big = [np.full((1, 50_000), i, np.float32) for i in range(4)]
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    try:
        reader = wire.Reader(b, chunk=16 << 10)
        for i in range(4):
            a.sendall(wire.encode(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1, tensors=(big[i],))))
        kept = reader.recv()
        addr = kept.tensors[0].ctypes.data
        second = reader.recv()  # the first is still held: a new buffer
        assert second.tensors[0].ctypes.data != addr
        addr = second.tensors[0].ctypes.data
        del second
        third = reader.recv()  # nothing refers to the second's buffer: reused (read into whole, header first)
        assert third.tensors[0].ctypes.data == addr + wire.HEADER.size
        np.testing.assert_array_equal(kept.tensors[0], big[0])
        np.testing.assert_array_equal(third.tensors[0], big[2])
    finally:
        a.close()
        b.close()


def test_reader_alternates_two_buffers_for_a_caller_that_holds_the_last_frame_while_it_reads_the_next():
    """``f = recv()`` in a loop holds the last frame during the next recv: the Reader then reads into the other
    kept buffer instead of allocating one per frame (each costs page faults), and no held frame is overwritten."""
    big = [np.full((1, 50_000), i, np.float32) for i in range(8)]
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    try:
        for i, t in enumerate(big):
            a.sendall(wire.encode(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1, tensors=(t,))))
        reader = wire.Reader(b, chunk=16 << 10)
        f, addresses, kept = reader.recv(), [], set()
        for i in range(1, len(big)):
            g = reader.recv()  # the last frame (f) is held meanwhile
            np.testing.assert_array_equal(f.tensors[0], big[i - 1])  # not overwritten by the next frame
            np.testing.assert_array_equal(g.tensors[0], big[i])
            addresses.append(g.tensors[0].ctypes.data)
            kept.update(id(x) for x in reader._spares)  # the kept buffers stay alive: ids name them
            f = g
        assert len(kept) == 2  # two buffers in all: none allocated per frame
        assert len(set(addresses[1:])) == 2  # from the third frame on: read into the two in turn
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("flip", [None, "payload", "sequence"])
def test_reader_checks_the_mac_of_a_large_body_hashed_while_it_arrives(flip):
    """Bodies over the chunk size are hashed piece by piece as they arrive: same verdicts as a whole-body check."""
    import threading

    cli, srv = _sessions()
    big = np.arange(200_000, dtype=np.float32).reshape(1, -1)
    blob = bytearray(wire.encode(wire.Frame(wire.DATA, request_id=9, lo=0, hi=1, tensors=(big,)), cli))
    if flip == "payload":
        blob[len(blob) // 2] ^= 1
    elif flip == "sequence":
        blob[-wire.MAC_BYTES - 1] ^= 1
    a, b = socket.socketpair()

    def feed():
        for i in range(0, len(blob), 50_000):
            a.sendall(blob[i:i + 50_000])

    threading.Thread(target=feed, daemon=True).start()
    try:
        reader = wire.Reader(b, srv, max_frame=1 << 20, chunk=16 << 10)
        if flip is None:
            np.testing.assert_array_equal(reader.recv().tensors[0], big)
        else:
            with pytest.raises(wire.FrameError, match="bad HMAC"):
                reader.recv()
    finally:
        a.close()
        b.close()


def test_reader_refuses_truncated_and_oversized_frames_like_recv_frame():
    a, b = socket.socketpair()
    a.sendall(wire.encode(_data_frame())[:-3])
    a.close()
    with pytest.raises(wire.FrameError, match="mid-frame"):
        wire.Reader(b).recv()
    b.close()
    a, b = socket.socketpair()
    try:
        a.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.DATA, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1 << 30))
        reader = wire.Reader(b, None, max_frame=1 << 20)
        tracemalloc.start()
        with pytest.raises(wire.FrameError, match="exceeds the limit"):
            reader.recv()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 * 1024
    finally:
        a.close()
        b.close()


# --- fuzzing ------------------------------------------------------------------------------------

LIMIT = 4096
VALID = [wire.encode(_data_frame()), wire.encode(_data_frame(), _sessions()[0]),
         wire.encode(wire.Frame(wire.STATS, meta={"x": [1, 2]})), wire.encode(wire.Frame(wire.PING))]


def _decode_bounded(blob: bytes, secret) -> None:
    """Decoding either returns a frame or raises FrameError, and allocates little beyond the input."""
    session = _sessions(secret)[1] if secret else None
    tracemalloc.start()
    try:
        try:
            f = wire.decode(blob, session, max_frame=LIMIT)
        except wire.FrameError:
            f = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * len(blob) + 64 * 1024, f"decoder allocated {peak} bytes for a {len(blob)}-byte frame"
    if f is not None:
        assert sum(t.nbytes for t in f.tensors) <= LIMIT


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.sampled_from([None, SECRET]))
def test_fuzz_random_bytes(blob, secret):
    _decode_bounded(blob, secret)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.integers(-64, 64), st.sampled_from([None, SECRET]))
def test_fuzz_mutated_valid_frames(blob, flips, cut, secret):
    b = bytearray(blob)
    for pos, val in flips:
        b[pos % len(b)] = val
    if cut < 0:
        b = b[:cut]
    else:
        b += bytes(cut)
    _decode_bounded(bytes(b), secret)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 64), st.integers(0, 8), st.lists(st.integers(0, 2**32 - 1),
                                                                                  max_size=8))
def test_fuzz_hostile_headers_and_shapes(body_len, count, ndim, dims):
    """Headers and descriptors with extreme sizes: refused by the limit, never allocated."""
    desc = struct.pack(f"<BB{len(dims)}I", 1, ndim, *dims)
    header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.DATA, 0, 0, 1, 0, 0, 0, 1, 0, count, body_len)
    _decode_bounded(header + desc, None)


# --- net.Sender: per-peer ordered sends that never block the caller -------------------------------


def _server():
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)  # a frame that never comes fails the test instead of hanging it
    return srv, f"127.0.0.1:{srv.getsockname()[1]}"


def _sender(address, **kw):
    from edgeplan.runtime import net

    errors = []
    s = net.Sender(address, secret=None, send_timeout_s=2.0, on_error=lambda f, m: errors.append((f, m)), **kw)
    return s, errors


def test_sender_delivers_in_order_through_a_slow_reader_without_blocking_the_caller():
    import time

    srv, addr = _server()
    s, errors = _sender(addr, max_queue=64)
    big = np.arange(1 << 18, dtype=np.float32).reshape(1, -1)  # 1 MiB: fills the socket buffers
    s.put(wire.Frame(wire.DATA, request_id=0, lo=0, hi=1, tensors=(big,)))  # connects on the sender's thread
    conn, _ = srv.accept()
    t0 = time.monotonic()
    for i in range(1, 20):
        assert s.put(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1, tensors=(big + i,)))
    assert time.monotonic() - t0 < 0.5  # nobody reads yet: the caller never waits for the link
    time.sleep(0.2)
    got = [wire.recv_frame(conn, None, 8 << 20) for _ in range(20)]
    assert [f.request_id for f in got] == list(range(20))
    for f in got:
        np.testing.assert_array_equal(f.tensors[0], big + f.request_id)
    assert not errors
    s.close()
    conn.close()
    srv.close()


def test_sender_reconnects_to_a_restarted_peer_and_reports_an_unreachable_one():
    import time

    srv, addr = _server()
    s, errors = _sender(addr, max_queue=8)
    s.put(wire.Frame(wire.PING, request_id=1))
    conn, _ = srv.accept()
    assert wire.recv_frame(conn).request_id == 1
    conn.close()  # the peer restarts: same address, the old connection is gone
    time.sleep(0.1)
    s.put(wire.Frame(wire.PING, request_id=2))
    conn, _ = srv.accept()
    assert wire.recv_frame(conn).request_id == 2  # not lost on the dead connection
    conn.close()
    srv.close()
    time.sleep(0.1)
    s.put(wire.Frame(wire.PING, request_id=3))
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.02)
    assert errors and errors[0][0].request_id == 3 and addr in errors[0][1]
    s.close()


def test_sender_queue_is_bounded():
    import time

    srv, addr = _server()
    s, _ = _sender(addr, max_queue=2)
    big = np.zeros((1, 1 << 20), np.float32)  # 4 MiB each; nobody reads
    s.put(wire.Frame(wire.DATA, lo=0, hi=1, tensors=(big,)))
    conn, _ = srv.accept()
    time.sleep(0.2)
    accepted = [s.put(wire.Frame(wire.DATA, lo=0, hi=1, tensors=(big,))) for _ in range(6)]
    assert accepted.count(False) >= 3 and s.depth <= 2
    s.close()
    conn.close()
    srv.close()


@pytest.mark.parametrize("hold", [False, True])
def test_reader_reads_into_the_spare_buffer_without_corrupting_frames_of_changing_sizes(hold):
    """After a large frame the next one is read straight into its buffer (header and body, as far as the last
    frame's size): frames that grow, shrink, arrive back to back or are still held all decode to what was sent."""
    import threading

    sizes = [50_000, 50_000, 10, 80_000, 80_000, 30_000, 50_000, 3, 50_000, 50_000]
    sent = [np.full((1, k), i, np.float32) + np.arange(k, dtype=np.float32) for i, k in enumerate(sizes)]
    a, b = socket.socketpair()
    writer = threading.Thread(target=lambda: [a.sendall(wire.encode(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1,
                                                                                tensors=(t,))))
                                              for i, t in enumerate(sent)])
    try:
        writer.start()
        reader = wire.Reader(b, chunk=16 << 10)
        held = []
        for i, want in enumerate(sent):
            f = reader.recv()
            assert f.request_id == i
            np.testing.assert_array_equal(f.tensors[0], want)
            if hold:
                held.append(f)
        for f in held:  # nothing read later overwrote a frame still held
            np.testing.assert_array_equal(f.tensors[0], sent[f.request_id])
        writer.join()
        a.close()
        with pytest.raises(wire.ConnectionClosed):
            reader.recv()
    finally:
        a.close()
        b.close()


def test_encode_buffers_short_path_sends_the_same_bytes_as_encode():
    """A one-tensor frame of a shape sent before takes encode_buffers' short path: same bytes, decodable."""
    frames = [wire.Frame(wire.DATA, request_id=7, microbatch=3, epoch=2, lo=1, hi=2, stage=4, attempt=300,
                         tensors=(t,))
              for t in (np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.arange(5, dtype=np.uint8).reshape(1, 5),
                        np.zeros((1, 0), np.float32), np.arange(3, dtype=">i4").reshape(1, 3),
                        np.arange(8, dtype=np.float64).reshape(2, 4)[:1, ::2])]
    for f in frames:
        for _ in range(2):  # the second time its descriptor is known
            parts, total = wire.encode_buffers(f)
            raw = b"".join(bytes(p) for p in parts)
            assert len(raw) == total
            assert raw == wire.encode(f)
            back = wire.decode(raw)
            assert (back.request_id, back.microbatch, back.epoch, back.lo, back.hi, back.stage, back.attempt) == \
                (7, 3, 2, 1, 2, 4, 300 & 0xFF)
            np.testing.assert_array_equal(back.tensors[0], f.tensors[0])


def test_reader_times_large_frames_at_the_rate_they_arrive():
    """The receive-side link figure (issue 12): a sender thread trickles 512 KiB frames through a socketpair in
    16 KiB chunks with sleeps; the Reader's (bytes, seconds) of each frame give the rate the sender itself
    measured (bytes after its first chunk over the time from its first chunk to its last), both on the first
    frame (a buffer of its own) and the next ones (read straight into the spare buffer). Small frames are not
    timed."""
    a, b = socket.socketpair()
    frame = wire.Frame(wire.DATA, stage=1, tensors=(np.arange(128 << 10, dtype=np.float32),))  # 512 KiB
    data, chunk, frames = wire.encode(frame), 16 << 10, 4
    sent: list[tuple[int, float]] = []  # per frame: bytes after the first chunk, seconds first chunk -> last

    def trickle():
        for _ in range(frames):
            t0 = None
            for i in range(0, len(data), chunk):
                a.sendall(data[i:i + chunk])
                t0 = t0 or time.perf_counter()
                time.sleep(0.002)
            sent.append((len(data) - chunk, time.perf_counter() - 0.002 - t0))
        a.sendall(wire.encode(wire.Frame(wire.DATA, stage=1, tensors=(np.zeros(100, np.float32),))))

    t = threading.Thread(target=trickle)
    t.start()
    try:
        reader = wire.Reader(b)
        timed = []
        for _ in range(frames):
            f = reader.recv()
            assert f.tensors[0].nbytes == 512 << 10
            timed.append(reader.timed)
            del f  # the spare buffer is free again: the next frame is read straight into it
        assert reader.recv().tensors[0].size == 100 and reader.timed is None  # small: not timed
    finally:
        t.join()
        a.close()
        b.close()
    assert all(x is not None for x in timed), timed
    got = sum(n for n, _ in timed) / sum(s for _, s in timed)
    want = sum(n for n, _ in sent) / sum(s for _, s in sent)
    assert got == pytest.approx(want, rel=0.3), (got, want)


def test_reader_reports_a_large_frame_that_arrived_whole_without_a_rate():
    """A frame all in the socket before the reader asks says nothing about the link's rate, only that the link
    outran the reader: (bytes, 0.0)."""
    a, b = socket.socketpair()
    try:
        frame = wire.Frame(wire.DATA, stage=1, tensors=(np.ones(24 << 10, np.float32),))  # 96 KiB
        n = len(wire.encode(frame)) - wire.HEADER.size
        wire.send_frame(a, frame)
        time.sleep(0.05)
        reader = wire.Reader(b)
        assert reader.recv().tensors[0].nbytes == 96 << 10
        assert reader.timed == (n, 0.0)
    finally:
        a.close()
        b.close()


class _CountingSocket(socket.socket):
    """A TCP socket that counts the recvs a Reader makes (one per wake-up of the reading thread)."""

    recvs = 0

    def recv_into(self, *args, **kwargs):
        self.recvs += 1
        return super().recv_into(*args, **kwargs)


@pytest.mark.parametrize("signed", [False, True])
def test_reader_wakes_per_large_piece_of_a_frame_that_trickles_in(signed):
    """A 1 MiB frame sent over TCP in 1448 B pieces (one segment each, as a shaped link delivers them) is read
    in a handful of recvs (SO_RCVLOWAT and poll: the reader wakes once WAIT_BYTES or the rest of the frame
    has arrived), not one per piece (~725 before), and intact; it is read before anything follows it (a
    blocking recv under SO_RCVLOWAT waited for a whole mark more after a partial copy: a run's last frame
    hung); the small frame behind it (shorter than the mark) is not waited for; the trickle is timed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    a = socket.create_connection(srv.getsockname())
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn, _ = srv.accept()
    srv.close()
    b = _CountingSocket(fileno=conn.detach())
    ta, tb = _sessions() if signed else (None, None)
    x = np.arange(256 << 10, dtype=np.float32)  # 1 MiB
    big = b"".join(bytes(m) for m in wire.buffers(wire.Frame(wire.DATA, request_id=1, tensors=(x,)), ta))
    small = wire.encode(wire.Frame(wire.BYE, meta={"stop": True}), ta)

    read_big = threading.Event()
    waited: list[float] = []

    def trickle():
        for i in range(0, len(big), 1448):
            a.sendall(big[i:i + 1448])
            if i % (16 * 1448) == 0:
                time.sleep(0.0005)
        t0 = time.perf_counter()  # nothing follows until the frame is read: its end must not wait for more
        read_big.wait(10)
        waited.append(time.perf_counter() - t0)
        a.sendall(small)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        reader = wire.Reader(b, tb)
        f = reader.recv()
        read_big.set()
        recvs, timed = b.recvs, reader.timed
        assert np.array_equal(f.tensors[0], x)
        assert reader.recv().meta == {"stop": True}
    finally:
        read_big.set()
        t.join()
        a.close()
        b.close()
    assert waited[0] < 2 * wire.WAIT_POLL_MS / 1e3 + 1.0, waited  # the last frame waited for no next one
    # one recv per 16 KiB at most (the mark is at most a quarter of the receive buffer, which the kernel's
    # autotuning grows as the bytes arrive); plain recvs took 330-420, one per few segments
    assert recvs <= len(big) // (16 << 10), recvs
    assert timed is not None and timed[1] > 0, timed
