"""Monitor: /proc and /sys parsing against fake trees, histogram, passive link throughput, threads."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from edgeplan.runtime import monitor as mon
from edgeplan.runtime.monitor import Monitor


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def proc_stat(user: int, nice: int, system: int, idle: int, iowait: int, irq: int, softirq: int, steal: int,
              cpus: int = 4) -> str:
    cpu_lines = "".join(f"cpu{i} 1 0 1 1 0 0 0 0 0 0\n" for i in range(cpus))
    return (f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 77 5\n{cpu_lines}"
            "intr 1234 0 0\nctxt 99\nbtime 1700000000\n")


def self_stat(utime: int, stime: int) -> str:
    # comm with a space and a parenthesis: the parser must split after the last ')'
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "100", "0", "0", "0", str(utime), str(stime),
              "0", "0", "20", "0", "3", "0", "12345", "100000000", "2000"]
    return "4242 (python3 (w) x) " + " ".join(fields) + "\n"


MEMINFO = """MemTotal:        3884096 kB
MemFree:          120000 kB
MemAvailable:    2884096 kB
Buffers:           50000 kB
Cached:           900000 kB
SwapTotal:             0 kB
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path, "proc/stat", proc_stat(1000, 0, 500, 8000, 500, 0, 0, 0))
    write(tmp_path, "proc/self/stat", self_stat(utime=200, stime=100))
    write(tmp_path, "proc/self/statm", "50000 12345 3000 100 0 20000 0\n")
    write(tmp_path, "proc/meminfo", MEMINFO)
    return tmp_path


def test_proc_readings_from_a_fake_tree(tree: Path):
    clock = Clock(100.0)
    m = Monitor("pi-a", 1, root=str(tree), clock=clock)
    tck = float(os.sysconf("SC_CLK_TCK"))
    page = os.sysconf("SC_PAGE_SIZE")
    # one second later: the process used 50 more ticks; the board 300 busy of 1000 total jiffies
    clock.t = 101.0
    write(tree, "proc/self/stat", self_stat(utime=240, stime=110))
    write(tree, "proc/stat", proc_stat(1200, 0, 550, 8600, 600, 20, 30, 0))
    s = m.snapshot()
    assert s["device"] == "pi-a" and s["stage"] == 1 and s["unit"] == "cpu"
    assert s["uptime_s"] == pytest.approx(1.0)
    assert s["process_cpu_seconds_total"] == pytest.approx(350 / tck)
    assert s["process_cpu_ratio"] == pytest.approx(50 / tck / 1.0)
    # busy = user+nice+system+irq+softirq+steal delta = 200+50+20+30 = 300; total adds idle 600 + iowait 100
    assert s["board_cpu_ratio"] == pytest.approx(300 / 1000)
    assert s["board_cpus"] == 4
    assert s["process_resident_memory_bytes"] == 12345 * page
    assert s["board_memory_total_bytes"] == 3884096 * 1024
    assert s["board_memory_used_bytes"] == (3884096 - 2884096) * 1024
    assert s["power_watts"] == {} and s["npu_load_ratio"] is None
    json.dumps(s, allow_nan=False)  # strict JSON

    # the next snapshot covers only the time since the previous one
    clock.t = 103.0
    write(tree, "proc/self/stat", self_stat(utime=240, stime=110 + int(tck)))
    write(tree, "proc/stat", proc_stat(1200, 0, 650, 9500, 600, 20, 30, 0, cpus=4))
    s2 = m.snapshot()
    assert s2["process_cpu_ratio"] == pytest.approx(0.5)
    assert s2["board_cpu_ratio"] == pytest.approx(100 / 1000)


