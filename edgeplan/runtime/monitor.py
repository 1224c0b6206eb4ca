"""What a stage worker measures about itself and its board, cheaply enough to run all the time.

The worker calls ``record_*``/``set_queue``/``count`` on its request path (a lock and a few
additions each) and the head asks for ``snapshot()`` about once a second; the snapshot reads a
handful of small /proc files and, where present, the board's power rails (Jetson INA3221) and NPU
load (RK3588 rknpu debugfs). Nothing here sends traffic of its own: link throughput is measured
passively from the tensors the worker already sends (sender side) and receives (``record_recv_timed``).
Standard library only (runs on the boards).

All file reads go through ``root`` so tests can point the monitor at a fake /proc and /sys tree.
"""

import bisect
import glob
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .compat import zip_strict

# Stage call times from 0.1 ms (a tiny layer on an x86 host) to 10 s (a large stage on a Pi 3),
# roughly 1-2.5-5 per decade. Snapshots list the finite buckets only (JSON has no Infinity): the +Inf
# bucket is the histogram's ``count``.
COMPUTE_BUCKETS_S: Tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# A send shorter than this is not timed for throughput: it fits in the kernel's socket send buffer
# (>= 16 KiB, usually far more), so ``send()`` returns after a memory copy and its duration says
# nothing about the link. Bytes of every send are still counted in ``sent_bytes_total``.
MIN_TIMED_SEND_BYTES = 64 * 1024
# Sends that took less than this are not timed either: below it the clock's resolution and the
# call overhead dominate (a 64 KiB send in 20 us would claim 3 GB/s).
MIN_TIMED_SEND_S = 20e-6
# Weight of the newest send in the smoothed throughput (EWMA): ~10 sends to follow a step change.
THROUGHPUT_ALPHA = 0.2

_MEMINFO_KEYS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached")
_NPU_CORE_RE = re.compile(r"Core\d+:\s*(\d+(?:\.\d+)?)\s*%")
_NPU_ANY_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def _read(path: str) -> Optional[str]:
    """The file's text, or None when it is absent or unreadable (optional sysfs/debugfs files)."""
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def peak_rss_bytes() -> int:
    """This process's peak resident bytes since it exec'd: /proc's VmHWM (its own address space's high-water
    mark). ``ru_maxrss`` is not that: a child started by vfork + exec keeps its parent's high-water mark, so a
    training rank launched from a 3 GB pytest process read 3.4 GB. ``ru_maxrss`` only where /proc has no VmHWM."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            try:
                return int(line.split()[1]) * 1024  # kB
            except (ValueError, IndexError):
                break
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _read_number(path: str) -> Optional[float]:
    text = _read(path)
    if text is None:
        return None
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


class _Link:
    __slots__ = ("sent_bytes", "send_seconds", "received_bytes", "throughput", "timed_bytes", "timed_seconds")

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.send_seconds = 0.0
        self.received_bytes = 0
        self.throughput: Optional[float] = None
        # bytes and seconds of the timed sends only: a reader's delta between two snapshots is the throughput
        # of exactly that interval (the EWMA above lags a step change by ~10 sends; the adapt estimator
        # reads the deltas)
        self.timed_bytes = 0
        self.timed_seconds = 0.0


class RxLinks:
    """Receive-side link figures per sending peer (``wire.Reader.timed``): bytes and seconds of the frames
    timed as they arrived, and bytes of the frames that had arrived whole before the reader asked (the link
    kept up). One table for a worker's Monitor and for the head's own Reader, so both export the same names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rx: Dict[str, List[float]] = {}

    def add(self, peer: str, nbytes: int, seconds: float) -> None:
        with self._lock:
            rx = self._rx.get(peer)
            if rx is None:
                rx = self._rx[peer] = [0, 0.0, 0]
            if seconds > 0.0:
                rx[0] += nbytes
                rx[1] += seconds
            else:
                rx[2] += nbytes

    def snapshot(self) -> dict:
        with self._lock:
            return {peer: {"rx_timed_bytes_total": b, "rx_timed_seconds_total": t, "rx_whole_bytes_total": w}
                    for peer, (b, t, w) in self._rx.items()}


