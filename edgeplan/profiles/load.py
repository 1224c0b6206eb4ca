"""Board profiles and cluster files: YAML in, validated frozen data out.

A board profile is one YAML file, ``boards/<vendor>/<id>.yaml`` (its id is the
file stem). ``extends: <id or path>`` deep-merges the file over a base profile:
mappings merge key by key, everything else (numbers, strings, lists) replaces.
A cluster file names devices, each an instance of a profile (by built-in id or
by a path relative to the cluster file, e.g. a measured profile) with optional
``overrides`` merged the same way.

YAML uses friendly units, converted to SI here once: sizes in MB are MiB
(2**20 bytes: boards are sold as 1/2/4/8 GB of 2**30), GFLOP/s, GB/s (1e9
bytes/s), Mbit/s (1e6 bits/s), ms, us, W, nJ per byte. A value may also be a
string with an explicit unit of the same dimension, e.g. ``latency_ms: "200 us"``.

Every error is a ProfileError naming the file, the field path (e.g.
``devices[2].profile``), the bad value and what is allowed. Reading, ``extends``
and overrides (and where each value came from) are ``merge``'s; this module
validates the merged documents and builds the frozen data.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from edgeplan.errors import ProfileError
from edgeplan.graph import ops
from edgeplan.profiles.merge import (
    Doc,
    Src,
    builtin_index,
    find,
    fmt_path,
    is_abstract,
    merge,
    read_yaml,
    resolve,
    shown_path,
    valid_ids,
)
from edgeplan.profiles.model import (
    OPTIONAL_FIGURES,
    Cluster,
    ComputeUnit,
    Device,
    HeadHost,
    Link,
    Measured,
    Profile,
    TrainingFigures,
    unit_figures,
)

UNIT_KINDS = ("cpu", "gpu", "npu")
TARGETS = ("arm-cpu", "cuda", "mali", "npu", "x86")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# dimension -> {unit spelling: factor to SI}
_UNITS: dict[str, dict[str, float]] = {
    "size": {"B": 1.0, "KB": 2.0**10, "KiB": 2.0**10, "MB": 2.0**20, "MiB": 2.0**20, "GB": 2.0**30, "GiB": 2.0**30},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9},
    "flops": {"FLOP/s": 1.0, "MFLOP/s": 1e6, "GFLOP/s": 1e9, "TFLOP/s": 1e12, "GOPS": 1e9, "TOPS": 1e12},
    "rate": {"B/s": 1.0, "MB/s": 1e6, "GB/s": 1e9},
    "bitrate": {"bit/s": 0.125, "kbit/s": 125.0, "Mbit/s": 1.25e5, "Gbit/s": 1.25e8, "Mbps": 1.25e5, "Gbps": 1.25e8},
    "power": {"W": 1.0, "mW": 1e-3},
    "energy": {"J": 1.0, "nJ": 1e-9, "pJ": 1e-12},
}

_BOARD_KEYS = ("name", "vendor", "extends", "abstract", "estimate", "ram_mb", "reserved_mb", "idle_power_w", "units",
               "train_reserve_mb", "train_reserve_from")
_UNIT_KEYS = (
    "kind", "target", "target_options", "peak_gflops", "throughput_gflops", "mem_bandwidth_gbs",
    "busy_power_w", "layer_overhead_us", "supported_ops", "hop_overhead_us", "hop_byte_ns", "hop_send_byte_ns",
    "measured", "training",
)
# a unit's training-only figures (TrainingFigures; written by `edgeplan calibrate TRAIN-REPORT`): YAML name ->
# (field, SI factor, whether a factor (> 0) rather than a time (>= 0))
_TRAINING_KEYS = {
    "forward_factor": ("forward_factor", 1.0, True), "backward_factor": ("backward_factor", 1.0, True),
    "forward_layer_us": ("forward_layer_s", 1e-6, False), "backward_layer_us": ("backward_layer_s", 1e-6, False),
    "call_us": ("call_s", 1e-6, False),
    "call_peer_us": ("call_peer_s", 1e-6, False), "optimizer_ns_per_byte": ("optimizer_s_per_byte", 1e-9, False),
    "optimizer_call_us": ("optimizer_call_s", 1e-6, False),
    "p2p_call_us": ("p2p_call_s", 1e-6, False), "p2p_ns_per_byte": ("p2p_s_per_byte", 1e-9, False),
    "allreduce_call_us": ("allreduce_call_s", 1e-6, False),
    "allreduce_ns_per_byte": ("allreduce_s_per_byte", 1e-9, False),
    "forward_call_us": ("forward_call_s", 1e-6, False), "backward_call_us": ("backward_call_s", 1e-6, False),
}
_MEASURED_KEYS = ("how", "when", "backend", "from")
HOP_BYTE_MAX_NS = 1000.0  # 1 us per byte (1 MB/s of runtime CPU): slower than any board's socket path
_OVERRIDE_KEYS = ("ram_mb", "reserved_mb", "idle_power_w", "estimate", "units", "train_reserve_mb",
                  "train_reserve_from")
_CLUSTER_KEYS = ("name", "description", "devices", "network", "secret_env", "head")
_HEAD_KEYS = ("name", "address", "bandwidth_mbps", "latency_ms", "energy_nj_per_byte")
_DEVICE_KEYS = ("name", "profile", "address", "overrides", "user")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$", re.IGNORECASE)  # POSIX-ish login names
_NETWORK_KEYS = ("default", "links")
_LINK_KEYS = ("between", "bandwidth_mbps", "latency_ms", "energy_nj_per_byte")


# --- value checks -------------------------------------------------------------


def _quantity(doc: Doc, path: tuple, dim: str, unit: str, *, lo: float = 0.0, lo_open: bool = True,
              hi: float | None = None) -> float:
    """A number in the field's ``unit`` (or a string with an explicit unit of ``dim``), as SI."""
    value = _get(doc, path)
    table = _UNITS[dim]
    allowed = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise doc.fail(path, f"{value!r} is not a number; allowed: a number in {unit} {allowed}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S+)\s*", value)
        if not m:
            raise doc.fail(path, f"{value!r} is not a number; allowed: a number in {unit} {allowed}, "
                                 f"or a string like '10 {unit}'")
        if m.group(2) not in table:
            raise doc.fail(path, f"{value!r} has unit {m.group(2)!r}, which is not a {dim}; "
                                 f"allowed units: {', '.join(table)}")
        number, factor = float(m.group(1)), table[m.group(2)] / table[unit]
    else:
        number, factor = float(value), 1.0
    in_unit = number * factor
    if in_unit != in_unit or in_unit in (float("inf"), float("-inf")) or in_unit < lo or (
            lo_open and in_unit == lo) or (hi is not None and in_unit > hi):
        raise doc.fail(path, f"{value!r} is out of range; allowed: {allowed} ({unit})")
    return in_unit * table[unit]


