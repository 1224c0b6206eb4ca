"""The Estimator's bookkeeping of what is measured (issue 12): a factor the running plan stopped measuring expires
to nominal with exponential back-off, a figure whose counters did not move is no measurement, factors that change
together commit as one change, and a newly measured link that follows the estimate is no change. Statuses are
synthesised in the head's status() format (no torch)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgeplan.adapt.estimate import STALE, WHOLE_STREAK, Estimator
from edgeplan.profiles.load import load_cluster

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"


class Boards:
    """Cumulative monitor counters of workers; ``status(...)`` advances the ones named by ``run``."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.comp: dict[str, list[float]] = {}
        self.sent: dict[tuple[str, str], float] = {}
        self.thr: dict[tuple[str, str], float] = {}

    def status(self, slow: dict[str, float], links: dict[tuple[str, str], float], run=("gpu-board",)) -> dict:
        workers = {}
        for k, dev in enumerate(("gpu-board", "cpu-board")):
            key = f"{dev}/stage{k}"
            c = self.comp.setdefault(key, [0.0, 0])
            mon_links = {}
            if dev in run:
                c[0] += 10 * 0.01 * slow.get(dev, 1.0)
                c[1] += 10
            for (a, b), scale in links.items():
                if a != dev:
                    continue
                if dev in run:
                    self.sent[(a, b)] = self.sent.get((a, b), 0.0) + 1e6
                    self.thr[(a, b)] = self.cluster.link(a, b).bandwidth * scale
                if (a, b) in self.thr:  # the monitor keeps reporting its last figure when nothing is sent
                    mon_links[f"{b}/stage9"] = {"throughput_bytes_per_second": self.thr[(a, b)],
                                                "sent_bytes_total": self.sent[(a, b)]}
            workers[key] = {"device": dev, "stage": k, "alive": True, "predicted_compute_s": 0.01,
                            "monitor": {"compute_seconds": {"sum": c[0], "count": c[1]}, "links": mon_links}}
        return {"workers": workers}


@pytest.fixture()
def cluster():
    return load_cluster(CLUSTER)


def test_an_unmeasured_slow_board_expires_with_back_off(cluster):
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    for _ in range(3):
        e = est.update(b.status({"gpu-board": 3.0}, {}))
    assert dict(e.condition.slowdown)["gpu-board"] == pytest.approx(3.0)
    waits = []
    for _ in range(4):  # the plan leaves gpu-board; each expiry is a probe that finds it still slow
        before, n = e.change_id, 0
        while dict(e.condition.slowdown).get("gpu-board", 1.0) != 1.0:
            e = est.update(b.status({}, {}, run=("cpu-board",)))
            n += 1
        assert e.change_id == before + 1 and e.expired == ("slowdown:gpu-board",)
        waits.append(n)
        for _ in range(3):  # the probe: requests through gpu-board, still 3x slow
            e = est.update(b.status({"gpu-board": 3.0}, {}))
        assert dict(e.condition.slowdown)["gpu-board"] == pytest.approx(3.0) and e.expired == ()
    assert waits == [STALE, 2 * STALE, 4 * STALE, 8 * STALE]
    # measured nominal after an expiry: the wait goes back to STALE
    while dict(e.condition.slowdown).get("gpu-board", 1.0) != 1.0:
        e = est.update(b.status({}, {}, run=("cpu-board",)))
    for _ in range(3):
        e = est.update(b.status({}, {}))
    assert e.expired == ()
    for _ in range(3):
        e = est.update(b.status({"gpu-board": 3.0}, {}))
    n = 0
    while dict(e.condition.slowdown).get("gpu-board", 1.0) != 1.0 and n < 10 * STALE:
        e = est.update(b.status({}, {}, run=("cpu-board",)))
        n += 1
    assert n == STALE


