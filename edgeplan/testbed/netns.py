"""Emulated cluster on one Linux machine: a network namespace per board.

Topology: a bridge namespace holds a Linux bridge; each board gets a namespace
with one veth leg (``eth0``) plugged into the bridge, and the host gets a leg
too so the head (this machine) can reach every board. Links are shaped with
``tc htb``: each board's egress has a default class at the cluster's default
bandwidth and one class per per-pair override (matched by destination
address); the bridge-side legs cap what a board can receive. CPU time of each
board's processes is limited by a cgroup CPU quota (v1 ``cpu`` controller or
v2 ``cpu.max``). A quota only caps: on a machine other tenants load, a board
would get a fraction of it, and a run would measure the tenants, not the plan.
So the testbed's cgroup asks for the highest CPU weight (v1 ``cpu.shares``, v2
``cpu.weight``): each board gets its quota first, and the head, moved into the
testbed's own ``head`` cgroup while it runs (``head_slot``), gets the rest
before other tenants do.

Every veth leg is built with ``gso_max_segs 1``: TCP then hands the shapers MTU-sized packets. With the veth
default (64 KB GSO segments), htb let a whole segment through whenever its bucket was not in debt, so a 51 KB
message after an idle gap crossed a 94 Mbit/s link in 0.24 ms instead of 4.4 ms (18x nominal; a pipeline of
one micro-batch per iteration measured 2x faster than priced), and a shaper's burst then ranged with the
segment size. A real 100 Mbit/s Ethernet or Wi-Fi link never passes bytes faster than its line rate, so the
emulation is made honest rather than the burst priced. (The host leg's tbf keeps its 64 KB burst; tbf
splits a GSO segment larger than its burst itself.)

Latency is not emulated: this kernel has no ``netem``; the difference is the
links' latency (sub-millisecond on the example clusters), reported as omitted.

Everything is torn down on exit, Ctrl-C (SIGINT/SIGTERM) or failure; names
carry a per-run tag, and ``cleanup_stale()`` removes leftovers of killed runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgeplan.errors import EdgeplanError

PREFIX = "ep"  # every namespace, link and cgroup we create starts with it
OWNERS = Path("/run/edgeplan-testbed")  # <tag> -> pid of the process that built that testbed
SUBNET = "10.231"  # 10.231.<net>.<host>/24, our own test hosts only
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 20_000  # short CFS period: throttling in small slices, like a slower CPU
MIN_QUOTA_US = 1_000  # the kernel refuses smaller CFS quotas
MAX_PERIOD_US = 1_000_000
MAX_SHARES_V1 = 262_144  # cpu.shares upper limit (a root task weighs 1024)
MAX_WEIGHT_V2 = 10_000  # cpu.weight upper limit (default 100)
HEAD_SHARE_CORES = 1.0  # the head's weight among the testbed's boards, in cores (it has no quota)


class EmulationError(EdgeplanError):
    """The emulated testbed could not be built (not root, missing tool, kernel feature)."""


@dataclass(frozen=True)
class BoardSlot:
    """One emulated board: its namespace, address and CPU quota (in cores)."""

    device: str
    netns: str
    address: str
    cpu_quota: float
    cgroup: str  # cgroup folder; processes are added by writing cgroup.procs
    egress_bps: float  # default bandwidth of its link, bytes/s
    overrides: tuple[tuple[str, float], ...] = ()  # (peer address, bytes/s)
    cpus: tuple[int, ...] = ()  # CPUs its processes are pinned to (``build(pin=True)``); (): any

    def launch_prefix(self) -> list[str]:
        """argv to prepend so a command runs inside this board (cgroup + netns), with as many
        compute threads as the board has cores of quota (more would only contend for it), on its CPUs."""
        procs = shlex.quote(str(Path(self.cgroup) / "cgroup.procs"))
        threads = max(1, math.ceil(self.cpu_quota - 1e-6))
        pin = ["taskset", "-c", ",".join(map(str, self.cpus))] if self.cpus else []
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", "ip", "netns", "exec", self.netns,
                "env", f"EDGEPLAN_THREADS={threads}", f"OMP_NUM_THREADS={threads}", f"TVM_NUM_THREADS={threads}",
                *pin]


@dataclass(frozen=True)
class Testbed:
    tag: str
    bridge_ns: str
    host_address: str
    boards: tuple[BoardSlot, ...]
    cgroup_root: str
    notes: tuple[str, ...] = field(default=())

    def board(self, device: str) -> BoardSlot:
        for b in self.boards:
            if b.device == device:
                return b
        raise KeyError(device)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise EmulationError(f"`{' '.join(argv)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def require_root() -> None:
    if os.geteuid() != 0:
        raise EmulationError(
            "emulate needs root (network namespaces, tc and cgroups); run it with sudo, "
            "or use `edgeplan run ARTIFACTS --local` to run without emulated links"
        )
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise EmulationError(f"emulate needs `{tool}`: apt-get install iproute2")


# wire bytes per TCP payload byte of a full frame (1514 = 1448 payload + 52 TCP/IP with timestamps + 14
# Ethernet): a cluster's bandwidth is what a transfer achieves (iperf's figure, what the cost model divides
# bytes by), and the shapers count wire bytes; without it a 51 KB message took 4.6 ms on a 94 Mbit/s link, 5% slow
WIRE_PER_PAYLOAD = 1514 / 1448


def _rate(bps: float) -> str:
    """tc rate for ``bps`` payload bytes/s (``WIRE_PER_PAYLOAD``)."""
    return f"{max(int(bps * 8 * WIRE_PER_PAYLOAD), 8000)}bit"


def _one_segment(dev: str) -> None:
    """``gso_max_segs 1`` on a new veth leg, before it moves to its namespace (module docstring)."""
    _run("ip", "link", "set", "dev", dev, "gso_max_segs", "1")


def _shape(ns: str, dev: str, default_bps: float, overrides: tuple[tuple[str, float], ...]) -> None:
    """htb on ``dev`` in ``ns``: a default class plus one class per destination override."""
    ex = ("ip", "netns", "exec", ns)
    _run(*ex, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    _run(*ex, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
         "rate", _rate(default_bps), "ceil", _rate(default_bps))
    for i, (dst, bps) in enumerate(overrides):
        cid = f"1:{20 + i}"
        _run(*ex, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", cid, "htb",
             "rate", _rate(bps), "ceil", _rate(bps))
        _run(*ex, "tc", "filter", "add", "dev", dev, "protocol", "ip", "parent", "1:", "prio", "1",
             "u32", "match", "ip", "dst", f"{dst}/32", "flowid", cid)


def quota_us(cores: float) -> tuple[int, int]:
    """(period, quota) in µs for ``cores``: the short default period, stretched for tiny quotas
    so the kernel's 1 ms minimum quota never rounds a slow board up."""
    period = min(max(PERIOD_US, int(MIN_QUOTA_US / cores) + 1), MAX_PERIOD_US)
    return period, max(int(cores * period), MIN_QUOTA_US)


