"""The frozen Plan: stages x replica groups, with predicted figures.

The planner decides, codegen executes: everything codegen and the runtime need
to know about where layers run is here. Written deterministically so a plan can
be a golden file (no timestamps, no paths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from edgeplan import jsonio
from edgeplan.errors import PlanError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Replica:
    """One device of a stage's replica group and its share of the samples."""

    device: str
    unit: str  # compute unit name on that device: cpu, gpu, npu
    target: str  # target kind that compiles the stage for it
    share: float  # fraction of the stage's samples; sums to 1 over the group
    samples: int  # samples of each micro-batch this replica runs (share x micro-batch, integral)
    memory_bytes: int  # predicted peak use on this device
    capacity_bytes: int = 0  # usable memory of this device (0: unknown), for reports
    # training: the torch framework its rank holds beyond memory_bytes (the board's train_reserve_mb); 0: inference
    reserve_bytes: int = 0
    # branch stages only (Stage.kind == "branches"): this replica's own layers [start, stop) and the
    # model input its branch reads (its data lives on this device); samples = the whole micro-batch
    start: int | None = None
    stop: int | None = None
    input: str = ""


@dataclass(frozen=True)
class Stage:
    """Contiguous layers ``[start, stop)`` of the LayerGraph's order on a replica group."""

    index: int
    start: int
    stop: int
    first_layer: str
    last_layer: str
    replicas: tuple[Replica, ...]
    compute_s: float  # time of one micro-batch through the stage (slowest replica)
    send_s: float  # time to send its output to the next stage (0 for the last)
    energy_j: float  # energy per sample spent in this stage (compute + send)
    forward_s: float | None = None  # training: the forward part of compute_s (the rest is backward)
    kind: str = "pipeline"  # "branches": replicas hold different input branches, run concurrently (planner/branches)
    # the slowest replica's module alone (its layers' time, without the runtime's hop that compute_s includes):
    # what a worker's compute timer measures, so run reports compare like with like (issue 14)
    module_s: float | None = None


@dataclass(frozen=True)
class Pin:
    """A placement constraint (``--pin NAME=DEVICE``) and the layers it pinned (planner/pins)."""

    name: str  # as given: an input (parameter name or inputK) or a layer/module name pattern
    kind: str  # "input" | "layers"
    input: str  # the graph input name (kind "input"), else ""
    device: str
    layers: tuple[str, ...]


# fields left out of plan.json while empty, so plans without pins or branches keep their old form
_OPTIONAL = {"pins": (), "raw_transfer": ()}
_OPTIONAL_STAGE = {"kind": "pipeline"}
_OPTIONAL_REPLICA = {"start": None, "stop": None, "input": "", "reserve_bytes": 0}


@dataclass(frozen=True)
class Predicted:
    latency_s: float  # one request (inference) or one micro-batch end to end
    throughput: float  # samples per second in steady state
    energy_j: float  # per sample
    iter_s: float | None = None  # training: time per iteration (global batch)


@dataclass(frozen=True)
class Baseline:
    name: str  # best-single-device, data-parallel-all, uniform-split, param-balanced
    feasible: bool
    predicted: Predicted | None
    stages: tuple[Stage, ...] = ()
    reason: str = ""  # why infeasible


@dataclass(frozen=True)
class UnitOptions:
    """The cluster file's target_options of one unit the plan uses, so compile needs no --cluster."""

    device: str
    unit: str
    options: tuple[tuple[str, str], ...]  # sorted (key, value) pairs


