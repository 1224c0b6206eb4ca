"""Wire format: a fixed 40-byte header, a small body, raw tensor bytes. No pickle.

Frame layout (little-endian)::

    header  magic "EPLN", version u8, kind u8, flags u8, attempt u8, request id u64,
            micro-batch u32, epoch u32, lo u32, hi u32, stage u16, tensor count u16, body length u32
    body    DATA:    per tensor (dtype code u8, ndim u8, ndim x u32 dims), zero-padded to 8 bytes,
                     then each tensor's C-order bytes, each zero-padded to 8 bytes
            control: UTF-8 JSON object (tensor count 0), at most ``MAX_META_BYTES``
    auth    when flag ``F_HMAC`` is set: connection tag (8 bytes), sequence number u64, then 32 bytes
            HMAC-SHA256(this direction's connection key, header + body + tag + sequence) (in wire
            order, so a receiver can hash a large body while it arrives)

Every size is checked against the receiver's limit *before* anything is
allocated (the body length from the header, then the descriptors' shape
products x item size must add up to exactly that length), so a hostile or
corrupt peer costs at most one bounded buffer and a ``FrameError``.
``stage`` is the destination stage index (the head is ``n_stages``); ``lo``/``hi``
are the samples of the micro-batch the tensors hold (see spec.py).

Authentication (only with a shared secret; **without a secret there is no authentication** and
nothing below happens: no handshake, no MAC). Each connection starts with a handshake of unsigned
HELLO frames in which *both* sides contribute a fresh 32-byte random nonce and prove that they hold
the secret (``handshake``). Keys for this connection, one per direction, are derived from the secret
and both nonces (HKDF-SHA256 style, stdlib ``hmac``). Every frame then carries a per-direction
sequence number, covered by its MAC, that the receiver requires to be exactly the next one (TCP is
ordered: no gaps). So a captured frame is refused when it is replayed on the same connection (old
sequence number), spliced into another connection (other keys and tag), reflected back to its
sender (the other direction's key), and a recorded session replayed as a whole fails the handshake
(the other side's nonce is new). Each refusal is a ``FrameError`` that says which it was. The
handshake costs one round trip per connection; per frame the cost is the MAC and 16 bytes.
"""

import hashlib
import hmac
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

MAGIC = b"EPLN"
VERSION = 2  # 2: per-connection handshake, sequence numbers in the MAC
HEADER = struct.Struct("<4sBBBBQIIIIHHI")
assert HEADER.size == 40
MAC_BYTES = 32
AUTH = struct.Struct("<8sQ")  # connection tag, sequence number: they precede the MAC at the end of the body
TRAILER_BYTES = AUTH.size + MAC_BYTES
NONCE_BYTES = 32
HANDSHAKE_LIMIT = 4096  # bytes of a HELLO frame's body

# Frame kinds.
DATA, PING, PONG, ROUTE, ACK, STATS, ERROR, BYE, HELLO = range(1, 10)
KIND_NAMES = {DATA: "DATA", PING: "PING", PONG: "PONG", ROUTE: "ROUTE", ACK: "ACK",
              STATS: "STATS", ERROR: "ERROR", BYE: "BYE", HELLO: "HELLO"}
F_HMAC = 0x01
_KNOWN_FLAGS = F_HMAC

MAX_TENSORS = 64
MAX_NDIM = 8
MAX_META_BYTES = 1 << 20
DEFAULT_MAX_FRAME = 256 << 20  # bytes of body; receivers usually pass a tighter, spec-derived limit
# A Reader times the arrival of bodies at least this large (``Reader.timed``): smaller ones arrive in one
# or two segments, and their time is the clock's and the call's, not the link's.
MIN_TIMED_RECV_BYTES = 64 << 10
# A Reader waiting for the rest of a large body asks the kernel (SO_RCVLOWAT, then poll) to wake it only once
# this much, or all that is left of the frame, has arrived. Without it a frame trickling in over a shaped or
# slow link (the testbed's tc htb, a real 100 Mbit/s board) wakes the reader per TCP segment, and each wake-up
# costs a recv and a Python loop turn: 6 ns/B of CPU in 1448 B pieces against 0.2 ns/B for a frame read whole
# (bench_recv_trickle.py), which a board pays out of the same CPU as its stage. Large enough to make wake-ups
# rare, small enough that an authenticated body is still hashed while the rest arrives.
#  - poll, then a recv that does not wait: a blocking recv that has copied part of its target sleeps until a
#    whole low-water mark MORE has arrived (tcp_data_ready), so the end of a frame would wait for the next
#    frame (a hang on the last one); poll tests the bytes queued, and the recv takes them all at once.
#  - at most a quarter of the socket's receive buffer as it is (the kernel's autotuning grows it on a fast
#    link; a larger mark would make the kernel grow it and clamp the TCP window to the mark, and an older
#    kernel's window, and so its poll, would never reach it), and every wait is bounded by WAIT_POLL_MS:
#    then the reader takes what arrived, as a plain recv would.
#  - the mark is back at 1 before any blocking recv (the next frame's header may be shorter than it).
WAIT_BYTES = 256 << 10
WAIT_POLL_MS = 100

DTYPES: Dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"), 4: np.dtype("i1"), 5: np.dtype("u1"),
    6: np.dtype("<i2"), 7: np.dtype("<i4"), 8: np.dtype("<i8"), 9: np.dtype("?"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}