_MISSING = object()


def _get(doc: Doc, path: tuple, default: Any = _MISSING) -> Any:
    node: Any = doc.data
    for p in path:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        elif default is not _MISSING:
            return default
        else:
            raise doc.fail(path, "missing required field")
    return node


def _string(doc: Doc, path: tuple, *, choices: tuple[str, ...] | None = None, pattern: re.Pattern | None = None,
            default: Any = _MISSING) -> Any:
    value = _get(doc, path, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str) or not value:
        raise doc.fail(path, f"{value!r} is not a non-empty string")
    if choices is not None and value not in choices:
        raise doc.fail(path, f"{value!r} is not allowed; allowed: {', '.join(choices)}")
    if pattern is not None and not pattern.match(value):
        raise doc.fail(path, f"{value!r} is not a valid name; allowed: letters, digits, '_', '-', '.'")
    return value


def _mapping(doc: Doc, path: tuple, allowed: tuple[str, ...] | None = None, default: Any = _MISSING) -> dict:
    value = _get(doc, path, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, dict):
        raise doc.fail(path, f"expected a mapping, got {value!r}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise doc.fail(path + (key,), f"unknown field {key!r}; allowed: {', '.join(allowed)}")
    return value


def _bool(doc: Doc, path: tuple, default: bool) -> bool:
    value = _get(doc, path, default)
    if not isinstance(value, bool):
        raise doc.fail(path, f"{value!r} is not true or false")
    return value


# --- profiles -----------------------------------------------------------------


def _figure_path(p: tuple, figure: str) -> tuple:
    return p + tuple(figure.split("."))


def _measured(doc: Doc, p: tuple) -> tuple[Measured, ...]:
    """The unit's ``measured:`` provenance, ``{figure: {how, when, backend, from}}``.

    An entry counts only while the figure it describes still comes from the same file: a later
    ``extends`` or cluster override that changes the figure makes it an estimate of that file again.
    """
    table = _mapping(doc, p + ("measured",), default={})
    allowed = unit_figures() + OPTIONAL_FIGURES
    out = []
    for figure, body in sorted(table.items()):
        where = p + ("measured", figure)
        if figure not in allowed:
            raise doc.fail(where, f"unknown figure {figure!r}; allowed: {', '.join(allowed)}")
        _mapping(doc, where, _MEASURED_KEYS)
        for key in _MEASURED_KEYS:
            _string(doc, where + (key,))
        if _get(doc, _figure_path(p, figure), None) is None:
            raise doc.fail(where, f"provenance for {figure!r}, which this unit does not set; set the figure "
                                  "or remove the entry")
        if doc.file_of(_figure_path(p, figure)) != doc.file_of(where):
            continue  # the figure was overridden elsewhere: that file's value is an estimate
        out.append(Measured(field=figure, how=body["how"], when=body["when"], backend=body["backend"],
                            source=body["from"]))
    return tuple(out)


def _build_unit(doc: Doc, name: str) -> ComputeUnit:
    p = ("units", name)
    _mapping(doc, p, _UNIT_KEYS)
    kind = _string(doc, p + ("kind",), choices=UNIT_KINDS)
    target = _string(doc, p + ("target",), choices=TARGETS)
    options = _mapping(doc, p + ("target_options",), default={})
    for key, value in options.items():
        if not isinstance(value, str):
            raise doc.fail(p + ("target_options", key), f"{value!r} is not a string (quote it in YAML)")
    peak = _quantity(doc, p + ("peak_gflops",), "flops", "GFLOP/s")
    table = _mapping(doc, p + ("throughput_gflops",))
    for key in table:
        if key not in ops.OP_CLASSES:
            raise doc.fail(p + ("throughput_gflops", key),
                           f"unknown op class {key!r}; allowed: {', '.join(ops.OP_CLASSES)}")
    throughput = tuple(
        (cls, _quantity(doc, p + ("throughput_gflops", cls), "flops", "GFLOP/s", hi=peak / 1e9))
        for cls in ops.OP_CLASSES
    )
    supported = _get(doc, p + ("supported_ops",), None)
    if supported is not None:
        if not isinstance(supported, list) or not supported:
            raise doc.fail(p + ("supported_ops",), f"{supported!r} is not a non-empty list of op kinds")
        for i, op in enumerate(supported):
            if op not in ops.OP_CLASS_OF:
                raise doc.fail(p + ("supported_ops", i),
                               f"unknown op kind {op!r}; allowed: {', '.join(sorted(ops.OP_CLASS_OF))}")
        from edgeplan.targets.registry import get_target  # the target's own op list bounds the unit's

        beyond = get_target(target).supports(set(supported))
        if beyond:
            raise doc.fail(p + ("supported_ops",), f"target {target} cannot compile {', '.join(sorted(beyond))}; "
                                                   "drop them (the planner would place layers the compile refuses)")
        supported = tuple(sorted(set(supported)))
    elif kind == "npu":
        raise doc.fail(p + ("supported_ops",), "missing required field: an NPU runs only some ops; list them")
    return ComputeUnit(
        name=name, kind=kind, target=target, throughput=throughput,
        mem_bandwidth=_quantity(doc, p + ("mem_bandwidth_gbs",), "rate", "GB/s"),
        busy_power_w=_quantity(doc, p + ("busy_power_w",), "power", "W", lo_open=False),
        layer_overhead_s=_quantity(doc, p + ("layer_overhead_us",), "time", "us", lo_open=False),
        hop_overhead_s=(_quantity(doc, p + ("hop_overhead_us",), "time", "us", lo_open=False)
                        if _get(doc, p + ("hop_overhead_us",), None) is not None else 0.0),
        # the runtime's seconds per byte a stage call receives or sends; unset: memory copies (profiles/cost.py)
        hop_byte_s=(_quantity(doc, p + ("hop_byte_ns",), "time", "ns", lo_open=False, hi=HOP_BYTE_MAX_NS)
                    if _get(doc, p + ("hop_byte_ns",), None) is not None else None),
        # ... per byte it sends, where that costs other than receiving; unset: hop_byte_ns both ways
        hop_send_byte_s=(_quantity(doc, p + ("hop_send_byte_ns",), "time", "ns", lo_open=False, hi=HOP_BYTE_MAX_NS)
                         if _get(doc, p + ("hop_send_byte_ns",), None) is not None else None),
        supported_ops=supported,
        target_options=tuple(sorted(options.items())),
        peak_flops=peak,
        measured=_measured(doc, p),
        training=_training(doc, p),
    )


def _training(doc: Doc, p: tuple) -> TrainingFigures | None:
    """The unit's optional ``training:`` block (TrainingFigures), each figure checked for range."""
    table = _mapping(doc, p + ("training",), tuple(_TRAINING_KEYS) + ("from",), default=None)
    if not table:
        return None
    out = {}
    for key, (name, scale, factor) in _TRAINING_KEYS.items():
        value = table.get(key)
        if value is None:
            continue
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or (
            value <= 0 if factor else value < 0) or value == float("inf")
        if bad:
            raise doc.fail(p + ("training", key), f"{value!r} is out of range; allowed: a number "
                                                  f"{'> 0' if factor else '>= 0'}")
        out[name] = float(value) * scale
    source = table.get("from", "")
    return TrainingFigures(**out, source=str(source) if source is not None else "")


def _train_reserve(doc: Doc, ram: float) -> tuple[int | None, str]:
    """The board's ``train_reserve_mb`` (bytes each torch training rank holds beyond its model; None: unset,
    the default) and its provenance: ``train_reserve_from`` (a measurement's, e.g. `edgeplan calibrate`'s)
    when the same file sets both, else an estimate of the file that sets the figure."""
    if _get(doc, ("train_reserve_mb",), None) is None:
        if _get(doc, ("train_reserve_from",), None) is not None:
            raise doc.fail(("train_reserve_from",), "provenance for train_reserve_mb, which is not set; set "
                                                    "train_reserve_mb or remove train_reserve_from")
        return None, ""
    value = _quantity(doc, ("train_reserve_mb",), "size", "MB", lo_open=False, hi=ram / 2**20)
    where = doc.file_of(("train_reserve_mb",))
    src = _string(doc, ("train_reserve_from",), default=None)
    if src is not None and doc.file_of(("train_reserve_from",)) == where:
        return int(value), f"measured: {src}"
    return int(value), f"estimate: train_reserve_mb in {Path(where).name if where else 'the profile'}"


def _build_profile(doc: Doc, pid: str, source: str) -> Profile:
    _mapping(doc, (), _BOARD_KEYS)
    ram = _quantity(doc, ("ram_mb",), "size", "MB")
    reserved = _quantity(doc, ("reserved_mb",), "size", "MB", lo_open=False, hi=ram / 2**20)
    if reserved >= ram:
        raise doc.fail(("reserved_mb",), f"{_get(doc, ('reserved_mb',))!r} leaves no memory; "
                                         f"allowed: < ram_mb ({ram / 2**20:g} MB)")
    units = _mapping(doc, ("units",))
    if not units:
        raise doc.fail(("units",), "a board needs at least one compute unit (cpu, gpu or npu)")
    for name in units:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise doc.fail(("units", name), f"{name!r} is not a valid unit name (e.g. cpu, gpu, npu)")
    idle = _quantity(doc, ("idle_power_w",), "power", "W", lo_open=False)
    built = tuple(_build_unit(doc, name) for name in units)
    for u in built:
        if u.busy_power_w < idle:
            raise doc.fail(("units", u.name, "busy_power_w"),
                           f"{_get(doc, ('units', u.name, 'busy_power_w'))!r} is below idle_power_w ({idle:g} W); "
                           "it is the whole board's power with this unit busy, idle included")
    flag = _bool(doc, ("estimate",), True)
    reserve, reserve_src = _train_reserve(doc, ram)
    if any(u.measured for u in built):  # per-figure provenance decides: measured only if every figure is
        flag = any(u.estimated_figures() for u in built)
    return Profile(
        id=pid,
        name=_string(doc, ("name",)),
        vendor=_string(doc, ("vendor",)),
        source=source,
        ram_bytes=int(ram - reserved),
        idle_power_w=idle,
        units=built,
        estimate=flag,
        train_reserve_bytes=reserve,
        train_reserve_source=reserve_src,
    )


def _load(ref: str, base_dir: Path | None, index: dict[str, Path]) -> tuple[Doc, str, str]:
    path = find(ref, base_dir, index)
    if path is None:
        raise ProfileError(f"unknown profile {ref!r}; valid ids: {valid_ids(index)} (or a path to a profile file)")
    doc, pid = resolve(path, index)
    return doc, pid, shown_path(path)


def load_profile(ref: str, base_dir: str | Path | None = None) -> Profile:
    """A validated board template by built-in id (``rpi4b-4gb``) or by file path."""
    index = builtin_index()
    doc, pid, source = _load(ref, Path(base_dir) if base_dir is not None else Path.cwd(), index)
    if doc.data.get("abstract"):
        raise ProfileError(f"{source}: profile {pid!r} is a base for other profiles (abstract: true); "
                           f"use one of: {valid_ids(index)}")
    return _build_profile(doc, pid, source)


def list_profiles() -> tuple[tuple[str, Path, str], ...]:
    """Built-in (non-abstract) profiles: (id, file, board name), sorted by id."""
    out = []
    for pid, path in sorted(builtin_index().items()):
        if is_abstract(path):
            continue
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
        if name is None:  # inherited from the base
            name = load_profile(pid).name
        out.append((pid, path, str(name)))
    return tuple(out)


# --- clusters -----------------------------------------------------------------


def _device(doc: Doc, i: int, base_dir: Path, index: dict[str, Path], file: str) -> Device:
    p = ("devices", i)
    _mapping(doc, p, _DEVICE_KEYS)
    name = _string(doc, p + ("name",), pattern=_NAME_RE)
    ref = _string(doc, p + ("profile",))
    address = _string(doc, p + ("address",))
    path = find(ref, base_dir, index)
    if path is None:
        raise doc.fail(p + ("profile",), f"unknown profile {ref!r}; valid ids: {valid_ids(index)} "
                                         "(or a path to a profile file, relative to the cluster file)")
    pdoc, pid = resolve(path, index)
    if pdoc.data.get("abstract"):
        raise doc.fail(p + ("profile",), f"profile {ref!r} is a base for other profiles; "
                                         f"use one of: {valid_ids(index)}")
    overrides = _mapping(doc, p + ("overrides",), _OVERRIDE_KEYS, default=None)
    if overrides:
        src = Src(file, fmt_path(p + ("overrides",)))
        units = dict(pdoc.data.get("units") or {})
        over = dict(overrides)
        if "units" in over:
            o_units = _mapping(doc, p + ("overrides", "units"))
            for uname, body in o_units.items():
                if uname not in units:
                    raise doc.fail(p + ("overrides", "units", uname),
                                   f"unknown unit {uname!r}; profile {pid!r} has: {', '.join(units)}")
                if body is None:  # `npu: null` removes a unit (e.g. its driver is not installed)
                    del units[uname]
                elif not isinstance(body, dict):
                    raise doc.fail(p + ("overrides", "units", uname), f"expected a mapping or null, got {body!r}")
            pdoc.data["units"] = units
            over["units"] = {k: v for k, v in o_units.items() if v is not None}
        origins = dict(pdoc.origins)
        pdoc = Doc(merge(pdoc.data, over, origins, src), origins)
    device = _build_profile(pdoc, pid, shown_path(path)).instantiate(name, address)
    user = _string(doc, p + ("user",), pattern=_USER_RE, default=None)
    return dataclasses.replace(device, user=user) if user is not None else device


def _link(doc: Doc, path: tuple, default_energy: float | None) -> tuple[float, float, float]:
    bandwidth = _quantity(doc, path + ("bandwidth_mbps",), "bitrate", "Mbit/s")
    latency = _quantity(doc, path + ("latency_ms",), "time", "ms", lo_open=False)
    if _get(doc, path + ("energy_nj_per_byte",), None) is None:
        return bandwidth, latency, default_energy or 0.0
    return bandwidth, latency, _quantity(doc, path + ("energy_nj_per_byte",), "energy", "nJ", lo_open=False)


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster file; profiles by id or by path relative to the file."""
    path = Path(path)
    file = str(path)
    data = read_yaml(path, "cluster")
    doc = Doc(data, {(): Src(file)})
    _mapping(doc, (), _CLUSTER_KEYS)
    name = _string(doc, ("name",), pattern=_NAME_RE)
    devices_raw = _get(doc, ("devices",))
    if not isinstance(devices_raw, list) or not devices_raw:
        raise doc.fail(("devices",), f"expected a non-empty list of devices, got {devices_raw!r}")
    index = builtin_index()
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for i in range(len(devices_raw)):
        dev_name = _string(doc, ("devices", i, "name"), pattern=_NAME_RE)
        if dev_name in seen:
            raise doc.fail(("devices", i, "name"), f"duplicate device name {dev_name!r} "
                                                   f"(also devices[{seen[dev_name]}]); names must be unique")
        seen[dev_name] = i
        devices.append(_device(doc, i, path.parent, index, file))
    _mapping(doc, ("network",), _NETWORK_KEYS)
    _mapping(doc, ("network", "default"), ("bandwidth_mbps", "latency_ms", "energy_nj_per_byte"))
    bw, lat, energy = _link(doc, ("network", "default"), None)
    default_link = Link("*", "*", bw, lat, energy)
    links_raw = _get(doc, ("network", "links"), [])
    if not isinstance(links_raw, list):
        raise doc.fail(("network", "links"), f"expected a list of links, got {links_raw!r}")
    links: list[Link] = []
    pairs: dict[frozenset, int] = {}
    for i in range(len(links_raw)):
        p = ("network", "links", i)
        _mapping(doc, p, _LINK_KEYS)
        between = _get(doc, p + ("between",))
        if not isinstance(between, list) or len(between) != 2 or between[0] == between[1]:
            raise doc.fail(p + ("between",), f"{between!r} is not two different device names")
        for j, dev in enumerate(between):
            if dev not in seen:
                raise doc.fail(p + ("between", j), f"unknown device {dev!r}; devices: {', '.join(seen)}")
        pair = frozenset(between)
        if pair in pairs:
            raise doc.fail(p + ("between",), f"link {between!r} is already given by network.links[{pairs[pair]}]")
        pairs[pair] = i
        bw, lat, energy = _link(doc, p, default_link.energy_per_byte_j)
        links.append(Link(between[0], between[1], bw, lat, energy))
    secret_env = _string(doc, ("secret_env",), default=None)
    if secret_env is not None and not _ENV_RE.match(secret_env):
        raise doc.fail(("secret_env",), f"{secret_env!r} is not an environment variable name "
                                        "(letters, digits and '_', not starting with a digit)")
    return Cluster(name=name, devices=tuple(devices), default_link=default_link, links=tuple(links),
                   secret_env=secret_env, head=_head(doc, seen, default_link))


def _head(doc: Doc, seen: dict[str, int], default_link: Link) -> str | HeadHost | None:
    """``head:``: a device name (the head runs on that board) or a mapping for an off-board host (its name
    and its link to every board); absent: None (the first device, as before the field existed)."""
    raw = _get(doc, ("head",), None)
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in seen:
            raise doc.fail(("head",), f"unknown device {raw!r}; name a device ({', '.join(seen)}) or give an "
                                      "off-board host as {name: ..., address: ..., bandwidth_mbps: ...}")
        return raw
    _mapping(doc, ("head",), _HEAD_KEYS)
    name = _string(doc, ("head", "name"), pattern=_NAME_RE)
    if name in seen:
        raise doc.fail(("head", "name"), f"{name!r} is a device of the cluster; write `head: {name}` for a head "
                                         "on that board, or give the off-board host another name")
    address = _string(doc, ("head", "address"))
    bw, lat, energy = _link(doc, ("head",), default_link.energy_per_byte_j)
    return HeadHost(name, address, bw, lat, energy)
