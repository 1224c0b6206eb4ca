"""A small in-process object with the Head service API (submit/ready/status/close), for serving tests.

It computes y = 2x + 1 and s = sum(x) per sample on a thread, so the serving layer
(batcher, HTTP) is tested without workers; ``window`` in-flight requests at most,
then ``Busy`` like the real head.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from edgeplan.runtime.batcher import Busy, RequestFailed


class FakeBusy(Busy):
    def __init__(self, retry_after_s: float):
        Exception.__init__(self, "window full")
        self.retry_after_s = retry_after_s


class FakeFailed(RequestFailed):
    def __init__(self, reason: str):
        Exception.__init__(self, reason)
        self.reason = reason


class FakeHead:
    def __init__(self, batch: int = 4, window: int = 2, delay_s: float = 0.0, fail_with: str | None = None):
        self.batch = batch
        self.window = window
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.always_busy = False
        self.busy_raised = 0
        self.input_specs = [("x", (3,), "float32")]
        self.output_specs = [("y", (3,), "float32"), ("s", (1,), "float64")]
        self.submitted: list[list[np.ndarray]] = []
        self._inflight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4)
        self.closed = False
        self.completed = 0

    def submit(self, inputs, deadline_s=None) -> Future:
        (x,) = inputs
        assert x.shape == (self.batch, 3) and x.dtype == np.float32, "the batcher must send whole plan batches"
        with self._lock:
            if self.always_busy or self._inflight >= self.window:
                self.busy_raised += 1
                raise FakeBusy(0.25)
            self._inflight += 1
            self.submitted.append([x.copy()])
        return self._pool.submit(self._compute, x.copy())

    def _compute(self, x):
        try:
            time.sleep(self.delay_s)
            if self.fail_with:
                raise FakeFailed(self.fail_with)
            self.completed += 1
            return [2 * x + 1, x.astype(np.float64).sum(axis=1, keepdims=True)]
        finally:
            with self._lock:
                self._inflight -= 1

    def ready(self) -> bool:
        return not self.closed

    def status(self) -> dict:
        return {"model": "fake", "plan_sha256": "0" * 64, "epoch": 1, "ready": self.ready(), "window": self.window,
                "inflight": self._inflight, "requests_total": len(self.submitted), "completed_total": self.completed,
                "failed_total": 0, "resent_total": 0, "rejected_total": 0,
                "latency_seconds": {"buckets": [[0.1, self.completed]], "sum": 0.01 * self.completed,
                                    "count": self.completed},
                "faults": [], "workers": {}}

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False)


def reference(x: np.ndarray) -> list[np.ndarray]:
    return [2 * x + 1, x.astype(np.float64).sum(axis=1, keepdims=True)]