@dataclass(frozen=True)
class Plan:
    model: str
    graph_sha256: str
    cluster: str
    cluster_sha256: str
    mode: str  # "inference" | "training"
    objective: str  # latency | throughput | energy | time
    batch: int  # samples per request (inference) or global batch per iteration (training)
    microbatches: int  # batch is cut into this many equal micro-batches, pipelined
    schedule: str  # "none" (inference) | "gpipe" | "1f1b"
    solver: str  # "dp" | "ilp"
    head: str  # device that feeds inputs and collects outputs
    stages: tuple[Stage, ...]
    predicted: Predicted
    baselines: tuple[Baseline, ...] = ()
    notes: tuple[str, ...] = ()
    schema_version: int = field(default=SCHEMA_VERSION)
    latency_budget_s: float | None = None  # the request's budgets and optimizer, so the file says what was asked
    energy_budget_j: float | None = None
    optimizer_states: int = 1
    # Where the plan came from, so `edgeplan compile plan.json --out art/` needs no other input
    # (empty in plans made through the API without them): the model spec and --input-shape as
    # given (None: the model's own), the cluster file's path as given, its used units' options.
    model_ref: str = ""
    input_shape: tuple[int, ...] | None = None
    cluster_path: str = ""
    target_options: tuple[UnitOptions, ...] = ()
    pins: tuple[Pin, ...] = ()  # --pin constraints the plan obeys (planner/pins)
    raw_transfer: tuple[str, ...] = ()  # model inputs whose raw data may cross a link (--allow-raw-transfer)

    @property
    def devices_used(self) -> tuple[str, ...]:
        return tuple(r.device for s in self.stages for r in s.replicas)

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in _OPTIONAL.items():
            if d[k] == v or d[k] == list(v):
                del d[k]
        for st in (*d["stages"], *(s for b in d["baselines"] for s in b["stages"])):
            for k, v in _OPTIONAL_STAGE.items():
                if st[k] == v:
                    del st[k]
            for r in st["replicas"]:
                for k, v in _OPTIONAL_REPLICA.items():
                    if r[k] == v:
                        del r[k]
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "plan") -> Plan:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise PlanError(
                f"{source}: schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                "re-run `edgeplan plan` with this version of edgeplan"
            )
        try:
            return cls(
                **{k: v for k, v in d.items()
                   if k not in ("stages", "predicted", "baselines", "notes", "input_shape", "target_options",
                                "pins", "raw_transfer")},
                pins=tuple(Pin(name=p["name"], kind=p["kind"], input=p["input"], device=p["device"],
                               layers=tuple(p["layers"])) for p in d.get("pins", ())),
                raw_transfer=tuple(d.get("raw_transfer", ())),
                input_shape=_shape(d["input_shape"]) if d.get("input_shape") is not None else None,
                target_options=tuple(
                    UnitOptions(device=u["device"], unit=u["unit"], options=tuple((k, v) for k, v in u["options"]))
                    for u in d.get("target_options", ())
                ),
                stages=tuple(_stage(s) for s in d["stages"]),
                predicted=Predicted(**d["predicted"]),
                baselines=tuple(
                    Baseline(
                        name=b["name"], feasible=b["feasible"],
                        predicted=Predicted(**b["predicted"]) if b["predicted"] else None,
                        stages=tuple(_stage(s) for s in b.get("stages", ())),
                        reason=b.get("reason", ""),
                    )
                    for b in d.get("baselines", ())
                ),
                notes=tuple(d.get("notes", ())),
            )
        except (KeyError, TypeError) as e:
            raise PlanError(f"{source}: not a valid plan file ({e})") from e

    def digest(self) -> str:
        return jsonio.sha256_of(self.to_json())

    def unit_options(self, device: str, unit: str) -> dict[str, str] | None:
        """The recorded target_options of ``device``/``unit`` (None when the plan recorded none for it)."""
        for u in self.target_options:
            if (u.device, u.unit) == (device, unit):
                return dict(u.options)
        return None


def record_sources(plan: Plan, *, model_ref: str, input_shape: tuple[int, ...] | None, cluster_path: str,
                   cluster) -> Plan:
    """``plan`` with its model spec, input shape, cluster path and the used units' target options recorded.

    ``cluster`` is the profiles.model.Cluster the plan was made on; paths are kept as given
    (relative stays relative, so a plan written in a repository diffs cleanly elsewhere).
    """
    used = sorted({(r.device, r.unit) for s in plan.stages for r in s.replicas})
    options = tuple(
        UnitOptions(device=d, unit=u, options=tuple(sorted(
            (str(k), str(v)) for k, v in cluster.device(d).unit(u).target_options)))
        for d, u in used
    )
    return replace(plan, model_ref=model_ref, input_shape=_shape(input_shape) if input_shape is not None else None,
                   cluster_path=str(cluster_path), target_options=options)


def _shape(shape) -> tuple:
    """A recorded input shape as tuples: ints, or one int tuple per input of a multi-input model."""
    return tuple(_shape(d) if isinstance(d, (list, tuple)) else d for d in shape)


def _stage(s: dict) -> Stage:
    return Stage(**{**s, "replicas": tuple(Replica(**r) for r in s["replicas"])})


def load(path: str) -> Plan:
    try:
        data = jsonio.read(path)
    except FileNotFoundError as e:
        raise PlanError(f"{path}: no such plan file; create one with `edgeplan plan`") from e
    except ValueError as e:
        raise PlanError(f"{path}: not JSON ({e})") from e
    return Plan.from_json(data, source=str(path))
