"""A CPU hog is read as a share, the same whichever plan runs (issue 12; edgeplan/adapt/share.py).

The testbed emulates a hog as a smaller CFS quota, which caps capacity, not speed: a stage call runs at full
speed until the period's quota is spent. ``quota_call_s`` is that rule; with it, a hog read from stage call
times depends on the stage's length (a long stage reads ~3x, a short one 1x), and the share read from the
board's cgroup does not. Fake cgroup folders in tmp_path; no root, no torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgeplan.adapt.estimate import Estimator
from edgeplan.adapt.share import cgroup_cores, share_reader, testbed_share_reader
from edgeplan.profiles.load import load_cluster

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"
PERIOD_US = 20_000


def quota_call_s(cpu_s: float, cores: float, period_s: float = PERIOD_US / 1e6) -> float:
    """Wall time of a call needing ``cpu_s`` of one core, started at a period's start, in a cgroup whose quota
    is ``cores`` x period per period: full speed until the quota is spent, then wait for the next period."""
    slice_s = min(1.0, cores) * period_s
    full = math.floor(cpu_s / slice_s - 1e-12)
    return full * period_s + (cpu_s - full * slice_s)


def write_v1(path: Path, cores: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
    (path / "cpu.cfs_quota_us").write_text(f"{int(cores * PERIOD_US)}\n")


def test_cgroup_cores_reads_v1_and_v2(tmp_path):
    write_v1(tmp_path / "a", 0.33)
    assert cgroup_cores(tmp_path / "a") == pytest.approx(0.33)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cpu.max").write_text("15000 40000\n")
    assert cgroup_cores(tmp_path / "b") == pytest.approx(0.375)
    (tmp_path / "b" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cores(tmp_path / "b") is None
    assert cgroup_cores(tmp_path / "missing") is None


def test_testbed_state_gives_each_board_its_share(tmp_path):
    write_v1(tmp_path / "gpu", 1.0)
    write_v1(tmp_path / "cpu", 0.5)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"boards": {"gpu-board": {"cgroup": str(tmp_path / "gpu"), "cores": 1.0},
                                            "cpu-board": {"cgroup": str(tmp_path / "cpu"), "cores": 0.5}}}))
    read = testbed_share_reader({"EDGEPLAN_TESTBED": str(state)})
    assert read() == pytest.approx({"gpu-board": 1.0, "cpu-board": 1.0})
    write_v1(tmp_path / "gpu", 0.33)  # the trace's hog (trace.schedule writes the smaller quota)
    assert read() == pytest.approx({"gpu-board": 0.33, "cpu-board": 1.0})
    assert testbed_share_reader({}) is None
    assert share_reader({"gpu-board": {"cores": 1.0}}) is None  # an older state file: no cgroup, call times



def test_the_share_reader_and_the_oracle_read_the_state_file_through_one_reader(tmp_path):
    """emulate.read_state is the one parser of EDGEPLAN_TESTBED: a state file that is missing, not JSON or not an
    object is one line naming the file and the variable, the same from both readers."""
    from edgeplan.adapt.oracle import trace_of_testbed
    from edgeplan.testbed.emulate import read_state
    from edgeplan.testbed.netns import EmulationError

    state = tmp_path / "state.json"
    for content, why in ((None, "unreadable testbed state"), ("{not json", "unreadable testbed state"),
                         ("[1, 2]", "a JSON object, got list")):
        if content is not None:
            state.write_text(content)
        env = {"EDGEPLAN_TESTBED": str(state)}
        for read in (read_state, testbed_share_reader, lambda e: trace_of_testbed(None, env=e)):
            with pytest.raises(EmulationError, match=f"^{state} \\(EDGEPLAN_TESTBED\\): .*{why}") as e:
                read(env)
            assert "\n" not in str(e.value)
    state.write_text(json.dumps({"boards": {}, "host_address": "10.0.0.1"}))
    assert read_state({"EDGEPLAN_TESTBED": str(state)}) == {"boards": {}, "host_address": "10.0.0.1"}
    assert read_state({}) is None


def _estimate(cluster, stage_cpu_s: float, shares) -> tuple[float, float]:
    """(committed gpu-board slowdown, what its call times read) for a plan giving gpu-board a stage of
    ``stage_cpu_s`` CPU, nominal for 6 updates (calibrated), then the board's quota at a third for 8."""
    est = Estimator(cluster, head="npu-board")
    comp, cores = [0.0, 0], 1.0
    read_calls = 1.0
    for i in range(14):
        if i == 6:
            est.calibrate()
            cores = 0.33
            if shares is not None:
                write_v1(shares, cores)
        calls = 10
        comp[0] += calls * quota_call_s(stage_cpu_s, cores)
        comp[1] += calls
        if i == 13:
            read_calls = quota_call_s(stage_cpu_s, cores) / quota_call_s(stage_cpu_s, 1.0)
        status = {"workers": {"gpu-board/stage1": {
            "device": "gpu-board", "stage": 1, "alive": True, "predicted_compute_s": stage_cpu_s,
            "monitor": {"compute_seconds": {"sum": comp[0], "count": comp[1]}}}}}
        if shares is not None:
            status["cpu_share"] = {"gpu-board": cgroup_cores(shares) / 1.0}
        e = est.update(status)
    return dict(e.condition.slowdown).get("gpu-board", 1.0), read_calls


