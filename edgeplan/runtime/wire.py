"""Wire format: a fixed 40-byte header, a small body, raw tensor bytes. No pickle.

Frame layout (little-endian)::

    header  magic "EPLN", version u8, kind u8, flags u8, attempt u8, request id u64,
            micro-batch u32, epoch u32, lo u32, hi u32, stage u16, tensor count u16, body length u32
    body    DATA:    per tensor (dtype code u8, ndim u8, ndim x u32 dims), zero-padded to 8 bytes,
                     then each tensor's C-order bytes, each zero-padded to 8 bytes
            control: UTF-8 JSON object (tensor count 0), at most ``MAX_META_BYTES``
    mac     32 bytes HMAC-SHA256(secret, header + body) when flag ``F_HMAC`` is set

Every size is checked against the receiver's limit *before* anything is
allocated (the body length from the header, then the descriptors' shape
products x item size must add up to exactly that length), so a hostile or
corrupt peer costs at most one bounded buffer and a ``FrameError``.
``stage`` is the destination stage index (the head is ``n_stages``); ``lo``/``hi``
are the samples of the micro-batch the tensors hold (see spec.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"EPLN"
VERSION = 1
HEADER = struct.Struct("<4sBBBBQIIIIHHI")
assert HEADER.size == 40
MAC_BYTES = 32

# Frame kinds.
DATA, PING, PONG, ROUTE, ACK, STATS, ERROR, BYE = range(1, 9)
KIND_NAMES = {DATA: "DATA", PING: "PING", PONG: "PONG", ROUTE: "ROUTE", ACK: "ACK",
              STATS: "STATS", ERROR: "ERROR", BYE: "BYE"}
F_HMAC = 0x01
_KNOWN_FLAGS = F_HMAC

MAX_TENSORS = 64
MAX_NDIM = 8
MAX_META_BYTES = 1 << 20
DEFAULT_MAX_FRAME = 256 << 20  # bytes of body; receivers usually pass a tighter, spec-derived limit

DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"), 4: np.dtype("i1"), 5: np.dtype("u1"),
    6: np.dtype("<i2"), 7: np.dtype("<i4"), 8: np.dtype("<i8"), 9: np.dtype("?"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}


class FrameError(Exception):
    """A frame is malformed, too large, or fails authentication; the connection must be dropped."""


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly between frames."""


@dataclass(frozen=True)
class Frame:
    kind: int
    request_id: int = 0
    microbatch: int = 0
    epoch: int = 0
    lo: int = 0
    hi: int = 0
    stage: int = 0
    attempt: int = 0
    tensors: tuple[np.ndarray, ...] = ()
    meta: dict = field(default_factory=dict)

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


def encode_parts(frame: Frame, secret: bytes | None = None) -> list:
    """The frame as a list of buffers (header, descriptors, tensor views, mac) for ``sendmsg``.

    Tensors are not copied when already C-contiguous little-endian.
    """
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
    flags = F_HMAC if secret else 0
    if secret:
        body_len += MAC_BYTES
    header = HEADER.pack(MAGIC, VERSION, frame.kind, flags, frame.attempt & 0xFF, frame.request_id,
                         frame.microbatch, frame.epoch, frame.lo, frame.hi, frame.stage, count, body_len)
    if secret:
        mac = hmac.new(secret, header, hashlib.sha256)
        for p in parts:
            mac.update(p)
        parts.append(mac.digest())
    return [header, *parts]


def encode(frame: Frame, secret: bytes | None = None) -> bytes:
    return b"".join(bytes(p) for p in encode_parts(frame, secret))


@dataclass(frozen=True)
class Header:
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


def parse_header(raw: bytes, secret: bytes | None, max_frame: int) -> Header:
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
    if secret and not flags & F_HMAC:
        raise FrameError("frame is not authenticated but this peer requires an HMAC (set the same secret everywhere)")
    if not secret and flags & F_HMAC:
        raise FrameError("frame carries an HMAC but this peer has no secret configured")
    mac_len = MAC_BYTES if flags & F_HMAC else 0
    if body_len < mac_len:
        raise FrameError(f"body of {body_len} bytes cannot hold the {mac_len}-byte HMAC")
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
    return Header(kind, flags, attempt, rid, mb, epoch, lo, hi, stage, count, body_len)


def decode_body(h: Header, raw_header: bytes, body, secret: bytes | None) -> Frame:
    """Check the HMAC, then build the frame; tensors are read-only views into ``body`` (no copy)."""
    body = memoryview(body)
    if len(body) != h.body_len:
        raise FrameError(f"body has {len(body)} bytes, header says {h.body_len}")
    if h.flags & F_HMAC:
        payload, mac = body[:-MAC_BYTES], bytes(body[-MAC_BYTES:])
        want = hmac.new(secret or b"", raw_header, hashlib.sha256)
        want.update(payload)
        if not hmac.compare_digest(mac, want.digest()):
            raise FrameError("bad HMAC: frame refused (wrong secret or altered in transit)")
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
        return Frame(h.kind, h.request_id, h.microbatch, h.epoch, h.lo, h.hi, h.stage, h.attempt, (), meta)
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
    return Frame(h.kind, h.request_id, h.microbatch, h.epoch, h.lo, h.hi, h.stage, h.attempt, tuple(tensors))


_DIMS = [struct.Struct(f"<{k}I") for k in range(MAX_NDIM + 1)]  # tensor shape descriptors by rank
_DESC = struct.Struct("<BB")  # dtype code, rank


def _prod(shape) -> int:
    p = 1
    for d in shape:
        p *= int(d)
    return p


def decode(buf, secret: bytes | None = None, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one whole frame held in ``buf`` (bytes-like); raises FrameError on anything wrong."""
    buf = memoryview(buf)
    if len(buf) < HEADER.size:
        raise FrameError(f"short frame: {len(buf)} bytes")
    raw = bytes(buf[: HEADER.size])
    h = parse_header(raw, secret, max_frame)
    body = buf[HEADER.size:]
    if len(body) != h.body_len:
        raise FrameError(f"frame has {len(body)} body bytes, header says {h.body_len}")
    return decode_body(h, raw, body, secret)


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


def recv_frame(sock: socket.socket, secret: bytes | None = None, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Read one frame. ConnectionClosed at a clean EOF, FrameError on a bad frame, OSError on socket errors."""
    raw = bytes(_recv_exact(sock, HEADER.size, at_boundary=True))
    h = parse_header(raw, secret, max_frame)  # before the body buffer is allocated
    body = _recv_exact(sock, h.body_len) if h.body_len else bytearray()
    return decode_body(h, raw, body, secret)


def send_frame(sock: socket.socket, frame: Frame, secret: bytes | None = None) -> int:
    """Send one frame with scatter-gather I/O (tensor bytes are not copied); returns bytes sent."""
    parts = buffers(frame, secret)
    total = sum(p.nbytes for p in parts)
    send_buffers(sock, parts)
    return total


def buffers(frame: Frame, secret: bytes | None = None) -> list[memoryview]:
    """The frame's bytes as flat memoryviews, ready for ``send_buffers``."""
    return [p if isinstance(p, memoryview) else memoryview(p) for p in encode_parts(frame, secret)]


def send_buffers(sock: socket.socket, parts: list[memoryview], nowait: bool = False) -> list[memoryview]:
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


def parse_address(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ValueError names the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def secret_from_env(name: str | None) -> bytes | None:
    """The HMAC secret from environment variable ``name`` (None when no name is given)."""
    import os

    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} (the HMAC secret) is not set or empty; export it on every board")
    return value.encode()