def _cgroup_create(root: Path, name: str, cores: float) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    period, quota = quota_us(cores)
    _reserve(path, cores)
    if (path / "cpu.cfs_quota_us").exists():  # cgroup v1
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
    elif (path / "cpu.max").exists():  # cgroup v2
        (path / "cpu.max").write_text(f"{quota} {period}")
    else:
        raise EmulationError(f"{path}: no cpu.cfs_quota_us or cpu.max; is the cpu controller enabled?")
    return path


def _reserve(path: Path, cores: float | None) -> None:
    """Weight ``path`` against its siblings: the highest weight for the testbed's root (its boards and head
    come before other tenants' processes), else in proportion to ``cores`` (boards within the testbed)."""
    if (path / "cpu.shares").exists():
        value = MAX_SHARES_V1 if cores is None else max(2, int(1024 * cores))
        (path / "cpu.shares").write_text(str(value))
    elif (path / "cpu.weight").exists():
        value = MAX_WEIGHT_V2 if cores is None else max(1, min(MAX_WEIGHT_V2, int(100 * cores)))
        (path / "cpu.weight").write_text(str(value))


def _cgroup_root(tag: str) -> Path:
    if CGROUP_V1.is_dir() and (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        root = CGROUP_V1 / f"{PREFIX}-{tag}"
        root.mkdir(exist_ok=True)
        _reserve(root, None)
        return root
    if (CGROUP_V2 / "cgroup.controllers").exists():
        controllers = (CGROUP_V2 / "cgroup.controllers").read_text().split()
        if "cpu" not in controllers:
            raise EmulationError("cgroup v2 without the cpu controller; CPU quotas cannot be emulated")
        subtree = CGROUP_V2 / "cgroup.subtree_control"
        if "cpu" not in subtree.read_text().split():
            subtree.write_text("+cpu")
        root = CGROUP_V2 / f"{PREFIX}-{tag}"
        root.mkdir(exist_ok=True)
        (root / "cgroup.subtree_control").write_text("+cpu")
        _reserve(root, None)
        return root
    raise EmulationError("no cgroup cpu controller at /sys/fs/cgroup/cpu (v1) or /sys/fs/cgroup (v2)")


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _remove_cgroup(child)
    procs = path / "cgroup.procs"
    parent_procs = path.parent / "cgroup.procs"
    if procs.exists():
        for pid in procs.read_text().split():  # move stragglers out so rmdir succeeds
            try:
                parent_procs.write_text(pid)
            except OSError:
                pass
    try:
        path.rmdir()
    except OSError:
        pass


def pin_cpus(quotas: list[float], n_cpus: int) -> list[tuple[int, ...]]:
    """CPUs per board for ``build(pin=True)``: ceil(quota) CPUs each, dealt round-robin from CPU 0.

    Why: a CFS quota is handed to each CPU a board's threads run on in slices (5 ms); a board whose rank and
    comm threads wander over both CPUs of this machine strands quota on one while the other throttles. On the
    testbed LeNet-5's pi0 | pi1 pipeline read 34-46 ms in three unpinned runs of one testbed (pi0 spending
    15-20 ms of CPU per iteration) and 24.0, 24.7 and 32.0 ms pinned (11.8-14.2 ms), for 24.0 priced, at load
    3-4. Opt-in: at load 6-9 a pinned board cannot leave a CPU other tenants keep busy (one board's LeNet-5
    iteration 25.4 ms pinned vs 17.4 unpinned), see benchmarks/bench_truth_train.py."""
    out, nxt = [], 0
    for q in quotas:
        k = min(n_cpus, max(1, math.ceil(q - 1e-6)))
        out.append(tuple(sorted((nxt + i) % n_cpus for i in range(k))))
        nxt = (nxt + k) % n_cpus
    return out


def build(boards: list[tuple[str, float, float]], overrides: dict[tuple[str, str], float],
          host_bps: float, pin: bool = False) -> Testbed:
    """Create the testbed. ``boards``: (device, cpu cores quota, default bytes/s).

    ``overrides`` maps a device pair to its link bandwidth; ``pin``: each board's processes run on their own
    CPUs (``pin_cpus``; needs ``taskset``). Tears down what it built if any step fails.
    """
    require_root()
    if pin and subprocess.run(["which", "taskset"], capture_output=True).returncode != 0:
        raise EmulationError("pinning boards to CPUs needs `taskset`: apt-get install util-linux")
    cpus = pin_cpus([c for _, c, _ in boards], os.cpu_count() or 1) if pin else [()] * len(boards)
    tag = secrets.token_hex(2)
    _claim(tag)
    net = int(tag, 16) % 250 + 1
    bridge_ns = f"{PREFIX}-{tag}-br"
    created_ns: list[str] = []
    cg_root = _cgroup_root(tag)
    addresses = {dev: f"{SUBNET}.{net}.{i + 1}" for i, (dev, _, _) in enumerate(boards)}
    host_address = f"{SUBNET}.{net}.254"
    try:
        _run("ip", "netns", "add", bridge_ns)
        created_ns.append(bridge_ns)
        exb = ("ip", "netns", "exec", bridge_ns)
        _run(*exb, "ip", "link", "add", "br0", "type", "bridge")
        _run(*exb, "ip", "link", "set", "br0", "up")
        _run(*exb, "ip", "link", "set", "lo", "up")
        slots = []
        for i, (dev, cores, bps) in enumerate(boards):
            ns = f"{PREFIX}-{tag}-{i}"
            _run("ip", "netns", "add", ns)
            created_ns.append(ns)
            a, b = f"{PREFIX}{tag}{i}a", f"{PREFIX}{tag}{i}b"
            _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _one_segment(a)
            _one_segment(b)
            _run("ip", "link", "set", a, "netns", ns)
            _run("ip", "link", "set", b, "netns", bridge_ns)
            ex = ("ip", "netns", "exec", ns)
            _run(*ex, "ip", "link", "set", a, "name", "eth0")
            _run(*ex, "ip", "addr", "add", f"{addresses[dev]}/24", "dev", "eth0")
            _run(*ex, "ip", "link", "set", "eth0", "up")
            _run(*ex, "ip", "link", "set", "lo", "up")
            _run(*exb, "ip", "link", "set", b, "master", "br0")
            _run(*exb, "ip", "link", "set", b, "up")
            mine = tuple(
                (addresses[peer], rate)
                for (x, y), rate in sorted(overrides.items())
                for me, peer in ((x, y), (y, x))
                if me == dev and peer in addresses
            )
            _shape(ns, "eth0", bps, mine)
            _shape(bridge_ns, b, max([bps] + [r for _, r in mine]), ())
            cg = _cgroup_create(cg_root, dev, cores)
            slots.append(BoardSlot(dev, ns, addresses[dev], cores, str(cg), bps, mine, cpus[i]))
        # the host's own leg: the head runs on this machine
        ha, hb = f"{PREFIX}{tag}ha", f"{PREFIX}{tag}hb"
        _run("ip", "link", "add", ha, "type", "veth", "peer", "name", hb)
        _one_segment(ha)
        _one_segment(hb)
        _run("ip", "link", "set", hb, "netns", bridge_ns)
        _run("ip", "addr", "add", f"{host_address}/24", "dev", ha)
        _run("ip", "link", "set", ha, "up")
        _run(*exb, "ip", "link", "set", hb, "master", "br0")
        _run(*exb, "ip", "link", "set", hb, "up")
        _run("tc", "qdisc", "add", "dev", ha, "root", "tbf", "rate", _rate(host_bps),
             "burst", "64kb", "latency", "100ms")
        _run(*exb, "tc", "qdisc", "add", "dev", hb, "root", "tbf", "rate", _rate(host_bps),
             "burst", "64kb", "latency", "100ms")
        return Testbed(tag, bridge_ns, host_address, tuple(slots), str(cg_root),
                       notes=("link latency not emulated (no netem in this kernel)",))
    except BaseException:
        _teardown(tag, created_ns, cg_root)
        raise


def _own_cgroup(root: Path) -> Path:
    """The cpu cgroup this process is in now (v1: the ``cpu`` controller's line, v2: the unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if (root == CGROUP_V1 and "cpu" in controllers.split(",")) or (root == CGROUP_V2 and controllers == ""):
            return root / rel.lstrip("/")
    return root


@contextlib.contextmanager
def head_slot(bed: Testbed):
    """Run this process (the head, and whatever it starts on the host) in the testbed's ``head`` cgroup: the
    testbed's weight, no quota, so other tenants do not starve the head the boards wait on (module docstring);
    it is moved back where it was on exit."""
    root = Path(bed.cgroup_root)
    base = CGROUP_V1 if root.parent == CGROUP_V1 else CGROUP_V2
    home = _own_cgroup(base)
    head = root / "head"
    try:
        head.mkdir(exist_ok=True)
        _reserve(head, HEAD_SHARE_CORES)
        (head / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:  # no weight for the head: it still runs, as any other process here
        yield
        return
    try:
        yield
    finally:
        try:
            (home / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            (base / "cgroup.procs").write_text(str(os.getpid()))


def _teardown(tag: str, namespaces: list[str], cg_root: Path) -> None:
    for ns in namespaces:  # kill what still runs inside, then delete
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for ns in reversed(namespaces):
        _run("ip", "netns", "del", ns, check=False)
    _run("ip", "link", "del", f"{PREFIX}{tag}ha", check=False)
    _remove_cgroup(cg_root)
    (OWNERS / tag).unlink(missing_ok=True)


def teardown(bed: Testbed) -> None:
    _teardown(bed.tag, [bed.bridge_ns] + [b.netns for b in bed.boards], Path(bed.cgroup_root))


def _claim(tag: str) -> None:
    """Record this process as the owner of ``tag``, so a concurrent run's cleanup leaves it alone."""
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / tag).write_text(str(os.getpid()))


