"""Stage worker: one process per (device, stage) on a board.

``python -m edgeplan_runtime.worker --stage PATH/stage.json [--listen HOST:PORT] [--secret-env NAME]``

It checks its files' sha256 against stage.json, loads its module through
``backends.load``, listens on the plan's address (or ``--listen``), assembles
each micro-batch's sample range from upstream pieces, runs the module and sends
each downstream replica the intersection of ranges. Any connection may carry
control frames: PING (-> PONG, flagged unhealthy by the compute watchdog), ROUTE (new
ranges/addresses after a failure -> ACK), STATS (-> STATS), BYE. A bad frame closes only the connection it came on.
Prints ``READY host:port`` on stdout once it serves (one address per ``--stage``); logs go to stderr.
"""

import argparse
import hashlib
import os
import queue
import resource
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import backends, net, wire
from .monitor import Monitor, peak_rss_bytes
from .spec import StageSpec

META_SLACK = 1 << 20  # control frames (JSON) up to 1 MiB
_perf_counter = time.perf_counter
_process_time = time.process_time


def _thread_cpu_clock() -> Optional[Callable[[], float]]:
    """The calling thread's CPU clock (``clock_gettime(CLOCK_THREAD_CPUTIME_ID)``: Linux, Python 3.3+; 3.6
    has no ``time.thread_time``), or None where the platform lacks it."""
    clock = getattr(time, "clock_gettime", None)
    cid = getattr(time, "CLOCK_THREAD_CPUTIME_ID", None)
    if clock is None or cid is None:
        return None
    try:
        clock(cid)
    except OSError:
        return None
    return lambda: clock(cid)


def module_cpu_clock(runner) -> Tuple[Callable[[], float], str]:
    """(clock, "thread" | "process"): the CPU clock a module call is charged on.

    The calling thread's when the backend runs the module on it (the runner's ``calling_thread``: ONNX
    Runtime or TVM on the CPU with one intra-op thread), so the receive and send threads' CPU during the
    call (a slow link's send loop) is left to the hop, not counted as module time; process CPU otherwise,
    since a module's own pool threads must count.
    """
    if getattr(runner, "calling_thread", False):
        clock = _thread_cpu_clock()
        if clock is not None:
            return clock, "thread"
    return _process_time, "process"


@dataclass(frozen=True)
class Route:
    """Where samples go in routing epoch ``epoch``: this replica's range and the downstream group."""

    epoch: int
    lo: int
    hi: int
    downstream: Tuple[Tuple[str, int, str, int, int], ...]  # (device, stage, address, lo, hi)


def _nbytes(shape, dtype) -> int:
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= int(d)
    return n


def cpu_quota_cores(root: str = "/") -> Optional[float]:
    """Cores this process may use under its cgroup's CPU quota (the smallest on the way up to the
    hierarchy's root), or None when unlimited or unreadable.

    The run report carries it so ``edgeplan calibrate`` turns CPU seconds into the board's seconds
    (the emulated testbed caps each board's processes with a quota). cgroup v2 reads ``cpu.max``;
    v1 reads ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the ``cpu`` controller's mount.
    ``ip netns exec`` (how the testbed starts a board's worker) remounts /sys without the cgroup
    mounts; the same files are then read through the parent's root (the head that started it,
    /proc/PPID/root).
    """
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None  # (mount, path inside it, v2?)
    for cgroups in (os.path.join(root, "sys/fs/cgroup"), os.path.join(root, f"proc/{os.getppid()}/root/sys/fs/cgroup")):
        for line in lines:
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if "cpu" in controllers.split(","):
                for mount in ("cpu,cpuacct", "cpu", controllers):
                    if os.path.isfile(os.path.join(cgroups, mount, "cpu.cfs_quota_us")):
                        found = (os.path.join(cgroups, mount), path, False)
                        break
            elif controllers == "" and found is None and os.path.isfile(os.path.join(cgroups, "cgroup.controllers")):
                found = (cgroups, path, True)
        if found is not None:
            break
    if found is None:
        return None
    mount, path, v2 = found
    best = None
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        d = os.path.join(mount, *parts[:depth])
        try:
            if v2:
                with open(os.path.join(d, "cpu.max")) as f:
                    quota, period = (f.read().split() + ["100000"])[:2]
                cores = None if quota == "max" else int(quota) / int(period)
            else:
                with open(os.path.join(d, "cpu.cfs_quota_us")) as f, open(os.path.join(d, "cpu.cfs_period_us")) as g:
                    quota_us, period_us = int(f.read()), int(g.read())
                cores = None if quota_us < 0 else quota_us / period_us
        except (OSError, ValueError, ZeroDivisionError):
            continue
        if cores is not None and (best is None or cores < best):
            best = cores
    return best


