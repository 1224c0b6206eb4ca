"""Scripted conditions (issue 12 item 5): trace parsing and errors, the dry-run schedule of tc/cgroup
changes, the applier's timing, and (netns, root) a bandwidth event really changing the shaped rate."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from edgeplan.profiles.model import Cluster, ComputeUnit, Device, Link
from edgeplan.testbed import emulate, netns
from edgeplan.testbed import trace as tr
from tests.tiers import netns_tier

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("conv", "dwconv", "gemm", "norm", "pool", "elementwise", "reduce", "data")


def _device(name: str, gflops: float) -> Device:
    unit = ComputeUnit("cpu", "cpu", "x86", tuple((c, gflops * 1e9) for c in CLASSES), 10e9, 5.0)
    return Device(name, "test", "127.0.0.1", 1 << 30, 2.0, (unit,))


def _cluster() -> Cluster:
    """a, b, c: 8 MB/s by default; a-b has its own 4 MB/s link."""
    return Cluster("t", (_device("a", 20.0), _device("b", 10.0), _device("c", 10.0)),
                   default_link=Link("*", "*", 8e6, 0.0), links=(Link("a", "b", 4e6, 0.0),))


def test_example_traces_parse_against_their_cluster():
    from edgeplan.profiles.load import load_cluster

    clu = load_cluster(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")
    got = {p.name: tr.load(p, clu) for p in sorted((ROOT / "examples" / "traces").glob("*.yaml"))}
    assert set(got) >= {"bw-drop.yaml", "cpu-hog.yaml", "alternating.yaml"}
    bw = got["bw-drop.yaml"]
    assert [(e.at_s, e.kind, e.link, e.scale) for e in bw.events] == [(20, "link", None, 0.25), (40, "link", None, 1)]
    assert {e.device for e in got["cpu-hog.yaml"].events} == {"gpu-board"}
    alt = got["alternating.yaml"]
    assert [e.at_s for e in alt.events] == sorted(e.at_s for e in alt.events) and alt.duration_s == 120


@pytest.mark.parametrize("data, words", [
    ([{"at_s": 5, "link": ["a", "zz"], "scale": 0.5}], ["events[0].link[1]", "unknown device 'zz'"]),
    ([{"at_s": 5, "device": "nope", "down": True}], ["events[0].device", "unknown device 'nope'"]),
    ([{"at_s": 1, "link": "all", "scale": 1}, {"at_s": 5, "link": "all", "scale": -0.5}],
     ["events[1].scale", "-0.5", "> 0"]),
    ([{"at_s": 5, "device": "a", "cpu_scale": 0}], ["events[0].cpu_scale", "> 0"]),
    ({"duration_s": 30, "events": [{"at_s": 40, "link": "all", "scale": 0.5}]},
     ["events[0].at_s", "past the end", "duration_s 30"]),
    ([{"at_s": -1, "link": "all", "scale": 0.5}], ["events[0].at_s", ">= 0"]),
    ([{"link": "all", "scale": 0.5}], ["events[0].at_s", "missing"]),
    ([{"at_s": 1, "link": "a-b", "scale": 0.5}], ["events[0].link", "`all` or a pair"]),
    ([{"at_s": 1, "link": "all", "scale": 0.5, "bandwidth_mbps": 3}], ["events[0]", "exactly one of"]),
    ([{"at_s": 1, "device": "a", "down": "yes"}], ["events[0].down", "true or false"]),
    ([{"at_s": 1, "device": "a", "speed": 2}], ["events[0]", "unknown field(s) speed"]),
    ([], ["non-empty YAML list"]),
])
def test_bad_traces_are_one_line_naming_file_entry_field(data, words):
    with pytest.raises(tr.TraceError) as e:
        tr.parse(data, "bad.yaml", _cluster())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.yaml")
    for w in words:
        assert w in msg


def _bed(tmp_path) -> tuple[netns.Testbed, emulate.Shape]:
    """What netns.build would return for _cluster() at dilation 0.5 (nothing is created)."""
    shape = emulate.shape(_cluster(), host_core_flops=10e9, cores=3)
    pair = {(a, b): bw for a, b, bw in shape.overrides}
    addr = {b.device: f"10.231.9.{i + 1}" for i, b in enumerate(shape.boards)}
    slots = []
    for i, b in enumerate(shape.boards):
        mine = tuple((addr[peer], r) for (x, y), r in sorted(pair.items()) for me, peer in ((x, y), (y, x))
                     if me == b.device)
        slots.append(netns.BoardSlot(b.device, f"ep-t0-{i}", addr[b.device], b.cores, str(tmp_path / b.device),
                                     b.bandwidth, mine))
    return netns.Testbed("t0", "ep-t0-br", "10.231.9.254", tuple(slots), str(tmp_path)), shape


def _rates(actions, ns: str, dev: str = "eth0") -> dict[str, int]:
    """classid -> bit/s set by the commands for ``dev`` in ``ns``."""
    out = {}
    for act in actions:
        for argv in act.commands:
            if argv[:4] == ("ip", "netns", "exec", ns) and "class" in argv and argv[argv.index("dev") + 1] == dev:
                out[argv[argv.index("classid") + 1]] = int(argv[argv.index("rate") + 1][:-3])
    return out


def test_schedule_dry_run_has_the_right_rates_quotas_and_link_state(tmp_path):
    bed, shape = _bed(tmp_path)
    assert shape.dilation == pytest.approx(0.5)
    events = [
        {"at_s": 10, "link": "all", "scale": 0.25},
        {"at_s": 20, "link": ["b", "c"], "bandwidth_mbps": 16},  # 2 MB/s real -> 1 MB/s emulated
        {"at_s": 30, "device": "b", "cpu_scale": 0.5},
        {"at_s": 40, "device": "c", "down": True},
        {"at_s": 50, "link": ["c", "b"], "scale": 1},
    ]
    acts = tr.schedule(tr.parse(events, "t.yaml", _cluster()), bed, shape, _cluster())
    assert [a.at_s for a in acts] == [10, 20, 30, 40, 50]
    # all x0.25: default 8 MB/s x 0.5 dilation x 0.25 = 1 MB/s = 8 Mbit/s; a's a-b class 4 x 0.5 x 0.25 MB/s
    first = _rates(acts[:1], "ep-t0-0")
    w = netns.WIRE_PER_PAYLOAD  # shapers run at the wire rate of the payload rate (headers per packet)
    assert first == {"1:10": int(8_000_000 * w), "1:20": int(4_000_000 * w)}
    host = [argv for argv in acts[0].commands if "tbf" in argv]
    assert len(host) == 2 and all(f"{int(8_000_000 * w)}bit" in argv for argv in host)
    # b-c has no class of its own: one is added on each side, with a filter on the peer's address
    adds = [argv for argv in acts[1].commands if "add" in argv]
    assert any("ep-t0-1" in argv and "class" in argv and f"{int(8_000_000 * w)}bit" in argv for argv in adds)
    assert any("ep-t0-2" in argv and "filter" in argv and "10.231.9.2/32" in argv for argv in adds)
    # the quota: b has shape cores x 0.5
    cores_b = next(b.cores for b in shape.boards if b.device == "b")
    (path, text), = acts[2].writes
    period, quota = netns.quota_us(cores_b * 0.5)
    assert path.endswith("b/cpu.max") and text == f"{quota} {period}"
    assert acts[3].commands == (("ip", "netns", "exec", "ep-t0-2", "ip", "link", "set", "eth0", "down"),)
    # back to the nominal pair rate: the class made at t=20 is changed (not added again), at 8 MB/s x 0.5
    last = acts[4].commands
    assert not any("add" in argv for argv in last)
    assert _rates(acts[4:], "ep-t0-2") == {"1:20": int(32_000_000 * w)}


def _wait(cond, timeout: float = 10.0) -> bool:
    """Poll ``cond`` until it holds: the applier's thread may start late on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_applier_runs_actions_in_order_at_their_times_and_stops():
    seen = []
    acts = (tr.Action(0.0, "first", (("x", "1"),)), tr.Action(0.15, "second", (("x", "2"),)),
            tr.Action(30.0, "never", (("x", "3"),)))
    ap = tr.Applier(acts, echo=lambda *_: None, run=lambda argv: seen.append((time.monotonic(), argv)) or None)
    t0 = time.monotonic()
    ap.start()
    assert _wait(lambda: len(ap.applied) >= 2), "the 0.15 s action was not applied within 10 s"
    time.sleep(0.1)  # the 30 s action must still be pending when the applier stops
    ap.stop()
    assert [argv for _, argv in seen] == [("x", "1"), ("x", "2")]
    assert seen[1][0] - t0 >= 0.15
    assert [a.what for _, a in ap.applied] == ["first", "second"]


