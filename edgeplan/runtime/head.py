"""Head: a long-lived service that feeds requests into a running pipeline and answers each one.

``start()`` connects to every worker and starts one event-loop thread; ``submit()`` hands it a
request and returns a ``concurrent.futures.Future`` at once (``Busy`` when the in-flight window
is full); ``run()`` is a thin batch wrapper over the service (``edgeplan run``, the demo, tests).

One control connection per worker carries heartbeats (PING/PONG), routing changes (ROUTE/ACK),
statistics and errors; the inputs of stage 0 travel on separate connections, each with its own
sender thread and bounded queue (net.Sender), so heartbeats never wait behind data. The last stage
connects back to the head's listener with the outputs. All request state lives in the loop thread,
fed by an event queue, so retries and failures are decided in one place:

* a worker is dead when its connection closes, it misses heartbeats for ``dead_after_s``, its PONG
  says its compute watchdog fired (a hung module), or a neighbour reports it cannot reach it (a
  stage that cannot reach the head is itself taken out). The head names its board and stage, gives
  its samples to a live replica of the same stage (new routing epoch, acknowledged by every
  worker) and re-sends every in-flight request; with no replica left, unfinished requests fail
  with that reason and new ones fail at once until the stage is back;
* a dead worker is probed every ``rejoin_interval_s`` (backing off when it keeps failing); once it
  answers a PING healthily it gets its plan range back in a new epoch;
* answers carry the epoch and attempt they were sent under: a late answer of an older one (a hung
  call finishing, a re-sent request) is counted in ``stale_results_total`` and never delivered;
* a worker that refuses a micro-batch (its bounded queues are full) gets the request re-sent, as an
  attempt; a request without an answer within ``request_timeout_s`` is re-sent, up to
  ``max_attempts``, and never outlives its own deadline;
* so every request ends answered or failed (``RequestFailed`` with a reason that names the board
  and stage), exactly once: none is lost, none is answered twice.
"""

import bisect
import concurrent.futures
import queue
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import net, wire
from .monitor import RxLinks
from .spec import StageSpec

# Python < 3.8 has no InvalidStateError: there, setting a cancelled future's result does not raise.
InvalidStateError = getattr(concurrent.futures, "InvalidStateError", RuntimeError)

# Request latency histogram buckets (seconds); the count is the +Inf bucket.
LATENCY_BUCKETS_S: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                        10.0, 30.0, 60.0)


class PipelineError(Exception):
    """The pipeline cannot start (unreachable worker, inconsistent stage files)."""


class Busy(Exception):
    """The in-flight window is full; try again after ``retry_after_s`` (a hint)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestFailed(Exception):
    """A request ended without an answer; ``reason`` names the board/stage and what happened."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WorkerRef:
    device: str
    stage: int
    address: str
    lo: int
    hi: int

    @property
    def key(self) -> Tuple[str, int]:
        return (self.device, self.stage)

    @property
    def name(self) -> str:
        return f"board {self.device} stage {self.stage} ({self.address})"


@dataclass(frozen=True)
class HeadConfig:
    request_timeout_s: float = 30.0  # per attempt, from send to the last output piece
    heartbeat_s: float = 0.2
    dead_after_s: float = 1.5  # no PONG (or no ACK of a route) for this long: the worker is dead
    connect_timeout_s: float = 10.0
    window: int = 0  # requests in flight at once; 0 = 2 x stages
    max_attempts: int = 3  # deadline-driven attempts per request (re-sends after a death do not count)
    secret: Optional[bytes] = None
    shutdown_workers: bool = False  # send BYE at the end (local runs)
    stats_interval_s: float = 1.0  # how often the head asks every worker for its STATS snapshot
    rejoin_interval_s: float = 0.5  # how often the head tries to reconnect a dead worker (it re-joins when healthy)
    send_timeout_s: float = 5.0  # a send of inputs to stage 0 stalled this long fails that worker


@dataclass(frozen=True)
class Fault:
    device: str
    stage: int
    address: str
    reason: str
    detected_at_s: float  # since the head started

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
    window: int = 0  # requests the head kept in flight (0: unknown); the run report predicts under it
    duplicated: int = 0  # answers beyond the first for one request (the exactly-once contract says 0)
    switches: list = field(default_factory=list)  # FamilyHead: one dict per variant switch (see FamilyHead)
    variants: dict = field(default_factory=dict)  # FamilyHead: variant -> requests it answered
    segments: list = field(default_factory=list)  # FamilyHead: throughput between switches (see FamilyHead.run)
    done_at: list = field(default_factory=list)  # per request: time.monotonic() of its answer, or None

    @property
    def lost(self) -> int:
        """Requests that ended neither answered nor failed (the exactly-once contract says 0)."""
        return sum(o is None for o in self.outputs) - len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.faults

    @property
    def completed(self) -> int:
        return sum(o is not None for o in self.outputs)


@dataclass
class _Inflight:
    rid: int
    inputs: list
    future: Future
    t0: float
    t_end: float  # the request's own deadline: it fails then at the latest
    deadline: float = 0.0  # of the current attempt
    attempt: int = 0  # on the wire, mod 256
    timeouts: int = 0
    pieces: dict = field(default_factory=dict)  # micro-batch -> list of (lo, hi, tensors)
    have: dict = field(default_factory=dict)  # micro-batch -> samples received
    ended: bool = False  # answered or failed (a second end is counted in duplicated_total, never delivered)