def test_same_hog_reads_the_same_from_a_long_and_a_short_stage(tmp_path):
    cluster = load_cluster(CLUSTER)
    write_v1(tmp_path / "long", 1.0)
    write_v1(tmp_path / "short", 1.0)
    long_s, long_calls = _estimate(cluster, 0.060, tmp_path / "long")
    short_s, short_calls = _estimate(cluster, 0.004, tmp_path / "short")
    # call times alone disagree under a quota (the old reading): ~3x on the long stage, 1x on the short one
    assert long_calls > 2.5 and short_calls < 1.2
    assert long_s == pytest.approx(3.0, rel=0.05) and short_s == pytest.approx(long_s)
    # without a share the short stage's board reads no hog at all: the plan-dependent reading the share replaces
    no_share, _ = _estimate(cluster, 0.004, None)
    assert no_share == 1.0


def test_a_board_read_by_share_never_expires_while_unused(tmp_path):
    """A hogged board the running plan does not use is still read (its share): no expiry, no probe."""
    cluster = load_cluster(CLUSTER)
    est = Estimator(cluster, head="npu-board", stale=3)
    for i in range(30):
        if i == 4:
            est.calibrate()
        share = 1.0 if i < 4 else 0.33
        e = est.update({"workers": {}, "cpu_share": {"gpu-board": share}})
    assert dict(e.condition.slowdown)["gpu-board"] == pytest.approx(3.0, rel=0.05)
    assert est.expiries == 0 and not e.expired


@pytest.mark.parametrize("every", [1, 2])
def test_a_hog_that_comes_with_a_link_recovery_commits_with_it(every):
    """Alternating trace: links back to nominal and a hog at the same instant. The hog is read at once (its
    share); the recovery only after WHOLE_STREAK statuses of frames arriving whole. The recovering link counts as
    moving, so both commit as one change ("gpu-board 3x") instead of "drop + hog" first (the plan for both
    measures no link: an expiry probe was the second switch). ``every`` 2: the hogged sender's frames arrive
    every other status only (a status without frames used to reset the streak)."""
    from edgeplan.adapt.estimate import WHOLE_STREAK

    cluster = load_cluster(CLUSTER)
    bw = cluster.link("gpu-board", "npu-board").bandwidth
    tot = {"rb": 0.0, "rs": 0.0, "wb": 0.0}

    def status(scale, share, whole=False, silent=False):
        if silent:
            pass
        elif whole:
            tot["wb"] += 1e6
        else:
            tot["rb"] += 1e6
            tot["rs"] += 1e6 / (bw * scale)
        recv = {"rx_timed_bytes_total": tot["rb"], "rx_timed_seconds_total": tot["rs"],
                "rx_whole_bytes_total": tot["wb"]}
        return {"workers": {"npu-board/stage1": {"device": "npu-board", "stage": 1,
                                                 "monitor": {"rx_links": {"gpu-board/stage0": recv}}}},
                "cpu_share": {"gpu-board": share, "npu-board": 1.0}}

    est = Estimator(cluster, head="npu-board")
    for _ in range(3):
        est.update(status(1.0, 1.0))
    est.calibrate()
    for _ in range(3):
        e = est.update(status(0.25, 1.0))
    assert str(e.condition) == "bandwidth=0.25" and e.change_id == 1
    seen = [str(est.update(status(1.0, 0.33, whole=True, silent=i % every != 0)).condition)
            for i in range(every * (WHOLE_STREAK + 2))]
    assert "bandwidth=0.25+slowdown:gpu-board=3" not in seen, " | ".join(seen)
    assert seen[-1] == "slowdown:gpu-board=3" and est.estimate().change_id == 2, seen