class FrameError(Exception):
    """A frame is malformed, too large, or fails authentication; the connection must be dropped."""


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly between frames."""


def _kdf(secret: bytes, client_nonce: bytes, server_nonce: bytes, label: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with both nonces as salt: extract, then one expand block per label."""
    prk = hmac.new(client_nonce + server_nonce, secret, hashlib.sha256).digest()
    return hmac.new(prk, b"edgeplan wire v2 " + label + b"\x01", hashlib.sha256).digest()


def _key_check(secret: bytes, side: bytes, nonce: bytes) -> bytes:
    """Proves the sender holds ``secret`` (tells a wrong secret apart from a replayed handshake)."""
    return hmac.new(secret, b"edgeplan wire v2 key check " + side + nonce, hashlib.sha256).digest()


class Session:
    """Keys and sequence numbers of one authenticated connection, made by ``handshake``.

    ``server`` is the accepting side. Not thread-safe: each direction must be used by one thread at
    a time (a connection's single reader; its writers already serialise their sends).
    """

    __slots__ = ("tag", "send_seq", "recv_seq", "_send_mac", "_recv_mac", "_proofs")

    def __init__(self, secret: bytes, client_nonce: bytes, server_nonce: bytes, *, server: bool):
        c2s = _kdf(secret, client_nonce, server_nonce, b"client to server")
        s2c = _kdf(secret, client_nonce, server_nonce, b"server to client")
        self.tag = _kdf(secret, client_nonce, server_nonce, b"connection tag")[:8]
        self._proofs = {side: _kdf(secret, client_nonce, server_nonce, b"proof " + side)
                        for side in (b"client", b"server")}
        send, recv = (s2c, c2s) if server else (c2s, s2c)
        self._send_mac = hmac.new(send, digestmod=hashlib.sha256)  # copied per frame: keys are hashed once
        self._recv_mac = hmac.new(recv, digestmod=hashlib.sha256)
        self.send_seq = 0
        self.recv_seq = 0

    def proof(self, side: bytes) -> bytes:
        return self._proofs[side]

    def seal(self, header: bytes, parts: list) -> bytes:
        """The auth trailer of the next frame this side sends (tag, sequence number, MAC)."""
        auth = AUTH.pack(self.tag, self.send_seq)
        self.send_seq += 1
        mac = self._send_mac.copy()
        mac.update(header)
        for p in parts:
            mac.update(p)
        mac.update(auth)
        return auth + mac.digest()

    def begin(self, header: bytes):
        """The receive MAC fed ``header``: feed it the payload as it arrives, then pass it to ``open``."""
        m = self._recv_mac.copy()
        m.update(header)
        return m

    def open(self, header: bytes, payload, trailer, streamed=None) -> None:
        """Check a received frame's trailer; FrameError says why a frame is refused. ``streamed``: the
        MAC from ``begin`` already fed the whole payload."""
        tag, seq = AUTH.unpack_from(trailer)
        mac = bytes(trailer[AUTH.size:])
        if tag != self.tag:
            raise FrameError("frame refused: it was signed for another connection (a frame replayed from an "
                             "earlier connection, or altered in transit)")

        def expected(base, m=None) -> bytes:
            if m is None:
                m = base.copy()
                m.update(header)
                m.update(payload)
            m.update(trailer[: AUTH.size])
            return m.digest()

        if not hmac.compare_digest(mac, expected(self._recv_mac, streamed)):
            if hmac.compare_digest(mac, expected(self._send_mac)):
                raise FrameError(f"frame refused: it was reflected (signed by this side of the connection, "
                                 f"its sequence {seq}), not sent by the peer")
            raise FrameError("bad HMAC: frame refused (altered in transit)")
        if seq != self.recv_seq:
            if seq < self.recv_seq:
                raise FrameError(f"frame refused: replayed on this connection (sequence {seq} was already "
                                 f"received; the next is {self.recv_seq})")
            raise FrameError(f"frame refused: sequence {seq}, expected {self.recv_seq} (frames were removed "
                             "from the connection)")
        self.recv_seq = seq + 1


@dataclass(frozen=True, init=False)
class Frame:
    kind: int
    request_id: int = 0
    microbatch: int = 0
    epoch: int = 0
    lo: int = 0
    hi: int = 0
    stage: int = 0
    attempt: int = 0
    tensors: Tuple[np.ndarray, ...] = ()
    meta: dict = field(default_factory=dict)

    def __init__(self, kind: int, request_id: int = 0, microbatch: int = 0, epoch: int = 0, lo: int = 0,
                 hi: int = 0, stage: int = 0, attempt: int = 0, tensors: tuple = (), meta: Optional[dict] = None):
        # The generated frozen __init__ sets each field with object.__setattr__ (~2 us a frame, several
        # frames a hop); filling the dict at once is the same object, still frozen afterwards.
        self.__dict__.update(kind=kind, request_id=request_id, microbatch=microbatch, epoch=epoch, lo=lo, hi=hi,
                             stage=stage, attempt=attempt, tensors=tensors, meta={} if meta is None else meta)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


def _pad8(n: int) -> int:
    return -n % 8