class Monitor:
    """Per-worker counters, histograms and board readings; thread-safe; ``snapshot()`` is JSON-able.

    ``process_cpu_ratio`` is in units of one core (a worker with two busy threads reads 2.0);
    ``board_cpu_ratio`` is over all cores (0..1). Both cover the time since the previous snapshot
    (the first one: since the monitor was created).
    """

    def __init__(self, device: str, stage: int, unit: str = "cpu", root: str = "/",
                 clock: Callable[[], float] = time.monotonic):
        self.device = device
        self.stage = int(stage)
        self.unit = unit
        self._root = root
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._bucket_counts = [0] * (len(COMPUTE_BUCKETS_S) + 1)
        self._compute_sum = 0.0
        self._compute_count = 0
        self._samples = 0
        self._links: Dict[str, _Link] = {}
        # per sending peer: [bytes, seconds] of large frames timed as they arrived (wire.Reader.timed: the link as
        # the receiver sees it, which a send that returns once in the socket buffer cannot), and bytes of large
        # frames that had arrived whole before the reader asked (no rate: the link kept up). Apart from ``links``
        # (whose entries are this worker's sends to and receipts from a peer, as `top` and /metrics list them).
        self._rx = RxLinks()
        self._queues: Dict[str, int] = {}
        self._counters: Dict[str, int] = {}
        try:
            self._clk_tck = float(os.sysconf("SC_CLK_TCK"))
            self._page_size = int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            self._clk_tck, self._page_size = 100.0, 4096
        # Paths found once: globbing sysfs on every snapshot would cost more than reading it.
        self._rails = self._find_power_rails()
        self._npu_path = self._path("sys/kernel/debug/rknpu/load")
        self._board_cpus = 0
        self._prev_board = self._board_cpu_times()
        self._prev_proc = (self._clock(), self._process_cpu_seconds())

    # -- request path -----------------------------------------------------------------------------

    def record_compute(self, seconds: float, samples: int) -> None:
        """One stage call: its duration into the histogram, its samples into the total."""
        i = bisect.bisect_left(COMPUTE_BUCKETS_S, seconds)
        with self._lock:
            self._bucket_counts[i] += 1
            self._compute_sum += seconds
            self._compute_count += 1
            self._samples += samples

    def record_send(self, peer: str, nbytes: int, seconds: float) -> None:
        """One send to ``peer`` (``device/stageK`` or ``head``); large, measurable sends update the
        smoothed throughput (see MIN_TIMED_SEND_BYTES for why small ones do not)."""
        with self._lock:
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link()
            link.sent_bytes += nbytes
            link.send_seconds += seconds
            if nbytes >= MIN_TIMED_SEND_BYTES and seconds >= MIN_TIMED_SEND_S:
                rate = nbytes / seconds
                link.timed_bytes += nbytes
                link.timed_seconds += seconds
                link.throughput = rate if link.throughput is None else (
                    THROUGHPUT_ALPHA * rate + (1.0 - THROUGHPUT_ALPHA) * link.throughput)

    def record_recv(self, peer: str, nbytes: int) -> None:
        with self._lock:
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link()
            link.received_bytes += nbytes

    def record_recv_timed(self, peer: str, nbytes: int, seconds: float) -> None:
        """``nbytes`` of a frame from ``peer`` (``device/stageK`` or ``head``, as in record_send) arrived in
        ``seconds`` (wire.Reader.timed): the receive-side link figure (``rx_timed_*_total``). ``seconds`` 0:
        the frame had arrived whole before the reader asked (``rx_whole_bytes_total``: the link kept up)."""
        self._rx.add(peer, nbytes, seconds)

    def set_queue(self, name: str, depth: int) -> None:
        with self._lock:
            self._queues[name] = int(depth)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (reported as ``<name>_total``)."""
        key = name if name.endswith("_total") else name + "_total"
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + n

    # -- snapshot -----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Everything measured so far, as plain JSON-able data (format: runtime/monitor.py's docstring
        in the interface notes; consumed by the head's status() and metrics.exposition())."""
        now = self._clock()
        proc_cpu = self._process_cpu_seconds()
        prev_t, prev_cpu = self._prev_proc
        dt = now - prev_t
        proc_ratio = max(0.0, (proc_cpu - prev_cpu) / dt) if dt > 0 else 0.0
        self._prev_proc = (now, proc_cpu)

        board = self._board_cpu_times()
        board_ratio = 0.0
        if board is not None and self._prev_board is not None:
            dbusy, dtotal = board[0] - self._prev_board[0], board[1] - self._prev_board[1]
            board_ratio = min(1.0, max(0.0, dbusy / dtotal)) if dtotal > 0 else 0.0
        if board is not None:
            self._prev_board = board
        mem_total, mem_used = self._board_memory()

        with self._lock:
            cumulative, acc = [], 0
            for le, n in zip_strict(COMPUTE_BUCKETS_S, self._bucket_counts[:-1]):  # +Inf is `count` (strict JSON)
                acc += n
                cumulative.append([le, acc])
            compute = {"buckets": cumulative, "sum": self._compute_sum, "count": self._compute_count}
            samples = self._samples
            links = {peer: {"sent_bytes_total": ln.sent_bytes, "send_seconds_total": ln.send_seconds,
                            "received_bytes_total": ln.received_bytes,
                            "throughput_bytes_per_second": ln.throughput,
                            "timed_bytes_total": ln.timed_bytes, "timed_seconds_total": ln.timed_seconds}
                     for peer, ln in self._links.items()}
            rx_links = self._rx.snapshot()
            queues = dict(self._queues)
            counters = dict(self._counters)

        return {
            "device": self.device, "stage": self.stage, "unit": self.unit,
            "uptime_s": now - self._started,
            "process_cpu_seconds_total": proc_cpu,
            "process_cpu_ratio": proc_ratio,
            "board_cpu_ratio": board_ratio,
            "board_cpus": self._board_cpus or (os.cpu_count() or 1),
            "process_resident_memory_bytes": self._process_rss(),
            "board_memory_used_bytes": mem_used,
            "board_memory_total_bytes": mem_total,
            "compute_seconds": compute,
            "samples_total": samples,
            "links": links, "rx_links": rx_links, "queues": queues, "counters": counters,
            "power_watts": self._power_watts(),
            "npu_load_ratio": self._npu_load(),
        }

    # -- readers ------------------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return os.path.join(self._root, rel)

    def _board_cpu_times(self) -> Optional[Tuple[float, float]]:
        """(busy, total) jiffies over all cores from /proc/stat's ``cpu`` line; guest time is already
        inside user/nice, so it is not added again; idle and iowait are not busy."""
        text = _read(self._path("proc/stat"))
        if text is None:
            return None
        busy = total = None
        cpus = 0
        for line in text.splitlines():
            if line.startswith("cpu "):
                fields = [float(x) for x in line.split()[1:]]
                fields += [0.0] * (8 - len(fields))
                total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
                busy = total - fields[3] - fields[4]
            elif line.startswith("cpu") and line[3:4].isdigit():
                cpus += 1
        if cpus:
            self._board_cpus = cpus
        return None if total is None else (busy, total)

    def _process_cpu_seconds(self) -> float:
        """utime + stime of this process from /proc/self/stat (fields 14-15, after the ``(comm)``
        field, which may itself contain spaces); os.times() where there is no /proc."""
        text = _read(self._path("proc/self/stat"))
        if text is not None:
            try:
                rest = text[text.rindex(")") + 2:].split()
                return (int(rest[11]) + int(rest[12])) / self._clk_tck  # fields 14, 15 (1-based)
            except (ValueError, IndexError):
                pass
        t = os.times()
        return t.user + t.system

    def _process_rss(self) -> int:
        text = _read(self._path("proc/self/statm"))
        try:
            return int(text.split()[1]) * self._page_size if text else 0
        except (ValueError, IndexError):
            return 0

    def _board_memory(self) -> Tuple[int, int]:
        """(total, used) bytes; used = MemTotal - MemAvailable (what applications could not get),
        or MemTotal - MemFree - Buffers - Cached on kernels before 3.14 (no MemAvailable)."""
        text = _read(self._path("proc/meminfo"))
        if text is None:
            return 0, 0
        kb: Dict[str, int] = {}
        for line in text.splitlines():  # the fields needed are the first five; stop there (cheaper)
            key, _, value = line.partition(":")
            if key in _MEMINFO_KEYS:
                try:
                    kb[key] = int(value.split()[0])
                except (ValueError, IndexError):
                    continue
                if len(kb) == len(_MEMINFO_KEYS) or (key == "MemAvailable" and "MemTotal" in kb):
                    break
        total = kb.get("MemTotal", 0)
        if "MemAvailable" in kb:
            avail = kb["MemAvailable"]
        else:
            avail = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
        return total * 1024, max(0, total - avail) * 1024

    def _find_power_rails(self) -> List[Tuple[str, str, Optional[str]]]:
        """INA3221 rails as (name, first file, second file or None).

        JetPack 4 (``ina3221x`` iio driver): ``in_power<N>_input`` in mW, named by ``rail_name_<N>``.
        JetPack 5/6 (mainline ``ina3221`` hwmon): ``in<N>_input`` mV x ``curr<N>_input`` mA, named by
        ``in<N>_label``; labelled channels with no current file (the shunt-voltage sum) are skipped.
        A rail name seen on two chips gets the chip's i2c address appended.
        """
        rails: List[Tuple[str, str, Optional[str]]] = []
        jp4 = self._path("sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input")
        for power in sorted(glob.glob(jp4)):
            m = re.search(r"in_power(\d+)_input$", power)
            name = _read(os.path.join(os.path.dirname(power), f"rail_name_{m.group(1)}"))
            chip = os.path.basename(os.path.dirname(os.path.dirname(power)))
            rails.append(((name or "").strip() or f"{chip}/ch{m.group(1)}", power, None))
        jp5 = self._path("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label")
        for label in sorted(glob.glob(jp5)):
            m = re.search(r"in(\d+)_label$", label)
            folder = os.path.dirname(label)
            volts, amps = os.path.join(folder, f"in{m.group(1)}_input"), os.path.join(folder, f"curr{m.group(1)}_input")
            if not (os.path.exists(volts) and os.path.exists(amps)):
                continue
            chip = os.path.basename(os.path.dirname(os.path.dirname(folder)))
            rails.append(((_read(label) or "").strip() or f"{chip}/ch{m.group(1)}", volts, amps))
        names = [r[0] for r in rails]
        out = []
        for (name, a, b) in rails:
            if names.count(name) > 1:
                chip = a.split("/drivers/", 1)[1].split("/")[1]
                name = f"{name}@{chip}"
            out.append((name, a, b))
        return out

    def _power_watts(self) -> Dict[str, float]:
        watts: Dict[str, float] = {}
        for name, a, b in self._rails:
            first = _read_number(a)
            if first is None:
                continue
            if b is None:
                watts[name] = first / 1000.0  # mW
            else:
                amps = _read_number(b)
                if amps is not None:
                    watts[name] = first * amps / 1e6  # mV x mA
        return watts

    def _npu_load(self) -> Optional[float]:
        """Mean load over the NPU cores from rknpu's debugfs file, 0..1 (``NPU load:  Core0: 12%,
        Core1:  0%, Core2:  0%,`` on RK3588; a single ``NPU load:  12%`` on one-core NPUs)."""
        text = _read(self._npu_path)
        if text is None:
            return None
        cores = [float(x) for x in _NPU_CORE_RE.findall(text)] or [float(x) for x in _NPU_ANY_RE.findall(text)]
        if not cores:
            return None
        return sum(cores) / len(cores) / 100.0