def _owner_alive(tag: str) -> bool:
    try:
        os.kill(int((OWNERS / tag).read_text()), 0)
    except (OSError, ValueError):  # no owner file (a run from before owners were recorded), or its owner is gone
        return False
    return True


def _tag_of(item: str) -> str:
    return Path(item).name.split("-")[1]


def leftovers() -> list[str]:
    """Namespaces and cgroups of earlier runs whose owning process is gone (names start with 'ep-').

    A run that is still going (another emulation on this machine, a parallel test) is not a leftover.
    """
    found = [ns.split()[0] for ns in _run("ip", "netns", "list", check=False).stdout.splitlines()
             if ns.startswith(f"{PREFIX}-")]
    for root in (CGROUP_V1, CGROUP_V2):
        if root.is_dir():
            found += [str(p) for p in root.glob(f"{PREFIX}-*") if p.is_dir()]
    return [item for item in found if not _owner_alive(_tag_of(item))]


def cleanup_stale() -> list[str]:
    """Remove leftovers of killed runs; returns what was removed."""
    removed = leftovers()
    for item in removed:
        if item.startswith("/"):
            _remove_cgroup(Path(item))
        else:
            _teardown(_tag_of(item), [item], Path("/nonexistent"))
    for tag in {_tag_of(item) for item in removed}:
        (OWNERS / tag).unlink(missing_ok=True)
    return removed
