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
import socket
import struct
import sys
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
    session = _session(session)
    if frame.kind not in KIND_NAMES:
        raise FrameError(f"unknown frame kind {frame.kind}")
    parts: list = []
    if frame.kind == DATA:
        if frame.meta:
            raise FrameError("DATA frames carry tensors, not meta")
        if len(frame.tensors) > MAX_TENSORS:
            raise FrameError(f"{len(frame.tensors)} tensors > {MAX_TENSORS}")
        desc = bytearray()
        arrays = []
        for t in frame.tensors:
            a = t if type(t) is np.ndarray else np.asarray(t)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            code = _CODES.get(a.dtype)
            if code is None:
                code = dtype_code(a.dtype)  # raises, naming the allowed dtypes
            if a.ndim > MAX_NDIM:
                raise FrameError(f"tensor has {a.ndim} dims > {MAX_NDIM}")
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            desc += _DESC.pack(code, a.ndim)
            desc += _DIMS[a.ndim].pack(*a.shape)
            arrays.append(a)
        desc += b"\0" * (-len(desc) % 8)
        parts.append(desc)
        for a in arrays:
            nbytes = a.nbytes
            parts.append(memoryview(a).cast("B") if nbytes else b"")
            if nbytes % 8:
                parts.append(b"\0" * (-nbytes % 8))
        count = len(arrays)
    else:
        if frame.tensors:
            raise FrameError(f"{frame.kind_name} frames carry meta, not tensors")
        blob = json.dumps(frame.meta, sort_keys=True, separators=(",", ":")).encode() if frame.meta else b""
        if len(blob) > MAX_META_BYTES:
            raise FrameError(f"meta of {len(blob)} bytes > {MAX_META_BYTES}")
        parts.append(blob)
        count = 0
    body_len = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
    flags = F_HMAC if session is not None else 0
    if session is not None:
        body_len += TRAILER_BYTES
    header = HEADER.pack(MAGIC, VERSION, frame.kind, flags, frame.attempt & 0xFF, frame.request_id,
                         frame.microbatch, frame.epoch, frame.lo, frame.hi, frame.stage, count, body_len)
    if session is not None:
        parts.append(session.seal(header, parts))
    return [header, *parts]


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
    magic, version, kind, flags, attempt, rid, mb, epoch, lo, hi, stage, count, body_len = HEADER.unpack(raw)
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
_frame = Frame