def test_a_persisting_hidden_slowdown_costs_logarithmically_many_probes(cluster):
    """Probe whenever the estimate says the board is back (what a policy preferring that board does): the
    number of probes over a long run grows like log(t), not t / STALE (until the wait reaches its cap)."""
    est, b = Estimator(cluster, head="npu-board", max_backoff=1024), Boards(cluster)
    updates = 4000
    for _ in range(3):
        e = est.update(b.status({"gpu-board": 3.0}, {}))
    k = 3
    while k < updates:
        back = dict(e.condition.slowdown).get("gpu-board", 1.0) == 1.0
        e = est.update(b.status({"gpu-board": 3.0}, {}, run=("gpu-board",) if back else ("cpu-board",)))
        k += 1
    assert est.expiries <= math.ceil(math.log2(updates / STALE)) + 1, est.expiries


def test_a_figure_whose_counters_did_not_move_is_no_measurement(cluster):
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    link = ("gpu-board", "cpu-board")
    for _ in range(3):
        e = est.update(b.status({}, {link: 1.0}))
    b.thr[link] = cluster.link(*link).bandwidth * 0.25  # a stale last figure, nothing sent since
    for _ in range(10):
        e = est.update(b.status({}, {link: 0.25}, run=("cpu-board",)))
    assert e.change_id == 0 and e.condition.bandwidth_scale(*link) == 1.0
    for _ in range(3):  # sending again: measured
        e = est.update(b.status({}, {link: 0.25}))
    assert e.condition.bandwidth_scale(*link) == pytest.approx(0.25)


def test_factors_that_change_together_commit_as_one_change(cluster):
    """A board slows at once while the link's EWMA converges over a few updates: one committed change."""
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    link = ("gpu-board", "cpu-board")
    for _ in range(3):
        e = est.update(b.status({}, {link: 1.0}))
    ids = set()
    for scale in (0.6, 0.4, 0.3, 0.27, 0.25, 0.25, 0.25, 0.25):
        e = est.update(b.status({"gpu-board": 3.0}, {link: scale}))
        ids.add(e.change_id)
    assert e.change_id == 1, ids
    assert dict(e.condition.slowdown)["gpu-board"] == pytest.approx(3.0)
    assert e.condition.bandwidth_scale(*link) < 0.35


def test_a_newly_measured_link_that_follows_the_estimate_is_no_change(cluster):
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    first, second = ("gpu-board", "cpu-board"), ("cpu-board", "npu-board")
    for _ in range(4):
        e = est.update(b.status({}, {first: 0.25}))
    assert e.change_id == 1 and e.condition.bandwidth_scale(*second) == pytest.approx(0.25)
    for _ in range(6):  # the next layout sends over a pair never measured, as slow as the estimate says
        e = est.update(b.status({}, {first: 0.25, second: 0.25}, run=("gpu-board", "cpu-board")))
    assert e.change_id == 1


def test_a_link_step_shows_in_full_in_the_first_status_and_a_large_one_commits_after_two(cluster):
    """The throughput of the timed sends since the previous status (monitor counters), not the monitor's
    EWMA (here still reading nominal, as it lags a step by ~10 sends); a 4x step commits after 2 statuses,
    a 1.6x step after 3."""
    bw = cluster.link("gpu-board", "cpu-board").bandwidth
    tb = ts = 0.0

    def status(scale):
        nonlocal tb, ts
        tb, ts = tb + 1e6, ts + 1e6 / (bw * scale)
        link = {"throughput_bytes_per_second": 0.9 * bw, "sent_bytes_total": tb, "timed_bytes_total": tb,
                "timed_seconds_total": ts}
        return {"workers": {"gpu-board/stage0": {"device": "gpu-board", "stage": 0, "alive": True,
                                                 "monitor": {"links": {"cpu-board/stage1": link}}}}}

    est = Estimator(cluster, head="npu-board")
    for _ in range(4):
        est.update(status(1.0))
    est.calibrate()
    assert str(est.update(status(0.25)).condition) == "nominal"
    assert est.smoothed()["link:cpu-board/gpu-board"] == pytest.approx(0.25 ** 0.3)  # the first EWMA step
    e = est.update(status(0.25))
    assert str(e.condition) == "bandwidth=0.25" and e.change_id == 1
    for _ in range(2):
        e = est.update(status(0.4))
        assert e.change_id == 1
    e = est.update(status(0.4))
    assert str(e.condition) == "bandwidth=0.4" and e.change_id == 2


