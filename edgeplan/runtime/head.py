"""Head: feeds requests into a running pipeline and collects the outputs in request order.

One control connection per worker carries heartbeats (PING/PONG), routing
changes (ROUTE/ACK), statistics and, for stage 0, the input tensors. The last
stage connects back to the head's listener with the outputs. All state lives in
one loop fed by an event queue, so retries and failures are decided in one place:

* a worker whose connection closes or that misses heartbeats for ``dead_after_s``
  is dead: the head names its board and stage, gives its samples to a surviving
  replica of the same stage (new routing epoch, acknowledged by every worker) and
  re-sends every in-flight request; with no survivor, every unfinished request
  fails with that reason;
* a request without an answer by its deadline is re-sent, up to ``max_attempts``;
* so every request ends answered or in ``failures`` with a reason: none is lost.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import net, wire
from .spec import StageSpec


class PipelineError(Exception):
    """The pipeline cannot start (unreachable worker, inconsistent stage files)."""


@dataclass(frozen=True)
class WorkerRef:
    device: str
    stage: int
    address: str
    lo: int
    hi: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.device, self.stage)

    @property
    def name(self) -> str:
        return f"board {self.device} stage {self.stage} ({self.address})"


@dataclass(frozen=True)
class HeadConfig:
    request_timeout_s: float = 30.0  # per attempt, from send to the last output piece
    heartbeat_s: float = 0.2
    dead_after_s: float = 2.0  # no PONG (or no ACK of a route) for this long: the worker is dead
    connect_timeout_s: float = 10.0
    window: int = 0  # requests in flight at once; 0 = 2 x stages
    max_attempts: int = 3  # deadline-driven attempts per request (re-sends after a death do not count)
    secret: bytes | None = None
    shutdown_workers: bool = False  # send BYE at the end (local runs)


@dataclass(frozen=True)
class Fault:
    device: str
    stage: int
    address: str
    reason: str
    detected_at_s: float  # since the run started

    def describe(self) -> str:
        return f"board {self.device} stage {self.stage} ({self.address}): {self.reason}"


@dataclass
class RunResult:
    n_requests: int
    samples_per_request: int
    outputs: list  # per request: list of arrays, or None when it failed
    latencies_s: list  # per request: seconds from first send to last output, or None
    failures: dict = field(default_factory=dict)  # request index -> reason
    faults: list = field(default_factory=list)  # Fault per dead worker
    wall_s: float = 0.0
    resent: int = 0
    stats: dict = field(default_factory=dict)  # "device/stage" -> the worker's STATS snapshot

    @property
    def ok(self) -> bool:
        return not self.failures and not self.faults

    @property
    def completed(self) -> int:
        return sum(o is not None for o in self.outputs)


@dataclass
class _Inflight:
    index: int
    t0: float
    deadline: float
    attempt: int = 0  # on the wire, mod 256
    timeouts: int = 0
    pieces: dict = field(default_factory=dict)  # micro-batch -> list of (lo, hi, tensors)
    have: dict = field(default_factory=dict)  # micro-batch -> samples received


class Head:
    def __init__(self, workers: Sequence[WorkerRef], n_stages: int, microbatch: int, microbatches: int,
                 outputs: Sequence[tuple[str, tuple[int, ...], str]], listen_address: str,
                 config: HeadConfig = HeadConfig(), log: Callable[[str], None] | None = None,
                 advertise: str | None = None):
        self.advertise = advertise  # address workers connect to, when the head binds a wildcard
        self.workers = {w.key: w for w in workers}
        self.n_stages = n_stages
        self.microbatch = microbatch
        self.microbatches = microbatches
        self.out_specs = [(n, tuple(s), np.dtype(d)) for n, s, d in outputs]
        self.listen_address = listen_address
        self.cfg = config
        self.log = log or (lambda msg: print(f"[head] {msg}", file=sys.stderr, flush=True))
        for s in range(n_stages):
            group = sorted((w for w in workers if w.stage == s), key=lambda w: w.lo)
            if not group or group[0].lo != 0 or group[-1].hi != microbatch or any(
                    a.hi != b.lo for a, b in zip(group, group[1:], strict=False)):
                ranges = ", ".join(f"{w.device}[{w.lo},{w.hi})" for w in group) or "none"
                raise PipelineError(f"stage {s}: replica ranges ({ranges}) do not tile [0, {microbatch}); "
                                    "the stage.json files come from different plans; re-run `edgeplan compile`")
        per_sample = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, s, d in self.out_specs)
        self.max_frame = max(per_sample * microbatch + 64 * 1024, 1 << 20)
        self._events: queue.Queue = queue.Queue()
        self._ctl: dict[tuple[str, int], tuple[socket.socket, threading.Lock]] = {}
        self._stop = threading.Event()

    @classmethod
    def from_specs(cls, specs: Sequence[StageSpec], microbatches: int, listen_address: str | None = None,
                   addresses: dict | None = None, config: HeadConfig = HeadConfig(), log=None,
                   advertise: str | None = None) -> Head:
        """Build from every replica's stage.json; ``addresses`` overrides (device, stage) -> host:port."""
        if not specs:
            raise PipelineError("no stage.json files given")
        addresses = addresses or {}
        workers = [WorkerRef(s.device, s.stage, addresses.get((s.device, s.stage), s.listen), s.lo, s.hi)
                   for s in specs]
        last = [s for s in specs if s.stage == specs[0].n_stages - 1]
        if not last:
            raise PipelineError(f"no stage.json for the last stage {specs[0].n_stages - 1}")
        if listen_address is None:
            heads = [p.address for p in last[0].downstream if p.device == "head"]
            if not heads:
                raise PipelineError(f"{last[0].device}/stage{last[0].stage}/stage.json has no 'head' downstream peer")
            listen_address = heads[0]
        outs = [(t.name, tuple(t.shape[1:]), t.dtype) for t in last[0].outputs]
        return cls(workers, specs[0].n_stages, specs[0].microbatch, microbatches, outs, listen_address, config, log,
                   advertise)

    # --- connections ------------------------------------------------------------------------------

    def _open(self) -> None:
        self._srv = net.listen(self.listen_address)
        host, port = self._srv.getsockname()[:2]
        self.listen_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        threading.Thread(target=self._accept_loop, daemon=True, name="head-accept").start()
        for w in self.workers.values():
            deadline = time.monotonic() + self.cfg.connect_timeout_s
            while True:
                try:
                    sock = net.connect(w.address, timeout=max(0.1, deadline - time.monotonic()))
                    break
                except OSError as e:
                    if time.monotonic() >= deadline:
                        self._events.put(("dead", w.key, f"cannot connect: {e}"))
                        sock = None
                        break
                    time.sleep(0.1)
            if sock is None:
                continue
            net.set_send_timeout(sock, self.cfg.dead_after_s)
            self._ctl[w.key] = (sock, threading.Lock())
            threading.Thread(target=self._control_reader, args=(w.key, sock), daemon=True).start()

    def _accept_loop(self) -> None:
        net.accept_loop(self._srv, self._stop, self._result_reader)

    def _result_reader(self, conn: socket.socket, peer) -> None:
        try:
            while not self._stop.is_set():
                f = wire.recv_frame(conn, self.cfg.secret, self.max_frame)
                if f.kind == wire.DATA:
                    self._events.put(("result", None, f))
        except wire.FrameError as e:
            self.log(f"closing result connection from {peer[0]}:{peer[1]}: {e}")
        except (wire.ConnectionClosed, OSError):
            pass
        finally:
            conn.close()

    def _control_reader(self, key, sock: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                f = wire.recv_frame(sock, self.cfg.secret, wire.MAX_META_BYTES)
                kind = {wire.PONG: "pong", wire.ACK: "ack", wire.STATS: "stats", wire.ERROR: "error"}.get(f.kind)
                if kind:
                    self._events.put((kind, key, f))
        except wire.ConnectionClosed:
            reason = "connection closed (process exited or was killed)"
        except wire.FrameError as e:
            reason = f"sent a bad frame ({e})"
        except OSError as e:
            reason = f"connection lost ({e})"
        else:
            return
        if not self._stop.is_set():
            self._events.put(("dead", key, reason))

    def _send(self, key, frame: wire.Frame) -> bool:
        ctl = self._ctl.get(key)
        if ctl is None:
            return False
        try:
            with ctl[1]:
                wire.send_frame(ctl[0], frame, self.cfg.secret)
            return True
        except OSError as e:
            self._events.put(("dead", key, f"send failed ({e})"))
            return False

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, inputs: Sequence[Sequence[np.ndarray]],
            on_complete: Callable[[int], None] | None = None) -> RunResult:
        """Send every request of ``inputs`` (each a list of arrays with the full request batch) and wait."""
        n = len(inputs)
        spr = self.microbatch * self.microbatches
        res = RunResult(n, spr, [None] * n, [None] * n)
        self._t_start = time.monotonic()
        self._res = res
        self._alive = set(self.workers)
        self._last_pong = {k: self._t_start for k in self.workers}
        self._ranges = {s: sorted(((w.key, w.lo, w.hi) for w in self.workers.values() if w.stage == s),
                                  key=lambda e: e[1]) for s in range(self.n_stages)}
        self._epoch = 0
        self._fatal: str | None = None
        self._resend_all = False
        self._inflight: dict[int, _Inflight] = {}
        self._inputs = inputs
        self._on_complete = on_complete
        window = self.cfg.window or 2 * self.n_stages
        pending = deque(range(n))
        try:
            self._open()
            self._reroute()  # epoch 1: every worker learns the addresses actually in use
            self._resend_all = False
            last_ping = 0.0
            t_first = None
            while (pending or self._inflight) and not self._fatal:
                while pending and len(self._inflight) < window and not self._fatal:
                    i = pending.popleft()
                    now = time.monotonic()
                    t_first = t_first or now
                    self._inflight[i] = _Inflight(i, now, now + self.cfg.request_timeout_s)
                    self._dispatch(self._inflight[i])
                now = time.monotonic()
                if now - last_ping >= self.cfg.heartbeat_s:
                    last_ping = now
                    self._heartbeat(now)
                self._check_deadlines(now)
                try:
                    ev = self._events.get(timeout=self.cfg.heartbeat_s / 2)
                except queue.Empty:
                    continue
                self._handle(ev)
                if self._resend_all and not self._fatal:
                    self._resend_all = False
                    for r in list(self._inflight.values()):
                        self._resend(r)
            if self._fatal:
                for i in list(self._inflight) + list(pending):
                    res.failures[i] = self._fatal
                self._inflight.clear()
            res.wall_s = time.monotonic() - (t_first or self._t_start)
            self._collect_stats()
        finally:
            self._close()
        return res

    def _dispatch(self, r: _Inflight) -> None:
        """Send request ``r`` to the stage-0 replicas under the current routing epoch."""
        r.pieces = {mb: [] for mb in range(self.microbatches)}
        r.have = dict.fromkeys(range(self.microbatches), 0)
        m = self.microbatch
        xs = self._inputs[r.index]
        for mb in range(self.microbatches):
            for key, lo, hi in self._ranges[0]:
                if lo == hi:
                    continue
                self._send(key, wire.Frame(
                    wire.DATA, request_id=r.index, microbatch=mb, epoch=self._epoch, lo=lo, hi=hi, stage=0,
                    attempt=r.attempt & 0xFF, tensors=tuple(x[mb * m + lo: mb * m + hi] for x in xs)))

    def _resend(self, r: _Inflight) -> None:
        r.attempt += 1
        r.deadline = time.monotonic() + self.cfg.request_timeout_s
        self._res.resent += 1
        self._dispatch(r)

    def _heartbeat(self, now: float) -> None:
        for key in sorted(self._alive):
            if now - self._last_pong[key] > self.cfg.dead_after_s:
                self._events.put(("dead", key, f"stopped answering heartbeats for {self.cfg.dead_after_s:g}s"))
            else:
                self._send(key, wire.Frame(wire.PING))

    def _check_deadlines(self, now: float) -> None:
        for r in list(self._inflight.values()):
            if now < r.deadline:
                continue
            r.timeouts += 1
            missing = [mb for mb, h in r.have.items() if h < self.microbatch]
            if r.timeouts >= self.cfg.max_attempts:
                self._fail(r.index, f"no answer within {self.cfg.request_timeout_s:g}s in {r.timeouts} attempts "
                                    f"(micro-batches {missing} incomplete)")
            else:
                self.log(f"request {r.index}: no answer within {self.cfg.request_timeout_s:g}s; re-sending")
                self._resend(r)

    def _fail(self, i: int, reason: str) -> None:
        self._inflight.pop(i, None)
        self._res.failures[i] = reason

    def _handle(self, ev) -> None:
        kind, key, payload = ev
        if kind == "pong":
            self._last_pong[key] = time.monotonic()
        elif kind == "result":
            self._on_result(payload)
        elif kind == "dead":
            self._on_dead(key, payload)
        elif kind == "error":
            f = payload
            r = self._inflight.get(f.request_id)
            if r is not None and f.epoch == self._epoch:
                w = self.workers[key]
                msg = f"board {w.device} stage {w.stage}: {f.meta.get('message', 'error')}"
                if f.meta.get("peer"):
                    self.log(f"request {f.request_id}: {msg}")  # a dead peer: heartbeats decide
                else:
                    self._fail(f.request_id, msg)

    def _on_result(self, f: wire.Frame) -> None:
        r = self._inflight.get(f.request_id)
        if r is None or f.epoch != self._epoch or f.attempt != (r.attempt & 0xFF) or f.stage != self.n_stages:
            return  # late answer of an older attempt or epoch
        if f.microbatch >= self.microbatches or not (0 <= f.lo < f.hi <= self.microbatch):
            self.log(f"request {f.request_id}: result with bad range mb {f.microbatch} [{f.lo},{f.hi}); dropped")
            return
        if len(f.tensors) != len(self.out_specs) or any(
                t.dtype != d or t.shape[1:] != s or t.shape[0] != f.hi - f.lo
                for t, (_, s, d) in zip(f.tensors, self.out_specs, strict=False)):
            self.log(f"request {f.request_id}: result tensors do not match the last stage's outputs; dropped")
            return
        pieces = r.pieces[f.microbatch]
        if any(f.lo < hi and lo < f.hi for lo, hi, _ in pieces):
            return
        pieces.append((f.lo, f.hi, f.tensors))
        r.have[f.microbatch] += f.hi - f.lo
        if all(h == self.microbatch for h in r.have.values()):
            outs = []
            for k in range(len(self.out_specs)):
                parts = [t[k] for mb in range(self.microbatches) for _, _, t in sorted(r.pieces[mb],
                                                                                       key=lambda p: p[0])]
                outs.append(np.concatenate(parts))
            del self._inflight[r.index]
            self._res.outputs[r.index] = outs
            self._res.latencies_s[r.index] = time.monotonic() - r.t0
            if self._on_complete:
                self._on_complete(r.index)

    def _on_dead(self, key, reason: str) -> None:
        if key not in self._alive:
            return
        w = self.workers[key]
        self._alive.discard(key)
        fault = Fault(w.device, w.stage, w.address, reason, round(time.monotonic() - self._t_start, 3))
        self._res.faults.append(fault)
        self.log(f"worker on {fault.describe()}")
        ctl = self._ctl.pop(key, None)
        if ctl:
            ctl[0].close()
        group = self._ranges[w.stage]
        survivors = [e for e in group if e[0] != key]
        if not survivors:
            self._fatal = f"stage {w.stage} has no surviving replica: {fault.describe()}"
            self.log(self._fatal)
            return
        # Give the dead replica's samples to a neighbour, keeping every range contiguous.
        idx = next(i for i, e in enumerate(group) if e[0] == key)
        _, dlo, dhi = group[idx]
        if idx > 0:
            k, lo, _ = group[idx - 1]
            group[idx - 1] = (k, lo, dhi)
        else:
            k, _, hi = group[idx + 1]
            group[idx + 1] = (k, dlo, hi)
        self._ranges[w.stage] = [e for e in group if e[0] != key]
        self.log(f"stage {w.stage}: samples [{dlo},{dhi}) move to {self.workers[k].device}; "
                 f"re-sending {len(self._inflight)} in-flight request(s)")
        self._reroute()
        self._resend_all = True  # the main loop re-sends once, after nested deaths settled

    def _reroute(self) -> None:
        """Start a new routing epoch and wait until every live worker acknowledged it."""
        self._epoch += 1
        meta = {"epoch": self._epoch, "head": self.advertise or self.listen_address,
                "stages": {str(s): [[k[0], self.workers[k].address, lo, hi] for k, lo, hi in g]
                           for s, g in self._ranges.items()}}
        waiting = set()
        for key in sorted(self._alive):
            if self._send(key, wire.Frame(wire.ROUTE, meta=meta)):
                waiting.add(key)
        deadline = time.monotonic() + self.cfg.dead_after_s
        deaths = []
        while waiting and time.monotonic() < deadline:
            try:
                kind, key, payload = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "ack" and payload.epoch == self._epoch:
                waiting.discard(key)
            elif kind == "pong":
                self._last_pong[key] = time.monotonic()
            elif kind == "dead":
                waiting.discard(key)
                deaths.append((key, payload))
            # results and errors of the old epoch are obsolete: everything in flight is re-sent
        deaths += [(k, f"did not acknowledge routing epoch {self._epoch} within {self.cfg.dead_after_s:g}s")
                   for k in sorted(waiting)]
        now = time.monotonic()
        for k in self._last_pong:
            self._last_pong[k] = max(self._last_pong[k], now - self.cfg.heartbeat_s)
        for key, reason in deaths:
            self._on_dead(key, reason)  # recursion depth is bounded by the number of workers

    def _collect_stats(self) -> None:
        asked = set()
        for key in sorted(self._alive):
            if self._send(key, wire.Frame(wire.STATS)):
                asked.add(key)
        deadline = time.monotonic() + 2.0
        while asked and time.monotonic() < deadline:
            try:
                kind, key, payload = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "stats":
                asked.discard(key)
                self._res.stats[f"{key[0]}/stage{key[1]}"] = payload.meta

    def _close(self) -> None:
        self._stop.set()
        for sock, lock in list(self._ctl.values()):
            if self.cfg.shutdown_workers:
                try:
                    with lock:
                        wire.send_frame(sock, wire.Frame(wire.BYE), self.cfg.secret)
                except OSError:
                    pass
            sock.close()
        self._ctl.clear()
        srv = getattr(self, "_srv", None)
        if srv is not None:
            srv.close()
