"""Point-to-point tensors and group collectives over torch.distributed, with timeouts and named peers.

A message is a small int64 header (how many tensors, which one, dtype, shape)
followed by the raw tensor, both sent with ``isend``; receives wait at most the
run's timeout. Any failure of the transport becomes a ``RuntimeFault`` naming
this rank's board and stage and the peer it was talking to, so a killed board
shows up as a one-line error instead of a hang.
"""

from __future__ import annotations

import datetime
import re
import threading
import time

import torch
import torch.distributed as dist

from edgeplan.errors import RuntimeFault
from edgeplan.training.routing import RankInfo

HEADER = 12  # n_tensors, index, dtype code, ndim, up to 8 dims
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool)
KIND_CODE = {"F": 1, "B": 2, "E": 3}  # forward activations, backward gradients, evaluation activations


def tag(kind: str, microbatch: int, index: int, part: int) -> int:
    """Distinct tags per (kind, micro-batch, tensor, header|payload) keep messages from being mismatched."""
    return ((KIND_CODE[kind] * 4096 + microbatch % 4096) * 64 + index % 64) * 2 + part


def short_error(err: BaseException) -> str:
    """gloo's message without its source location and boilerplate advice."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(" This is typically")[0].rstrip(".")


class Watchdog:
    """Kills this process if no step completes within the timeout (a backstop behind gloo's own timeouts).

    During local work (``local``: building the stage module, loading data) no
    peer is involved, so the wall clock says nothing about a hung peer and a
    slow board (a Pi 3B needs minutes to trace a model) must not trip it:
    there progress is the process's own CPU time, which a board that computes
    keeps consuming at whatever speed it has. Only a local phase that stops
    using the CPU for the timeout (stuck I/O, a deadlock) expires. Each tick
    with progress calls ``on_progress`` (the start-up heartbeat the other
    ranks watch, see ``startup_barrier``).
    """

    def __init__(self, me: RankInfo, timeout_s: float, on_expire):
        self.me, self.timeout_s, self.on_expire = me, timeout_s, on_expire
        self.last = time.monotonic()
        self.doing = "starting"
        self.is_local = False
        self.on_progress = None
        self._clock = None  # CPU-time clock of the thread doing the local work
        self._cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgeplan-watchdog")

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def beat(self, doing: str) -> None:
        self.last = time.monotonic()
        self.doing = doing
        self.is_local = False

    def local(self, doing: str) -> None:
        """Local compute from now until the next ``beat``: progress is the calling thread's CPU time.

        That thread's own clock, not the process's: the watchdog thread and
        gloo's threads use a little CPU of their own even when the work is stuck.
        """
        self.beat(doing)
        self._clock = _thread_cpu_clock()
        self._cpu = self._clock()
        self.is_local = True

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> str | None:
        """One check (the thread calls it every second or so); the expiry message, or None."""
        if self.is_local:
            cpu = self._clock()
            if cpu > self._cpu:
                self._cpu, self.last = cpu, time.monotonic()
                if self.on_progress is not None:
                    self.on_progress(self.doing, cpu)
        idle = time.monotonic() - self.last
        if idle > self.timeout_s:
            if self.is_local:
                return (f"{self.me.label}: used no CPU for {idle:.0f} s while {self.doing}; stopping "
                        "(the board is stuck, e.g. on a file system or out of memory)")
            return (f"{self.me.label}: no progress for {idle:.0f} s while {self.doing}; "
                    "stopping (a peer board is hung or unreachable)")
        return None

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            message = self.tick()
            if message:
                self.on_expire(message)
                return


def _thread_cpu_clock():
    """A function returning the CPU seconds the calling thread has used (readable from any thread)."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        return lambda: time.clock_gettime(clock)
    except (AttributeError, OSError):  # not Linux/POSIX: the process's CPU time is the best there is
        return time.process_time


def startup_barrier(store, me: RankInfo, ranks: tuple[RankInfo, ...], timeout_s: float,
                    watchdog: Watchdog | None, poll_s: float = 0.2) -> None:
    """Wait until every rank has finished its start-up, however slow its board, failing only on a stuck one.

    Each rank publishes a heartbeat in the TCP store while it builds (its
    watchdog's ``on_progress``: CPU time it spent) and a ready mark when done.
    A waiting rank fails only when a rank that is not ready has not advanced its
    heartbeat for ``timeout_s`` (or never appeared within it), naming that board
    and what it was doing, so a Pi that needs ten minutes to build its stage
    module is waited for and a dead one is reported within the timeout.
    """
    store.set(f"startup/ready/{me.rank}", "1")
    others = [r for r in ranks if r.rank != me.rank]
    seen: dict[int, tuple[bytes | None, float]] = {r.rank: (None, time.monotonic()) for r in others}
    while True:
        waiting = [r for r in others if not store.check([f"startup/ready/{r.rank}"])]
        if not waiting:
            return
        now = time.monotonic()
        for r in waiting:
            key = f"startup/beat/{r.rank}"
            beat = store.get(key) if store.check([key]) else None
            last_beat, since = seen[r.rank]
            if beat != last_beat:
                seen[r.rank] = (beat, now)
            elif now - since > timeout_s:
                doing = beat.decode().split("|", 1)[1] if beat else "not started (no heartbeat)"
                raise RuntimeFault(f"{me.label}: {r.label} made no start-up progress for {now - since:.0f} s "
                                   f"(last: {doing}); is the board up and not out of memory?")
        if watchdog is not None:
            slow = waiting[0]
            beat = seen[slow.rank][0]
            watchdog.beat(f"waiting for {slow.label} to finish start-up"
                          + (f" ({beat.decode().split('|', 1)[1]})" if beat else ""))
        time.sleep(poll_s)


class Comm:
    def __init__(self, me: RankInfo, ranks: tuple[RankInfo, ...], timeout_s: float, watchdog: Watchdog | None):
        self.me, self.ranks = me, ranks
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.watchdog = watchdog
        self.pending: list[tuple[object, torch.Tensor, RankInfo]] = []  # isend works and the buffers they hold
        # point-to-point receives (issue 14 item 5): seconds blocked in them (waits for peers included), and
        # the transfer alone: from each header's arrival to its payload's, with the payload bytes
        self.recv_wait_s = 0.0
        self.transfer_s = 0.0
        self.transfer_bytes = 0
        self.transfers = 0

    def _fault(self, peer: RankInfo | None, doing: str, err: BaseException) -> RuntimeFault:
        first = short_error(err)
        who = f" with {peer.label}" if peer else ""
        return RuntimeFault(f"{self.me.label}: lost contact{who} while {doing}: {first}")

    def _beat(self, doing: str) -> None:
        if self.watchdog:
            self.watchdog.beat(doing)

    def send(self, tensors: list[torch.Tensor], peer: RankInfo, kind: str, microbatch: int) -> None:
        doing = f"sending {kind}{microbatch} to {peer.label}"
        self._beat(doing)
        try:
            for i, t in enumerate(tensors):
                t = t.detach().contiguous().cpu()
                if t.ndim > HEADER - 4:
                    raise RuntimeFault(f"{self.me.label}: tensor of rank {t.ndim} cannot be sent (at most 8)")
                head = torch.zeros(HEADER, dtype=torch.int64)
                head[:4] = torch.tensor([len(tensors), i, _DTYPES.index(t.dtype), t.ndim])
                head[4:4 + t.ndim] = torch.tensor(t.shape, dtype=torch.int64)
                for buf, part in ((head, 0), (t, 1)):
                    self.pending.append((dist.isend(buf, peer.rank, tag=tag(kind, microbatch, i, part)), buf, peer))
        except RuntimeError as e:
            raise self._fault(peer, doing, e) from e

    def _wait(self, work, peer: RankInfo, doing: str) -> None:
        try:
            work.wait(timeout=self.timeout)
        except RuntimeError as e:
            raise self._fault(peer, doing, e) from e

    def recv(self, peer: RankInfo, kind: str, microbatch: int) -> list[torch.Tensor]:
        doing = f"receiving {kind}{microbatch} from {peer.label}"
        self._beat(doing)
        out: list[torch.Tensor] = []
        n = 1
        i = 0
        while i < n:
            head = torch.zeros(HEADER, dtype=torch.int64)
            try:
                work = dist.irecv(head, peer.rank, tag=tag(kind, microbatch, i, 0))
            except RuntimeError as e:
                raise self._fault(peer, doing, e) from e
            t0 = time.perf_counter()
            self._wait(work, peer, doing)
            t1 = time.perf_counter()
            n, idx, code, ndim = (int(v) for v in head[:4])
            if idx != i:
                raise RuntimeFault(f"{self.me.label}: message {idx} from {peer.label} arrived out of order "
                                   f"(expected {i}) while {doing}")
            t = torch.empty(tuple(int(d) for d in head[4:4 + ndim]), dtype=_DTYPES[code])
            try:
                work = dist.irecv(t, peer.rank, tag=tag(kind, microbatch, i, 1))
            except RuntimeError as e:
                raise self._fault(peer, doing, e) from e
            self._wait(work, peer, doing)
            t2 = time.perf_counter()
            self.recv_wait_s += t2 - t0
            self.transfer_s += t2 - t1
            self.transfer_bytes += t.numel() * t.element_size()
            self.transfers += 1
            out.append(t)
            i += 1
        return out

    def flush(self) -> None:
        """Wait for every outstanding send (their buffers stay alive until then)."""
        pending, self.pending = self.pending, []
        for work, _buf, peer in pending:
            self._wait(work, peer, f"finishing a send to {peer.label}")

    def all_reduce(self, t: torch.Tensor, group, members: tuple[RankInfo, ...], doing: str,
                   op=dist.ReduceOp.SUM) -> None:
        self._collective(lambda: dist.all_reduce(t, op=op, group=group, async_op=True), members, doing)

    def broadcast(self, t: torch.Tensor, src: int, group, members: tuple[RankInfo, ...], doing: str) -> None:
        self._collective(lambda: dist.broadcast(t, src=src, group=group, async_op=True), members, doing)

    def _collective(self, start, members: tuple[RankInfo, ...], doing: str) -> None:
        """Run one async collective with the timeout; a failure names the peers and what we were doing."""
        self._beat(doing)
        try:
            start().wait(timeout=self.timeout)
        except RuntimeError as e:
            peers = ", ".join(p.label for p in members if p.rank != self.me.rank) or "the group"
            raise RuntimeFault(f"{self.me.label}: lost contact with {peers} while {doing}: {short_error(e)}") from e