@pytest.mark.parametrize("link, expect", [(1 / 2.5, "slowdown:gpu-board=3"),
                                          (1 / 10, "bandwidth=0.1+slowdown:gpu-board=3")])
def test_a_link_that_reads_slow_only_as_much_as_its_hogged_board_is_not_a_bandwidth_drop(cluster, link, expect):
    """A 3x CPU hog on gpu-board starves its send thread: its link to cpu-board reads 2.5x slower although the
    link is nominal; that is the board's slowdown, not a bandwidth drop. A link 10x slower is still a drop."""
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    nominal = {("gpu-board", "cpu-board"): 1.0}
    for _ in range(3):
        est.update(b.status({}, nominal))
    est.calibrate()
    for _ in range(4):
        e = est.update(b.status({"gpu-board": 3.0}, {("gpu-board", "cpu-board"): link}))
    assert str(e.condition) == expect and e.change_id == 1


def test_a_link_that_recovers_while_its_board_is_hogged_reads_recovered(cluster):
    """The alternating trace's change at 40 s: a 4x drop ends as a 3x hog on gpu-board starts. The hogged board
    makes its nominal link read 2.5x slow; with that reading dropped (the old rule) the committed 0.25 stood until
    it expired unmeasured (STALE updates), and the policy switched for "drop + hog", then again for "hog". Read with
    the board's slowdown divided out, the same change commits as the hog alone, at once."""
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    link = ("gpu-board", "cpu-board")
    for _ in range(3):
        est.update(b.status({}, {link: 1.0}))
    est.calibrate()
    for _ in range(3):
        e = est.update(b.status({}, {link: 0.25}))
    assert str(e.condition) == "bandwidth=0.25"
    seen = []
    for _ in range(4):  # far fewer than STALE: the old rule still read the drop here
        e = est.update(b.status({"gpu-board": 3.0}, {link: 1 / 2.5}))
        seen.append(str(e.condition))
    assert str(e.condition) == "slowdown:gpu-board=3", seen
    assert seen.count("slowdown:gpu-board=3") >= 2 and not any("bandwidth=0.25+" in c for c in seen), seen


def test_a_board_is_never_taken_for_faster_than_nominal(cluster):
    """A board calibrated under load that later reads 0.5x is the calibration's error, not a condition (the family
    plans slowdowns): on the testbed an npu-board drifting to 0.43x priced the npu-only plan best under every
    condition. A real hog after it still reads as one."""
    est, b = Estimator(cluster, head="npu-board"), Boards(cluster)
    for _ in range(3):
        est.update(b.status({}, {}))
    est.calibrate()
    for _ in range(6):
        e = est.update(b.status({"gpu-board": 0.5}, {}))
    assert str(e.condition) == "nominal" and e.change_id == 0
    for _ in range(3):
        e = est.update(b.status({"gpu-board": 3.0}, {}))
    assert str(e.condition) == "slowdown:gpu-board=3"