def dtype_code(dt: np.dtype) -> int:
    code = _CODES.get(np.dtype(dt))
    if code is None:
        raise FrameError(f"dtype {dt} cannot travel on the wire (allowed: {sorted(str(d) for d in _CODES)})")
    return code


def _session(auth) -> Optional[Session]:
    if auth is None or type(auth) is Session:
        return auth
    if isinstance(auth, (bytes, bytearray, str)):
        raise TypeError("frames are signed with the Session that wire.handshake() returns for the connection, "
                        "not with the secret itself")
    raise TypeError(f"expected a wire.Session or None, got {type(auth).__name__}")


def encode_parts(frame: Frame, session: Optional[Session] = None) -> list:
    """The frame as a list of buffers (header, descriptors, tensor views, auth trailer) for ``sendmsg``.

    Tensors are not copied when already C-contiguous little-endian. With a ``session`` this takes
    the connection's next sequence number: send the frames in the order they were encoded.
    """
    if session is not None:
        session = _session(session)
    if frame.kind not in KIND_NAMES:
        raise FrameError(f"unknown frame kind {frame.kind}")
    parts: list = []
    if frame.kind == DATA:
        if frame.meta:
            raise FrameError("DATA frames carry tensors, not meta")
        if len(frame.tensors) > MAX_TENSORS:
            raise FrameError(f"{len(frame.tensors)} tensors > {MAX_TENSORS}")
        desc = b""
        arrays = []
        for t in frame.tensors:
            a = t if type(t) is np.ndarray else np.asarray(t)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            d = _DESC_CACHE.get((a.dtype, a.shape))
            if d is None:
                d = _descriptor(a)
            desc += d
            arrays.append(a)
        desc += _ZEROS[-len(desc) % 8]
        parts.append(desc)
        body_len = len(desc)
        for a in arrays:
            nbytes = a.nbytes
            parts.append(memoryview(a).cast("B") if nbytes else b"")
            body_len += nbytes
            if nbytes % 8:
                parts.append(_ZEROS[-nbytes % 8])
                body_len += -nbytes % 8
        count = len(arrays)
    else:
        if frame.tensors:
            raise FrameError(f"{frame.kind_name} frames carry meta, not tensors")
        blob = json.dumps(frame.meta, sort_keys=True, separators=(",", ":")).encode() if frame.meta else b""
        if len(blob) > MAX_META_BYTES:
            raise FrameError(f"meta of {len(blob)} bytes > {MAX_META_BYTES}")
        parts.append(blob)
        body_len = len(blob)
        count = 0
    flags = F_HMAC if session is not None else 0
    if session is not None:
        body_len += TRAILER_BYTES
    header = HEADER.pack(MAGIC, VERSION, frame.kind, flags, frame.attempt & 0xFF, frame.request_id,
                         frame.microbatch, frame.epoch, frame.lo, frame.hi, frame.stage, count, body_len)
    if session is not None:
        parts.append(session.seal(header, parts))
    return [header, *parts]


def encode_buffers(frame: Frame, session: Optional[Session] = None) -> Tuple[List[memoryview], int]:
    """``encode_parts`` as flat memoryviews ready for ``send_buffers``, and their total length.

    A stage's usual output (one tensor, C-contiguous, of a shape sent before, no secret) takes a short
    path: its padded descriptor was checked and kept the first time (``_descriptor``)."""
    if session is None and frame.kind == DATA and len(frame.tensors) == 1 and not frame.meta:
        a = frame.tensors[0]
        if type(a) is np.ndarray and a.flags.c_contiguous and a.dtype.byteorder != ">":
            desc = _DESC1_CACHE.get((a.dtype, a.shape))
            nbytes = a.nbytes
            if desc is not None and nbytes:
                body_len = len(desc) + nbytes + (-nbytes % 8)
                parts = [memoryview(_PACK_HEADER(MAGIC, VERSION, DATA, 0, frame.attempt & 0xFF, frame.request_id,
                                                 frame.microbatch, frame.epoch, frame.lo, frame.hi, frame.stage, 1,
                                                 body_len)),
                         desc, memoryview(a).cast("B")]
                if nbytes % 8:
                    parts.append(_ZERO_VIEWS[-nbytes % 8])
                return parts, HEADER.size + body_len
    parts = [p if type(p) is memoryview else memoryview(p) for p in encode_parts(frame, session)]
    total = 0
    for p in parts:
        total += p.nbytes
    return parts, total


_ZEROS = [b"\0" * k for k in range(8)]
_ZERO_VIEWS = [memoryview(z) for z in _ZEROS]
_PACK_HEADER = HEADER.pack
_DESC_CACHE: Dict[tuple, bytes] = {}  # (dtype, shape) -> its descriptor: a stage sends the same few shapes
_DESC1_CACHE: Dict[tuple, memoryview] = {}  # the same, zero-padded to 8 bytes, as a view (see encode_buffers)


