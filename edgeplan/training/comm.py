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
    """Kills this process if no step completes within the timeout (a backstop behind gloo's own timeouts)."""

    def __init__(self, me: RankInfo, timeout_s: float, on_expire):
        self.me, self.timeout_s, self.on_expire = me, timeout_s, on_expire
        self.last = time.monotonic()
        self.doing = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgeplan-watchdog")

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def beat(self, doing: str) -> None:
        self.last = time.monotonic()
        self.doing = doing

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                self.on_expire(f"{self.me.label}: no progress for {idle:.0f} s while {self.doing}; "
                               "stopping (a peer board is hung or unreachable)")
                return


class Comm:
    def __init__(self, me: RankInfo, ranks: tuple[RankInfo, ...], timeout_s: float, watchdog: Watchdog | None):
        self.me, self.ranks = me, ranks
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.watchdog = watchdog
        self.pending: list[tuple[object, torch.Tensor, RankInfo]] = []  # isend works and the buffers they hold

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
            self._wait(work, peer, doing)
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
