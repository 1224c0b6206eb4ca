"""Scripted conditions for `edgeplan emulate --trace FILE` (issue 12 item 5).

A trace is a YAML list of timed events (or a mapping ``{duration_s: S, events: [...]}``; then no
event may come after ``duration_s``)::

    - {at_s: 20, link: [gpu-board, cpu-board], bandwidth_mbps: 100}   # one pair, absolute (real cluster units)
    - {at_s: 20, link: all, scale: 0.25}                                # every link x0.25 of nominal
    - {at_s: 40, device: gpu-board, cpu_scale: 0.33}                    # a hog: the board keeps 33% of its CPU
    - {at_s: 60, device: cpu-board, down: true}                         # the board drops off the network
    - {at_s: 80, device: cpu-board, down: false}                        # ... and comes back

Scales are relative to the nominal cluster (not to the previous event), so ``scale: 1`` restores it.
Bandwidths are the real cluster's; the emulation applies its dilation like it does for the cluster.

``schedule(trace, bed, shape)`` turns a trace into timed Actions (the exact ``tc`` commands and
cgroup writes) without running anything: that is the dry run tests check. ``Applier`` runs a
schedule against the live testbed on a background thread, from the moment the command starts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeplan.errors import EdgeplanError

ALL = "all"
_KEYS = {"at_s", "link", "bandwidth_mbps", "scale", "device", "cpu_scale", "down"}


class TraceError(EdgeplanError):
    """A trace file that cannot be applied: names the file, the entry and the field."""


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str  # "link" | "cpu" | "down"
    link: tuple[str, str] | None = None  # None with kind "link": every link
    bandwidth_bps: float | None = None  # bytes/s, real cluster (absolute form)
    scale: float | None = None  # link scale or cpu scale, relative to nominal
    device: str | None = None
    down: bool = False

    def describe(self) -> str:
        if self.kind == "link":
            what = "every link" if self.link is None else f"link {self.link[0]}<->{self.link[1]}"
            how = f"{self.bandwidth_bps * 8 / 1e6:g} Mbit/s" if self.bandwidth_bps is not None else f"x{self.scale:g}"
            return f"{what} -> {how}"
        if self.kind == "cpu":
            return f"{self.device} CPU x{self.scale:g} of nominal"
        return f"{self.device} {'down' if self.down else 'back up'}"


@dataclass(frozen=True)
class Trace:
    source: str
    events: tuple[Event, ...]  # sorted by at_s (stable)
    duration_s: float | None = None


def _num(v, where: str, *, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TraceError(f"{where}: {v!r} is not a number")
    if (positive and v <= 0) or v < 0:
        raise TraceError(f"{where}: {v!r} must be {'> 0' if positive else '>= 0'}")
    return float(v)


def parse(data, source: str, cluster) -> Trace:
    """Validate ``data`` (the loaded YAML) against ``cluster``; errors: one line naming source, entry, field."""
    names = [d.name for d in cluster.devices]
    duration = None
    if isinstance(data, dict):
        extra = set(data) - {"duration_s", "events"}
        if extra:
            raise TraceError(f"{source}: unknown key(s) {', '.join(sorted(extra))}; a trace mapping has duration_s "
                             "and events")
        if "duration_s" in data:
            duration = _num(data["duration_s"], f"{source}: duration_s", positive=True)
        data = data.get("events")
    if not isinstance(data, list) or not data:
        raise TraceError(f"{source}: a trace is a non-empty YAML list of events (or {{duration_s, events: [...]}})")

    def device(v, where: str) -> str:
        if v not in names:
            raise TraceError(f"{where}: unknown device {v!r} (devices of {cluster.name}: {', '.join(names)})")
        return v

    events = []
    for k, e in enumerate(data):
        at = f"{source}: events[{k}]"
        if not isinstance(e, dict):
            raise TraceError(f"{at}: an event is a mapping like {{at_s: 20, link: all, scale: 0.25}}")
        extra = set(e) - _KEYS
        if extra:
            raise TraceError(f"{at}: unknown field(s) {', '.join(sorted(extra))} (fields: {', '.join(sorted(_KEYS))})")
        if "at_s" not in e:
            raise TraceError(f"{at}.at_s: missing (seconds from the start of the command)")
        t = _num(e["at_s"], f"{at}.at_s", positive=False)
        if duration is not None and t > duration:
            raise TraceError(f"{at}.at_s: {t:g} s is past the end of the trace (duration_s {duration:g})")
        if "link" in e:
            if "device" in e or "cpu_scale" in e or "down" in e:
                raise TraceError(f"{at}: a link event takes link and bandwidth_mbps or scale, not device fields")
            ln = e["link"]
            if ln == ALL:
                pair = None
            elif isinstance(ln, list) and len(ln) == 2:
                pair = (device(ln[0], f"{at}.link[0]"), device(ln[1], f"{at}.link[1]"))
                if pair[0] == pair[1]:
                    raise TraceError(f"{at}.link: both ends are {pair[0]!r}; name two boards")
            else:
                raise TraceError(f"{at}.link: {ln!r} is not `all` or a pair [a, b]")
            if ("bandwidth_mbps" in e) == ("scale" in e):
                raise TraceError(f"{at}: give exactly one of bandwidth_mbps and scale")
            if "scale" in e:
                events.append(Event(t, "link", pair, scale=_num(e["scale"], f"{at}.scale", positive=True)))
            else:
                bw = _num(e["bandwidth_mbps"], f"{at}.bandwidth_mbps", positive=True) * 1e6 / 8
                events.append(Event(t, "link", pair, bandwidth_bps=bw))
        elif "device" in e:
            dev = device(e["device"], f"{at}.device")
            if ("cpu_scale" in e) == ("down" in e):
                raise TraceError(f"{at}: a device event takes exactly one of cpu_scale and down")
            if "cpu_scale" in e:
                events.append(Event(t, "cpu", device=dev, scale=_num(e["cpu_scale"], f"{at}.cpu_scale",
                                                                     positive=True)))
            else:
                if not isinstance(e["down"], bool):
                    raise TraceError(f"{at}.down: {e['down']!r} is not true or false")
                events.append(Event(t, "down", device=dev, down=e["down"]))
        else:
            raise TraceError(f"{at}: an event needs `link` or `device`")
    return Trace(source, tuple(sorted(events, key=lambda ev: ev.at_s)), duration)


def load(path, cluster) -> Trace:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise TraceError(f"{p}: no such trace file") from None
    except yaml.YAMLError as e:
        raise TraceError(f"{p}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse(data, str(p), cluster)


# --- the schedule: what each event does to the emulated testbed ------------------------------------------------


@dataclass(frozen=True)
class Action:
    at_s: float
    what: str  # the event, for the log
    commands: tuple[tuple[str, ...], ...]  # argv lists, in order
    writes: tuple[tuple[str, str], ...] = ()  # (file, text): cgroup quotas


def _rate(bps: float) -> str:
    from edgeplan.testbed.netns import _rate as rate

    return rate(bps)


def _quota_writes(cgroup: str, cores: float) -> list[tuple[str, str]]:
    """cgroup v2 ``cpu.max`` (or v1 period then quota) for ``cores``, as netns builds them."""
    from edgeplan.testbed.netns import quota_us

    period, quota = quota_us(cores)
    path = Path(cgroup)
    if (path / "cpu.max").exists() or not (path / "cpu.cfs_quota_us").exists():
        return [(str(path / "cpu.max"), f"{quota} {period}")]
    return [(str(path / "cpu.cfs_period_us"), str(period)), (str(path / "cpu.cfs_quota_us"), str(quota))]


def schedule(trace: Trace, bed, shape, cluster) -> tuple[Action, ...]:
    """The timed commands that apply ``trace`` to testbed ``bed`` (netns.Testbed) built from ``shape``.

    Link rates: each board's egress htb (default class 1:10, per-peer classes 1:20+ as built; a pair
    without its own class gets one, with a filter on the peer's address), the bridge-side leg that caps
    what the board receives, and the host's legs (tbf) for ``link: all``. Pure: runs nothing.
    """
    from edgeplan.testbed.netns import PREFIX

    d = shape.dilation
    slots = {b.device: b for b in bed.boards}
    index = {b.device: i for i, b in enumerate(bed.boards)}
    addr = {b.device: b.address for b in bed.boards}
    # live state: per board, {peer address: (classid, nominal bytes/s)}; default class nominal rates
    classes = {b.device: {a: (f"1:{20 + i}", bps) for i, (a, bps) in enumerate(b.overrides)} for b in bed.boards}
    next_id = {b.device: 20 + len(b.overrides) for b in bed.boards}
    all_scale = 1.0
    pair_bps: dict[frozenset, float] = {}  # pairs set absolutely (emulated bytes/s), survive `all` scalings

    def ex(dev: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", slots[dev].netns)

    def leg(dev: str) -> str:
        return f"{PREFIX}{bed.tag}{index[dev]}b"

    def set_pair(a: str, b: str, bps: float, cmds: list) -> None:
        for me, peer in ((a, b), (b, a)):
            cls = classes[me].get(addr[peer])
            if cls is None:
                cid = f"1:{next_id[me]}"
                next_id[me] += 1
                classes[me][addr[peer]] = (cid, slots[me].egress_bps)
                cmds.append(ex(me) + ("tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", cid, "htb",
                                      "rate", _rate(bps), "ceil", _rate(bps)))
                cmds.append(ex(me) + ("tc", "filter", "add", "dev", "eth0", "protocol", "ip", "parent", "1:", "prio",
                                      "1", "u32", "match", "ip", "dst", f"{addr[peer]}/32", "flowid", cid))
            else:
                cmds.append(ex(me) + ("tc", "class", "change", "dev", "eth0", "parent", "1:", "classid", cls[0],
                                      "htb", "rate", _rate(bps), "ceil", _rate(bps)))

    def caps(cmds: list) -> None:
        """Bridge-side legs: each board may receive at its fastest current incoming rate."""
        for dev in slots:
            rates = [slots[dev].egress_bps * all_scale] + [
                pair_bps.get(frozenset((dev, p)), classes[dev][addr[p]][1] * all_scale)
                for p in slots if p != dev and addr[p] in classes[dev]]
            cmds.append(("ip", "netns", "exec", bed.bridge_ns, "tc", "class", "change", "dev", leg(dev), "parent",
                         "1:", "classid", "1:10", "htb", "rate", _rate(max(rates)), "ceil", _rate(max(rates))))

    out = []
    for ev in trace.events:
        cmds: list[tuple[str, ...]] = []
        writes: list[tuple[str, str]] = []
        if ev.kind == "link" and ev.link is None:
            if ev.scale is not None:
                all_scale = ev.scale
                pair_bps.clear()
            else:  # absolute: as a scale of the default link
                all_scale = ev.bandwidth_bps / cluster.default_link.bandwidth
                pair_bps.clear()
            for dev, slot in slots.items():
                cmds.append(ex(dev) + ("tc", "class", "change", "dev", "eth0", "parent", "1:", "classid", "1:10",
                                       "htb", "rate", _rate(slot.egress_bps * all_scale),
                                       "ceil", _rate(slot.egress_bps * all_scale)))
                for cid, bps in classes[dev].values():
                    cmds.append(ex(dev) + ("tc", "class", "change", "dev", "eth0", "parent", "1:", "classid", cid,
                                           "htb", "rate", _rate(bps * all_scale), "ceil", _rate(bps * all_scale)))
            host = _rate(shape.head_bandwidth * all_scale)
            cmds.append(("tc", "qdisc", "change", "dev", f"{PREFIX}{bed.tag}ha", "root", "tbf", "rate", host,
                         "burst", "64kb", "latency", "100ms"))
            cmds.append(("ip", "netns", "exec", bed.bridge_ns, "tc", "qdisc", "change", "dev", f"{PREFIX}{bed.tag}hb",
                         "root", "tbf", "rate", host, "burst", "64kb", "latency", "100ms"))
            caps(cmds)
        elif ev.kind == "link":
            a, b = ev.link
            nominal = cluster.link(a, b).bandwidth * d
            bps = ev.bandwidth_bps * d if ev.bandwidth_bps is not None else nominal * ev.scale
            pair_bps[frozenset((a, b))] = bps
            set_pair(a, b, bps, cmds)
            caps(cmds)
        elif ev.kind == "cpu":
            cores = next(x.cores for x in shape.boards if x.device == ev.device) * ev.scale
            writes += _quota_writes(slots[ev.device].cgroup, cores)
        else:
            cmds.append(ex(ev.device) + ("ip", "link", "set", "eth0", "down" if ev.down else "up"))
        out.append(Action(ev.at_s, ev.describe(), tuple(cmds), tuple(writes)))
    return tuple(out)


class Applier:
    """Runs a schedule on a background thread: each action at its time from ``start()``; ``stop()`` ends it.

    A failing command is reported through ``echo`` and the run goes on (the emulation is still up); what
    was applied is kept in ``applied`` as (seconds since start, action).
    """

    def __init__(self, actions: tuple[Action, ...], echo=print, run=None, clock=time.monotonic):
        self.actions, self.echo, self.clock = actions, echo, clock
        self._run = run or self._subprocess
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied: list[tuple[float, Action]] = []
        self.errors: list[str] = []

    @staticmethod
    def _subprocess(argv: tuple[str, ...]) -> str | None:
        import subprocess

        p = subprocess.run(argv, capture_output=True, text=True)
        return None if p.returncode == 0 else (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}")

    def start(self) -> Applier:
        t0 = self.clock()
        self._thread = threading.Thread(target=self._loop, args=(t0,), name="edgeplan-trace", daemon=True)
        self._thread.start()
        return self

    def _loop(self, t0: float) -> None:
        for act in self.actions:
            if self._stop.wait(max(0.0, act.at_s - (self.clock() - t0))):
                return
            for argv in act.commands:
                err = self._run(argv)
                if err:
                    self.errors.append(f"{' '.join(argv)}: {err}")
                    self.echo(f"trace: t={act.at_s:g}s {act.what}: `{' '.join(argv)}` failed: {err}")
            for path, text in act.writes:
                try:
                    Path(path).write_text(text)
                except OSError as e:
                    self.errors.append(f"{path}: {e}")
                    self.echo(f"trace: t={act.at_s:g}s {act.what}: cannot write {path}: {e}")
            self.applied.append((self.clock() - t0, act))
            self.echo(f"trace: t={act.at_s:g}s {act.what}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