def test_a_switch_alone_does_not_read_as_a_change_of_the_board(cluster):
    """Two layouts' workers on gpu-board; layout B's module reads 2x its prediction (a model error the 3-request
    warm-up missed). After a switch from A to B the board's slowdown stays nominal; a real 3x hog while B runs
    is still read."""
    est = Estimator(cluster, head="npu-board")
    acc: dict[str, list[float]] = {}

    def status(active: str, slow: float = 1.0) -> dict:
        workers = {}
        for v, err in (("A", 1.0), ("B", 2.0)):
            c = acc.setdefault(v, [0.0, 0])
            if v == active:
                c[0] += 10 * 0.01 * err * slow
                c[1] += 10
            workers[f"{v}:gpu-board/stage0"] = {"device": "gpu-board", "stage": 0, "alive": True,
                                                "predicted_compute_s": 0.01,
                                                "monitor": {"compute_seconds": {"sum": c[0], "count": c[1]}}}
        return {"workers": workers}

    for _ in range(4):
        est.update(status("A"))
    est.calibrate()
    for _ in range(8):
        e = est.update(status("B"))
    assert str(e.condition) == "nominal" and e.change_id == 0
    for _ in range(3):
        e = est.update(status("B", slow=3.0))
    assert str(e.condition) == "slowdown:gpu-board=3" and e.change_id == 1


@pytest.mark.parametrize("recovery", ["timed", "whole"])
def test_a_drop_the_receiver_sees_is_read_while_the_sender_reads_nominal(cluster, recovery):
    """On the testbed a send returns once its bytes are in the socket buffer: during a 4x drop the sender's timed
    sends still read ~1.2x nominal, while the receiver (wire.Reader) sees the frames arrive 4x slower. The
    estimator reads the link at its receiver and commits the drop; then recovery, read from frames timed at the
    nominal rate or from frames that all arrived whole before the receiver asked (the link outran it)."""
    bw = cluster.link("gpu-board", "cpu-board").bandwidth
    tot = {"tb": 0.0, "ts": 0.0, "rb": 0.0, "rs": 0.0, "wb": 0.0}

    def status(scale, whole=False):
        tot["tb"] += 1e6
        tot["ts"] += 1e6 / (1.2 * bw)  # the sender: nominal whatever the link does
        if whole:
            tot["wb"] += 1e6
        else:
            tot["rb"] += 1e6
            tot["rs"] += 1e6 / (bw * scale)
        send = {"sent_bytes_total": tot["tb"], "timed_bytes_total": tot["tb"], "timed_seconds_total": tot["ts"]}
        recv = {"rx_timed_bytes_total": tot["rb"], "rx_timed_seconds_total": tot["rs"],
                "rx_whole_bytes_total": tot["wb"]}
        return {"workers": {
            "gpu-board/stage0": {"device": "gpu-board", "stage": 0, "monitor": {"links": {"cpu-board/stage1": send}}},
            "cpu-board/stage1": {"device": "cpu-board", "stage": 1,
                                 "monitor": {"links": {}, "rx_links": {"gpu-board/stage0": recv}}},
        }}

    est = Estimator(cluster, head="npu-board")
    for _ in range(3):
        est.update(status(0.9))  # the receiver's own bias at nominal: calibrated away
    est.calibrate()
    assert str(est.update(status(0.9)).condition) == "nominal"
    changes = [est.update(status(0.9 / 4)) for _ in range(2)]
    assert str(changes[-1].condition) == "bandwidth=0.25", [str(e.condition) for e in changes]
    if recovery == "whole":  # one interval of frames that came whole is a receiver that came late: no change
        e = est.update(status(0.9, whole=True))
        e = est.update(status(0.9 / 4))
        assert str(e.condition) == "bandwidth=0.25" and e.change_id == 1
        for _ in range(WHOLE_STREAK + 1):  # frames keep arriving whole: the link keeps up
            e = est.update(status(0.9, whole=True))
    else:
        for _ in range(2):
            e = est.update(status(0.9))
    assert str(e.condition) == "nominal" and e.change_id == 2


def test_without_receiver_figures_the_sender_still_reads_the_link(cluster):
    """A worker of an older runtime reports no rx_timed_* counters: the sender's timed sends are read as before."""
    bw = cluster.link("gpu-board", "cpu-board").bandwidth
    tot = [0.0, 0.0]

    def status(scale):
        tot[0] += 1e6
        tot[1] += 1e6 / (bw * scale)
        link = {"sent_bytes_total": tot[0], "timed_bytes_total": tot[0], "timed_seconds_total": tot[1]}
        return {"workers": {"gpu-board/stage0": {"device": "gpu-board", "stage": 0,
                                                 "monitor": {"links": {"cpu-board/stage1": link}}}}}

    est = Estimator(cluster, head="npu-board")
    for _ in range(3):
        est.update(status(1.0))
    est.calibrate()
    e = [est.update(status(0.25)) for _ in range(2)][-1]
    assert str(e.condition) == "bandwidth=0.25"