class Head:
    def __init__(self, workers: Sequence[WorkerRef], n_stages: int, microbatch: int, microbatches: int,
                 outputs: Sequence[Tuple[str, Tuple[int, ...], str]], listen_address: str,
                 config: HeadConfig = HeadConfig(), log: Optional[Callable[[str], None]] = None,
                 advertise: Optional[str] = None, inputs: Sequence[Tuple[str, Tuple[int, ...], str]] = (),
                 model: str = "", plan_sha256: str = "", predicted_compute_s: Optional[Mapping[int, float]] = None):
        self.advertise = advertise  # address workers connect to, when the head binds a wildcard
        self.workers = {w.key: w for w in workers}
        self.n_stages = n_stages
        self.microbatch = microbatch
        self.microbatches = microbatches
        self.batch = microbatch * microbatches
        self.out_specs = [(n, tuple(s), np.dtype(d)) for n, s, d in outputs]
        self.in_specs = [(n, tuple(s), np.dtype(d)) for n, s, d in inputs]
        self.output_specs = [(n, s, d.name) for n, s, d in self.out_specs]
        self.input_specs = [(n, s, d.name) for n, s, d in self.in_specs]
        self.model = model
        self.plan_sha256 = plan_sha256
        self.predicted_compute_s = dict(predicted_compute_s or {})
        self.listen_address = listen_address
        self.cfg = config
        self.window = config.window or 2 * n_stages
        self.log = log or (lambda msg: print(f"[head] {msg}", file=sys.stderr, flush=True))
        for s in range(n_stages):
            group = sorted((w for w in workers if w.stage == s), key=lambda w: w.lo)
            if not group or group[0].lo != 0 or group[-1].hi != microbatch or any(
                    a.hi != b.lo for a, b in zip(group, group[1:])):
                ranges = ", ".join(f"{w.device}[{w.lo},{w.hi})" for w in group) or "none"
                raise PipelineError(f"stage {s}: replica ranges ({ranges}) do not tile [0, {microbatch}); "
                                    "the stage.json files come from different plans; re-run `edgeplan compile`")
        per_sample = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, s, d in self.out_specs)
        self.max_frame = max(per_sample * microbatch + 64 * 1024, 1 << 20)
        self._events: queue.Queue = queue.Queue()
        # Control connection of each live worker: socket, send lock, the connection's wire.Session.
        self._ctl: Dict[Tuple[str, int], Tuple[socket.socket, threading.Lock, Optional[wire.Session]]] = {}
        self._data: Dict[Tuple[str, int], net.Sender] = {}  # stage-0 input senders
        self._deaths: Dict[Tuple[str, int], int] = dict.fromkeys(self.workers, 0)
        self._rejoin_after: Dict[Tuple[str, int], float] = {}
        self._gen: Dict[Tuple[str, int], int] = dict.fromkeys(self.workers, 0)  # connection generation
        self._stop = threading.Event()
        self._submit_lock = threading.Lock()
        self._started = self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.started_at = time.monotonic()
        # Loop-owned state; status() reads it without a lock (only assignments and appends happen).
        self._alive: set = set(self.workers)
        self._last_pong = dict.fromkeys(self.workers, self.started_at)
        self._ranges: Dict[int, list] = {}
        self._compute_ranges()
        self._unready: Dict[int, str] = {}  # stage -> why it has no live replica
        self._slow_warned: set = set()  # only replicas of their stage the watchdog flagged (logged once)
        self._epoch = 0
        self._inflight: Dict[int, _Inflight] = {}
        self._deferred: deque = deque()  # events that arrived while a re-route waited for ACKs
        self._resend_all = False
        self._stats: Dict[Tuple[str, int], dict] = {}
        self._stats_seq = 0
        self._refresh: Optional[tuple] = None  # (seq, waiting keys, threading.Event, box, deadline)
        self._faults: List[Fault] = []
        self._n_open = 0
        self._next_id = 0
        self.requests_total = self.completed_total = self.failed_total = 0
        self.resent_total = self.rejected_total = self.rejoined_total = self.stale_results_total = 0
        self.duplicated_total = 0
        self._lat_counts = [0] * len(LATENCY_BUCKETS_S)
        self._lat_sum = 0.0
        self._lat_count = 0
        self._recent_lat: deque = deque(maxlen=64)
        # Results that arrived through wire.Reader.timed, per sending replica (``device/stageK``): the head's own
        # receive-side link figures, in a worker monitor's rx_links format (the estimator reads links INTO the
        # head here, not at their sender, whose send returns once its bytes are in the socket buffer).
        self._rx = RxLinks()

    @classmethod
    def from_specs(cls, specs: Sequence[StageSpec], microbatches: int, listen_address: Optional[str] = None,
                   addresses: Optional[dict] = None, config: HeadConfig = HeadConfig(), log=None,
                   advertise: Optional[str] = None,
                   predicted_compute_s: Optional[Mapping[int, float]] = None) -> "Head":
        """Build from every replica's stage.json; ``addresses`` overrides (device, stage) -> host:port."""
        if not specs:
            raise PipelineError("no stage.json files given")
        addresses = addresses or {}
        workers = [WorkerRef(s.device, s.stage, addresses.get((s.device, s.stage), s.listen), s.lo, s.hi)
                   for s in specs]
        last = [s for s in specs if s.stage == specs[0].n_stages - 1]
        if not last:
            raise PipelineError(f"no stage.json for the last stage {specs[0].n_stages - 1}")
        first = [s for s in specs if s.stage == 0]
        if not first:
            raise PipelineError("no stage.json for stage 0")
        if listen_address is None:
            heads = [p.address for p in last[0].downstream if p.device == "head"]
            if not heads:
                raise PipelineError(f"{last[0].device}/stage{last[0].stage}/stage.json has no 'head' downstream peer")
            listen_address = heads[0]
        outs = [(t.name, tuple(t.shape[1:]), t.dtype) for t in last[0].outputs]
        ins = [(t.name, tuple(t.shape[1:]), t.dtype) for t in first[0].inputs]
        return cls(workers, specs[0].n_stages, specs[0].microbatch, microbatches, outs, listen_address, config, log,
                   advertise, inputs=ins, model=specs[0].model, plan_sha256=specs[0].plan_sha256,
                   predicted_compute_s=predicted_compute_s)

    # --- the service API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every worker, announce routing epoch 1 and start the event loop (once)."""
        if self._started:
            return
        self._started = True
        self.started_at = time.monotonic()  # Fault.detected_at_s counts from here
        self._last_pong = dict.fromkeys(self.workers, self.started_at)
        self._open()
        self._reroute()  # epoch 1: every worker learns the addresses actually in use
        self._resend_all = False
        self._thread = threading.Thread(target=self._loop, name="head-loop", daemon=True)
        self._thread.start()
        threading.Thread(target=self._reconnector, name="head-rejoin", daemon=True).start()

    def submit(self, inputs: Sequence[np.ndarray], deadline_s: Optional[float] = None) -> Future:
        """Queue one request (one array per model input, ``batch`` samples each); never blocks.

        Raises ``Busy`` when ``window`` requests are in flight, ``ValueError`` when an input does not
        match the model. The future gives the outputs (list of arrays) or raises ``RequestFailed``.
        """
        xs = self._check_inputs(inputs)
        if not self._started:
            raise RuntimeError("Head.submit() before Head.start()")
        fut: Future = Future()
        now = time.monotonic()
        budget = self.cfg.request_timeout_s * self.cfg.max_attempts if deadline_s is None else float(deadline_s)
        with self._submit_lock:
            if self._closed:
                fut.set_exception(RequestFailed("the head is closed"))
                return fut
            if self._n_open >= self.window:
                self.rejected_total += 1
                raise Busy(f"{self._n_open} requests in flight (window {self.window})", self._retry_hint())
            self._n_open += 1
            rid = self._next_id
            self._next_id += 1
            self.requests_total += 1
            self._events.put(("submit", None, _Inflight(rid, xs, fut, now, now + budget)))
        return fut

    @property
    def started(self) -> bool:
        return self._started

    def status_line(self) -> str:
        """Why the head is not ready, in one line ('ready' when it is)."""
        if self.ready():
            return "ready"
        return "; ".join(self._unready.values()) or ("closed" if self._closed else "not started")

    def ready(self) -> bool:
        """Every stage has at least one live replica (and the head is running)."""
        return self._started and not self._closed and all(self._ranges.get(s) for s in range(self.n_stages))

    def status(self) -> dict:
        """A JSON-able snapshot: counters, latency histogram, faults, and every worker's latest monitor data."""
        buckets, cum = [], 0
        for le, c in zip(LATENCY_BUCKETS_S, list(self._lat_counts)):
            cum += c
            buckets.append([le, cum])
        workers = {}
        for key, w in list(self.workers.items()):
            snap = self._stats.get(key) or {}
            workers[f"{w.device}/stage{w.stage}"] = {
                "device": w.device, "stage": w.stage, "address": w.address, "alive": key in self._alive,
                "predicted_compute_s": self.predicted_compute_s.get(w.stage), "monitor": snap.get("monitor")}
        return {
            "model": self.model, "plan_sha256": self.plan_sha256, "epoch": self._epoch, "ready": self.ready(),
            "window": self.window, "inflight": self._n_open, "requests_total": self.requests_total,
            "completed_total": self.completed_total, "failed_total": self.failed_total,
            "resent_total": self.resent_total, "rejected_total": self.rejected_total,
            "rejoined_total": self.rejoined_total, "stale_results_total": self.stale_results_total,
            "duplicated_total": self.duplicated_total,
            "latency_seconds": {"buckets": buckets, "sum": self._lat_sum, "count": self._lat_count},
            "faults": [asdict(f) for f in list(self._faults)[-100:]],  # the latest (a flapping link adds up)
            "workers": workers, "rx_links": self.rx_links(),
        }

    def close(self) -> None:
        """Stop the loop, fail every unanswered request, say BYE (local runs) and close sockets. Idempotent."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for r in list(self._inflight.values()):
            self._finish(r, reason="the head closed before an answer arrived")
        while True:  # submits the loop never saw
            try:
                kind, _, payload = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                self._finish(payload, reason="the head closed before the request was sent")
            elif kind == "refresh":
                payload[0].set()
        for sender in list(self._data.values()):
            sender.close()
        for sock, lock, session in list(self._ctl.values()):
            if self.cfg.shutdown_workers:
                try:
                    with lock:
                        wire.send_frame(sock, wire.Frame(wire.BYE), session)
                except OSError:
                    pass
            sock.close()
        self._ctl.clear()
        srv = getattr(self, "_srv", None)
        if srv is not None:
            # A blocked accept() keeps the port listening after close() until it returns; shutdown wakes it,
            # so a new head can bind the same address at once (a second `connect` or `serve` in one process).
            for sock in (srv, *list(self._accepted)):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            srv.close()
            self._acceptor.join(timeout=2)

    @property
    def faults(self) -> List[Fault]:
        """Every worker death seen since start, in order."""
        return list(self._faults)

    def __enter__(self) -> "Head":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, inputs: Sequence[Sequence[np.ndarray]],
            on_complete: Optional[Callable[[int], None]] = None) -> RunResult:
        """Send every request of ``inputs`` (each a list of arrays with the full request batch), keeping
        the window full, and wait; ``on_complete(i)`` runs in this thread after request ``i`` is answered.
        Starts the head if needed and closes it at the end if it started it."""
        return run_requests(self, inputs, on_complete)

    def refresh_stats(self, timeout_s: float = 2.0) -> dict:
        """Ask every live worker for a fresh STATS snapshot now; returns "device/stageK" -> snapshot."""
        if not self._started or self._closed:
            return {}
        done, box = threading.Event(), {}
        self._events.put(("refresh", None, (done, box, timeout_s)))
        done.wait(timeout_s + 1.0)
        return dict(box)

    # --- helpers of the API -----------------------------------------------------------------------

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        if not self.in_specs:  # built without the stage-0 inputs: trust the caller
            return [np.asarray(x) for x in inputs]
        if len(inputs) != len(self.in_specs):
            raise ValueError(f"model {self.model or '?'} takes {len(self.in_specs)} input(s) "
                             f"({', '.join(n for n, _, _ in self.in_specs)}), got {len(inputs)}")
        out = []
        for x, (name, shape, dt) in zip(inputs, self.in_specs):
            a = np.asarray(x)
            if a.shape != (self.batch, *shape):
                raise ValueError(f"input {name}: shape {list(a.shape)}, the plan needs {[self.batch, *shape]} "
                                 f"(batch {self.batch} x per-sample {list(shape)}); pad or split the batch")
            if a.dtype != dt:
                if not np.can_cast(a.dtype, dt, "same_kind"):
                    raise ValueError(f"input {name}: dtype {a.dtype} cannot become the model's {dt}")
                a = a.astype(dt)
            out.append(a)
        return out

    def _retry_hint(self) -> float:
        lat = sorted(self._recent_lat)
        return max(0.01, lat[len(lat) // 2] if lat else 0.1)

    def _finish(self, r: _Inflight, outs: Optional[list] = None, reason: Optional[str] = None) -> None:
        """End request ``r``: exactly once, with outputs or a RequestFailed(reason)."""
        if self._inflight.get(r.rid) is r:
            del self._inflight[r.rid]
        if r.ended:
            self.duplicated_total += 1
            return
        r.ended = True
        with self._submit_lock:
            self._n_open -= 1
            if outs is not None:
                self.completed_total += 1
                lat = time.monotonic() - r.t0
                if lat <= LATENCY_BUCKETS_S[-1]:
                    self._lat_counts[bisect.bisect_left(LATENCY_BUCKETS_S, lat)] += 1
                self._lat_sum += lat
                self._lat_count += 1
                self._recent_lat.append(lat)
            else:
                self.failed_total += 1
        try:
            if outs is not None:
                r.future.set_result(outs)
            else:
                r.future.set_exception(RequestFailed(reason or "failed"))
        except InvalidStateError:  # the caller cancelled it
            pass

    # --- connections ------------------------------------------------------------------------------

    def _open(self) -> None:
        self._srv = net.listen(self.listen_address)
        host, port = self._srv.getsockname()[:2]
        self.listen_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._accepted: set = set()  # result connections, closed with the head so nothing keeps the port
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="head-accept")
        self._acceptor.start()
        for w in self.workers.values():
            deadline = time.monotonic() + self.cfg.connect_timeout_s
            while True:
                try:
                    sock, session = net.open_connection(w.address, self.cfg.secret,
                                                        timeout=max(0.1, deadline - time.monotonic()))
                    break
                except wire.FrameError as e:  # the worker refused the handshake: retrying cannot help
                    self._events.put(("dead", w.key, (f"handshake failed: {e}", self._gen[w.key])))
                    sock = None
                    break
                except OSError as e:
                    if time.monotonic() >= deadline:
                        self._events.put(("dead", w.key, (f"cannot connect: {e}", self._gen[w.key])))
                        sock = None
                        break
                    time.sleep(0.1)
            if sock is not None:
                self._attach(w.key, sock, session)

    def _attach(self, key, sock: socket.socket, session: Optional[wire.Session]) -> None:
        """Use ``sock`` (authenticated as ``session``) as the control connection of worker ``key`` (a new
        generation)."""
        net.set_send_timeout(sock, self.cfg.dead_after_s)
        self._gen[key] += 1
        gen = self._gen[key]
        self._ctl[key] = (sock, threading.Lock(), session)
        threading.Thread(target=self._control_reader, args=(key, sock, gen, session), daemon=True,
                         name=f"head-ctl-{key[0]}-{key[1]}").start()
        if key[1] == 0:  # inputs travel on their own connection: heartbeats never wait behind them
            old = self._data.pop(key, None)
            if old is not None:
                old.close()
            self._data[key] = net.Sender(
                self.workers[key].address, secret=self.cfg.secret, send_timeout_s=self.cfg.send_timeout_s,
                max_queue=4 * self.window * self.microbatches + 64,
                on_error=lambda f, msg: self._events.put(("dead", key, (f"inputs not delivered ({msg})", gen))),
                is_stale=lambda f: f.epoch != self._epoch, name=f"head-data-{key[0]}")

    def _accept_loop(self) -> None:
        net.accept_loop(self._srv, self._stop, self._result_reader)

    def _result_reader(self, conn: socket.socket, peer) -> None:
        self._accepted.add(conn)
        try:
            session = wire.handshake(conn, self.cfg.secret, server=True, timeout=max(self.cfg.send_timeout_s, 1.0))
            reader = wire.Reader(conn, session, self.max_frame)
            recv = reader.recv
            while not self._stop.is_set():
                f = recv()
                if f.kind == wire.DATA:
                    if reader.timed is not None:
                        self._record_rx(f, *reader.timed)
                    self._events.put(("result", None, f))
        except wire.FrameError as e:
            self.log(f"closing result connection from {peer[0]}:{peer[1]}: {e}")
        except (wire.ConnectionClosed, OSError):
            pass
        finally:
            self._accepted.discard(conn)
            conn.close()

    def _record_rx(self, f: wire.Frame, nbytes: int, seconds: float) -> None:
        """A timed result frame (wire.Reader.timed) under the last-stage replica whose sample range holds it, as a
        worker files its input (Worker._record_recv_timed); ``seconds`` 0: it had arrived whole (the link kept
        up). A frame no range holds (a route in flight) is not guessed."""
        if f.stage != self.n_stages:
            return
        who = None
        for key, lo, hi in self._ranges.get(self.n_stages - 1, ()):
            if lo <= f.lo and f.hi <= hi:
                w = self.workers.get(key)
                who = None if w is None else f"{w.device}/stage{w.stage}"
                break
        if who is None:
            return
        self._rx.add(who, nbytes, seconds)

    def rx_links(self) -> dict:
        """The head's receive-side link figures per sending replica (a monitor snapshot's ``rx_links`` format)."""
        return self._rx.snapshot()

    def _control_reader(self, key, sock: socket.socket, gen: int, session: Optional[wire.Session]) -> None:
        try:
            recv = wire.Reader(sock, session, wire.MAX_META_BYTES).recv
            while not self._stop.is_set():
                f = recv()
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
            self._events.put(("dead", key, (reason, gen)))

    def _send(self, key, frame: wire.Frame) -> bool:
        ctl = self._ctl.get(key)
        if ctl is None:
            return False
        try:
            with ctl[1]:
                wire.send_frame(ctl[0], frame, ctl[2])
            return True
        except OSError as e:
            self._events.put(("dead", key, (f"send failed ({e})", self._gen[key])))
            return False

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        last_ping = last_stats = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_ping >= self.cfg.heartbeat_s:
                    last_ping = now
                    self._heartbeat(now)
                if now - last_stats >= self.cfg.stats_interval_s:
                    last_stats = now
                    self._poll_stats(now)
                self._check_deadlines(now)
                self._check_refresh(now)
                if self._deferred:
                    ev = self._deferred.popleft()
                else:
                    try:
                        ev = self._events.get(timeout=self.cfg.heartbeat_s / 2)
                    except queue.Empty:
                        continue
                self._handle(ev)
                if self._resend_all:
                    self._resend_all = False
                    for r in list(self._inflight.values()):
                        self._resend(r)
        except Exception as e:  # a bug must not leave callers waiting forever
            self.log(f"event loop failed: {e!r}")
            for r in list(self._inflight.values()):
                self._finish(r, reason=f"the head's event loop failed: {e!r}")
            raise

    def _dispatch(self, r: _Inflight) -> None:
        """Send request ``r`` to the stage-0 replicas under the current routing epoch."""
        r.pieces = {mb: [] for mb in range(self.microbatches)}
        r.have = dict.fromkeys(range(self.microbatches), 0)
        m = self.microbatch
        for mb in range(self.microbatches):
            for key, lo, hi in self._ranges[0]:
                if lo == hi:
                    continue
                frame = wire.Frame(
                    wire.DATA, request_id=r.rid, microbatch=mb, epoch=self._epoch, lo=lo, hi=hi, stage=0,
                    attempt=r.attempt & 0xFF, tensors=tuple(x[mb * m + lo: mb * m + hi] for x in r.inputs))
                sender = self._data.get(key)
                if sender is None or not sender.put(frame):
                    w = self.workers[key]
                    self._finish(r, reason=f"inputs for board {w.device} stage 0 ({w.address}) could not be "
                                           "queued: its link is too slow for the window; lower --window")
                    return

    def _resend(self, r: _Inflight) -> None:
        r.attempt += 1
        r.deadline = min(time.monotonic() + self.cfg.request_timeout_s, r.t_end)
        self.resent_total += 1
        self._dispatch(r)

    def _heartbeat(self, now: float) -> None:
        for key in sorted(self._alive):
            if now - self._last_pong[key] > self.cfg.dead_after_s:
                self._events.put(("dead", key, (f"stopped answering heartbeats for {self.cfg.dead_after_s:g}s",
                                                self._gen[key])))
            else:
                self._send(key, wire.Frame(wire.PING))

    def _poll_stats(self, now: float) -> None:
        """Ask every live worker for STATS; replies land in ``_stats`` (status() reads them)."""
        self._stats_seq += 1
        for key in sorted(self._alive):
            self._send(key, wire.Frame(wire.STATS, request_id=self._stats_seq))
        return self._stats_seq

    def _check_refresh(self, now: float) -> None:
        if self._refresh is not None and (not self._refresh[1] or now >= self._refresh[4]):
            self._refresh[2].set()
            self._refresh = None

    def _where_missing(self, r: _Inflight) -> str:
        """Which last-stage replicas owe samples of ``r`` under the current routing."""
        owed = set()
        for mb, pieces in r.pieces.items():
            for key, lo, hi in self._ranges.get(self.n_stages - 1, ()):
                got = sum(min(hi, phi) - max(lo, plo) for plo, phi, _ in pieces if plo < hi and lo < phi)
                if got < hi - lo:
                    owed.add((key, mb))
        if not owed:
            return "no output missing"
        boards = sorted({f"board {k[0]} stage {k[1]}" for k, _ in owed})
        mbs = sorted({mb for _, mb in owed})
        return f"micro-batch(es) {mbs} incomplete, waiting on {', '.join(boards)}"

    def _check_deadlines(self, now: float) -> None:
        for r in list(self._inflight.values()):
            if r.future.cancelled():
                self._finish(r, reason="cancelled by the caller")
                continue
            if now >= r.t_end:
                self._finish(r, reason=f"deadline of {r.t_end - r.t0:g}s passed after {r.attempt + 1} attempt(s) "
                                       f"({self._where_missing(r)})")
                continue
            if now < r.deadline:
                continue
            r.timeouts += 1
            if r.timeouts >= self.cfg.max_attempts:
                self._finish(r, reason=f"no answer within {self.cfg.request_timeout_s:g}s in {r.timeouts} attempts "
                                       f"({self._where_missing(r)})")
            else:
                self.log(f"request {r.rid}: no answer within {self.cfg.request_timeout_s:g}s "
                         f"({self._where_missing(r)}); re-sending")
                self._resend(r)

    def _handle(self, ev) -> None:
        kind, key, payload = ev
        if kind == "submit":
            r = payload
            if not self.ready():
                why = "; ".join(self._unready.values()) or "the head is not running"
                self._finish(r, reason=f"pipeline not ready: {why}")
                return
            r.deadline = min(time.monotonic() + self.cfg.request_timeout_s, r.t_end)
            self._inflight[r.rid] = r
            self._dispatch(r)
        elif kind == "pong":
            if key in self._alive:
                why = payload.meta.get("unhealthy")
                if why and any(k != key and k[1] == key[1] for k in self._alive):
                    self._on_dead(key, str(why))  # a healthy sibling takes its samples
                else:
                    # The only replica of its stage: taking it out would fail every request at once, while a
                    # slow call (a loaded board) may still finish. Requests wait until their own deadlines.
                    if why and key not in self._slow_warned:
                        self._slow_warned.add(key)
                        self.log(f"{self.workers[key].name}: {why}; it is the stage's only replica, so requests "
                                 "wait for it until their deadlines")
                    elif not why:
                        self._slow_warned.discard(key)
                    self._last_pong[key] = time.monotonic()
        elif kind == "rejoin":
            self._on_rejoin(key, payload)
        elif kind == "result":
            self._on_result(payload)
        elif kind == "stats":
            self._stats[key] = payload.meta
            if self._refresh is not None and payload.request_id >= self._refresh[0] and key in self._refresh[1]:
                self._refresh[1].discard(key)
                self._refresh[3][f"{key[0]}/stage{key[1]}"] = payload.meta
        elif kind == "refresh":
            done, box, timeout_s = payload
            if self._refresh is not None:
                self._refresh[2].set()
            seq = self._poll_stats(time.monotonic())
            self._refresh = (seq, set(self._alive), done, box, time.monotonic() + timeout_s)
        elif kind == "dead":
            reason, gen = payload
            if gen == self._gen[key]:
                self._on_dead(key, reason)
        elif kind == "error":
            self._on_error(key, payload)

    def _on_error(self, key, f: wire.Frame) -> None:
        """A worker's ERROR: a peer it cannot reach fails over at once (no waiting for heartbeats); an
        overloaded worker's refusal re-sends the request (counting as an attempt); a module error fails it."""
        if f.epoch != self._epoch or key not in self._alive:
            return  # about frames of an older routing: everything in flight was re-sent since
        w = self.workers[key]
        message = str(f.meta.get("message", "error"))
        peer = str(f.meta.get("peer") or "")
        if peer == "head":
            self._on_dead(key, f"cannot reach the head at {self.advertise or self.listen_address} ({message})")
            return
        if peer:
            device, _, stage = peer.rpartition("/stage")
            pkey = (device, int(stage)) if stage.isdigit() else None
            if pkey in self._alive:
                self._on_dead(pkey, f"unreachable from board {w.device} stage {w.stage} ({message})")
            return
        r = self._inflight.get(f.request_id)
        if r is None:
            return
        if f.meta.get("overloaded"):
            r.timeouts += 1
            if r.timeouts >= self.cfg.max_attempts:
                self._finish(r, reason=f"board {w.device} stage {w.stage} refused it {r.timeouts} times: {message}")
            else:
                self._resend(r)
            return
        self._finish(r, reason=f"board {w.device} stage {w.stage}: {message}")

    def _on_result(self, f: wire.Frame) -> None:
        r = self._inflight.get(f.request_id)
        if r is None or f.epoch != self._epoch or f.attempt != (r.attempt & 0xFF) or f.stage != self.n_stages:
            self.stale_results_total += 1  # a late answer of an older attempt or epoch: never delivered
            return
        if f.microbatch >= self.microbatches or not (0 <= f.lo < f.hi <= self.microbatch):
            self.log(f"request {f.request_id}: result with bad range mb {f.microbatch} [{f.lo},{f.hi}); dropped")
            return
        if len(f.tensors) != len(self.out_specs) or any(
                t.dtype != d or t.shape[1:] != s or t.shape[0] != f.hi - f.lo
                for t, (_, s, d) in zip(f.tensors, self.out_specs)):
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
            self._finish(r, outs)

    def _compute_ranges(self) -> None:
        """Each stage's live replicas and their sample ranges: a dead replica's samples go to the live
        replica before it (or, for the first, after it), so every range stays contiguous."""
        for s in range(self.n_stages):
            out: List[list] = []
            carry = None
            for w in sorted((w for w in self.workers.values() if w.stage == s), key=lambda w: w.lo):
                if w.key in self._alive:
                    out.append([w.key, carry if carry is not None else w.lo, w.hi])
                    carry = None
                elif out:
                    out[-1][2] = w.hi
                elif carry is None:
                    carry = w.lo
            if out:
                out[-1][2] = self.microbatch
            self._ranges[s] = [tuple(e) for e in out]

    def _on_dead(self, key, reason: str) -> None:
        if key not in self._alive:
            return
        w = self.workers[key]
        self._alive.discard(key)
        fault = Fault(w.device, w.stage, w.address, reason, round(time.monotonic() - self.started_at, 3))
        self._faults.append(fault)
        self.log(f"worker on {fault.describe()}")
        ctl = self._ctl.pop(key, None)
        if ctl:
            ctl[0].close()
        sender = self._data.pop(key, None)
        if sender is not None:
            sender.close()
        self._deaths[key] += 1  # a worker that keeps failing is re-admitted less and less often
        hold = min(10.0, self.cfg.rejoin_interval_s * 2 ** (self._deaths[key] - 1))
        self._rejoin_after[key] = time.monotonic() + hold
        before = {k: (lo, hi) for k, lo, hi in self._ranges[w.stage]}
        self._compute_ranges()
        if not self._ranges[w.stage]:
            self._unready[w.stage] = f"stage {w.stage} has no live replica: {fault.describe()}"
            self.log(self._unready[w.stage])
            for r in list(self._inflight.values()):
                self._finish(r, reason=self._unready[w.stage])
            return
        moved = ", ".join(f"{k[0]} now [{lo},{hi})" for k, lo, hi in self._ranges[w.stage] if before.get(k) != (lo, hi))
        self.log(f"stage {w.stage}: samples of {w.device} move ({moved}); "
                 f"re-sending {len(self._inflight)} in-flight request(s)")
        self._reroute()
        self._resend_all = True  # the loop re-sends once, after nested deaths settled

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
                ev = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            kind, key, payload = ev
            if kind == "ack" and payload.epoch == self._epoch:
                waiting.discard(key)
            elif kind == "pong":
                self._last_pong[key] = time.monotonic()
            elif kind == "dead":
                if payload[1] == self._gen[key]:
                    waiting.discard(key)
                    deaths.append((key, payload[0]))
            elif kind in ("submit", "refresh", "stats", "rejoin"):
                self._deferred.append(ev)
            # results and errors of the old epoch are obsolete: everything in flight is re-sent
        deaths += [(k, f"did not acknowledge routing epoch {self._epoch} within {self.cfg.dead_after_s:g}s")
                   for k in sorted(waiting)]
        now = time.monotonic()
        for k in self._last_pong:
            self._last_pong[k] = max(self._last_pong[k], now - self.cfg.heartbeat_s)
        for key, reason in deaths:
            self._on_dead(key, reason)  # recursion depth is bounded by the number of workers

    # --- re-joining -------------------------------------------------------------------------------

    def _reconnector(self) -> None:
        """Keep trying dead workers (a rebooted board, a restarted process, a module that un-hung);
        one that answers a PING healthily is handed to the loop to re-join."""
        while not self._stop.wait(self.cfg.rejoin_interval_s):
            for key in sorted(set(self.workers) - self._alive):
                if time.monotonic() < self._rejoin_after.get(key, 0.0) or self._stop.is_set():
                    continue
                conn = self._probe(self.workers[key].address)
                if conn is not None:
                    self._events.put(("rejoin", key, conn))

    def _probe(self, address: str) -> Optional[Tuple[socket.socket, Optional[wire.Session]]]:
        """A control connection to ``address`` (and its Session) whose worker answered PING with a healthy
        PONG, or None."""
        try:
            sock, session = net.open_connection(address, self.cfg.secret, timeout=0.5)
        except (OSError, wire.FrameError):
            return None
        try:
            sock.settimeout(1.0)
            wire.send_frame(sock, wire.Frame(wire.PING), session)
            f = wire.recv_frame(sock, session, wire.MAX_META_BYTES)
            if f.kind == wire.PONG and not f.meta.get("unhealthy"):
                sock.settimeout(None)
                return sock, session
        except (OSError, wire.FrameError, wire.ConnectionClosed):
            pass
        sock.close()
        return None

    def _on_rejoin(self, key, conn: Tuple[socket.socket, Optional[wire.Session]]) -> None:
        """Give a re-joined worker its plan range back in a new routing epoch; in-flight requests are re-sent
        under it (answers of the old epoch are ignored), so none is lost or answered twice."""
        sock, session = conn
        if key in self._alive or self._stop.is_set():
            sock.close()
            return
        w = self.workers[key]
        self._attach(key, sock, session)
        self._alive.add(key)
        self._last_pong[key] = time.monotonic()
        self._compute_ranges()
        self._unready.pop(w.stage, None)
        self.rejoined_total += 1
        self.log(f"worker on {w.name} re-joined; it owns samples [{w.lo},{w.hi}) again; "
                 f"re-sending {len(self._inflight)} in-flight request(s)")
        self._reroute()
        self._resend_all = True


