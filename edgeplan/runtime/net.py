"""Socket plumbing shared by the stage worker and the head: connect, listen, accept, send timeouts."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from . import wire


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-level send timeout, so a stalled peer fails a send instead of blocking forever."""
    try:
        sec = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, int((seconds - sec) * 1e6)))
    except (OSError, struct.error):  # not every platform has it; sends then rely on the head's timeouts
        pass


def connect(address: str, timeout: float, send_timeout: float | None = None) -> socket.socket:
    host, port = wire.parse_address(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if send_timeout:
        set_send_timeout(sock, send_timeout)
    return sock


def listen(address: str) -> socket.socket:
    host, port = wire.parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    return srv


def accept_loop(srv: socket.socket, stop: threading.Event, handle: Callable[[socket.socket, object], None],
                send_timeout_s: float | None = None) -> None:
    """Accept connections until ``stop`` is set (checked twice a second) or ``srv`` closes; each
    connection (blocking, TCP_NODELAY, optional kernel send timeout) is handled on its own thread."""
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, peer = srv.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if send_timeout_s:
            set_send_timeout(conn, send_timeout_s)
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()