def verify_files(stage_dir: Path, spec: StageSpec) -> None:
    """Refuse to start when a file listed in stage.json is missing or altered.

    Paths are relative to the stage folder, or else to the device folder above it.
    """
    root = stage_dir.parent.resolve()
    for rel, digest in spec.files:
        path = stage_dir / rel
        if not path.exists():
            path = stage_dir.parent / rel
        path = path.resolve()
        if root not in path.parents:
            raise ValueError(f"{stage_dir}/stage.json: file {rel!r} points outside the device folder {root}")
        if not path.is_file():
            raise ValueError(f"{stage_dir}/stage.json lists {rel!r} but it is missing; re-copy this board's artifacts")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise ValueError(f"{path}: sha256 {h.hexdigest()[:12]}... does not match stage.json ({digest[:12]}...); "
                             "the artifact was altered or partly copied; re-copy this board's artifacts")


class Worker:
    """One stage replica: assembles micro-batches, runs the module, forwards outputs.

    Everything it holds is bounded: incomplete micro-batches (``max_partials``), complete ones
    waiting for the module (``max_ready``) and frames per downstream peer (``max_send_queue``).
    A frame that does not fit is refused with an ERROR to the head (which re-sends or fails that
    request), never dropped silently. A compute watchdog reports the replica unhealthy in its
    PONG when a module call runs far beyond its usual time, so the head re-routes around it.
    """

    def __init__(self, spec: StageSpec, runner, listen_address: Optional[str] = None, secret: Optional[bytes] = None,
                 max_partials: int = 256, partial_timeout_s: float = 60.0, send_timeout_s: float = 5.0,
                 log=None, max_ready: int = 64, max_send_queue: int = 64, watchdog_factor: float = 10.0,
                 watchdog_floor_s: float = 1.0, watchdog_first_s: float = 60.0, monitor=None):
        self.spec = spec
        self.runner = runner
        self.secret = secret
        self.max_partials = max_partials
        self.partial_timeout_s = partial_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_send_queue = max_send_queue
        self.watchdog_factor = watchdog_factor
        self.watchdog_floor_s = watchdog_floor_s
        self.watchdog_first_s = watchdog_first_s
        self.name = f"{spec.device}/stage{spec.stage}"
        self._log = log or (lambda msg: print(f"[worker {self.name}] {msg}", file=sys.stderr, flush=True))
        # Largest DATA frame this worker accepts: its inputs for a whole micro-batch (its range can grow
        # to that after a sibling replica fails), plus descriptors.
        per_sample = sum(_nbytes(t.shape[1:], t.dtype) for t in spec.inputs)
        self.max_frame = max(per_sample * spec.microbatch + 64 * 1024, META_SLACK)
        head = [p for p in spec.downstream if p.device == "head"]
        down = tuple((p.device, p.stage, p.address, p.lo, p.hi) for p in spec.downstream)
        if head:
            down = (("head", spec.n_stages, head[0].address, 0, spec.microbatch),)
        self.route = Route(0, spec.lo, spec.hi, down)
        # What every input/output must look like past the batch dimension (checked on every frame).
        self._in_want = [(np.dtype(t.dtype), tuple(t.shape[1:]), t) for t in spec.inputs]
        self._out_want = [(tuple(t.shape[1:]), t) for t in spec.outputs]
        self._upstream = "head" if spec.stage == 0 else f"stage{spec.stage - 1}"  # the monitor's link name
        # the upstream replicas' sample ranges (device, lo, hi): which one sent a frame, for the receive-side link
        # figure (a sender sends only samples of its own range); the head's ROUTE replaces them
        self._up_ranges: Tuple[Tuple[str, int, int], ...] = tuple((p.device, p.lo, p.hi) for p in spec.upstream)
        self._lock = threading.Lock()
        self._partials: Dict[Tuple[int, int, int], dict] = {}
        self._ready: queue.Queue = queue.Queue(maxsize=max_ready)
        self._compute_lock = threading.Lock()  # one module call at a time, on whichever thread runs it
        # Add-only while the worker serves: _sender finds an existing sender without the lock (a dict read is
        # atomic under the GIL, and an entry, once there, is never removed or replaced, so what it finds stays
        # the sender for that address); serve_forever closes them all after the accept loop ended, and from
        # then on _sender adds none (_senders_closed), so no sender thread outlives the worker.
        self._senders: Dict[str, net.Sender] = {}
        self._senders_lock = threading.Lock()
        self._senders_closed = False
        self._send_depth: Dict[str, int] = {}  # the send-queue depth last reported to the monitor, per peer address
        self._control: Optional[Tuple[socket.socket, threading.Lock, Optional[wire.Session]]] = None
        self._stop = threading.Event()
        self._srv: Optional[socket.socket] = None
        self.address = listen_address or spec.listen
        self.stats = {"frames_in": 0, "bytes_in": 0, "frames_out": 0, "bytes_out": 0, "runs": 0, "samples": 0,
                      "bad_frames": 0, "stale_frames": 0, "rejected_frames": 0, "errors": 0, "send_failures": 0,
                      "chunked_runs": 0, "overloaded": 0, "late_outputs": 0}
        self._compute_s: List[float] = []
        self._unrecorded: List[Tuple[float, int]] = []  # module calls not yet recorded in the monitor
        self._recent_s: deque = deque(maxlen=64)  # the watchdog's running median
        self._call_t0: Optional[float] = None  # perf_counter() at the start of the module call in progress
        # CPU accounting for the run report (edgeplan calibrate): process CPU when the first module call
        # started (start-up: imports, loading), CPU inside module calls on module_cpu_clock (the calling
        # thread's for a module run on it, else all threads'), the quota.
        self._cpu_startup_s: Optional[float] = None
        self._compute_cpu_s = 0.0
        self._cpu_clock, self.cpu_clock = module_cpu_clock(runner)
        self.cpu_quota_cores = cpu_quota_cores()
        self.monitor = monitor or Monitor(spec.device, spec.stage, spec.unit)

    # --- serving ----------------------------------------------------------------------------------

    def bind(self) -> str:
        self._srv = net.listen(self.address)
        host, port = self._srv.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.address

    def serve_forever(self) -> None:
        if self._srv is None:
            self.bind()
        threading.Thread(target=self._compute_loop, name="compute", daemon=True).start()
        net.accept_loop(self._srv, self._stop, self._serve_conn, self.send_timeout_s)
        self._srv.close()
        with self._senders_lock:
            self._senders_closed = True
            for s in self._senders.values():
                s.close()

    def stop(self) -> None:
        self._stop.set()

    def _serve_conn(self, sock: socket.socket, peer) -> None:
        lock = threading.Lock()
        try:
            session = wire.handshake(sock, self.secret, server=True, timeout=max(self.send_timeout_s, 1.0))
            reader = wire.Reader(sock, session, self.max_frame)
            recv, stopped, on_data, data = reader.recv, self._stop.is_set, self._on_data, wire.DATA
            while not stopped():
                f = recv()
                if f.kind == data:
                    timed = reader.timed
                    on_data(f)
                    if timed is not None:  # after the outputs left: off the hop's critical path
                        self._record_recv_timed(f, *timed)
                else:
                    self._handle(f, sock, lock, session)
                f = None  # the next frame is read into this one's buffer only once nothing refers to it
        except wire.ConnectionClosed:
            pass
        except wire.FrameError as e:
            self.stats["bad_frames"] += 1
            self.monitor.count("frames_bad")
            self._log(f"closing connection from {peer[0]}:{peer[1]}: {e}")
        except OSError:
            pass
        finally:
            sock.close()

    def _reply(self, sock, lock, session: Optional[wire.Session], frame: wire.Frame) -> None:
        try:
            with lock:
                wire.send_frame(sock, frame, session)
        except OSError as e:
            self._log(f"cannot reply {frame.kind_name}: {e}")

    def _handle(self, f: wire.Frame, sock, lock, session: Optional[wire.Session] = None) -> None:
        if f.kind == wire.DATA:
            self._on_data(f)
        elif f.kind == wire.PING:
            self._control = (sock, lock, session)
            why = self.unhealthy()
            self._reply(sock, lock, session, wire.Frame(wire.PONG, epoch=self.route.epoch, request_id=f.request_id,
                                               meta={"unhealthy": why} if why else {}))
        elif f.kind == wire.ROUTE:
            self._control = (sock, lock, session)
            try:
                self._apply_route(f.meta)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                self._log(f"ignoring malformed ROUTE: {e!r}")
                return
            self._reply(sock, lock, session, wire.Frame(wire.ACK, epoch=self.route.epoch))
        elif f.kind == wire.STATS:
            self._reply(sock, lock, session, wire.Frame(wire.STATS, request_id=f.request_id, meta=self.snapshot()))
        elif f.kind == wire.BYE:
            self._log("BYE from head; exiting")
            self.stop()
        else:
            self._log(f"ignoring unexpected {f.kind_name} frame")

    def _apply_route(self, meta: dict) -> None:
        epoch = int(meta["epoch"])
        stages = meta["stages"]
        lo = hi = 0
        for device, _addr, rlo, rhi in stages[str(self.spec.stage)]:
            if device == self.spec.device:
                lo, hi = int(rlo), int(rhi)
        prev = str(self.spec.stage - 1)
        if prev in stages:
            self._up_ranges = tuple((str(d), int(a_lo), int(a_hi)) for d, _a, a_lo, a_hi in stages[prev])
        nxt = self.spec.stage + 1
        if nxt < self.spec.n_stages:
            down = tuple((str(d), nxt, str(a), int(a_lo), int(a_hi)) for d, a, a_lo, a_hi in stages[str(nxt)])
        else:
            down = (("head", nxt, str(meta["head"]), 0, self.spec.microbatch),)
        if not (0 <= lo <= hi <= self.spec.microbatch):
            raise ValueError(f"range [{lo}, {hi}) outside the micro-batch of {self.spec.microbatch}")
        with self._lock:
            if epoch != self.route.epoch:
                self._partials.clear()  # pieces routed under the old epoch will be re-sent by the head
            self.route = Route(epoch, lo, hi, down)

    # --- health -----------------------------------------------------------------------------------

    def call_limit_s(self) -> float:
        """How long one module call may run before the watchdog reports this replica unhealthy:
        ``watchdog_factor`` x the median of recent calls, at least ``watchdog_floor_s`` (the first
        calls, which may compile or warm caches, get ``watchdog_first_s``)."""
        recent = sorted(self._recent_s)
        if len(recent) < 3:
            return self.watchdog_first_s
        return max(self.watchdog_floor_s, self.watchdog_factor * recent[len(recent) // 2])

    def unhealthy(self) -> Optional[str]:
        """Why this replica should not get requests now (a module call far over its usual time), or None."""
        t0 = self._call_t0
        if t0 is None:
            return None
        running, limit = time.perf_counter() - t0, self.call_limit_s()
        if running <= limit:
            return None
        return (f"compute watchdog: a module call has run {running:.1f}s, over its limit of {limit:.1f}s "
                f"({self.watchdog_factor:g}x the recent median, at least {self.watchdog_floor_s:g}s); "
                "the module hangs or the board is overloaded")

    # --- assembling micro-batches -----------------------------------------------------------------

    def _reject(self, f: wire.Frame, why: str) -> None:
        self.stats["rejected_frames"] += 1
        self.monitor.count("frames_rejected")
        self._log(f"dropping DATA request {f.request_id} mb {f.microbatch} [{f.lo},{f.hi}): {why}")

    def _overloaded(self, rid: int, mb: int, epoch: int, why: str) -> None:
        """Refuse a micro-batch explicitly: the head re-sends or fails that request."""
        self.stats["overloaded"] += 1
        self.monitor.count("frames_rejected")
        self._report_error(rid, mb, f"overloaded: {why}", epoch, overloaded=True)

    def _on_data(self, f: wire.Frame) -> None:
        """One DATA frame: assembled, and run and forwarded at once when it completes a micro-batch and the
        module is idle; its counters are updated afterwards (off the hop's critical path)."""
        try:
            item = self._assemble(f)
            if item is None:
                return
            # An idle module runs the micro-batch right here (no thread hand-off on the hop); a busy one queues it.
            if not self._ready.queue and self._compute_lock.acquire(blocking=False):  # .queue: no lock to peek
                try:
                    self._process(item)
                finally:
                    self._compute_lock.release()
                return
            try:
                self._ready.put_nowait(item)
            except queue.Full:
                self._overloaded(f.request_id, f.microbatch, f.epoch,
                                 f"{self._ready.maxsize} micro-batches already wait for the module")
            self.monitor.set_queue("ready", self._ready.qsize())
        finally:
            self._record_recv(f)

    def _record_recv(self, f: wire.Frame) -> None:
        """A received DATA frame in the counters and the monitor (its tensor bytes summed once)."""
        nbytes = 0
        for t in f.tensors:
            nbytes += t.nbytes
        stats = self.stats
        stats["frames_in"] += 1
        stats["bytes_in"] += nbytes
        self.monitor.record_recv(self._upstream if f.stage == self.spec.stage else
                                 "head" if f.stage == 0 else f"stage{f.stage - 1}", nbytes)

    def _record_recv_timed(self, f: wire.Frame, nbytes: int, seconds: float) -> None:
        """How fast a large frame arrived (wire.Reader.timed), under the sending replica's name as in
        record_send (``device/stageK``, ``head``): the estimator's link figure as the receiver sees it."""
        if f.stage != self.spec.stage:
            return  # not this stage's input: no upstream link it measures
        who = "head" if self.spec.stage == 0 else None
        for device, lo, hi in () if who else self._up_ranges:
            if lo <= f.lo and f.hi <= hi:
                who = "head" if device == "head" else f"{device}/stage{self.spec.stage - 1}"
                break
        if who is not None:  # a sender no range names (a route in flight) is not guessed
            self.monitor.record_recv_timed(who, nbytes, seconds)

    def _assemble(self, f: wire.Frame):
        """Add ``f``'s samples to its micro-batch; the micro-batch once complete, else None."""
        stats = self.stats
        spec = self.spec
        with self._lock:
            r = self.route
            if f.epoch != r.epoch:
                stats["stale_frames"] += 1
                return
            if f.stage != spec.stage:
                return self._reject(f, f"addressed to stage {f.stage}, this is stage {spec.stage}")
            if not (r.lo <= f.lo < f.hi <= r.hi):
                return self._reject(f, f"samples outside this replica's range [{r.lo},{r.hi})")
            if len(f.tensors) != len(spec.inputs):
                return self._reject(f, f"{len(f.tensors)} tensors, stage takes {len(spec.inputs)}")
            n = f.hi - f.lo
            for t, (dt, shape, want) in zip(f.tensors, self._in_want):
                tshape = t.shape
                if t.dtype != dt or tshape[0] != n or tshape[1:] != shape:
                    return self._reject(f, f"{want.name}: got {t.dtype}{list(tshape)}, want {want.dtype}"
                                           f"[{n}, {', '.join(map(str, want.shape[1:]))}]")
            key = (f.request_id, f.microbatch, f.attempt)
            p = self._partials.get(key)
            if p is None and f.lo == r.lo and f.hi == r.hi:  # the whole range in one frame: nothing to hold
                return key, r, [(f.lo, f.hi, f.tensors)]
            full = p is None and len(self._partials) >= self.max_partials
            if not full:
                if p is None:
                    p = self._partials[key] = {"t": time.monotonic(), "pieces": [], "have": 0}
                if any(f.lo < phi and plo < f.hi for plo, phi, _ in p["pieces"]):
                    return self._reject(f, "overlaps samples already received")
                p["pieces"].append((f.lo, f.hi, f.tensors))
                p["have"] += f.hi - f.lo
                if p["have"] == r.hi - r.lo:
                    del self._partials[key]
                    return key, r, sorted(p["pieces"], key=lambda x: x[0])
                self.monitor.set_queue("partials", len(self._partials))
        if full:  # refused outside the lock: telling the head may wait on its connection
            self._overloaded(f.request_id, f.microbatch, f.epoch, f"{self.max_partials} incomplete micro-batches held")
        return None

    # --- running and forwarding -------------------------------------------------------------------

    def run_range(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        """Run the module on any number of samples: chunks of its compiled batch, the last one zero-padded.

        Compiled modules take exactly ``hi - lo`` samples; after a sibling replica fails this replica
        may own more (or fewer) samples than that. Samples are independent in inference. The one way a
        micro-batch reaches the module (``_run_and_forward`` calls nothing else): its own range is one
        checked call.
        """
        b = self.spec.hi - self.spec.lo
        n = inputs[0].shape[0]
        if n == b:
            return self._run_checked(inputs, b)
        self.stats["chunked_runs"] += 1
        outs: List[List[np.ndarray]] = []
        for start in range(0, n, b):
            chunk = [x[start:start + b] for x in inputs]
            k = chunk[0].shape[0]
            if k < b:
                chunk = [np.concatenate([c, np.zeros((b - k, *c.shape[1:]), c.dtype)]) for c in chunk]
            outs.append([o[:k] for o in self._run_checked(chunk, b)])
        return [np.concatenate(parts) for parts in zip(*outs)]

    def _run_checked(self, inputs, b: int) -> List[np.ndarray]:
        if self._cpu_startup_s is None:
            self._cpu_startup_s = _process_time()
        inputs = [x if x.flags.c_contiguous else np.ascontiguousarray(x) for x in inputs]
        c0 = self._cpu_clock()
        t0 = self._call_t0 = _perf_counter()
        try:
            outs = [o if type(o) is np.ndarray else np.asarray(o) for o in self.runner(inputs)]
        finally:
            self._call_t0 = None
            self._compute_cpu_s += self._cpu_clock() - c0
        dt = _perf_counter() - t0
        self._recent_s.append(dt)
        self._unrecorded.append((dt, b))  # into the monitor once the outputs left (see _process)
        if len(outs) != len(self._out_want):
            raise RuntimeError(f"module returned {len(outs)} outputs, stage.json lists {len(self.spec.outputs)}")
        for o, (shape, want) in zip(outs, self._out_want):
            oshape = o.shape
            if oshape[0] != b or oshape[1:] != shape:
                raise RuntimeError(f"output {want.name} has shape {list(o.shape)}, stage.json says {list(want.shape)}")
        return outs

    def _compute_loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=0.5)
            except queue.Empty:
                item = None
            if time.monotonic() - last_sweep > 1.0:
                self._sweep()
                last_sweep = time.monotonic()
            if item is None:
                continue
            with self._compute_lock:
                self._process(item)

    def _process(self, item) -> None:
        """Run one complete micro-batch and forward its outputs (or report why not); then record the module
        calls in the monitor (its lock is taken after the outputs left, off the hop's critical path)."""
        try:
            self._run_and_forward(item)
        finally:
            if self._unrecorded:
                for dt, b in self._unrecorded:
                    self.monitor.record_compute(dt, b)
                self._unrecorded.clear()

    def _run_and_forward(self, item) -> None:
        (rid, mb, attempt), r, pieces = item
        if self.route.epoch != r.epoch:  # re-routed while it waited: the head re-sends it
            self.stats["stale_frames"] += 1
            return
        if len(pieces) == 1:
            inputs = list(pieces[0][2])
        else:
            inputs = [np.concatenate([p[2][i] for p in pieces]) for i in range(len(self.spec.inputs))]
        t0 = _perf_counter()
        try:
            outputs = self.run_range(inputs)
        except Exception as e:  # a module failure fails this request, not the worker
            self.stats["errors"] += 1
            self.monitor.count("module_errors")
            self._log(f"request {rid} mb {mb}: module failed: {e!r}")
            self._report_error(rid, mb, f"module failed: {e!r}", r.epoch)
            return
        dt = _perf_counter() - t0
        late = self.route.epoch != r.epoch  # a late output (the watchdog or a failure re-routed): never sent
        if not late:
            for device, stage, address, plo, phi in r.downstream:
                lo, hi = max(r.lo, plo), min(r.hi, phi)
                if lo >= hi:  # that replica takes none of these samples (an earlier or a later one does)
                    continue
                tensors = (tuple(outputs) if lo == r.lo and hi == r.hi else
                           tuple(o[lo - r.lo:hi - r.lo] for o in outputs))
                self._send(address, wire.Frame(wire.DATA, rid, mb, r.epoch, lo, hi, stage, attempt, tensors),
                           device, stage)
        # Counted once the outputs left (off the hop's critical path).
        compute_s = self._compute_s
        compute_s.append(dt)
        if len(compute_s) > 20000:
            del compute_s[:10000]
        stats = self.stats
        stats["runs"] += 1
        stats["samples"] += r.hi - r.lo
        if late:
            stats["late_outputs"] += 1

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, p in self._partials.items() if now - p["t"] > self.partial_timeout_s]:
                del self._partials[key]
                self.monitor.count("frames_dropped")
                self._log(f"request {key[0]} mb {key[1]}: incomplete after {self.partial_timeout_s:.0f}s, dropped")

    def _sender(self, address: str, device: str, stage: int) -> Optional[net.Sender]:
        """The sender to ``address`` (created on first use); None once the worker closed its senders."""
        s = self._senders.get(address)  # lock-free: the table is add-only (see __init__)
        if s is not None:
            return s
        who = "head" if device == "head" else f"{device}/stage{stage}"
        with self._senders_lock:
            if self._senders_closed:
                return None
            s = self._senders.get(address)
            if s is None:
                def sent(frame, n, seconds, who=who):
                    self.stats["frames_out"] += 1
                    self.stats["bytes_out"] += n
                    self.monitor.record_send(who, n, seconds)

                def failed(frame, message, who=who):
                    self.stats["send_failures"] += 1
                    self.monitor.count("send_failures")
                    self._log(f"request {frame.request_id}: {who}: {message}")
                    self._report_error(frame.request_id, frame.microbatch, f"{who}: {message}", frame.epoch,
                                       peer=who)

                s = self._senders[address] = net.Sender(
                    address, secret=self.secret, send_timeout_s=self.send_timeout_s, max_queue=self.max_send_queue,
                    on_error=failed, on_sent=sent, is_stale=lambda f: f.epoch != self.route.epoch,
                    name=f"send-{who}", peer=who)
            return s

    def _send(self, address: str, frame: wire.Frame, device: str, stage: int) -> None:
        """Send ``frame`` to the replica ``device``/``stage`` at ``address`` (the head: device "head")."""
        s = self._sender(address, device, stage)
        if s is None:  # the worker stopped serving: nothing more leaves it
            return
        if not s.put(frame):
            self._overloaded(frame.request_id, frame.microbatch, frame.epoch,
                             f"{s.max_queue} frames already wait for the link to {s.peer}")
        depth = s.depth
        if self._send_depth.get(address) != depth:  # the gauge changes rarely: skip the monitor's lock when it did not
            self._send_depth[address] = depth
            self.monitor.set_queue(f"send:{s.peer}", depth)

    def _report_error(self, rid: int, mb: int, message: str, epoch: int, peer: str = "",
                      overloaded: bool = False) -> None:
        ctl = self._control
        if ctl is not None:
            meta = {"message": message, "peer": peer}
            if overloaded:
                meta["overloaded"] = True
            self._reply(*ctl, wire.Frame(wire.ERROR, request_id=rid, microbatch=mb, epoch=epoch, meta=meta))

    def snapshot(self) -> dict:
        """Counters, compute time per micro-batch, process CPU/memory use (the run report reads them) and
        the Monitor's snapshot under ``monitor`` (the head's status() and /metrics read it)."""
        times = np.array(self._compute_s) if self._compute_s else np.zeros(0)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.monitor.set_queue("ready", self._ready.qsize())
        self.monitor.set_queue("partials", len(self._partials))
        return {
            "device": self.spec.device, "stage": self.spec.stage, **self.stats,
            "compute_p50_s": float(np.percentile(times, 50)) if times.size else None,
            "compute_mean_s": float(times.mean()) if times.size else None,
            "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_bytes": peak_rss_bytes(),
            "cpu_startup_s": self._cpu_startup_s, "compute_cpu_s": self._compute_cpu_s,
            "compute_cpu_clock": self.cpu_clock,
            "cpu_quota_cores": self.cpu_quota_cores,
            "monitor": self.monitor.snapshot(),
        }


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one stage, or every slot of a plan family that runs one module (``--stage`` repeated).

    A family's board runs one such process per distinct module, not per (variant, stage) slot: the
    module is loaded once and each slot is a Worker of its own (own port, range and routing epoch),
    so the head routes and fails over per slot exactly as for one plan, a switch between variants
    starts nothing, and the board holds each module once (what the planner's memory check counts).
    """
    ap = argparse.ArgumentParser(prog="python -m edgeplan_runtime.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, action="append",
                    help="path to this stage's stage.json (or its folder); repeated for the slots of a plan family "
                         "that run the same module (each slot's plan-K-stageS.json in that module's folder)")
    ap.add_argument("--listen", action="append",
                    help="host:port to bind instead of stage.json's `listen` (port 0: any free port); once per --stage")
    ap.add_argument("--secret-env", help="environment variable holding the shared HMAC secret")
    ap.add_argument("--max-partials", type=int, default=256, help="incomplete micro-batches kept at most")
    ap.add_argument("--watchdog-floor", type=float, default=1.0,
                    help="seconds a module call may always run before the compute watchdog reports this replica "
                         "unhealthy (the limit is 10x the recent median when that is longer)")
    args = ap.parse_args(argv)
    listens = args.listen or [None] * len(args.stage)
    if len(listens) != len(args.stage):
        print(f"worker: {len(args.stage)} --stage but {len(listens)} --listen; give one --listen per --stage",
              file=sys.stderr)
        return 2
    try:
        secret = wire.secret_from_env(args.secret_env)
    except ValueError as e:
        print(f"[worker] {e}", file=sys.stderr)
        return 3
    workers = []
    runners = {}  # (module folder, module, files) -> the runner loaded once for every slot that runs it
    for stage_arg, listen in zip(args.stage, listens):
        path = Path(stage_arg)
        stage_dir = path if path.is_dir() else path.parent
        spec_file = stage_dir / "stage.json" if path.is_dir() else path
        tag = f"[worker {spec_file}]"
        try:
            spec = StageSpec.load(str(spec_file))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{tag} cannot read stage.json: {e}", file=sys.stderr)
            return 2
        key = (str(stage_dir.resolve()), spec.module, spec.backend, spec.files)
        if key not in runners:
            try:
                verify_files(stage_dir, spec)
            except ValueError as e:
                print(f"{tag} {e}", file=sys.stderr)
                return 3
            try:
                runners[key] = backends.load(stage_dir, spec)
            except Exception as e:
                print(f"{tag} cannot load module {spec.module!r} with backend {spec.backend!r}: {e}",
                      file=sys.stderr)
                return 4
        worker = Worker(spec, runners[key], listen, secret, max_partials=args.max_partials,
                        watchdog_floor_s=args.watchdog_floor)
        try:
            worker.bind()
        except (OSError, ValueError) as e:
            print(f"{tag} cannot listen on {worker.address}: {e}", file=sys.stderr)
            return 5
        workers.append(worker)
    print("READY " + " ".join(w.address for w in workers), flush=True)  # one line: the slots' addresses in order
    threads = [threading.Thread(target=w.serve_forever, name=f"serve-{w.name}", daemon=True) for w in workers[1:]]
    for t in threads:
        t.start()
    workers[0].serve_forever()
    for t in threads:  # every slot stops on its own head's BYE
        t.join()
    sys.stdout.flush()
    os._exit(0)  # daemon threads may sit in blocking recv

if __name__ == "__main__":
    sys.exit(main())
