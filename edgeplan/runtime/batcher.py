"""Dynamic batcher between application requests and the head's fixed plan batch.

Applications send a few samples at a time (a camera frame is one); the head takes
exactly ``head.batch`` samples per request. The batcher packs the samples of
concurrent requests into plan-batch requests (while earlier batches are still in the
pipeline, waiting at most ``max_delay_s`` for more to arrive; an idle pipeline gets
them at once: 6.3 -> 2.5 ms per sequential 1-sample HTTP request on LeNet-5 here),
pads a partial batch with zeros, splits a request larger than the
batch over several head requests and scatters the outputs back. Memory stays
bounded: once ``max_queued_samples`` wait, ``submit`` raises :class:`Busy` at once
(HTTP 503 + Retry-After) instead of queueing more.

Runs on the head board: standard library and numpy only.
"""

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Deque, List, Optional, Sequence, Tuple

import numpy as np

from .compat import settle, zip_strict
from .head import Busy, RequestFailed


class BadInput(ValueError):
    """A request's tensors do not fit the model (names the input and the expected shape)."""


class QueueFull(Busy):
    """The batcher already holds its limit of samples: retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float):
        Exception.__init__(self, f"the serving queue is full; retry after {retry_after_s:.2g}s")
        self.retry_after_s = retry_after_s


class Failed(RequestFailed):
    """A request ended without an answer; ``reason`` says why (board/stage when the head knows)."""

    def __init__(self, reason: str):
        Exception.__init__(self, reason)
        self.reason = reason


@dataclass(frozen=True)
class BatcherConfig:
    max_delay_s: float = 0.002  # how long a partial batch waits for more samples (only while the pipeline is busy)
    max_queued_samples: int = 0  # samples waiting for the head; 0 = 4 x plan batch
    request_timeout_s: float = 60.0  # a request not answered by then fails
    # How long a packed batch retries a Busy head before its requests get Busy (503). None: until their
    # deadline; the bounded queue already pushes back on new requests, and a slow pipeline (seconds per
    # request on small boards) frees a window slot only every latency / window seconds.
    busy_wait_s: Optional[float] = None


@dataclass
class _Request:
    n: int
    inputs: list  # one array per model input, n samples each
    future: Future
    deadline: float
    outputs: Optional[list] = None  # allocated on the first answer
    left: int = 0  # samples not answered yet
    failed: bool = False


def _spec_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in (-1, *shape)) + "]"


class Batcher:
    """Packs requests of any sample count into the head's plan-batch requests; thread-safe."""

    def __init__(self, head, config: BatcherConfig = BatcherConfig()):
        self.head = head
        self.cfg = config
        self.batch = int(head.batch)
        self.input_specs = [(n, tuple(s), np.dtype(d)) for n, s, d in head.input_specs]
        self.output_specs = [(n, tuple(s), np.dtype(d)) for n, s, d in head.output_specs]
        self.max_queued = config.max_queued_samples or 4 * self.batch
        self._queue: Deque[list] = deque()  # [request, next sample to send]
        self._queued = 0  # samples in _queue not yet sent
        self._cv = threading.Condition()
        self._closed = False
        self._sent_open = 0  # batches handed to the head and not answered yet
        self.stats = {"requests_total": 0, "samples_total": 0, "batches_total": 0, "padded_samples_total": 0,
                      "rejected_total": 0, "failed_total": 0}
        self._thread = threading.Thread(target=self._loop, daemon=True, name="batcher")
        self._thread.start()

    # --- the application side ----------------------------------------------------------------------

    def check(self, inputs: Sequence[np.ndarray]) -> int:
        """Validate one request's arrays against the model inputs; returns its sample count."""
        if len(inputs) != len(self.input_specs):
            names = ", ".join(n for n, _, _ in self.input_specs)
            raise BadInput(f"got {len(inputs)} input tensor(s); the model takes {len(self.input_specs)} ({names})")
        n = None
        for x, (name, shape, dtype) in zip_strict(inputs, self.input_specs):
            if x.dtype != dtype:
                raise BadInput(f"input '{name}': dtype {x.dtype}, expected {dtype} (shape {_spec_shape(shape)})")
            if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
                raise BadInput(f"input '{name}': shape {list(x.shape)}, expected {_spec_shape(shape)} "
                               "(batch first)")
            if x.shape[0] < 1:
                raise BadInput(f"input '{name}': no samples (batch dimension 0), expected {_spec_shape(shape)}")
            if n is not None and x.shape[0] != n:
                raise BadInput(f"input '{name}': {x.shape[0]} samples, but the first input has {n}; "
                               "every input needs the same batch size")
            n = x.shape[0]
        return int(n)

    def submit(self, inputs: Sequence[np.ndarray], timeout_s: Optional[float] = None) -> Future:
        """Queue one request (one array per input, any sample count); the future gives its outputs.

        Raises BadInput (wrong tensors) or Busy (queue full; ``retry_after_s`` says when to retry).
        """
        n = self.check(inputs)
        fut: Future = Future()
        req = _Request(n, list(inputs), fut, time.monotonic() + (timeout_s or self.cfg.request_timeout_s), left=n)
        with self._cv:
            if self._closed:
                raise Failed("the pipeline is closed")
            full = bool(self._queued and self._queued + n > self.max_queued)
            if full:
                self.stats["rejected_total"] += 1
                queued = self._queued
            else:
                self._queue.append([req, 0])
                self._queued += n
                self.stats["requests_total"] += 1
                self.stats["samples_total"] += n
                self._cv.notify()
        if full:
            raise QueueFull(self._retry_after(queued))
        return fut

    def infer(self, inputs: Sequence[np.ndarray], timeout_s: Optional[float] = None) -> List[np.ndarray]:
        return self.submit(inputs, timeout_s).result()

    def close(self) -> None:
        """Stop taking requests; those still queued fail. Does not close the head."""
        with self._cv:
            self._closed = True
            pending = [r for r, _ in self._queue]
            self._queue.clear()
            self._queued = 0
            self._cv.notify_all()
        for r in pending:
            self._fail(r, Failed("the pipeline was closed before the request was sent"))
        self._thread.join(timeout=5.0)

    def _retry_after(self, queued: int) -> float:
        # About the time the queued samples need, from the head's latency so far (a hint).
        lat = {}
        try:
            lat = self.head.status().get("latency_seconds") or {}
        except Exception:  # noqa: BLE001 - a hint must not fail the request path
            pass
        mean = lat.get("sum", 0.0) / lat["count"] if lat.get("count") else 0.1
        return max(0.05, mean * max(1, queued // self.batch))

    # --- the head side -------------------------------------------------------------------------------

    def _take_batch(self) -> Optional[List[Tuple[_Request, int, int]]]:
        """Wait for samples, then up to max_delay_s for a full batch; returns (request, lo, hi) slices."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait(0.5)
            if self._closed:
                return None
            # Waiting only pays while earlier batches are in the pipeline: an idle pipeline gets the
            # samples at once (lowest latency), a busy one gets fuller batches (more samples per pass).
            full_at = time.monotonic() + (self.cfg.max_delay_s if self._sent_open else 0.0)
            while self._queued < self.batch and not self._closed:
                left = full_at - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            parts, room = [], self.batch
            while self._queue and room:
                entry = self._queue[0]
                req, lo = entry
                hi = min(req.n, lo + room)
                parts.append((req, lo, hi))
                room -= hi - lo
                self._queued -= hi - lo
                if hi == req.n:
                    self._queue.popleft()
                else:
                    entry[1] = hi
            return parts

    def _loop(self) -> None:
        while True:
            parts = self._take_batch()
            if parts is None:
                return
            parts = [p for p in parts if not p[0].failed]
            if not parts:
                continue
            try:
                self._pack_and_send(parts)
            except Exception as e:  # noqa: BLE001 - a bug or MemoryError fails this batch, not the thread
                for req, _, _ in parts:
                    self._fail(req, Failed(f"batcher: {type(e).__name__}: {e}"))

    def _pack_and_send(self, parts) -> None:
        """Copy the parts' samples into one zero-padded plan batch and hand it to the head."""
        m = sum(hi - lo for _, lo, hi in parts)
        xs = []
        for k, (_, shape, dtype) in enumerate(self.input_specs):
            x = np.zeros((self.batch, *shape), dtype)
            at = 0
            for req, lo, hi in parts:
                x[at:at + hi - lo] = req.inputs[k][lo:hi]
                at += hi - lo
            xs.append(x)
        self.stats["batches_total"] += 1
        self.stats["padded_samples_total"] += self.batch - m
        deadline = min(req.deadline for req, _, _ in parts)
        self._send(parts, xs, deadline)

    def _send(self, parts, xs, deadline: float) -> None:
        give_up = deadline if self.cfg.busy_wait_s is None else time.monotonic() + self.cfg.busy_wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                for req, _, _ in parts:
                    self._fail(req, Failed("no answer before the request's deadline (the pipeline is busy)"))
                return
            try:
                fut = self.head.submit(xs, deadline_s=left)
                break
            except Busy as e:
                if time.monotonic() >= give_up or self._closed:
                    for req, _, _ in parts:
                        self._fail(req, e)
                    return
                time.sleep(min(max(getattr(e, "retry_after_s", 0.005), 0.001), 0.01))
            except Exception as e:  # noqa: BLE001 - the head refused: every part fails with its reason
                for req, _, _ in parts:
                    self._fail(req, e if isinstance(e, RequestFailed) else Failed(f"head: {e}"))
                return
        with self._cv:
            self._sent_open += 1
        fut.add_done_callback(lambda f: self._scatter(parts, f))

    def _scatter(self, parts, fut: Future) -> None:
        with self._cv:
            self._sent_open -= 1
        try:
            outs = fut.result()
        except Exception as e:  # noqa: BLE001 - RequestFailed (or anything else) fails these requests
            for req, _, _ in parts:
                self._fail(req, e if isinstance(e, RequestFailed) else Failed(str(e)))
            return
        at = 0
        for req, lo, hi in parts:
            with self._cv:
                if req.failed:
                    at += hi - lo
                    continue
                if req.outputs is None:
                    req.outputs = [np.empty((req.n, *shape), dtype) for _, shape, dtype in self.output_specs]
                for y, o in zip_strict(req.outputs, outs):
                    y[lo:hi] = o[at:at + hi - lo]
                req.left -= hi - lo
                done = req.left == 0
            at += hi - lo
            if done:
                settle(req.future, req.outputs)  # not when the caller cancelled (gave up waiting)

    def _fail(self, req: _Request, exc: Exception) -> None:
        with self._cv:
            if req.failed or req.future.done():
                return
            req.failed = True
            self.stats["failed_total"] += 1
        settle(req.future, exception=exc)  # not when cancelled meanwhile
