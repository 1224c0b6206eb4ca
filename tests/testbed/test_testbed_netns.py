"""Emulated testbed: quota/dilation arithmetic (pure) and a real netns tier (root)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgeplan.profiles.model import Cluster, ComputeUnit, Device, Link
from edgeplan.testbed import emulate, netns
from tests.tiers import netns_tier

CLASSES = ("conv", "dwconv", "gemm", "norm", "pool", "elementwise", "reduce", "data")


def _device(name: str, gflops: float) -> Device:
    unit = ComputeUnit("cpu", "cpu", "x86", tuple((c, gflops * 1e9) for c in CLASSES), 10e9, 5.0)
    return Device(name, "test", "127.0.0.1", 1 << 30, 2.0, (unit,))


def _cluster() -> Cluster:
    return Cluster(
        "t", (_device("fast", 40.0), _device("slow", 10.0)),
        default_link=Link("*", "*", 125e6, 0.0005),
        links=(Link("fast", "slow", 12.5e6, 0.001),),
    )


def test_shape_keeps_speed_ratios_and_fits_the_cores():
    """Host core 20 GFLOP/s: fast wants 2 cores, slow 0.5; capped at 1 core per board
    -> dilation 0.5: fast 1.0, slow 0.25 cores, links halved (62.5 and 6.25 MB/s)."""
    s = emulate.shape(_cluster(), host_core_flops=20e9, cores=2)
    cores = {b.device: b.cores for b in s.boards}
    assert s.dilation == pytest.approx(0.5)
    assert cores == pytest.approx({"fast": 1.0, "slow": 0.25})
    assert s.boards[0].bandwidth == pytest.approx(62.5e6)
    assert s.overrides == (("fast", "slow", pytest.approx(6.25e6)),)


def test_shape_respects_the_core_budget():
    """Ten boards of 10 GFLOP/s on a 2-core host of 20 GFLOP/s per core: 10 x 0.5 = 5 cores
    wanted, 1.75 available -> dilation 0.35."""
    c = Cluster("ten", tuple(_device(f"pi{i}", 10.0) for i in range(10)), Link("*", "*", 12.5e6, 0.0))
    s = emulate.shape(c, host_core_flops=20e9, cores=2)
    assert sum(b.cores for b in s.boards) == pytest.approx(2 - emulate.HEAD_RESERVE_CORES)
    assert s.dilation == pytest.approx(0.35)



_SERVER = (
    "import socket,sys;s=socket.socket();s.bind(('0.0.0.0',9000));s.listen();c,_=s.accept();n=0\n"
    "while True:\n d=c.recv(1<<16)\n if not d: break\n n+=len(d)\nc.sendall(b'k');print(n)"
)


@pytest.mark.netns
@netns_tier
def test_links_are_shaped_and_everything_is_torn_down():
    bed = netns.build([("a", 0.5, 12.5e6), ("b", 0.5, 12.5e6)], {("a", "b"): 2.5e6}, 125e6)
    try:
        a, b = bed.boards
        srv = subprocess.Popen(b.launch_prefix() + [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE,
                               text=True)
        time.sleep(1.0)
        n = 2_500_000
        t0 = time.perf_counter()
        subprocess.run(a.launch_prefix() + [sys.executable, "-c",
                       f"import socket;s=socket.create_connection(('{b.address}',9000));"
                       f"s.sendall(b'x'*{n});s.shutdown(1);s.recv(1)"], check=True, timeout=60)
        elapsed = time.perf_counter() - t0
        assert srv.communicate(timeout=30)[0].strip() == str(n)
        rate = n / elapsed
        assert rate < 2.5e6 * 1.15, f"a->b ran at {rate / 1e6:.2f} MB/s, shaped to 2.5"
        assert rate > 2.5e6 * 0.5, f"a->b ran at {rate / 1e6:.2f} MB/s, far under the 2.5 shaped"
    finally:
        netns.teardown(bed)
    assert netns.leftovers() == []


def test_pinned_boards_get_whole_cpus_dealt_round_robin():
    """Three half-core boards on 2 CPUs: 0, 1, 0; a 1.5-core board takes two CPUs; never more than exist."""
    assert netns.pin_cpus([0.5, 0.5, 0.5], 2) == [(0,), (1,), (0,)]
    assert netns.pin_cpus([1.5, 0.3, 0.3], 2) == [(0, 1), (0,), (1,)]
    assert netns.pin_cpus([3.0], 2) == [(0, 1)]


@pytest.mark.netns
@netns_tier
def test_a_pinned_board_runs_its_processes_on_its_cpu():
    bed = netns.build([("a", 0.5, 12.5e6), ("b", 0.5, 12.5e6)], {}, 12.5e6, pin=True)
    try:
        show = [sys.executable, "-c", "import os;print(sorted(os.sched_getaffinity(0)))"]
        got = [subprocess.run(b.launch_prefix() + show, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip() for b in bed.boards]
        assert got == [str(list(b.cpus)) for b in bed.boards] == ["[0]", "[1]"]
    finally:
        netns.teardown(bed)
    assert netns.leftovers() == []


_ECHO = (
    "import socket,sys;s=socket.socket();s.bind(('0.0.0.0',9001));s.listen();c,_=s.accept()\n"
    "c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1);n=int(sys.argv[1])\n"
    "while True:\n g=0\n while g<n:\n  d=c.recv(1<<20)\n  if not d: sys.exit(0)\n  g+=len(d)\n c.sendall(b'k')"
)
_PINGS = (
    "import socket,sys,time;s=socket.create_connection((sys.argv[1],9001));n=int(sys.argv[2]);m=b'x'*n;o=[]\n"
    "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
    "for _ in range(12):\n time.sleep(0.05);t=time.perf_counter();s.sendall(m);s.recv(1)\n"
    " o.append(time.perf_counter()-t)\n"
    "print(sorted(o)[len(o)//2])"
)


@pytest.mark.netns
@netns_tier
def test_a_message_after_an_idle_gap_crosses_a_link_at_its_rate_not_in_a_burst():
    """A 51 KB message (a LeNet-5 pipeline's micro-batch) after 50 ms idle, on a 94 Mbit/s link: nominal 4.36 ms
    of payload. Before veth legs carried one segment per packet, htb passed a 64 KB GSO segment whole: 0.24 ms
    (18x nominal). The payload rate is the link's (WIRE_PER_PAYLOAD): 4.50-4.61 ms read 3-6% over nominal
    before it, 1.00-1.01x after (load 1.2); the bound leaves room for a loaded machine's wake-ups, not for a burst."""
    bps, n = 94e6 / 8, 51_200
    bed = netns.build([("a", 0.5, bps), ("b", 0.5, bps)], {}, bps)
    try:
        a, b = bed.boards
        srv = subprocess.Popen(b.launch_prefix() + [sys.executable, "-c", _ECHO, str(n)])
        time.sleep(1.0)
        out = subprocess.run(a.launch_prefix() + [sys.executable, "-c", _PINGS, b.address, str(n)],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        srv.kill()
        ratio = float(out) / (n / bps)
        print(f"51 KB after idle: {ratio:.3f}x nominal")
        assert 0.9 < ratio < 1.5, f"51 KB took {ratio:.2f}x its nominal 94 Mbit/s time"
    finally:
        netns.teardown(bed)
    assert netns.leftovers() == []


@pytest.mark.netns
@netns_tier
def test_emulate_run_passes_the_exit_code_and_leaves_nothing():
    code = emulate.run(_cluster(), [sys.executable, "-c",
                       "import json,os,sys;s=json.load(open(os.environ['EDGEPLAN_TESTBED']));"
                       "sys.exit(0 if set(s['boards'])=={'fast','slow'} else 3)"],
                       host_core_flops=20e9, echo=lambda *_: None)
    assert code == 0
    code = emulate.run(_cluster(), [sys.executable, "-c", "raise SystemExit(7)"],
                       host_core_flops=20e9, echo=lambda *_: None)
    assert code == 7
    assert netns.leftovers() == []


@pytest.mark.netns
@netns_tier
def test_a_failed_build_tears_down_what_it_made(monkeypatch):
    calls = {"n": 0}
    real = netns._shape

    def failing_shape(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise netns.EmulationError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(netns, "_shape", failing_shape)
    with pytest.raises(netns.EmulationError, match="injected"):
        netns.build([("a", 0.5, 12.5e6), ("b", 0.5, 12.5e6)], {}, 125e6)
    assert netns.leftovers() == []


@pytest.mark.netns
@netns_tier
def test_pipeline_runs_across_board_namespaces_with_correct_outputs(tmp_path):
    """2 stages x 2 replicas, each board in its own namespace behind shaped links: every
    request answered, outputs equal the numpy reference, workers really ran in the boards."""
    import numpy as np

    from edgeplan.runtime.local import RandomInputs, run_local
    from tests.runtime.fake_artifacts import WORKER, make_artifacts, reference

    groups = [[("a", 3), ("b", 5)], [("c", 6), ("d", 2)]]
    weights = make_artifacts(tmp_path / "art", groups, [4, 6, 3], microbatches=2)
    cluster = Cluster("four", tuple(_device(n, 10.0) for n in "abcd"), Link("*", "*", 12.5e6, 0.0))
    seen: dict[str, str] = {}
    with emulate.testbed(cluster, host_core_flops=20e9, echo=lambda *_: None) as (bed, _):
        placement = {b.device: (b.launch_prefix(), b.address) for b in bed.boards}
        art, res = run_local(tmp_path / "art", 20, command=WORKER, log_dir=tmp_path / "logs",
                             placement=placement, head_host=bed.host_address,
                             on_complete=lambda i, ws: seen.update({w.device: w.address for w in ws}))
        board_address = {b.device: b.address for b in bed.boards}
    assert res.ok, (res.failures, res.faults)
    inputs = RandomInputs(art.stages[0][1], art.batch, res.n_requests)
    for i in range(res.n_requests):
        np.testing.assert_allclose(res.outputs[i][0], reference(weights, inputs[i][0]), atol=1e-5)
    assert {d: a.rsplit(":", 1)[0] for d, a in seen.items()} == board_address  # each bound inside its board
    assert netns.leftovers() == []


def test_cpu_quota_keeps_tiny_shares_exact():
    """0.3 cores -> 6 ms per 20 ms; 0.01 cores would need 0.2 ms (< the 1 ms minimum),
    so the period stretches to 100 ms instead and the share stays 1%."""
    assert netns.quota_us(0.3) == (20_000, 6_000)
    period, quota = netns.quota_us(0.01)
    assert quota >= netns.MIN_QUOTA_US and quota / period == pytest.approx(0.01, rel=0.01)


@pytest.mark.netns
@netns_tier
def test_cleanup_of_stale_runs_spares_a_testbed_whose_owner_is_alive():
    """Two emulations on one machine must not tear each other down: only a run whose owner died is stale."""
    bed = netns.build([("a", 0.5, 12.5e6)], {}, 125e6)
    try:
        assert netns.cleanup_stale() == []  # its owner (this process) is alive
        assert any(f"-{bed.tag}-" in ns for ns in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (netns.OWNERS / bed.tag).write_text(str(dead.pid))  # as if the emulation had been kill -9'd
        assert any(bed.tag in item for item in netns.leftovers())
        assert any(bed.tag in item for item in netns.cleanup_stale())
        assert not [x for x in netns.leftovers() if bed.tag in x]
    finally:
        netns.teardown(bed)