def test_a_failing_command_is_reported_and_the_run_goes_on():
    lines = []
    acts = (tr.Action(0.0, "bad", (("x",),)), tr.Action(0.0, "good", (("y",),)))
    ap = tr.Applier(acts, echo=lines.append, run=lambda argv: "boom" if argv == ("x",) else None).start()
    assert _wait(lambda: len(ap.applied) >= 2), "the actions were not applied within 10 s"
    ap.stop()
    assert ap.errors == ["x: boom"] and [a.what for _, a in ap.applied] == ["bad", "good"]
    assert any("failed: boom" in s for s in lines)


@pytest.mark.netns
@netns_tier
def test_a_bandwidth_event_really_changes_the_shaped_rate():
    clu = _cluster()
    events = [{"at_s": 0, "link": "all", "scale": 0.25}, {"at_s": 0, "link": ["a", "c"], "bandwidth_mbps": 8},
              {"at_s": 0, "device": "b", "cpu_scale": 0.5}]
    with emulate.testbed(clu, host_core_flops=40e9, echo=lambda *_: None) as (bed, shape):
        acts = tr.schedule(tr.parse(events, "t.yaml", clu), bed, shape, clu)
        ap = tr.Applier(acts, echo=lambda *_: None).start()
        for _ in range(50):
            if len(ap.applied) == len(acts):
                break
            time.sleep(0.05)
        ap.stop()
        assert ap.errors == []

        def rates(slot) -> dict[str, int]:
            out = subprocess.run(["ip", "netns", "exec", slot.netns, "tc", "class", "show", "dev", "eth0"],
                                 capture_output=True, text=True, check=True).stdout
            got = {}
            for line in out.splitlines():
                m = re.search(r"class htb (\S+) .*?rate (\d+(?:\.\d+)?)([KMG]?)bit", line)
                if m:
                    got[m.group(1)] = float(m.group(2)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(3)]
            return got

        a = bed.board("a")
        got = rates(a)
        d = shape.dilation
        w = netns.WIRE_PER_PAYLOAD
        assert got["1:10"] == pytest.approx(8e6 * 8 * d * 0.25 * w, rel=0.01)  # default link x0.25
        assert got["1:20"] == pytest.approx(4e6 * 8 * d * 0.25 * w, rel=0.01)  # a-b's own link x0.25
        assert got["1:21"] == pytest.approx(8e6 * d * w, rel=0.01)  # a-c set to 8 Mbit/s real
        cg = Path(bed.board("b").cgroup)
        quota_file = cg / "cpu.max" if (cg / "cpu.max").exists() else cg / "cpu.cfs_quota_us"
        period, quota = netns.quota_us(next(b.cores for b in shape.boards if b.device == "b") * 0.5)
        assert quota_file.read_text().split()[0] == str(quota)
        tag = bed.tag
    assert [x for x in netns.leftovers() if f"-{tag}" in x] == []  # (other runs on this machine may be up)
