"""`edgeplan emulate CLUSTER -- COMMAND`: run COMMAND against an emulated cluster.

Each board becomes a network namespace whose processes get a CPU quota
proportional to the board's speed relative to one core of this machine. This
machine has few cores, so all quotas (and, to keep the compute/communication
ratio, all link bandwidths) are scaled by one *dilation* factor ``d <= 1``:
the emulated cluster is the real one running ``1/d`` times slower. The
emulated cluster itself (boards = this machine's CPU x quota, links = the
shaped bandwidths) can be written out so `plan` -> `compile` -> `run` inside the
emulation compares like with like.

COMMAND sees ``EDGEPLAN_TESTBED``: the path of a JSON file describing the boards
(address and the argv prefix that runs a process inside each), which
`edgeplan run` / `edgeplan train` use to start each board's workers there.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeplan import jsonio
from edgeplan.profiles.model import Cluster
from edgeplan.testbed import calibrate, netns
from edgeplan.testbed.calibrate import HostSpeed

ENV_VAR = "EDGEPLAN_TESTBED"
HEAD_RESERVE_CORES = 0.25  # left free for the head and the OS
HOST_LAYER_OVERHEAD_US = 5.0  # per-layer dispatch cost on one core here (profiles/boards/x86/host.yaml)
# the runtime's CPU per byte a stage call receives, and per byte it sends, between two boards of the testbed, on one
# core here (issue 14). Over loopback both are 0.19-0.25 ns/B, but every testbed link carries MTU-sized packets
# (netns: gso_max_segs 1) through a veth, a bridge and htb, and a veth hands each packet to the receiver's network
# stack in the sender's context: the sending board pays for most of both ends' protocol work, the receiving one
# for little more than the copy out (the rest lands on whichever task the CPU runs when the shaper releases the
# packet: the receiver's module call in some runs, the sender in others, +-5% of a 32 ms call on vit-tiny).
# Least squares of the workers' CPU per call beyond the module (per call + in x bytes in + out x bytes out) over
# every quota-bound replica of ten `python benchmarks/bench_truth.py --emulate --repeat` runs (it prints the fit
# of its own runs beside these figures): 240 replicas, 0.82 ns/B in, 11.9 out, 0.61 ms per call (per run 0.3-1.4
# in, 7.5-15.4 out); one figure for both directions (8.0) missed the replicas' hop by 51% on average, against
# 34%. Priced at one figure (5.0), the slow gpu-board of three-node-hetero, receiving 200 KB per call in a first
# run, was re-planned to send them: its hop measured 20-23 ms against 8.3 priced (throughput 13-23% off).
TESTBED_HOP_BYTE_NS = 1.0
TESTBED_HOP_SEND_BYTE_NS = 12.0


@dataclass(frozen=True)
class BoardShape:
    device: str
    speed_flops: float  # the board's fastest unit, dense-conv FLOP/s (profile)
    cores: float  # CPU quota of its namespace, in cores of this machine
    bandwidth: float  # shaped default link bandwidth, bytes/s


@dataclass(frozen=True)
class Shape:
    """How a cluster maps onto this machine."""

    dilation: float  # emulated time = real time / dilation
    host_core_flops: float  # dense-conv FLOP/s of one core of this machine
    boards: tuple[BoardShape, ...]
    overrides: tuple[tuple[str, str, float], ...]  # (a, b, bytes/s) shaped per-pair links
    head_bandwidth: float


def board_speed(cluster: Cluster, device: str) -> float:
    """Dense-conv FLOP/s of the device's fastest compute unit."""
    return max(u.flops_per_s("conv") for u in cluster.device(device).units)


def shape(cluster: Cluster, host_core_flops: float, cores: int | None = None,
          max_board_cores: float = 1.0) -> Shape:
    """Quotas and dilation: fit every board in this machine's cores at the same slow-down."""
    cores = cores or os.cpu_count() or 1
    budget = max(cores - HEAD_RESERVE_CORES, 0.1)
    speeds = {d.name: board_speed(cluster, d.name) for d in cluster.devices}
    wanted = {name: s / host_core_flops for name, s in speeds.items()}  # cores at dilation 1
    dilation = min(1.0, max_board_cores / max(wanted.values()), budget / sum(wanted.values()))
    default = cluster.default_link.bandwidth
    boards = tuple(
        BoardShape(name, speeds[name], wanted[name] * dilation, default * dilation) for name in speeds
    )
    overrides = tuple((link.a, link.b, link.bandwidth * dilation) for link in cluster.links)
    return Shape(dilation, host_core_flops, boards, overrides, default * dilation)