def decode_body(h: Header, raw_header: bytes, body, session: Optional[Session], *, hello: bool = False,
                streamed=None) -> Frame:
    """Check the auth trailer, then build the frame; tensors are read-only views into ``body`` (no copy).

    HELLO frames belong to the handshake (``hello=True``) and are refused anywhere else."""
    body = memoryview(body)
    if len(body) != h.body_len:
        raise FrameError(f"body has {len(body)} bytes, header says {h.body_len}")
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
    # Descriptors first: all sizes are known and checked before any tensor is made.
    off, specs = 0, []
    n = len(payload)
    for _ in range(h.count):
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
        count = 1
        for d in shape:
            count *= d
        specs.append((dt, shape, count, dt.itemsize * count))
    off += -off % 8
    need = off
    for *_, nbytes in specs:
        need += nbytes + (-nbytes % 8)
        if need > n:
            raise FrameError(f"tensors need more than the {n} bytes the frame holds")
    if need != n:
        raise FrameError(f"frame has {n - need} stray bytes after its tensors")
    tensors = []
    for dt, shape, count, nbytes in specs:
        tensors.append(np.frombuffer(payload, dtype=dt, count=count, offset=off).reshape(shape))
        off += nbytes + (-nbytes % 8)
    return _frame(h.kind, h.request_id, h.microbatch, h.epoch, h.lo, h.hi, h.stage, h.attempt, tuple(tensors), {})


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
    stay valid. A body larger than ``chunk`` gets a buffer of its own; the last one is reused once
    nothing refers to it any more (the usual case on a worker that ran the frame before reading the
    next): fresh memory costs a page fault per 4 KiB, ~0.3 ms for 3 MB. One reader thread.
    """

    def __init__(self, sock: socket.socket, session: Optional[Session] = None, max_frame: int = DEFAULT_MAX_FRAME,
                 chunk: int = 32 << 10):
        self.sock = sock
        self.session = _session(session)
        self.max_frame = max_frame
        self.chunk = chunk
        self._buf = memoryview(bytearray(0))
        self._start = self._end = 0  # unread bytes are _buf[_start:_end]
        self._spare: Optional[np.ndarray] = None  # the last large body's buffer

    def _large(self, n: int) -> memoryview:
        """A buffer for an ``n``-byte body: the spare one when big enough and no tensor refers to it."""
        spare = self._spare
        if spare is not None and spare.nbytes >= n and sys.getrefcount(spare) == 3:  # here, the attribute, the call
            return memoryview(spare)[:n]
        self._spare = np.empty(n, np.uint8)  # not zeroed (a 3 MB memset is ~0.2 ms): all of it is received
        return memoryview(self._spare)

    def _fill(self, need: int, at_boundary: bool = False) -> None:
        """Read until ``need`` unread bytes are buffered (in a new buffer when the current one is too small)."""
        have = self._end - self._start
        if self._start + need > len(self._buf):
            new = memoryview(np.empty(max(self.chunk, need), np.uint8))  # not zeroed: every byte used is received
            new[:have] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = new, 0, have
        recv_into, buf, want = self.sock.recv_into, self._buf, self._start + need
        while self._end < want:
            k = recv_into(buf[self._end:])
            if k == 0:
                if at_boundary and self._end == self._start:
                    raise ConnectionClosed()
                raise FrameError(f"connection closed mid-frame ({self._end - self._start} of {need} bytes)")
            self._end += k

    def recv(self) -> Frame:
        """The next frame. ConnectionClosed at a clean EOF, FrameError on a bad frame, OSError on socket errors."""
        if self._end - self._start < HEADER.size:
            self._fill(HEADER.size, at_boundary=True)
        start = self._start
        raw = bytes(self._buf[start:start + HEADER.size])
        h = parse_header(raw, self.session, self.max_frame)  # before any body buffer is allocated
        start += HEADER.size
        self._start = start
        n = h.body_len
        if self._end - start < n:
            if n <= self.chunk:
                self._fill(n)
                start = self._start
            else:  # a large body gets a buffer of its own: what arrived of it so far, then the rest
                have = self._end - start
                body = self._large(n)
                body[:have] = self._buf[start:self._end]
                self._start = self._end = 0
                self._buf = memoryview(bytearray(0))
                # An authenticated body is hashed while the rest of it arrives (hashlib releases the GIL).
                mac = self.session.begin(raw) if h.flags & F_HMAC else None
                end, hashed, got = n - TRAILER_BYTES, 0, have
                while got < n:
                    if mac is not None and hashed < min(got, end):
                        mac.update(body[hashed:min(got, end)])
                        hashed = min(got, end)
                    k = self.sock.recv_into(body[got:])
                    if k == 0:
                        raise FrameError(f"connection closed mid-frame ({got} of {n} bytes)")
                    got += k
                if mac is not None and hashed < end:
                    mac.update(body[hashed:end])
                return decode_body(h, raw, body, self.session, streamed=mac)
        self._start = start + n
        return decode_body(h, raw, self._buf[start:start + n], self.session)


def send_frame(sock: socket.socket, frame: Frame, session: Optional[Session] = None) -> int:
    """Send one frame with scatter-gather I/O (tensor bytes are not copied); returns bytes sent."""
    parts = buffers(frame, session)
    total = sum(p.nbytes for p in parts)
    send_buffers(sock, parts)
    return total


def buffers(frame: Frame, session: Optional[Session] = None) -> List[memoryview]:
    """The frame's bytes as flat memoryviews, ready for ``send_buffers``."""
    return [p if isinstance(p, memoryview) else memoryview(p) for p in encode_parts(frame, session)]


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


def send_buffers(sock: socket.socket, parts: List[memoryview], nowait: bool = False) -> List[memoryview]:
    """Send ``parts`` in order with ``sendmsg``; returns what is left unsent (only with ``nowait``, when
    the socket buffer is full: the caller finishes it later, on the same socket, before anything else)."""
    flags = socket.MSG_DONTWAIT if nowait else 0
    while parts:
        try:
            sent = sock.sendmsg(parts[:512], (), flags)
        except BlockingIOError:
            if nowait:
                return parts
            raise
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
