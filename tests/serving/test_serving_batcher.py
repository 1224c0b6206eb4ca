"""Dynamic batcher: packs, pads, splits and scatters; bounded queue; errors name the input."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeplan.runtime.batcher import BadInput, Batcher, BatcherConfig, Busy, RequestFailed

from .fake_head import FakeHead, reference


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)


def test_packs_pads_splits_and_scatters_every_sample_to_its_request():
    head = FakeHead(batch=4, window=8)
    b = Batcher(head, BatcherConfig(max_delay_s=0.05, max_queued_samples=64))
    try:
        sizes = [1, 1, 3, 9, 2]  # 16 samples: 9 spans three plan batches
        xs = [_x(n, i) for i, n in enumerate(sizes)]
        futs = [b.submit([x]) for x in xs]
        for x, f in zip(xs, futs, strict=True):
            got = f.result(timeout=10)
            for g, r in zip(got, reference(x), strict=True):
                assert g.shape == r.shape and g.dtype == r.dtype
                np.testing.assert_array_equal(g, r)
        sent = np.concatenate([s[0] for s in head.submitted])
        assert len(head.submitted) == b.stats["batches_total"] >= 4
        # every real sample went exactly once; the rest is zero padding
        real = np.concatenate(xs)
        assert sum(np.any(row != 0) for row in sent) == len(real)
        assert b.stats["padded_samples_total"] == 4 * len(head.submitted) - len(real)
    finally:
        b.close()


def test_idle_pipeline_gets_a_partial_batch_at_once_padded_with_zeros():
    head = FakeHead(batch=8)
    b = Batcher(head, BatcherConfig(max_delay_s=5.0))  # would be obvious if it waited
    try:
        x = _x(1, 0)
        t0 = time.monotonic()
        np.testing.assert_array_equal(b.infer([x], timeout_s=5)[0], 2 * x + 1)
        assert time.monotonic() - t0 < 2.5  # not max_delay_s (5 s); margin for a loaded machine
        (sent,) = head.submitted[0]
        np.testing.assert_array_equal(sent[0], x[0])
        assert not sent[1:].any()
    finally:
        b.close()


def test_busy_pipeline_makes_partial_batches_wait_up_to_max_delay_to_fill():
    head = FakeHead(batch=4, delay_s=0.6)
    b = Batcher(head, BatcherConfig(max_delay_s=0.5))
    try:
        first = b.submit([_x(1, 0)])  # idle pipeline: sent alone, at once
        deadline = time.monotonic() + 2
        while not head.submitted and time.monotonic() < deadline:
            time.sleep(0.001)
        rest = [b.submit([_x(1, i)]) for i in (1, 2, 3)]  # a batch is in flight: these wait and go together
        for f in [first, *rest]:
            f.result(timeout=5)
        assert [int(np.any(s[0] != 0, axis=1).sum()) for s in head.submitted] == [1, 3]
    finally:
        b.close()


@pytest.mark.parametrize("x, words", [
    (np.zeros((2, 4), np.float32), ["'x'", "[2, 4]", "[-1, 3]"]),
    (np.zeros((2, 3), np.float64), ["'x'", "float64", "float32", "[-1, 3]"]),
    (np.zeros((3,), np.float32), ["'x'", "[-1, 3]"]),
    (np.zeros((0, 3), np.float32), ["'x'", "[-1, 3]"]),
])
def test_bad_input_names_the_input_and_the_expected_shape(x, words):
    b = Batcher(FakeHead())
    try:
        with pytest.raises(BadInput) as e:
            b.submit([x])
        for w in words:
            assert w in str(e.value)
        with pytest.raises(BadInput, match="takes 1"):
            b.submit([x, x])
        assert b.infer([_x(2, 1)], timeout_s=5)[0].shape == (2, 3)  # still serving
    finally:
        b.close()


def test_full_queue_raises_busy_at_once_and_a_busy_head_fails_with_busy():
    head = FakeHead(batch=4)
    head.always_busy = True
    b = Batcher(head, BatcherConfig(max_delay_s=0.0, max_queued_samples=8, busy_wait_s=0.3))
    try:
        first = b.submit([_x(4, 0)])
        accepted = 1
        with pytest.raises(Busy) as e:
            for i in range(5):  # 8 queued samples + at most one batch held by the loop
                b.submit([_x(4, i)])
                accepted += 1
        assert accepted in (2, 3) and e.value.retry_after_s > 0 and b.stats["rejected_total"] == 1
        with pytest.raises(Busy):
            first.result(timeout=5)  # the head stayed busy past busy_wait_s
        head.always_busy = False
        np.testing.assert_array_equal(b.infer([_x(2, 4)], timeout_s=5)[0], 2 * _x(2, 4) + 1)
    finally:
        b.close()


def test_failed_head_request_fails_every_request_in_the_batch_with_its_reason():
    head = FakeHead(batch=4, fail_with="board pi stage 1: connection closed")
    b = Batcher(head, BatcherConfig(max_delay_s=0.05))
    try:
        futs = [b.submit([_x(1, i)]) for i in range(3)]
        for f in futs:
            with pytest.raises(RequestFailed, match="board pi stage 1"):
                f.result(timeout=5)
        assert b.stats["failed_total"] == 3
    finally:
        b.close()


def test_accepted_requests_wait_for_a_slow_pipeline_instead_of_failing_busy():
    """Window 1 and 1.1 s per plan batch (a slow board): the second batch waits 1.1 s for its slot, longer
    than any fixed "busy" patience of about a second would allow, and is still answered."""
    head = FakeHead(batch=4, window=1, delay_s=1.1)
    b = Batcher(head, BatcherConfig(max_delay_s=0.0))
    try:
        xs = [_x(4, i) for i in range(2)]
        futs = [b.submit([x]) for x in xs]
        for x, f in zip(xs, futs, strict=True):
            np.testing.assert_array_equal(f.result(timeout=10)[0], 2 * x + 1)
        assert head.busy_raised > 0  # the head did push back; the batcher waited instead of failing
    finally:
        b.close()