def state_json(bed: netns.Testbed, plan_shape: Shape) -> dict:
    return {
        "host_address": bed.host_address,
        "dilation": plan_shape.dilation,
        "notes": list(bed.notes),
        "boards": {
            b.device: {"address": b.address, "prefix": b.launch_prefix(), "cores": b.cpu_quota,
                       "bandwidth": b.egress_bps, "cgroup": b.cgroup}  # cgroup: adapt/share.py reads a hog there
            for b in bed.boards
        },
    }


def read_state(env: dict | None = None) -> dict | None:
    """The state file (``state_json``) of the emulated cluster this process runs in, parsed: the one reader of
    ``EDGEPLAN_TESTBED`` for placement, the adapt share reader and the oracle's trace. None when the variable is
    unset (not under `edgeplan emulate`); an EmulationError naming the file and the variable when it is set but
    the file is missing, not JSON or not a JSON object (a testbed torn down under the command, a stale env)."""
    path = (env if env is not None else os.environ).get(ENV_VAR)
    if not path:
        return None
    try:
        state = jsonio.read(path)
    except (OSError, ValueError) as e:
        raise netns.EmulationError(f"{path} ({ENV_VAR}): unreadable testbed state ({e}); run the command under "
                             "`edgeplan emulate CLUSTER -- COMMAND`, or unset it") from None
    if not isinstance(state, dict):
        raise netns.EmulationError(f"{path} ({ENV_VAR}): testbed state is a JSON object, got {type(state).__name__}; "
                             "run the command under `edgeplan emulate CLUSTER -- COMMAND`, or unset it")
    return state


@contextlib.contextmanager
def testbed(cluster: Cluster, host_core_flops: float | None = None, echo=print, max_board_cores: float = 1.0,
            pin: bool = False):
    """Build the emulated cluster; yields (Testbed, Shape); always tears it down. ``max_board_cores``: the
    fastest board's quota (lower: a slower emulation that leaves more of this machine to the head); ``pin``:
    each board's processes on their own CPUs (netns.pin_cpus).

    SIGTERM is turned into KeyboardInterrupt while it is up, so `kill` cleans up too.
    """
    netns.require_root()
    stale = netns.cleanup_stale()
    if stale:
        echo(f"removed leftovers of an earlier emulation: {', '.join(stale)}")
    plan_shape = shape(cluster, host_core_flops or calibrate.conv_flops(), max_board_cores=max_board_cores)
    echo(f"emulating {cluster.name}: dilation {plan_shape.dilation:.3g} "
         f"(the emulated cluster runs {1 / plan_shape.dilation:.3g}x slower than the real one)")
    for b in plan_shape.boards:
        echo(f"  {b.device:<14} cpu quota {b.cores:.2f} cores   link {b.bandwidth * 8 / 1e6:.1f} Mbit/s")
    pair = {(a, b): bw for a, b, bw in plan_shape.overrides}

    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        bed = netns.build([(b.device, b.cores, b.bandwidth) for b in plan_shape.boards], pair,
                          plan_shape.head_bandwidth, pin=pin)
        try:
            with netns.head_slot(bed):
                yield bed, plan_shape
        finally:
            netns.teardown(bed)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cluster: Cluster, command: list[str], host_core_flops: float | None = None,
        echo=print, trace=None) -> int:
    """Run ``command`` with EDGEPLAN_TESTBED set inside a fresh testbed; returns its exit code.

    ``trace`` (testbed.trace.Trace): its events are applied from the moment the command starts.
    """
    child = None
    applier = None
    with testbed(cluster, host_core_flops, echo) as (bed, plan_shape):
        try:
            with tempfile.TemporaryDirectory(prefix="edgeplan-testbed-") as tmp:
                state = Path(tmp) / "testbed.json"
                # the trace's file: `--adapt oracle` (adapt/oracle.py) switches on its true conditions
                jsonio.write(state, {**state_json(bed, plan_shape),
                                     **({"trace": str(Path(trace.source).resolve())} if trace is not None else {})})
                child = subprocess.Popen(command, env={**os.environ, ENV_VAR: str(state)})
                if trace is not None:
                    from edgeplan.testbed.trace import Applier, schedule

                    applier = Applier(schedule(trace, bed, plan_shape, cluster), echo=echo).start()
                try:
                    return child.wait()
                finally:
                    if applier is not None:
                        applier.stop()
        except KeyboardInterrupt:
            if child and child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            return 130


