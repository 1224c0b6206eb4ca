"""stage.json: the contract between codegen (writes it) and the stage worker (reads it).

Sample routing: a micro-batch has ``microbatch`` samples, numbered 0..m-1. Each
replica of a stage owns a contiguous range ``[lo, hi)`` of them (from the plan's
integral ``samples``). A worker sends each downstream replica the intersection
of its own range with that replica's range; a worker runs once it holds every
sample of its range. The head scatters inputs to stage 0 the same way and
gathers outputs from the last stage in request order.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Tuple

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: Tuple[int, ...]  # with this replica's batch dimension first
    dtype: str


@dataclass(frozen=True)
class Peer:
    """Another replica this worker talks to."""

    device: str
    stage: int
    address: str  # host:port the peer listens on
    lo: int  # sample range it owns within a micro-batch
    hi: int


@dataclass(frozen=True)
class StageSpec:
    model: str
    plan_sha256: str
    stage: int  # stage index in the plan
    n_stages: int
    device: str
    unit: str
    target: str
    backend: str  # "tvm" | "onnxruntime" | "rknn" | "openvino"
    module: str  # file name of the compiled module, relative to the stage folder
    listen: str  # host:port this worker binds to
    microbatch: int  # samples in a full micro-batch
    lo: int  # this replica's sample range
    hi: int
    inputs: Tuple[Tensor, ...]  # what the module takes (cut tensors; batch = hi - lo)
    outputs: Tuple[Tensor, ...]  # what it returns
    upstream: Tuple[Peer, ...]  # replicas of the previous stage ("head" for stage 0)
    downstream: Tuple[Peer, ...]  # replicas of the next stage ("head" for the last stage)
    files: Tuple[Tuple[str, str], ...] = ()  # (relative path, sha256) this stage needs
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "StageSpec":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"stage.json schema_version {d.get('schema_version')!r} != {SCHEMA_VERSION}")
        return cls(
            **{k: v for k, v in d.items() if k not in ("inputs", "outputs", "upstream", "downstream", "files")},
            inputs=tuple(Tensor(t["name"], tuple(t["shape"]), t["dtype"]) for t in d["inputs"]),
            outputs=tuple(Tensor(t["name"], tuple(t["shape"]), t["dtype"]) for t in d["outputs"]),
            upstream=tuple(Peer(**p) for p in d["upstream"]),
            downstream=tuple(Peer(**p) for p in d["downstream"]),
            files=tuple(tuple(f) for f in d.get("files", ())),
        )

    @classmethod
    def load(cls, path: str) -> "StageSpec":
        with open(path) as f:
            return cls.from_json(json.load(f))
