"""What a training run does and what each rank is told (plain data, no torch).

``TrainConfig`` is the user's choice (epochs, data set, optimiser, synchronisation);
``Job`` is everything one rank needs, written by the launcher as job.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeplan.errors import EdgeplanError
from edgeplan.training import routing

SYNC_MODES = ("sync", "local-sgd")


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does (the plan says where)."""

    epochs: int = 1
    dataset: str = "synthetic"  # digits | synthetic | folder: CIFAR-10 binary, MNIST IDX or .npy (data.py)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    sync: str | None = "sync"  # sync | local-sgd (None: the artifacts' default, resolved by the launcher)
    sync_every: int = 4  # local-sgd: iterations between weight averages
    schedule: str | None = None  # override the plan's gpipe | 1f1b
    seed: int = 0
    timeout_s: float = 60.0  # every receive and collective; a dead board fails the run within it
    resume: bool = False
    max_iters: int | None = None  # cap iterations per epoch (speed tests)
    evaluate: bool = True
    # training across sources (parallel input branches): (model input, source, data folder) per --data,
    # and (source, 0-based epochs it is away) per --absent; see training/sources.py
    sources: tuple[tuple[str, str, str], ...] = ()
    absent: tuple[tuple[str, tuple[int, ...]], ...] = ()
    samples: int | None = None  # fixed seeded subset of each data split (quick runs); None: all of it
    sync_bn: bool = False  # BatchNorm statistics all-reduced over each stage's replica group

    def check(self) -> TrainConfig:
        if self.sync not in SYNC_MODES:
            raise EdgeplanError(f"sync mode {self.sync!r} is not one of {', '.join(SYNC_MODES)}")
        if self.schedule is not None and self.schedule not in routing.SCHEDULES:
            raise EdgeplanError(f"schedule {self.schedule!r} is not one of {', '.join(routing.SCHEDULES)}")
        for name in ("epochs", "sync_every"):
            if getattr(self, name) < 1:
                raise EdgeplanError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.samples is not None and self.samples < 1:
            raise EdgeplanError(f"--samples must be at least 1, got {self.samples}")
        if self.timeout_s <= 0 or self.lr <= 0:
            raise EdgeplanError("--timeout and --lr must be positive")
        return self


@dataclass(frozen=True)
class Job:
    """Everything a rank needs; written by the launcher as job.json (plain JSON, no pickle)."""

    plan: dict
    model: str
    input_shape: tuple[int, ...] | None
    provider: str | None
    config: TrainConfig
    master_addr: str
    master_port: int
    run_dir: str
    power: tuple[tuple[str, float, float], ...] = ()  # (device, idle W, busy W of its training unit)
    dilation: float = 1.0  # emulated testbed: measured times are 1/dilation of the boards'
    local: bool = True  # all ranks on one machine: no NCCL between ranks sharing a GPU
    data_cache: str | None = None  # .npz of the loaded data set (local runs load it once for all ranks)
    addresses: tuple[tuple[str, str], ...] = ()  # (device, IP address) of each board, for gloo's interface

    def to_json(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Job:
        d = dict(d)
        d["config"] = TrainConfig(**d["config"])
        d["input_shape"] = tuple(d["input_shape"]) if d["input_shape"] else None
        d["power"] = tuple(tuple(p) for p in d.get("power", ()))
        d["addresses"] = tuple(tuple(a) for a in d.get("addresses", ()))
        return cls(**d)