def _descriptor(a: np.ndarray) -> bytes:
    """``a``'s tensor descriptor (dtype code, rank, dims); FrameError when it cannot travel."""
    code = _CODES.get(a.dtype)
    if code is None:
        code = dtype_code(a.dtype)  # raises, naming the allowed dtypes
    if a.ndim > MAX_NDIM:
        raise FrameError(f"tensor has {a.ndim} dims > {MAX_NDIM}")
    d = _DESC.pack(code, a.ndim) + _DIMS[a.ndim].pack(*a.shape)
    if len(_DESC_CACHE) >= 1024:
        _DESC_CACHE.clear()
        _DESC1_CACHE.clear()
    _DESC_CACHE[(a.dtype, a.shape)] = d
    _DESC1_CACHE[(a.dtype, a.shape)] = memoryview(d + _ZEROS[-len(d) % 8])  # a one-tensor frame's descriptor block
    return d


def encode(frame: Frame, session: Optional[Session] = None) -> bytes:
    return b"".join(bytes(p) for p in encode_parts(frame, session))


class Header(NamedTuple):
    """A parsed, checked frame header (a tuple: made for every frame received, in a fraction of a dataclass's time)."""

    kind: int
    flags: int
    attempt: int
    request_id: int
    microbatch: int
    epoch: int
    lo: int
    hi: int
    stage: int
    count: int
    body_len: int


def parse_header(raw: bytes, session: Optional[Session], max_frame: int) -> Header:
    """Validate the fixed header; raises FrameError before any body is read."""
    if len(raw) != HEADER.size:
        raise FrameError(f"short header: {len(raw)} of {HEADER.size} bytes")
    fields = _UNPACK_HEADER(raw)
    magic, version, kind, flags, attempt, rid, mb, epoch, lo, hi, stage, count, body_len = fields
    if (kind == DATA and not flags and session is None and magic == MAGIC and version == VERSION
            and count <= MAX_TENSORS and body_len <= max_frame and lo <= hi):
        return _HEADER_MAKE(fields[2:])  # an unsigned DATA frame within limits (the hop's usual frame): all checked
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r} (not an edgeplan peer?)")
    if version != VERSION:
        raise FrameError(f"wire version {version} != {VERSION}; deploy the same edgeplan version on every board")
    if kind not in KIND_NAMES:
        raise FrameError(f"unknown frame kind {kind}")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown flags 0x{flags:02x}")
    if session is not None and not flags & F_HMAC:
        raise FrameError("frame is not authenticated but this peer requires an HMAC (set the same secret everywhere)")
    if session is None and flags & F_HMAC:
        raise FrameError("frame carries an HMAC but this peer has no secret configured")
    mac_len = TRAILER_BYTES if flags & F_HMAC else 0
    if body_len < mac_len:
        raise FrameError(f"body of {body_len} bytes cannot hold the {mac_len}-byte HMAC trailer")
    if body_len > max_frame + mac_len:
        raise FrameError(f"frame body of {body_len} bytes exceeds the limit of {max_frame}")
    if kind == DATA:
        if count > MAX_TENSORS:
            raise FrameError(f"{count} tensors > {MAX_TENSORS}")
    elif count:
        raise FrameError(f"{KIND_NAMES[kind]} frame declares {count} tensors")
    elif body_len - mac_len > MAX_META_BYTES:
        raise FrameError(f"meta of {body_len - mac_len} bytes > {MAX_META_BYTES}")
    if hi < lo:
        raise FrameError(f"sample range [{lo}, {hi}) is empty or reversed")
    return _HEADER_MAKE((kind, flags, attempt, rid, mb, epoch, lo, hi, stage, count, body_len))


_HEADER_MAKE = Header._make
_UNPACK_HEADER = HEADER.unpack
_frame = Frame


