"""A switch's pause (issue 12: decision -> first request on the new layout) does not wait for the old layout:
``FamilyHead`` gives the new epoch a window of its own while the old one drains, and ``run_requests`` is woken by
the switch. With a shared window the first new-layout request waited for an old one to be answered: one period
of the old plan under the very condition it was left for (0.3-0.8 s after a 4x drop on the testbed). Fake
variant heads whose answers the test releases: no workers, no timing in the assertions."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest

from edgeplan.runtime.head import Busy, FamilyHead, run_requests


class HeldHead:
    """A variant Head whose requests stay in flight until ``release()`` (``hold=False``: answered at once)."""

    batch, microbatch, microbatches, model = 1, 1, 1, "fake"
    input_specs = output_specs = (("x", (2,), "float32"),)
    in_specs = out_specs = input_specs
    faults: list = []
    resent_total = duplicated_total = 0

    def __init__(self, window: int, hold: bool):
        self.window, self.hold = window, hold
        self.open: list[Future] = []
        self.submitted = 0
        self.started = False
        self._stats: dict = {}
        self.predicted_compute_s = {"a/stage0": 0.1}
        self.log = lambda msg: None
        self.lock = threading.Lock()

    def start(self):
        self.started = True

    def close(self):
        pass

    def ready(self):
        return True

    def _retry_hint(self):
        return 0.01

    def refresh_stats(self, timeout_s=2.0):
        return {}

    def submit(self, inputs, deadline_s=None):
        with self.lock:
            if len(self.open) >= self.window:
                raise Busy("full", 0.01)
            fut: Future = Future()
            self.submitted += 1
            if self.hold:
                self.open.append(fut)
        if not self.hold:
            threading.Timer(0.001, fut.set_result, ([np.zeros((1, 2), np.float32)],)).start()
        return fut

    def release(self):
        with self.lock:
            held, self.open = self.open, []
        for f in held:
            f.set_result([np.zeros((1, 2), np.float32)])


def test_the_new_layout_gets_requests_while_the_old_one_still_holds_its_window():
    old, new = HeldHead(window=3, hold=True), HeldHead(window=3, hold=False)
    fam = FamilyHead({"plan-0": old, "plan-1": new}, "plan-0")
    inputs = [[np.zeros((1, 2), np.float32)] for _ in range(20)]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("res", run_requests(fam, inputs)))
    t.start()
    try:
        for _ in range(500):  # the client filled the window on the old layout, which answers nothing yet
            if len(old.open) == 3:
                break
            threading.Event().wait(0.01)
        assert len(old.open) == 3 and fam.capacity() == 3
        fam.switch("plan-1", "test")
        for _ in range(500):  # the whole run finishes on the new layout while the old one still holds 3
            if new.submitted == 17:
                break
            threading.Event().wait(0.01)
        assert new.submitted == 17 and len(old.open) == 3, (new.submitted, len(old.open))
        sw = fam.switches[0]
        assert sw["pause_s"] is not None and sw["drain_s"] is None  # measured before the old layout drained
        assert fam.capacity() == 6  # window + the 3 draining, the bound (2 x window)
    finally:
        old.release()
        t.join(timeout=10)
    res = out["res"]
    assert res.completed == 20 and res.lost == 0 and res.duplicated == 0
    assert fam.answered_by_variant() == {"plan-0": 3, "plan-1": 17}
    assert fam.switches[0]["drain_s"] is not None


def test_the_family_never_holds_more_than_twice_its_window():
    old, new = HeldHead(window=2, hold=True), HeldHead(window=2, hold=True)
    fam = FamilyHead({"plan-0": old, "plan-1": new}, "plan-0")
    x = [np.zeros((1, 2), np.float32)]
    for _ in range(2):
        fam.submit(x)
    fam.switch("plan-1")
    for _ in range(2):
        fam.submit(x)
    fam.switch("plan-0")  # back to the layout still draining: the family's bound holds
    with pytest.raises(Busy, match="4 in all"):
        fam.submit(x)
    old.release()
    new.release()
    fam.submit(x)  # room again once answered


@pytest.mark.parametrize("before", [0, 1, 2])
def test_capacity_is_what_submit_lets_in(before):
    """``capacity()`` and ``submit()`` apply one window rule to one count (``FamilyHead._in_flight``): after a
    switch with ``before`` requests still draining on the old layout, submits succeed until exactly
    ``capacity()`` requests are in flight, and then back on the layout still draining."""
    heads = {"plan-0": HeldHead(window=4, hold=True), "plan-1": HeldHead(window=4, hold=True)}
    fam = FamilyHead(dict(heads), "plan-0")
    fam.window = 2
    x = [np.zeros((1, 2), np.float32)]
    for _ in range(before):
        fam.submit(x)
    for target in ("plan-1", "plan-0"):
        fam.switch(target)
        n = sum(len(h.open) for h in heads.values())
        while True:
            try:
                fam.submit(x)
            except Busy:
                break
            n += 1
        assert n == fam.capacity() == sum(len(h.open) for h in heads.values()), (target, n, fam.capacity())
    for h in heads.values():
        h.release()