def test_a_receiver_reading_above_nominal_is_capped_not_a_faster_link(cluster):
    """Frames that left a shaper's burst allowance arrive faster than the link carries (the testbed read a pair at
    3.6x nominal): a receiver's reading is capped at the link's reference, so no 'faster than nominal' is
    committed, while a drop below it still is."""
    bw = cluster.link("gpu-board", "cpu-board").bandwidth
    tot = [0.0, 0.0]

    def status(scale):
        tot[0] += 1e6
        tot[1] += 1e6 / (bw * scale)
        recv = {"rx_timed_bytes_total": tot[0], "rx_timed_seconds_total": tot[1], "rx_whole_bytes_total": 0}
        return {"workers": {"cpu-board/stage1": {"device": "cpu-board", "stage": 1,
                                                 "monitor": {"rx_links": {"gpu-board/stage0": recv}}}}}

    est = Estimator(cluster, head="npu-board")
    for _ in range(3):
        est.update(status(0.9))
    est.calibrate()
    for _ in range(4):
        e = est.update(status(3.6))
    assert str(e.condition) == "nominal" and e.change_id == 0
    for _ in range(2):
        e = est.update(status(0.9 / 4))
    assert str(e.condition) == "bandwidth=0.25"


def test_the_heads_own_receive_side_reads_the_link_into_the_head(cluster):
    """Results the head's Reader timed (Head._record_rx, filed under the last-stage replica whose range holds
    them) reach the estimator through flat_status as the head's rx_links: the link INTO the head is read where it
    arrives, not at its sender (whose sends keep reading nominal during a drop)."""
    from types import SimpleNamespace

    from edgeplan.adapt.control import flat_status
    from edgeplan.runtime import wire
    from edgeplan.runtime.head import Head
    from edgeplan.runtime.monitor import RxLinks

    h = SimpleNamespace(n_stages=2, _ranges={1: [(("10.0.0.3", 1), 0, 4)]}, _rx=RxLinks(),
                        workers={("10.0.0.3", 1): SimpleNamespace(device="cpu-board", stage=1)})
    bw = cluster.link("cpu-board", "npu-board").bandwidth
    sent = [0.0, 0.0]

    def status(scale):
        Head._record_rx(h, wire.Frame(wire.DATA, lo=0, hi=4, stage=2), 1 << 20, (1 << 20) / (bw * scale))
        Head._record_rx(h, wire.Frame(wire.DATA, lo=0, hi=4, stage=1), 1 << 20, 1.0)  # not a result: ignored
        sent[0] += 1 << 20
        sent[1] += (1 << 20) / bw  # the sender's figure stays nominal
        send = {"sent_bytes_total": sent[0], "timed_bytes_total": sent[0], "timed_seconds_total": sent[1]}
        w = {"device": "cpu-board", "stage": 1, "alive": True, "monitor": {"links": {"head": send}}}
        return flat_status({"family_workers": {"plan-0": {"cpu-board/stage1": w}},
                            "family_rx_links": {"plan-0": Head.rx_links(h)}})

    assert set(Head.rx_links(h)) == set()
    est = Estimator(cluster, head="npu-board")
    for _ in range(3):
        est.update(status(0.9))
    assert Head.rx_links(h)["cpu-board/stage1"]["rx_timed_bytes_total"] == 3 << 20
    est.calibrate()
    for _ in range(2):
        e = est.update(status(0.9 / 4))
    assert str(e.condition) == "bandwidth=0.25", str(e.condition)  # the only link measured: read as all links