def decode_body(h: Header, raw_header: bytes, body, session: Optional[Session], *, hello: bool = False,
                streamed=None, cache: Optional[list] = None) -> Frame:
    """Check the auth trailer, then build the frame; tensors are views into ``body`` (no copy).

    HELLO frames belong to the handshake (``hello=True``) and are refused anywhere else. ``cache``: a
    list the caller keeps per connection; the last DATA frame's checked tensor layout is kept in it
    and reused while the descriptors' bytes and the body's length stay the same (a stage's frames
    rarely change shape), which saves parsing them again."""
    if type(body) is not memoryview:
        body = memoryview(body)
    if len(body) != h.body_len:
        raise FrameError(f"body has {len(body)} bytes, header says {h.body_len}")
    if h.kind == DATA and not h.flags:  # unsigned tensors (parse_header checked the flags against the session)
        return _decode_tensors(h, body, cache)
    if h.kind == HELLO and not hello:
        if session is None:
            raise FrameError("the peer asks for an authenticated connection (HELLO) but this peer has no secret "
                             "configured: set the same secret_env on every board and the head")
        raise FrameError("unexpected HELLO after the handshake")
    if h.flags & F_HMAC:
        cut = len(body) - TRAILER_BYTES
        payload = body[:cut]
        session.open(raw_header, payload, body[cut:], streamed)
    else:
        payload = body
    if h.kind != DATA:
        meta: dict = {}
        if len(payload):
            try:
                meta = json.loads(bytes(payload).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise FrameError(f"meta is not UTF-8 JSON ({e})") from None
            if not isinstance(meta, dict):
                raise FrameError("meta must be a JSON object")
        return _frame(h.kind, h.request_id, h.microbatch, h.epoch, h.lo, h.hi, h.stage, h.attempt, (), meta)
    return _decode_tensors(h, payload, cache)


def _decode_tensors(h: Header, payload: memoryview, cache: Optional[list]) -> Frame:
    """The DATA frame whose (checked) tensor bytes are ``payload``; see decode_body for ``cache``."""
    n = len(payload)
    if cache and cache[0] == n and cache[1] == h.count and payload[:len(cache[2])] == cache[2]:
        layout = cache[3]  # the same descriptors as the last frame on this connection: already checked
    else:
        layout, desc_end = _layout(payload, h.count)
        if cache is not None:
            cache[:] = [n, h.count, bytes(payload[:desc_end]), layout]
    if len(layout) == 1:
        dt, shape, off = layout[0]
        tensors = (_ndarray(shape, dt, payload, off),)
    else:
        tensors = tuple([_ndarray(shape, dt, payload, off) for dt, shape, off in layout])
    return _frame(DATA, h.request_id, h.microbatch, h.epoch, h.lo, h.hi, h.stage, h.attempt, tensors, {})


_ndarray = np.ndarray  # a view of (shape, dtype, buffer, offset): no copy, half the time of frombuffer + reshape


def _layout(payload, count: int) -> Tuple[tuple, int]:
    """The tensors a DATA body of ``count`` descriptors holds, as (dtype, shape, offset) per tensor, and
    where the descriptors end; FrameError unless every size adds up to exactly the body's length.
    Descriptors first: all sizes are known and checked before any tensor is made."""
    off, specs = 0, []
    n = len(payload)
    for _ in range(count):
        if off + 2 > n:
            raise FrameError("truncated tensor descriptor")
        code, ndim = payload[off], payload[off + 1]
        off += 2
        dt = DTYPES.get(code)
        if dt is None:
            raise FrameError(f"unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise FrameError(f"tensor has {ndim} dims > {MAX_NDIM}")
        if off + 4 * ndim > n:
            raise FrameError("truncated tensor shape")
        shape = _DIMS[ndim].unpack_from(payload, off)
        off += 4 * ndim
        size = 1
        for d in shape:
            size *= d
        specs.append((dt, shape, dt.itemsize * size))
    off += -off % 8
    desc_end = need = off
    layout = []
    for dt, shape, nbytes in specs:
        layout.append((dt, shape, need))
        need += nbytes + (-nbytes % 8)
        if need > n:
            raise FrameError(f"tensors need more than the {n} bytes the frame holds")
    if need != n:
        raise FrameError(f"frame has {n - need} stray bytes after its tensors")
    return tuple(layout), desc_end


_DIMS = [struct.Struct(f"<{k}I") for k in range(MAX_NDIM + 1)]  # tensor shape descriptors by rank
_DESC = struct.Struct("<BB")  # dtype code, rank


def _prod(shape) -> int:
    p = 1
    for d in shape:
        p *= int(d)
    return p


def decode(buf, session: Optional[Session] = None, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one whole frame held in ``buf`` (bytes-like); raises FrameError on anything wrong."""
    session = _session(session)
    buf = memoryview(buf)
    if len(buf) < HEADER.size:
        raise FrameError(f"short frame: {len(buf)} bytes")
    raw = bytes(buf[: HEADER.size])
    h = parse_header(raw, session, max_frame)
    body = buf[HEADER.size:]
    if len(body) != h.body_len:
        raise FrameError(f"frame has {len(body)} body bytes, header says {h.body_len}")
    return decode_body(h, raw, body, session)


# --- sockets ---------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int, *, at_boundary: bool = False) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if at_boundary and got == 0:
                raise ConnectionClosed()
            raise FrameError(f"connection closed mid-frame ({got} of {n} bytes)")
        got += k
    return buf


def recv_frame(sock: socket.socket, session: Optional[Session] = None, max_frame: int = DEFAULT_MAX_FRAME, *,
               _hello: bool = False) -> Frame:
    """Read one frame. ConnectionClosed at a clean EOF, FrameError on a bad frame, OSError on socket errors.

    ``session`` is what ``handshake`` returned for this connection (None: no authentication)."""
    session = _session(session)
    raw = bytes(_recv_exact(sock, HEADER.size, at_boundary=True))
    h = parse_header(raw, session, max_frame)  # before the body buffer is allocated
    body = _recv_exact(sock, h.body_len) if h.body_len else bytearray()
    return decode_body(h, raw, body, session, hello=_hello)


class Reader:
    """The frames arriving on one connection, read with as few ``recv`` calls as the kernel allows.

    ``recv_frame`` needs two calls per frame (header, then body: only the header says how long the
    body is). A Reader asks for up to ``chunk`` bytes at a time, so a small frame (and often the start
    of the next) usually arrives in one call; what lies past a frame is kept for the next one. Frames
    are checked exactly as by ``recv_frame``, and their tensors are views into a buffer that is never
    written again while anything refers to it (a new one is allocated when it is used up), so they
    stay valid. A body larger than ``chunk`` gets a buffer of its own; the last two are kept and one is
    reused once nothing refers to it any more (a worker that ran the frame before reading the next; a
    caller that still holds the last frame while it reads the next one finds the other free): fresh
    memory costs a page fault per 4 KiB, ~0.3 ms for 3 MB, and a buffer in use stays in the caches.
    While one is free, the next frame is read straight into it, header and body where they land, as a
    plain relay reads (without a secret: an authenticated body is hashed as it arrives instead). One
    reader thread.

    ``timed``: (bytes, seconds) of the frame ``recv`` just returned, or None: how fast its body arrived,
    the link's throughput as the receiver sees it (a send returns once its bytes are in the socket buffer,
    so the sender cannot see it). Only bodies of at least ``MIN_TIMED_RECV_BYTES`` that were still
    arriving after a recv had taken everything the kernel held are timed, from that recv to the last
    byte: bytes that had already arrived (the reader came late) say nothing about the link. The time
    also holds any wait for a sender slow to produce (a CPU-starved sender trickles its bytes).
    Two ``perf_counter`` reads per timed frame. A large body that had arrived whole before the reader
    asked for it gives (bytes, 0.0): the link outran the reader (no rate, but no link drop either).
    """

    def __init__(self, sock: socket.socket, session: Optional[Session] = None, max_frame: int = DEFAULT_MAX_FRAME,
                 chunk: int = 32 << 10):
        self.sock = sock
        self.session = _session(session)
        self.max_frame = max_frame
        self.chunk = chunk
        self._buf = _EMPTY
        self._start = self._end = 0  # unread bytes are _buf[_start:_end]
        self._spares: List[np.ndarray] = []  # the last two large bodies' buffers, the one used last first
        self._spare_frame = 0  # bytes of the last frame read into one (header and body)
        self._layout: list = []  # the last DATA frame's checked tensor layout (see decode_body)
        self.timed: Optional[Tuple[int, float]] = None
        # SO_RCVLOWAT now set (1: the kernel's default), or 0: plain recvs (no SO_RCVLOWAT/poll here, a socket
        # with a timeout, or the option refused). See WAIT_BYTES.
        self._lowat = 1 if (getattr(socket, "SO_RCVLOWAT", None) and hasattr(select, "poll")
                            and sock.gettimeout() is None) else 0
        self._poll = None
        self._room = 0  # a quarter of SO_RCVBUF, read once per frame (0: not yet)
        if self._lowat:
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    def _free_spare(self, n: int) -> Optional[np.ndarray]:
        """A kept buffer of at least ``n`` bytes that no tensor refers to any more (now the first kept), or None."""
        spares = self._spares
        for i in range(len(spares)):
            spare = spares[i]
            if spare.nbytes >= n and _getrefcount(spare) == 3:  # the list, ``spare``, the call: nothing else
                if i:
                    spares[0], spares[i] = spare, spares[0]
                return spare
        return None

    def _large(self, n: int) -> memoryview:
        """A buffer for an ``n``-byte body: a kept one when big enough and no tensor refers to it."""
        spare = self._free_spare(n)
        if spare is None:
            # Not zeroed (a 3 MB memset is ~0.2 ms): all of it is received. Room for a header too: the next frame
            # is read into it whole (see recv). The older of the two kept is let go (its tensors keep it alive).
            spare = np.empty(n + HEADER.size, np.uint8)
            self._spares = [spare] + self._spares[:1]
        return memoryview(spare)[:n]

    def _set_lowat(self, n: int) -> None:
        """SO_RCVLOWAT ``n`` when it differs; where the option is refused (another socket family, an old kernel),
        plain recvs from then on."""
        if n != self._lowat:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
                self._lowat = n
            except OSError:
                self._lowat = 0

    def _recv_piece(self, view: memoryview, left: int) -> int:
        """One recv into ``view`` of the rest of this frame (``left`` bytes, the kernel's backlog already taken),
        after waiting until the mark has arrived: min(left, WAIT_BYTES, a quarter of the receive buffer as it
        was when this frame's wait began), for at most WAIT_POLL_MS (see WAIT_BYTES). 0 at EOF; -1 when
        nothing had arrived (the wait timed out). Call ``_end_wait`` when the frame is read."""
        if self._lowat:
            if not self._room:  # a mark the buffer holds: the kernel never grows it (and clamps the window) for it
                self._room = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4
            mark = min(left, WAIT_BYTES, self._room)
            if left > MIN_TIMED_RECV_BYTES and mark > MIN_TIMED_RECV_BYTES // 4:  # else not worth a poll
                self._set_lowat(mark)
                if self._lowat > 1:
                    self._poll.poll(WAIT_POLL_MS)
                    try:
                        return self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        return -1
            self._end_wait()
        return self.sock.recv_into(view)

    def _end_wait(self) -> None:
        """The low-water mark back at 1: the next blocking recv (a header) must not wait for more. The next
        frame reads the receive buffer's size afresh (the kernel's autotuning grows it on a fast link)."""
        self._room = 0
        if self._lowat > 1:
            self._set_lowat(1)

    def _fill(self, need: int, at_boundary: bool = False) -> None:
        """Read until ``need`` unread bytes are buffered (in a new buffer when the current one is too small).
        The first recv takes what the kernel holds; later ones wait in the kernel for pieces of this frame."""
        have = self._end - self._start
        if self._start + need > len(self._buf):
            new = memoryview(np.empty(max(self.chunk, need), np.uint8))  # not zeroed: every byte used is received
            new[:have] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = new, 0, have
        recv_into, buf, want = self.sock.recv_into, self._buf, self._start + need
        first = True  # the first recv takes what the kernel holds; later ones wait for large pieces
        try:
            while self._end < want:
                k = recv_into(buf[self._end:]) if first else self._recv_piece(buf[self._end:], want - self._end)
                first = False
                if k == 0:
                    if at_boundary and self._end == self._start:
                        raise ConnectionClosed()
                    raise FrameError(f"connection closed mid-frame ({self._end - self._start} of {need} bytes)")
                self._end += max(k, 0)
        finally:
            self._end_wait()

    def recv(self) -> Frame:
        """The next frame. ConnectionClosed at a clean EOF, FrameError on a bad frame, OSError on socket errors."""
        direct = False
        self.timed = None
        if self._end == self._start and self._spares and self.session is None:
            # Nothing buffered and the last frame was large: read the next one straight into a free spare buffer
            # (header and body where they land, no copy), as far as the last frame's size, so that the
            # next frame of a stream of equal frames is not read into it too.
            spare = self._free_spare(self._spare_frame)
            if spare is not None:
                self._buf, self._start, self._end, direct = memoryview(spare)[:self._spare_frame], 0, 0, True
                spare = None
        if self._end - self._start < HEADER.size:
            self._fill(HEADER.size, at_boundary=True)
        start = self._start
        raw = bytes(self._buf[start:start + HEADER.size])
        h = parse_header(raw, self.session, self.max_frame)  # before any body buffer is allocated
        start += HEADER.size
        self._start = start
        n = h.body_len
        if self._end - start < n:
            if n <= self.chunk or (direct and start + n <= len(self._buf)):  # it fits where it is
                if n >= MIN_TIMED_RECV_BYTES:  # direct: the header's recv took all the kernel held (up to n)
                    rest = n - (self._end - start)
                    t0 = time.perf_counter()
                    self._fill(n)
                    self.timed = (rest, time.perf_counter() - t0)
                else:
                    self._fill(n)
                start = self._start
            else:  # a large body gets a buffer of its own: what arrived of it so far, then the rest
                have = self._end - start
                body = self._large(n)
                body[:have] = self._buf[start:self._end]
                self._start = self._end = 0
                self._buf = _EMPTY
                # An authenticated body is hashed while the rest of it arrives (hashlib releases the GIL).
                mac = self.session.begin(raw) if h.flags & F_HMAC else None
                end, hashed, got = n - TRAILER_BYTES, 0, have
                first, t0 = -1, 0.0  # bytes received when the kernel's backlog was taken (see ``timed``)
                try:
                    while got < n:
                        if mac is not None and hashed < min(got, end):
                            mac.update(body[hashed:min(got, end)])
                            hashed = min(got, end)
                        # the first recv takes the kernel's backlog; from then on wake per large piece
                        k = self.sock.recv_into(body[got:]) if first < 0 else self._recv_piece(body[got:], n - got)
                        if k == 0:
                            raise FrameError(f"connection closed mid-frame ({got} of {n} bytes)")
                        got += max(k, 0)
                        if first < 0:
                            first, t0 = got, time.perf_counter()
                finally:
                    self._end_wait()
                if n >= MIN_TIMED_RECV_BYTES:
                    self.timed = (got - first, time.perf_counter() - t0) if got > first >= 0 else (n, 0.0)
                if mac is not None and hashed < end:
                    mac.update(body[hashed:end])
                self._spare_frame = HEADER.size + n
                return decode_body(h, raw, body, self.session, streamed=mac, cache=self._layout)
        elif n >= MIN_TIMED_RECV_BYTES:
            self.timed = (n, 0.0)  # it had all arrived: the link outran the reader
        self._start = start + n
        body = self._buf[start:start + n]
        if direct:  # never read into the spare again while this frame's tensors may refer to it
            self._detach()
        return decode_body(h, raw, body, self.session, cache=self._layout)

    def _detach(self) -> None:
        """Stop reading into the spare buffer: what arrived past the frame moves to a buffer of its own."""
        have = self._end - self._start
        if have:
            new = memoryview(np.empty(max(self.chunk, have), np.uint8))
            new[:have] = self._buf[self._start:self._end]
        else:
            new = _EMPTY
        self._buf, self._start, self._end = new, 0, have


_EMPTY = memoryview(bytearray(0))  # no bytes: never written, shared by every Reader
_getrefcount = sys.getrefcount


def send_frame(sock: socket.socket, frame: Frame, session: Optional[Session] = None) -> int:
    """Send one frame with scatter-gather I/O (tensor bytes are not copied); returns bytes sent."""
    parts, total = encode_buffers(frame, session)
    send_buffers(sock, parts, total=total)
    return total


def buffers(frame: Frame, session: Optional[Session] = None) -> List[memoryview]:
    """The frame's bytes as flat memoryviews, ready for ``send_buffers``."""
    return encode_buffers(frame, session)[0]


# --- handshake -------------------------------------------------------------------------------------


def handshake(sock: socket.socket, secret: Optional[bytes], *, server: bool,
              timeout: float = 10.0) -> Optional[Session]:
    """Authenticate a new connection; returns its Session (None without a secret: nothing is exchanged).

    The connecting side (``server=False``) sends HELLO {nonce_c, check_c}; the accepting side answers
    HELLO {nonce_s, check_s, proof_s}; the connecting side sends HELLO {proof_c} and may send frames
    right behind it (the handshake costs one round trip). ``check`` proves a side holds the secret;
    ``proof`` also covers both fresh nonces, so a recorded handshake never passes again. FrameError
    (after an ERROR frame to the peer where it helps) when the peer has another secret or none, or
    replays a recorded session; OSError when the connection fails or ``timeout`` passes.
    """
    if not secret:
        return None
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        return _handshake_server(sock, secret) if server else _handshake_client(sock, secret)
    except ConnectionClosed:
        raise FrameError("the peer closed the connection during the handshake (it has another secret or none, "
                         "or runs another edgeplan version; see its log)") from None
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def _hello_field(f: Frame, name: str, nbytes: int) -> bytes:
    try:
        value = bytes.fromhex(f.meta[name])
    except (KeyError, TypeError, ValueError):
        value = b""
    if len(value) != nbytes:
        raise FrameError(f"handshake: HELLO lacks a valid {name!r} ({nbytes} bytes as hex)")
    return value


def _recv_hello(sock: socket.socket) -> Frame:
    f = recv_frame(sock, None, HANDSHAKE_LIMIT, _hello=True)
    if f.kind == ERROR:
        raise FrameError(f"the peer refused the handshake: {f.meta.get('message', '?')}")
    if f.kind != HELLO:
        raise FrameError(f"this peer requires authentication but the peer sent {f.kind_name} without a handshake "
                         "(it has no secret configured: set the same secret_env everywhere)")
    return f


def _refuse(sock: socket.socket, message: str) -> FrameError:
    try:
        send_frame(sock, Frame(ERROR, meta={"message": message}))
    except OSError:
        pass
    return FrameError(message)


def _handshake_client(sock: socket.socket, secret: bytes) -> Session:
    nc = os.urandom(NONCE_BYTES)
    send_frame(sock, Frame(HELLO, meta={"nonce": nc.hex(), "check": _key_check(secret, b"client", nc).hex()}))
    f = _recv_hello(sock)
    ns = _hello_field(f, "nonce", NONCE_BYTES)
    if not hmac.compare_digest(_hello_field(f, "check", MAC_BYTES), _key_check(secret, b"server", ns)):
        raise FrameError("handshake refused: the peer holds another secret (set the same secret_env everywhere)")
    session = Session(secret, nc, ns, server=False)
    if not hmac.compare_digest(_hello_field(f, "proof", MAC_BYTES), session.proof(b"server")):
        raise FrameError("handshake refused: the peer's proof does not cover this connection's nonce (a recorded "
                         "handshake replayed)")
    send_frame(sock, Frame(HELLO, meta={"proof": session.proof(b"client").hex()}))
    return session


def _handshake_server(sock: socket.socket, secret: bytes) -> Session:
    f = _recv_hello(sock)
    nc = _hello_field(f, "nonce", NONCE_BYTES)
    if not hmac.compare_digest(_hello_field(f, "check", MAC_BYTES), _key_check(secret, b"client", nc)):
        raise _refuse(sock, "handshake refused: the peer holds another secret (set the same secret_env everywhere)")
    ns = os.urandom(NONCE_BYTES)
    session = Session(secret, nc, ns, server=True)
    send_frame(sock, Frame(HELLO, meta={"nonce": ns.hex(), "check": _key_check(secret, b"server", ns).hex(),
                                        "proof": session.proof(b"server").hex()}))
    f = _recv_hello(sock)
    if not hmac.compare_digest(_hello_field(f, "proof", MAC_BYTES), session.proof(b"client")):
        raise _refuse(sock, "handshake refused: the peer's proof does not cover this connection's nonce (a "
                            "recorded session replayed)")
    return session


def send_buffers(sock: socket.socket, parts: List[memoryview], nowait: bool = False,
                 total: Optional[int] = None) -> List[memoryview]:
    """Send ``parts`` in order with ``sendmsg``; returns what is left unsent (only with ``nowait``, when
    the socket buffer is full: the caller finishes it later, on the same socket, before anything else).
    ``total``: their length when the caller knows it (one ``sendmsg`` that takes it all then returns at once)."""
    flags = socket.MSG_DONTWAIT if nowait else 0
    sent = 0
    if total is not None and len(parts) <= 512:
        try:
            sent = sock.sendmsg(parts, (), flags)
        except BlockingIOError:
            if nowait:
                return parts
            raise
        if sent == total:
            return []
    parts = _drop_sent(parts, sent)
    while parts:
        try:
            sent = sock.sendmsg(parts[:512], (), flags)
        except BlockingIOError:
            if nowait:
                return parts
            raise
        parts = _drop_sent(parts, sent)
    return parts


def _drop_sent(parts: List[memoryview], sent: int) -> List[memoryview]:
    """``parts`` without their first ``sent`` bytes (and without empty parts at the front)."""
    while sent and parts:
        if sent >= parts[0].nbytes:
            sent -= parts[0].nbytes
            parts.pop(0)
        else:
            parts[0] = parts[0][sent:]
            sent = 0
    while parts and parts[0].nbytes == 0:
        parts.pop(0)
    return parts


def parse_address(addr: str) -> Tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ValueError names the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def secret_from_env(name: Optional[str]) -> Optional[bytes]:
    """The HMAC secret from environment variable ``name`` (None when no name is given)."""
    import os

    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} (the HMAC secret) is not set or empty; export it on every board")
    return value.encode()