class FamilyHead:
    """A plan family behind Head's service API: one started Head per variant; new requests go to the active one.

    Why one Head per variant, not one head re-routing a single set of workers: a variant is a whole
    pipeline with its own stage count, replica ranges and failure handling, and runtime/local.py starts
    every variant's workers with their modules loaded, so a switch sends nothing to the boards and starts
    nothing. A request lives in one variant from submit to answer (it is never re-sent across layouts),
    so each Head's exactly-once contract carries over unchanged. One Head holding per-variant routes was
    weighed and is not simpler: everything a Head keys on its route (stage count, which frames are results,
    each stage's replica ranges and their dead/re-join re-routing, output specs and frame limit, the epoch
    that stale answers are checked against, drain accounting) would have to be keyed by variant as well;
    that is the state of N Heads inside one object, with the old layout's drain entangled with the new one's
    routing. What N Heads cost is one loop thread and a few sockets each; the worker processes, which hold the
    memory, are already one per board and module, shared by every variant (runtime/local.py).

    ``switch(variant)`` is the family's routing epoch: requests submitted before it finish on the old
    layout, later ones start on the new one at once: the current epoch has a ``window`` of its own, and the
    requests still draining on older layouts do not count against it (at most ``2 x window`` in flight over
    the family). A shared window made new requests wait for old ones to finish: the pause was one period of
    the old plan under the condition it was left for (0.3-0.8 s after a 4x drop on the testbed, against
    its 0.14 s stage). ``capacity()`` is what a caller may keep in flight now, and ``add_wake(fn)`` calls
    ``fn()`` at every switch, so a client waiting for an answer submits to the new layout without waiting
    for the old one (``run_requests`` does both). Every switch is recorded in ``switches``: ``at_s`` (since
    start), ``from``, ``to``, ``reason``, ``pause_s``, ``drain_s`` (until the old layout answered its last request),
    ``p99_during_s`` / ``requests_during`` (requests answered from the decision until the old layout
    drained and the new one answered its first) and ``old_stage_s`` (the old plan's slowest stage:
    measured mean, else predicted).
    """

    def __init__(self, heads: Mapping[str, Head], initial: str, log: Optional[Callable[[str], None]] = None):
        if initial not in heads:
            raise PipelineError(f"initial variant {initial!r} is not in the family ({', '.join(sorted(heads))})")
        self.heads = dict(heads)
        self.active = initial
        self.initial = initial
        first = self.heads[initial]
        for name, h in self.heads.items():
            if (h.batch, h.input_specs, h.output_specs) != (first.batch, first.input_specs, first.output_specs):
                raise PipelineError(f"variant {name}: batch {h.batch}, inputs {h.input_specs}, outputs "
                                    f"{h.output_specs} differ from {initial}'s; the family folder mixes compiles, "
                                    "re-run `edgeplan compile` on the family")
        self.batch, self.microbatch, self.microbatches = first.batch, first.microbatch, first.microbatches
        self.model, self.input_specs, self.output_specs = first.model, first.input_specs, first.output_specs
        self.in_specs, self.out_specs = first.in_specs, first.out_specs
        self.window = max(h.window for h in self.heads.values())
        self.log = log or first.log
        self._lock = threading.Lock()
        self._open = dict.fromkeys(self.heads, 0)
        self._open_epoch: Dict[int, int] = {}  # family epoch a request was submitted in -> requests still open
        self._answered = dict.fromkeys(self.heads, 0)
        self.epoch = 0
        self.switches: List[dict] = []
        self._pending: List[dict] = []  # switches still being measured (a later switch does not end one)
        self._wake: List[Callable[[], None]] = []  # called at every switch (run_requests: submit now)
        self.rejected = 0
        self.started_at = time.monotonic()

    # --- what callers read of a Head ----------------------------------------------------------------

    @property
    def plan_sha256(self) -> str:
        return self.heads[self.active].plan_sha256

    @property
    def predicted_compute_s(self) -> dict:
        return self.heads[self.active].predicted_compute_s

    @property
    def started(self) -> bool:
        return any(h.started for h in self.heads.values())

    @property
    def faults(self) -> List[Fault]:
        return [f for h in self.heads.values() for f in h.faults]

    @property
    def resent_total(self) -> int:
        return sum(h.resent_total for h in self.heads.values())

    @property
    def duplicated_total(self) -> int:
        return sum(h.duplicated_total for h in self.heads.values())

    def answered_by_variant(self) -> dict:
        with self._lock:
            return dict(self._answered)

    # --- the service API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every variant's head (each connects to its workers); a failure closes those already started."""
        self.started_at = time.monotonic()
        try:
            for h in self.heads.values():
                h.start()
        except BaseException:
            self.close()
            raise

    def ready(self) -> bool:
        return self.heads[self.active].ready()

    def capacity(self) -> int:
        """Requests a caller may keep in flight now: ``window`` for the current epoch plus those still
        draining on older layouts (at most ``2 x window``)."""
        with self._lock:
            now, total = self._in_flight()
            return min(2 * self.window, self.window + total - now)

    def _in_flight(self) -> Tuple[int, int]:
        """(requests in flight in the current epoch, in all epochs), under ``_lock``: the one count that
        ``capacity`` and ``submit`` both apply their window rule to, so the two cannot drift apart."""
        return self._open_epoch.get(self.epoch, 0), sum(self._open_epoch.values())

    def add_wake(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every switch (a new epoch has room at once)."""
        with self._lock:
            self._wake.append(fn)

    def remove_wake(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._wake:
                self._wake.remove(fn)

    def submit(self, inputs: Sequence[np.ndarray], deadline_s: Optional[float] = None) -> Future:
        """Head.submit on the active variant; ``Busy`` when ``window`` requests of the current epoch are in
        flight (or ``2 x window`` over all variants, old layouts still draining)."""
        with self._lock:
            n_now, n_open = self._in_flight()
            if n_now >= self.window or n_open >= 2 * self.window:
                self.rejected += 1
                raise Busy(f"{n_now} requests in flight on {self.active}, {n_open} in all (window {self.window})",
                           self.heads[self.active]._retry_hint())
            name, epoch = self.active, self.epoch
            fut = self.heads[name].submit(inputs, deadline_s)
            t0 = time.monotonic()
            self._open[name] += 1
            self._open_epoch[epoch] = self._open_epoch.get(epoch, 0) + 1
            for sw in self._pending:
                if sw["epoch"] == epoch and sw["pause_s"] is None:
                    sw["pause_s"] = round(t0 - sw["_t"], 6)
        fut.add_done_callback(lambda f: self._ended(name, epoch, t0, f))
        return fut

    def switch(self, variant: str, reason: str = "") -> Optional[dict]:
        """Send new requests to ``variant`` from now on (None when it is already active); returns the switch's
        record, completed as it is measured. Refused (PipelineError) when that variant has a stage with no
        live worker."""
        if variant not in self.heads:
            raise ValueError(f"unknown variant {variant!r}; the family has {', '.join(sorted(self.heads))}")
        with self._lock:
            old = self.active
            if variant == old:
                return None
            if not self.heads[variant].ready():
                raise PipelineError(f"cannot switch to {variant}: {self.heads[variant].status_line()}")
            t = time.monotonic()
            self.epoch += 1
            drained = not any(self._open_epoch.values())
            sw = {"epoch": self.epoch, "at_s": round(t - self.started_at, 3), "from": old, "to": variant,
                  "reason": reason, "pause_s": None, "drain_s": 0.0 if drained else None,
                  "p99_during_s": None, "requests_during": 0, "old_stage_s": self._slowest_stage_s(old),
                  "_t": t, "_lat": [], "_first": None}
            self.active = variant
            self.switches.append(sw)
            self._pending.append(sw)
            wake = list(self._wake)
        self.log(f"switch {old} -> {variant} (family epoch {self.epoch}): {reason or 'requested'}")
        for fn in wake:
            fn()
        return sw

    def warm_up(self, requests: int = 3, timeout_s: float = 300.0) -> dict:
        """Send ``requests`` zero requests through every variant, one variant and one request at a time (the
        first calls load caches; the median skips them), then return each variant's workers' median module
        time: {variant: {"device/stageK": seconds}}. The controller divides them by the plan's predictions
        (per worker: the model's own error). Not counted as switches; they count in status() like any other."""
        xs = [np.zeros((self.batch, *shape), dt) for _, shape, dt in self.in_specs]
        for h in self.heads.values():  # one variant at a time, one request at a time: timed as when it runs alone
            for _ in range(requests):
                try:
                    h.submit(xs).result(timeout=timeout_s)
                except Exception:  # a failed warm-up request leaves that worker without a median: no correction
                    pass
        out = {}
        for name, h in self.heads.items():
            stats = h.refresh_stats()
            out[name] = {k: v["compute_p50_s"] for k, v in stats.items() if v.get("compute_p50_s")}
        return out

    def status(self) -> dict:
        """The active variant's status() with counters and latencies summed over every variant, plus
        ``variant``, ``variants``, ``family_epoch``, ``switches`` and ``family_workers`` (variant -> workers)."""
        each = {name: h.status() for name, h in self.heads.items()}
        st = dict(each[self.active])
        for key in ("requests_total", "completed_total", "failed_total", "resent_total", "rejected_total",
                    "rejoined_total", "stale_results_total", "duplicated_total"):
            st[key] = sum(s.get(key, 0) for s in each.values())
        st["rejected_total"] += self.rejected
        buckets = [[le, sum(s["latency_seconds"]["buckets"][i][1] for s in each.values())]
                   for i, (le, _) in enumerate(st["latency_seconds"]["buckets"])]
        st["latency_seconds"] = {"buckets": buckets,
                                 "sum": sum(s["latency_seconds"]["sum"] for s in each.values()),
                                 "count": sum(s["latency_seconds"]["count"] for s in each.values())}
        st["faults"] = [dict(f, variant=name) for name, s in each.items() for f in s["faults"]][-100:]
        with self._lock:
            st["inflight"] = sum(self._open.values())
            st["switches"] = [self._public(sw) for sw in self.switches]
        st.update(window=self.window, variant=self.active, variants=sorted(self.heads), family_epoch=self.epoch,
                  family_workers={name: s["workers"] for name, s in each.items()},
                  family_rx_links={name: s.get("rx_links") or {} for name, s in each.items()})
        return st

    def set_stats_interval(self, seconds: float) -> None:
        """Poll every variant's workers for STATS this often: the adapt controller reads status() every
        epoch, and a change shows only in fresh counters (at the 1 s default, every other 0.5 s epoch saw
        none and detection took twice as long)."""
        for h in self.heads.values():
            h.cfg = replace(h.cfg, stats_interval_s=float(seconds))

    def refresh_stats(self, timeout_s: float = 2.0) -> dict:
        """The initial variant's workers' fresh STATS (the run report compares them with its plan)."""
        return self.heads[self.initial].refresh_stats(timeout_s)

    def run(self, inputs: Sequence[Sequence[np.ndarray]],
            on_complete: Optional[Callable[[int], None]] = None) -> RunResult:
        """Head.run over the family; the result also carries ``switches`` and requests answered per variant."""
        t_start = time.monotonic()
        res = run_requests(self, inputs, on_complete)
        with self._lock:
            res.switches = [self._public(sw) for sw in self.switches]
            res.variants = dict(self._answered)
            cuts = [(sw["_t"], sw["to"]) for sw in self.switches if sw["_t"] >= t_start]
            before = [sw["to"] for sw in self.switches if sw["_t"] < t_start]
        done = sorted(t for t in res.done_at if t is not None)
        if done:  # throughput of each stretch between switches (answers of the old layout count where they land)
            bounds = [(t_start, before[-1] if before else self.initial)] + cuts + [(max(done[-1], t_start), "")]
            for (a, name), (b, _) in zip(bounds, bounds[1:]):
                n = bisect.bisect_right(done, b) - bisect.bisect_right(done, a)
                res.segments.append({"variant": name, "from_s": round(a - t_start, 3), "to_s": round(b - t_start, 3),
                                     "requests": n,
                                     "throughput": round(n * self.batch / (b - a), 3) if b > a else None})
        return res

    def close(self) -> None:
        for h in self.heads.values():
            h.close()
        with self._lock:
            for sw in list(self._pending):
                self._finalize(sw)

    def __enter__(self) -> "FamilyHead":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- measuring switches -------------------------------------------------------------------------

    def _ended(self, name: str, epoch: int, t0: float, f: Future) -> None:
        """A request ended: a switch has drained once every request submitted before it ended, and is
        measured once it has drained and its own epoch answered a request."""
        t = time.monotonic()
        ok = not f.cancelled() and f.exception() is None
        with self._lock:
            self._open[name] -= 1
            self._open_epoch[epoch] -= 1
            if not self._open_epoch[epoch]:
                del self._open_epoch[epoch]
            if ok:
                self._answered[name] += 1
            for sw in list(self._pending):
                if ok:
                    sw["_lat"].append(t - t0)
                if sw["drain_s"] is None and not any(e < sw["epoch"] for e in self._open_epoch):
                    sw["drain_s"] = round(t - sw["_t"], 6)
                if epoch == sw["epoch"] and ok and sw["_first"] is None:
                    sw["_first"] = t
                if sw["drain_s"] is not None and sw["_first"] is not None:
                    self._finalize(sw)

    def _finalize(self, sw: dict) -> None:
        lat = sorted(sw["_lat"])
        sw["requests_during"] = len(lat)
        sw["p99_during_s"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 6) if lat else None
        if sw in self._pending:
            self._pending.remove(sw)

    def _slowest_stage_s(self, name: str) -> Optional[float]:
        h = self.heads[name]
        measured = [v.get("compute_mean_s") for v in list(h._stats.values())]
        measured = [float(x) for x in measured if x is not None]
        if measured:
            return round(max(measured), 6)
        return round(max(h.predicted_compute_s.values()), 6) if h.predicted_compute_s else None

    @staticmethod
    def _public(sw: dict) -> dict:
        return {k: v for k, v in sw.items() if not k.startswith("_")}


def run_requests(svc, inputs: Sequence[Sequence[np.ndarray]],
                 on_complete: Optional[Callable[[int], None]] = None) -> RunResult:
    """``svc.run``: a Head or a FamilyHead (the same service API), the window kept full; see Head.run."""
    n = len(inputs)
    res = RunResult(n, svc.batch, [None] * n, [None] * n, window=svc.window, done_at=[None] * n)
    started_here = not svc.started
    if started_here:
        svc.start()
    done: queue.Queue = queue.Queue()
    capacity = getattr(svc, "capacity", None)  # a FamilyHead: more in flight while an old layout drains

    def wake() -> None:
        done.put(None)

    if hasattr(svc, "add_wake"):
        svc.add_wake(wake)
    t_sent: Dict[int, float] = {}
    answered: set = set()
    t_first = t_last = None
    try:
        nxt = open_ = 0
        while nxt < n or open_:
            while nxt < n and open_ < (capacity() if capacity else svc.window):
                try:
                    fut = svc.submit(inputs[nxt])
                except Busy:  # another user of this head holds part of the window
                    break
                t_sent[nxt] = time.monotonic()
                t_first = t_first or t_sent[nxt]
                fut.add_done_callback(lambda f, i=nxt: done.put((i, f, time.monotonic())))
                nxt += 1
                open_ += 1
            try:
                item = done.get(timeout=0.05 if not open_ else None)
            except queue.Empty:
                continue
            if item is None:  # a switch: the new layout has room now
                continue
            i, fut, t_done = item
            if i in answered:
                res.duplicated += 1
                continue
            answered.add(i)
            open_ -= 1
            t_last = t_done
            try:
                res.outputs[i] = fut.result()
            except RequestFailed as e:
                res.failures[i] = e.reason
                continue
            res.latencies_s[i] = t_done - t_sent[i]
            res.done_at[i] = t_done
            if on_complete:
                on_complete(i)
        res.wall_s = (t_last or 0.0) - (t_first or 0.0)
        res.faults = list(svc.faults)
        res.resent = svc.resent_total
        res.stats = svc.refresh_stats()
        res.duplicated += svc.duplicated_total
    finally:
        if hasattr(svc, "remove_wake"):
            svc.remove_wake(wake)
        if started_here:
            svc.close()
    return res