def test_meminfo_without_memavailable_uses_free_buffers_cached(tree: Path):
    write(tree, "proc/meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
    s = Monitor("d", 0, root=str(tree)).snapshot()
    assert s["board_memory_used_bytes"] == (1000 - 400) * 1024


def test_missing_proc_falls_back_without_failing(tmp_path: Path):
    s = Monitor("d", 0, root=str(tmp_path)).snapshot()
    assert s["board_memory_total_bytes"] == 0 and s["board_cpu_ratio"] == 0.0
    t = os.times()
    assert 0 < s["process_cpu_seconds_total"] <= t.user + t.system + 0.01  # os.times() fallback


def test_real_proc_of_this_machine():
    m = Monitor("here", 0)
    sum(i * i for i in range(300_000))  # burn a little CPU
    s = m.snapshot()
    assert s["board_memory_total_bytes"] > s["board_memory_used_bytes"] > 0
    assert s["process_resident_memory_bytes"] > 10 * 2**20
    assert s["board_cpus"] == len([ln for ln in Path("/proc/stat").read_text().splitlines()
                                   if ln.startswith("cpu") and ln[3].isdigit()])
    assert s["process_cpu_ratio"] > 0


def test_compute_histogram_buckets_are_cumulative_and_cover_0_1ms_to_10s(tree: Path):
    m = Monitor("d", 0, root=str(tree))
    for sec in (0.00005, 0.0001, 0.003, 0.003, 0.2, 11.0):
        m.record_compute(sec, samples=8)
    s = m.snapshot()["compute_seconds"]
    buckets = dict((le, n) for le, n in s["buckets"])
    assert s["buckets"][0][0] == 0.0001 and s["buckets"][-1][0] == 10.0  # +Inf is the count
    assert [le for le, _ in s["buckets"]] == sorted(le for le, _ in s["buckets"])
    assert buckets[0.0001] == 2  # le is inclusive (Prometheus semantics)
    assert buckets[0.0025] == 2 and buckets[0.005] == 4
    assert buckets[0.25] == 5 and buckets[10.0] == 5
    assert s["count"] == 6 and s["sum"] == pytest.approx(0.00005 + 0.0001 + 0.006 + 0.2 + 11.0)
    assert m.snapshot()["samples_total"] == 48


def test_link_throughput_is_a_smoothed_rate_of_large_sends_only(tree: Path):
    m = Monitor("d", 0, root=str(tree))
    m.record_send("pi-b/stage1", 1000, 0.5)  # small: counted, not timed
    m.record_send("pi-b/stage1", 10**6, 0.00001)  # too quick to time
    link = m.snapshot()["links"]["pi-b/stage1"]
    assert link["sent_bytes_total"] == 1_001_000 and link["throughput_bytes_per_second"] is None
    m.record_send("pi-b/stage1", 10**6, 0.1)  # 10 MB/s
    assert m.snapshot()["links"]["pi-b/stage1"]["throughput_bytes_per_second"] == pytest.approx(1e7)
    m.record_send("pi-b/stage1", 10**6, 0.05)  # 20 MB/s: EWMA moves part of the way
    a = mon.THROUGHPUT_ALPHA
    assert m.snapshot()["links"]["pi-b/stage1"]["throughput_bytes_per_second"] == pytest.approx(
        a * 2e7 + (1 - a) * 1e7)
    for _ in range(60):
        m.record_send("pi-b/stage1", 10**6, 0.05)
    assert m.snapshot()["links"]["pi-b/stage1"]["throughput_bytes_per_second"] == pytest.approx(2e7, rel=1e-3)
    m.record_recv("head", 4096)
    links = m.snapshot()["links"]
    assert links["head"] == {"sent_bytes_total": 0, "send_seconds_total": 0.0, "received_bytes_total": 4096,
                             "throughput_bytes_per_second": None, "timed_bytes_total": 0, "timed_seconds_total": 0.0}
    assert links["pi-b/stage1"]["send_seconds_total"] == pytest.approx(0.5 + 0.00001 + 0.1 + 0.05 * 61)
    # only the timed sends: their delta between two snapshots is that interval's throughput, without the EWMA's lag
    assert links["pi-b/stage1"]["timed_bytes_total"] == 62 * 10**6
    assert links["pi-b/stage1"]["timed_seconds_total"] == pytest.approx(0.1 + 0.05 * 61)


def test_queues_and_counters(tree: Path):
    m = Monitor("d", 0, root=str(tree))
    m.set_queue("ready", 3)
    m.set_queue("ready", 1)
    m.set_queue("send:head", 2)
    m.count("frames_dropped")
    m.count("frames_dropped", 4)
    m.count("requests_failed_total")
    s = m.snapshot()
    assert s["queues"] == {"ready": 1, "send:head": 2}
    assert s["counters"] == {"frames_dropped_total": 5, "requests_failed_total": 1}


def test_record_calls_from_many_threads_lose_nothing(tree: Path):
    m = Monitor("d", 0, root=str(tree))

    def work():
        for _ in range(2000):
            m.record_compute(0.001, 1)
            m.record_send("head", 100, 0.001)
            m.count("x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    snaps = [m.snapshot() for _ in range(20)]
    for t in threads:
        t.join()
    s = m.snapshot()
    assert s["compute_seconds"]["count"] == 8000 and s["samples_total"] == 8000
    assert s["links"]["head"]["sent_bytes_total"] == 800_000 and s["counters"]["x_total"] == 8000
    assert all(sn["compute_seconds"]["buckets"][-1][1] == sn["compute_seconds"]["count"] for sn in snaps)
    json.loads(json.dumps(s, allow_nan=False))


def test_jetpack4_ina3221x_power_rails(tree: Path):
    base = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for ch, (name, mw) in enumerate([("POM_5V_IN", 3120), ("POM_5V_GPU", 410), ("POM_5V_CPU", 1650)]):
        write(tree, f"{base}/rail_name_{ch}", name + "\n")
        write(tree, f"{base}/in_power{ch}_input", f"{mw}\n")
    s = Monitor("nano", 0, root=str(tree)).snapshot()
    assert s["power_watts"] == pytest.approx({"POM_5V_IN": 3.12, "POM_5V_GPU": 0.41, "POM_5V_CPU": 1.65})


def test_jetpack5_ina3221_hwmon_power_rails(tree: Path):
    base = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for ch, (label, mv, ma) in enumerate([("VDD_IN", 5072, 1200), ("VDD_CPU_GPU_CV", 5080, 344),
                                         ("VDD_SOC", 5080, 280)], start=1):
        write(tree, f"{base}/in{ch}_label", label + "\n")
        write(tree, f"{base}/in{ch}_input", f"{mv}\n")
        write(tree, f"{base}/curr{ch}_input", f"{ma}\n")
    write(tree, f"{base}/in7_label", "sum of shunt voltages\n")  # no curr7: not a rail
    write(tree, f"{base}/in7_input", "40\n")
    m = Monitor("orin", 0, root=str(tree))
    assert m.snapshot()["power_watts"] == pytest.approx(
        {"VDD_IN": 5.072 * 1.2, "VDD_CPU_GPU_CV": 5.080 * 0.344, "VDD_SOC": 5.080 * 0.280})
    write(tree, f"{base}/curr1_input", "2400\n")  # read again on every snapshot
    assert m.snapshot()["power_watts"]["VDD_IN"] == pytest.approx(5.072 * 2.4)


def test_same_rail_name_on_two_chips_is_told_apart(tree: Path):
    for chip, mw in (("1-0040", 1000), ("1-0041", 2000)):
        base = f"sys/bus/i2c/drivers/ina3221x/{chip}/iio:device0"
        write(tree, f"{base}/rail_name_0", "VDD_IN\n")
        write(tree, f"{base}/in_power0_input", f"{mw}\n")
    assert Monitor("x", 0, root=str(tree)).snapshot()["power_watts"] == pytest.approx(
        {"VDD_IN@1-0040": 1.0, "VDD_IN@1-0041": 2.0})


def test_rk3588_npu_load(tree: Path):
    path = write(tree, "sys/kernel/debug/rknpu/load", "NPU load:  Core0: 12%, Core1:  0%, Core2: 30%,\n")
    m = Monitor("rock5b", 2, unit="npu", root=str(tree))
    assert m.snapshot()["npu_load_ratio"] == pytest.approx(0.14)
    path.write_text("NPU load:  57%\n")  # one-core NPU (RK3566)
    assert m.snapshot()["npu_load_ratio"] == pytest.approx(0.57)
    path.write_text("garbage\n")
    assert m.snapshot()["npu_load_ratio"] is None


def test_receive_side_link_figures_add_up_per_sending_peer(tree: Path):
    """record_recv_timed (wire.Reader.timed) keeps its own totals under ``rx_links``, apart from ``links`` (this
    worker's sends and receipts, which `top` and /metrics list as from this worker to the peer)."""
    m = Monitor("cpu-board", 1, root=str(tree))
    m.record_recv_timed("gpu-board/stage0", 1 << 20, 0.5)
    m.record_recv_timed("gpu-board/stage0", 1 << 20, 1.5)
    m.record_recv_timed("gpu-board/stage0", 1 << 20, 0.0)  # it had arrived whole: bytes only
    m.record_send("head", 1 << 20, 0.25)
    snap = json.loads(json.dumps(m.snapshot()))
    up = snap["rx_links"]["gpu-board/stage0"]
    assert up == {"rx_timed_bytes_total": 2 << 20, "rx_timed_seconds_total": 2.0, "rx_whole_bytes_total": 1 << 20}
    assert set(snap["links"]) == {"head"} and set(snap["rx_links"]) == {"gpu-board/stage0"}
    assert snap["links"]["head"]["timed_bytes_total"] == 1 << 20


def test_worker_names_the_sending_replica_of_a_timed_frame(tree: Path):
    """A worker files a timed frame under the upstream replica whose sample range holds it (``device/stageK``,
    the name record_send uses, so the estimator finds the link's two ends), ``head`` for stage 0, and nothing
    when no range holds it (a route in flight)."""
    from types import SimpleNamespace

    from edgeplan.runtime import wire
    from edgeplan.runtime.worker import Worker

    m = Monitor("c", 1, root=str(tree))
    w = SimpleNamespace(spec=SimpleNamespace(stage=1), _up_ranges=(("a", 0, 2), ("b", 2, 4)), monitor=m)
    for lo, hi in ((0, 2), (2, 3), (1, 3)):
        Worker._record_recv_timed(w, wire.Frame(wire.DATA, lo=lo, hi=hi, stage=1), 1000, 0.001)
    Worker._record_recv_timed(w, wire.Frame(wire.DATA, lo=0, hi=2, stage=2), 1000, 0.001)  # not its input
    links = m.snapshot()["rx_links"]
    assert {p: ln["rx_timed_bytes_total"] for p, ln in links.items()} == {"a/stage0": 1000, "b/stage0": 1000}
    assert links["a/stage0"]["rx_whole_bytes_total"] == 0
    m0 = Monitor("a", 0, root=str(tree))
    w0 = SimpleNamespace(spec=SimpleNamespace(stage=0), _up_ranges=(), monitor=m0)
    Worker._record_recv_timed(w0, wire.Frame(wire.DATA, lo=0, hi=4, stage=0), 1000, 0.001)
    assert m0.snapshot()["rx_links"]["head"]["rx_timed_bytes_total"] == 1000
