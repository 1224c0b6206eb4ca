"""Frozen data for devices, links and clusters (loaded from YAML by ``load``).

Units: bytes, seconds, FLOP/s, bytes/s, watts, joules; YAML files use friendlier
units (MB, GFLOP/s, Mbit/s, ms) and ``load`` converts them once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeplan import jsonio

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ComputeUnit:
    """One processor of a board (CPU cluster, GPU, NPU) and how fast it is.

    ``throughput`` maps op class -> effective FLOP/s for that class on this unit
    (see ``edgeplan.graph.ops.OP_CLASSES``). ``supported_ops`` is None when the
    unit runs any op, else the op kinds it runs (NPUs). ``layer_overhead_s`` is
    the fixed cost of launching one layer (kernel launch, NPU call).
    """

    name: str  # "cpu", "gpu", "npu"
    kind: str  # "cpu" | "gpu" | "npu"
    target: str  # target kind that compiles for it: arm-cpu, cuda, mali, npu, x86
    throughput: tuple[tuple[str, float], ...]
    mem_bandwidth: float  # bytes/s
    busy_power_w: float
    layer_overhead_s: float = 0.0
    supported_ops: tuple[str, ...] | None = None
    target_options: tuple[tuple[str, str], ...] = ()  # e.g. (("mcpu", "cortex-a72"),)

    def flops_per_s(self, op_class: str) -> float:
        return dict(self.throughput)[op_class]

    def supports(self, op: str) -> bool:
        return self.supported_ops is None or op in self.supported_ops


@dataclass(frozen=True)
class Device:
    """A board in a cluster: a named instance of a profile, plus its address."""

    name: str
    profile: str  # profile id, e.g. "rpi4b-4gb"
    address: str
    ram_bytes: int  # usable by edgeplan (OS and runtime already subtracted)
    idle_power_w: float
    units: tuple[ComputeUnit, ...]
    estimate: bool = True  # True until `edgeplan profile` measured it

    def unit(self, name: str) -> ComputeUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(f"device {self.name!r} has no unit {name!r}")


@dataclass(frozen=True)
class Link:
    """A network path between two devices (or the default switch when a/b are '*')."""

    a: str
    b: str
    bandwidth: float  # bytes/s
    latency_s: float
    energy_per_byte_j: float = 0.0


@dataclass(frozen=True)
class Cluster:
    name: str
    devices: tuple[Device, ...]
    default_link: Link
    links: tuple[Link, ...] = ()  # per-pair overrides
    secret_env: str | None = None  # name of an env var holding the HMAC secret
    schema_version: int = field(default=SCHEMA_VERSION)

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise KeyError(f"no device {name!r} in cluster {self.name!r} (devices: {names})")

    def link(self, a: str, b: str) -> Link:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return self.default_link

    def to_json(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return jsonio.sha256_of(self.to_json())
