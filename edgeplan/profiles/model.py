"""Frozen data for devices, links and clusters (loaded from YAML by ``load``).

Units: bytes, seconds, FLOP/s, bytes/s, watts, joules; YAML files use friendlier
units (MB, GFLOP/s, Mbit/s, ms) and ``load`` converts them once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeplan import jsonio
from edgeplan.graph.ops import OP_CLASSES

SCHEMA_VERSION = 1

# Bytes every torch training rank holds beyond its model (interpreter, torch and its allocator, autograd,
# torch.distributed with gloo), when a profile does not set ``train_reserve_mb``: peak RSS of a fresh rank
# training a tiny model less that model's modelled memory, `python -m benchmarks.bench_train_reserve` on
# the x86 host with torch 2.13 (a proxy for a board's aarch64 torch); issue 15's study 2 measured 798 MB
# peak against 471 MB modelled for ResNet-110 b32 on a Pi 3B (327 MB beyond the model).
DEFAULT_TRAIN_RESERVE_BYTES = 311 * 2**20
DEFAULT_TRAIN_RESERVE_SOURCE = ("estimate: edgeplan's default, peak RSS of one torch 2.13 training rank (gloo "
                                "initialised) beyond its model on the x86 host, benchmarks/bench_train_reserve.py "
                                "(a proxy for the board's torch; `edgeplan calibrate TRAIN-REPORT` measures it)")


def unit_figures() -> tuple[str, ...]:
    """Every per-unit figure the cost model prices with, as the profile YAML names it (the figures a
    profile can mark as measured)."""
    return tuple(f"throughput_gflops.{c}" for c in OP_CLASSES) + (
        "mem_bandwidth_gbs", "layer_overhead_us", "hop_overhead_us", "hop_byte_ns", "busy_power_w")


# figures a unit may set or leave out, priced only when set (else another figure stands in for them)
OPTIONAL_FIGURES = ("hop_send_byte_ns",)


@dataclass(frozen=True)
class Measured:
    """Provenance of one measured figure of a unit, so a report can say what a plan rests on.

    ``field`` is the profile's YAML name (``throughput_gflops.conv``, ``mem_bandwidth_gbs``, ...);
    ``how`` the method (e.g. a least-squares fit over N stage calls), ``when`` an ISO-8601 UTC time,
    ``backend`` the runtime that ran the measured code (onnxruntime, tvm, ...), ``source`` the
    measurement's input (run report files and the plan they ran). Figures without one are estimates
    whose source is the profile file that sets them.
    """

    field: str
    how: str
    when: str
    backend: str
    source: str


@dataclass(frozen=True)
class TrainingFigures:
    """A unit's training-only figures, fitted from `edgeplan train --report` runs
    (profiles/calibrate_train.py): torch trains eagerly, unlike the compiled inference modules the other
    figures describe, so these scale or replace them only where the cost model prices a training plan.
    The neutral values (the defaults) leave a plan priced as without them."""

    forward_factor: float = 1.0  # x the cost model's forward seconds of a layer (and its weight reads)
    backward_factor: float = 1.0  # x its backward seconds (2x forward FLOPs for weighted layers, else 1x)
    # per layer of a forward / backward pass, replacing the unit's layer_overhead_s there (None: not fitted)
    forward_layer_s: float | None = None
    backward_layer_s: float | None = None
    call_s: float | None = None  # per stage call (forward or backward) beyond the module; None: hop_overhead_s
    call_peer_s: float = 0.0  # ... plus, per micro-batch, per replica of a neighbour stage it exchanges tensors with
    optimizer_s_per_byte: float = 0.0  # optimizer step, per parameter byte of the stage
    optimizer_call_s: float = 0.0  # ... and per step, whatever the bytes
    p2p_call_s: float = 0.0  # torch.distributed send/recv beyond the link, per transfer
    p2p_s_per_byte: float = 0.0  # ... and per byte
    allreduce_call_s: float = 0.0  # gradient all-reduce beyond the link, per ring step (2 (g - 1) of them)
    allreduce_s_per_byte: float = 0.0  # ... and per byte reduced
    # per call of a stage's module (a forward, a backward), whatever its layers and samples: torch's own cost of
    # running an fx module eagerly (issue 14: one board's 12-layer forward read less than a 6-layer stage's)
    forward_call_s: float = 0.0
    backward_call_s: float = 0.0
    source: str = ""  # provenance: how, when and from which reports (not part of the cluster digest)


@dataclass(frozen=True)
class ComputeUnit:
    """One processor of a board (CPU cluster, GPU, NPU) and how fast it is.

    ``throughput`` maps op class -> effective FLOP/s for that class on this unit
    (see ``edgeplan.graph.ops.OP_CLASSES``). ``supported_ops`` is None when the
    unit runs any op, else the op kinds it runs (NPUs). ``layer_overhead_s`` is
    the fixed cost of launching one layer (kernel launch, NPU call).
    ``busy_power_w`` is the whole board's power while this unit computes flat
    out (idle included), so the energy a computation adds is
    ``(busy_power_w - Device.idle_power_w) x busy time``; the board's idle
    power is paid for the wall time anyway. ``peak_flops`` is the datasheet
    peak, for reports; the cost model uses ``throughput``.
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
    peak_flops: float = 0.0  # datasheet peak FLOP/s (0: unknown)
    hop_overhead_s: float = 0.0  # runtime CPU cost per micro-batch a stage handles (receive, assemble, send)
    # ... and per byte it receives or sends (socket, network stack, copies); None: HOP_COPIES memory copies
    # (profiles/cost.py), the estimate when nothing measured it
    hop_byte_s: float | None = None
    # ... per byte it sends, where sending costs other than receiving (the emulated testbed: a veth runs the
    # receiver's protocol work in the sender's context); None: hop_byte_s prices both directions
    hop_send_byte_s: float | None = None
    measured: tuple[Measured, ...] = ()  # provenance of the figures that were measured (the rest: estimates)
    training: TrainingFigures | None = None  # training-only figures (None: none fitted)

    def figures(self) -> tuple[str, ...]:
        """The figures (YAML names) the cost model prices this unit with: every unit's, and the optional
        ones it sets."""
        return unit_figures() + (("hop_send_byte_ns",) if self.hop_send_byte_s is not None else ())

    def estimated_figures(self) -> tuple[str, ...]:
        """The unit's figures (YAML names) that no measurement backs."""
        done = {m.field for m in self.measured}
        return tuple(f for f in self.figures() if f not in done)

    def flops_per_s(self, op_class: str) -> float:
        return dict(self.throughput)[op_class]

    def supports(self, op: str) -> bool:
        return self.supported_ops is None or op in self.supported_ops

    @classmethod
    def from_json(cls, d: dict) -> ComputeUnit:
        ops = d.get("supported_ops")
        return cls(
            name=d["name"], kind=d["kind"], target=d["target"],
            throughput=tuple((str(k), float(v)) for k, v in d["throughput"]),
            mem_bandwidth=float(d["mem_bandwidth"]), busy_power_w=float(d["busy_power_w"]),
            layer_overhead_s=float(d.get("layer_overhead_s", 0.0)),
            supported_ops=None if ops is None else tuple(ops),
            target_options=tuple((str(k), str(v)) for k, v in d.get("target_options", ())),
            peak_flops=float(d.get("peak_flops", 0.0)),
            hop_overhead_s=float(d.get("hop_overhead_s", 0.0)),
            hop_byte_s=None if d.get("hop_byte_s") is None else float(d["hop_byte_s"]),
            hop_send_byte_s=None if d.get("hop_send_byte_s") is None else float(d["hop_send_byte_s"]),
            measured=tuple(Measured(**m) for m in d.get("measured", ())),
            training=TrainingFigures(**d["training"]) if d.get("training") else None,
        )


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
    user: str | None = None  # SSH login for `edgeplan deploy` (deploy-only: not part of the cluster digest)
    # bytes each torch training rank on the board holds beyond its model (None: DEFAULT_TRAIN_RESERVE_BYTES)
    train_reserve_bytes: int | None = None
    train_reserve_source: str = ""  # provenance ("estimate: <file>" or "measured: <how>"; not in the digest)

    def train_reserve(self) -> tuple[int, str]:
        """(bytes, provenance) of the training-framework reserve a torch rank on this board holds."""
        if self.train_reserve_bytes is None:
            return DEFAULT_TRAIN_RESERVE_BYTES, DEFAULT_TRAIN_RESERVE_SOURCE
        return self.train_reserve_bytes, self.train_reserve_source

    def unit(self, name: str) -> ComputeUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(f"device {self.name!r} has no unit {name!r}")

    @classmethod
    def from_json(cls, d: dict) -> Device:
        return cls(
            name=d["name"], profile=d["profile"], address=d["address"], ram_bytes=int(d["ram_bytes"]),
            idle_power_w=float(d["idle_power_w"]), units=tuple(ComputeUnit.from_json(u) for u in d["units"]),
            estimate=bool(d.get("estimate", True)), user=d.get("user"),
            train_reserve_bytes=None if d.get("train_reserve_bytes") is None else int(d["train_reserve_bytes"]),
            train_reserve_source=str(d.get("train_reserve_source", "")),
        )


