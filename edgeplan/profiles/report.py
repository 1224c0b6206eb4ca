"""Text views of profiles and clusters for `edgeplan devices` and `edgeplan cluster check`."""

from __future__ import annotations

from edgeplan.profiles.cost import hop_byte_s
from edgeplan.profiles.load import list_profiles, load_profile
from edgeplan.profiles.model import (
    DEFAULT_TRAIN_RESERVE_BYTES,
    DEFAULT_TRAIN_RESERVE_SOURCE,
    Cluster,
    ComputeUnit,
    Link,
)
from edgeplan.tables import text_table

MiB = 2**20


def figures_basis(u: ComputeUnit) -> str:
    """Which of a unit's figures are measured (how, when, from what) and which are estimates; and whether
    training figures were fitted (they price training plans only)."""
    train = f"; training figures fitted ({u.training.source})" if u.training and u.training.source else (
        "; training figures set" if u.training else "")
    return _inference_basis(u) + train


def _inference_basis(u: ComputeUnit) -> str:
    total = len(u.figures())
    if not u.measured:
        return f"all {total} figures estimates"
    groups: dict[tuple[str, str, str], list[str]] = {}
    for m in u.measured:
        groups.setdefault((m.backend, m.when, m.source), []).append(m.field)
    parts = []
    for (backend, when, source), fields in sorted(groups.items()):
        classes = [f.split(".", 1)[1] for f in fields if f.startswith("throughput_gflops.")]
        rest = [f for f in fields if not f.startswith("throughput_gflops.")]
        names = ([f"throughput of {len(classes)} op classes" if len(classes) > 2 else
                  "throughput of " + ", ".join(classes)] if classes else []) + rest
        parts.append(f"{', '.join(names)} measured {when} on {backend} ({source})")
    left = u.estimated_figures()
    est = f"; estimates: {', '.join(left)}" if left else "; no estimates"
    return f"{total - len(left)}/{total} figures measured: " + "; ".join(parts) + est


def plan_basis(cluster: Cluster, used: tuple[tuple[str, str], ...]) -> str:
    """One line per (device, unit) a plan uses: the figures it rests on (for plan reports)."""
    lines = []
    for dev, unit in used:
        lines.append(f"  {dev}:{unit}: {figures_basis(cluster.device(dev).unit(unit))}")
    return "\n".join(lines) + "\n"


def _unit(u: ComputeUnit) -> str:
    return f"{u.name}:{u.target} {u.peak_flops / 1e9:g} GFLOP/s peak, conv {u.flops_per_s('conv') / 1e9:g}"


def format_profiles() -> str:
    """One row per built-in profile: id, usable RAM, estimate flag, name, units (target, peak and conv GFLOP/s)."""
    rows = []
    for pid, _path, _summary in list_profiles():
        p = load_profile(pid)
        units = "; ".join(_unit(u) for u in p.units)
        measured = sum(len(u.measured) for u in p.units)
        flag = ("measured" if not p.estimate else
                f"{measured}/{sum(len(u.figures()) for u in p.units)} measured" if measured else "estimate")
        reserve = p.instantiate("-", "-").train_reserve()[0]
        rows.append([pid, f"{p.ram_bytes / MiB:.0f} MB", f"{reserve / MiB:.0f} MB", flag, p.name, units])
    return "\n".join(text_table(("profile", "usable RAM", "train reserve", "figures", "name", "units"), rows,
                                right={1, 2})) + "\n" + (
        "train reserve: memory each torch training rank holds beyond its model (train_reserve_mb; default "
        f"{DEFAULT_TRAIN_RESERVE_BYTES / MiB:.0f} MB: {DEFAULT_TRAIN_RESERVE_SOURCE})\n")


def _link(link: Link) -> str:
    return (f"{link.bandwidth * 8 / 1e6:g} Mbit/s, {link.latency_s * 1e3:g} ms, "
            f"{link.energy_per_byte_j * 1e9:g} nJ/byte")


def format_cluster(cluster: Cluster) -> str:
    """Devices (profile, address, usable RAM, units) and links of a validated cluster."""
    secret = f", HMAC secret from ${cluster.secret_env}" if cluster.secret_env else ""
    lines = [f"cluster {cluster.name}: {len(cluster.devices)} devices{secret}"]
    width = max(len(d.name) for d in cluster.devices)
    for d in cluster.devices:
        flag = " (estimate)" if d.estimate else ""
        lines.append(f"  {d.name:<{width}}  {d.profile:<16} {d.address:<20} {d.ram_bytes / MiB:>6.0f} MB  "
                     f"idle {d.idle_power_w:g} W{flag}")
        reserve, source = d.train_reserve()
        lines.append(f"  {'':<{width}}    training: {reserve / MiB:.0f} MB torch reserve per rank ({source})")
        for u in d.units:
            lines.append(f"  {'':<{width}}    {_unit(u)} GFLOP/s, {u.mem_bandwidth / 1e9:g} GB/s, "
                         f"board {u.busy_power_w:g} W when busy, runtime {u.hop_overhead_s * 1e6:.4g} us + "
                         f"{hop_byte_s(u) * 1e9:.3g} ns/B" + (
                             "" if u.hop_send_byte_s is None else f" in, {u.hop_send_byte_s * 1e9:.3g} ns/B out")
                         + " per stage call")
            lines.append(f"  {'':<{width}}      {figures_basis(u)}")
    lines.append(f"  network default: {_link(cluster.default_link)}")
    for link in cluster.links:
        lines.append(f"  link {link.a} <-> {link.b}: {_link(link)}")
    h = cluster.head
    lines.append(f"  head: {cluster.head_name} ("
                 + ("the first device" if h is None else "a board" if isinstance(h, str) else
                    f"off the boards at {h.address}; link to every board {_link(h)}") + ")")
    return "\n".join(lines) + "\n"