def emulated_cluster_doc(cluster: Cluster, plan_shape: Shape, host: HostSpeed) -> dict:
    """The cluster as emulated here, as a cluster-file document (profile ``host`` + overrides).

    Each board is this machine's CPU at its quota: per-class throughput and
    memory bandwidth x cores, per-layer and per-stage-call (runtime) overheads /
    cores, and the runtime's per-byte costs over a testbed link, received and sent (``TESTBED_HOP_BYTE_NS``,
    ``TESTBED_HOP_SEND_BYTE_NS``) / cores;
    the peak is the whole cores its threads burst on until the quota is spent (what
    `edgeplan calibrate` clamps a fit to); RAM and power stay the board's own. Links carry the dilated
    bandwidths. Plan against this to compare predictions with what runs inside `edgeplan emulate`.
    """
    from edgeplan.profiles.load import load_profile

    host_hop_us = load_profile("host").units[0].hop_overhead_s * 1e6  # runtime cost per stage call here
    devices = []
    for b in plan_shape.boards:
        dev = cluster.device(b.device)
        busy = max(u.busy_power_w for u in dev.units)
        thr = {c: round(host.of(c) * b.cores / 1e9, 4) for c, _ in host.flops}
        # a call runs on its threads at full core speed until the quota is spent: the peak is those cores
        # (the launch prefix's thread count), not the quota's average that ``thr`` holds
        burst = max(1, math.ceil(b.cores - 1e-6))
        peak = round(max(host.of(c) for c, _ in host.flops) * burst / 1e9, 4)
        devices.append({
            "name": dev.name,
            "profile": "host",
            "address": "127.0.0.1",
            "overrides": {
                "ram_mb": int(dev.ram_bytes // 2**20),
                "reserved_mb": 0,
                "idle_power_w": dev.idle_power_w,
                "units": {"cpu": {
                    "peak_gflops": max(peak, max(thr.values())),
                    "throughput_gflops": thr,
                    "mem_bandwidth_gbs": round(host.mem_bandwidth * b.cores / 1e9, 4),
                    "layer_overhead_us": round(HOST_LAYER_OVERHEAD_US / b.cores, 2),
                    "hop_overhead_us": round(host_hop_us / b.cores, 1),
                    "hop_byte_ns": round(TESTBED_HOP_BYTE_NS / b.cores, 4),
                    "hop_send_byte_ns": round(TESTBED_HOP_SEND_BYTE_NS / b.cores, 4),
                    "busy_power_w": busy,
                }},
            },
        })
    default = cluster.default_link
    return {
        "name": f"{cluster.name}-emulated",
        "devices": devices,
        "network": {
            "default": {"bandwidth_mbps": round(plan_shape.head_bandwidth * 8 / 1e6, 4),
                        "latency_ms": 0.0,
                        "energy_nj_per_byte": default.energy_per_byte_j * 1e9},
            "links": [{"between": [a, b], "bandwidth_mbps": round(bw * 8 / 1e6, 4), "latency_ms": 0.0}
                      for a, b, bw in plan_shape.overrides],
        },
        # the head runs here, off the boards, behind the host's own shaped leg (netns.build): the plan prices
        # its input and output links there, as the emulation runs them
        "head": {"name": _head_name(cluster), "address": "127.0.0.1",
                 "bandwidth_mbps": round(plan_shape.head_bandwidth * 8 / 1e6, 4), "latency_ms": 0.0},
    }


def _head_name(cluster: Cluster) -> str:
    """``host``, or ``host-head`` where a board is named ``host`` (a head host may not reuse a device name)."""
    return "host" if all(d.name != "host" for d in cluster.devices) else "host-head"


def write_emulated_cluster(path: Path, cluster: Cluster, plan_shape: Shape, host: HostSpeed) -> Path:
    import yaml

    doc = emulated_cluster_doc(cluster, plan_shape, host)
    header = (f"# {cluster.name} as emulated on this machine: dilation {plan_shape.dilation:.4g} "
              f"(everything runs {1 / plan_shape.dilation:.3g}x slower than the real cluster).\n"
              f"# Written by `edgeplan emulate --write-cluster`; emulate with the same --host-gflops "
              f"{plan_shape.host_core_flops / 1e9:.4g} so quotas match.\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path


def placement_from_env() -> tuple[dict[str, tuple[list[str], str]], str] | None:
    """Inside `edgeplan emulate`: (device -> (argv prefix, address), head address); else None."""
    state = read_state()
    if state is None:
        return None
    return ({d: (b["prefix"], b["address"]) for d, b in state["boards"].items()}, state["host_address"])