@dataclass(frozen=True)
class Link:
    """A network path between two devices (or the default switch when a/b are '*')."""

    a: str
    b: str
    bandwidth: float  # bytes/s
    latency_s: float
    energy_per_byte_j: float = 0.0


@dataclass(frozen=True)
class HeadHost:
    """Where requests enter and results leave when that is no board of the cluster (``head:`` in the cluster
    file): the host that runs `edgeplan run` / `serve`, with one link to every board. The planner prices
    the input link (head -> first stage) and the output link (last stage -> head) on it."""

    name: str
    address: str  # where the boards send results (the machine that runs `edgeplan run` / `serve`)
    bandwidth: float  # bytes/s
    latency_s: float = 0.0
    energy_per_byte_j: float = 0.0


@dataclass(frozen=True)
class Cluster:
    name: str
    devices: tuple[Device, ...]
    default_link: Link
    links: tuple[Link, ...] = ()  # per-pair overrides
    secret_env: str | None = None  # name of an env var holding the HMAC secret
    schema_version: int = field(default=SCHEMA_VERSION)
    # where the head runs: a device name, an off-board HeadHost, or None (the first device: the planner's
    # default since before this field, so files without it plan as they did)
    head: str | HeadHost | None = None

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise KeyError(f"no device {name!r} in cluster {self.name!r} (devices: {names})")

    @property
    def head_name(self) -> str:
        """Where requests enter when a plan names no head: the ``head:`` host or board, else the first device."""
        if self.head is None:
            return self.devices[0].name
        return self.head if isinstance(self.head, str) else self.head.name

    def link(self, a: str, b: str) -> Link:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return self.default_link

    def to_json(self) -> dict:
        """asdict, less the deploy-only ``user`` when unset, empty ``measured`` provenance and an unset
        ``hop_byte_s`` or ``hop_send_byte_s`` (so older files and digests are unchanged)."""
        d = asdict(self)
        for dev in d["devices"]:
            if dev["user"] is None:
                del dev["user"]
            if dev["train_reserve_bytes"] is None:  # the default: older files and digests stay as they were
                del dev["train_reserve_bytes"]
            if not dev["train_reserve_source"]:
                del dev["train_reserve_source"]
            for u in dev["units"]:
                if not u["measured"]:
                    del u["measured"]
                if u["training"] is None:
                    del u["training"]
                else:  # unset per-call module figures stay out (older files and digests unchanged)
                    for k in ("forward_call_s", "backward_call_s"):
                        if not u["training"][k]:
                            del u["training"][k]
                for k in ("hop_byte_s", "hop_send_byte_s"):
                    if u[k] is None:
                        del u[k]
        if d["head"] is None:  # unset: older files and digests unchanged
            del d["head"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Cluster:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"Cluster schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return cls(
            name=d["name"], devices=tuple(Device.from_json(x) for x in d["devices"]),
            default_link=Link(**d["default_link"]), links=tuple(Link(**x) for x in d.get("links", ())),
            secret_env=d.get("secret_env"), schema_version=d["schema_version"],
            head=HeadHost(**d["head"]) if isinstance(d.get("head"), dict) else d.get("head"),
        )

    def digest(self) -> str:
        """sha256 of what planning depends on: the SSH user and the figures' provenance are left out, so
        adding them to a cluster file does not invalidate plans made from it (the figures themselves count)."""
        d = self.to_json()
        for dev in d["devices"]:
            dev.pop("user", None)
            dev.pop("train_reserve_source", None)
            for u in dev["units"]:
                u.pop("measured", None)
                if u.get("training"):
                    u["training"].pop("source", None)
        return jsonio.sha256_of(d)


@dataclass(frozen=True)
class Profile:
    """A board template from a profile file: a Device without a name or address.

    ``source`` is where it was read from (built-in files: relative to the
    boards folder, so it carries no absolute path).
    """

    id: str
    name: str
    vendor: str
    source: str
    ram_bytes: int
    idle_power_w: float
    units: tuple[ComputeUnit, ...]
    estimate: bool = True
    train_reserve_bytes: int | None = None  # Device.train_reserve_bytes
    train_reserve_source: str = ""

    def instantiate(self, name: str, address: str) -> Device:
        return Device(
            name=name, profile=self.id, address=address, ram_bytes=self.ram_bytes,
            idle_power_w=self.idle_power_w, units=self.units, estimate=self.estimate,
            train_reserve_bytes=self.train_reserve_bytes, train_reserve_source=self.train_reserve_source,
        )
