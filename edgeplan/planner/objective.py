"""Objective: what the user asks the planner to optimise, and under which limits.

Valid pairs: inference with ``latency``, ``throughput`` or ``energy``; training
with ``time`` (per iteration). ``batch`` is cut into ``microbatches`` equal
micro-batches of ``batch // microbatches`` samples (must divide). Training keeps
weights + gradients + ``optimizer_states`` copies of the parameters per device;
the default 1 is SGD with momentum (Adam keeps 2: pass ``optimizer_states=2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplan.errors import PlanError

OBJECTIVES = {"inference": ("latency", "throughput", "energy"), "training": ("time",)}
SCHEDULES = {"inference": ("none",), "training": ("gpipe", "1f1b")}


@dataclass(frozen=True)
class Objective:
    mode: str = "inference"  # inference | training
    objective: str = "throughput"  # see OBJECTIVES
    batch: int = 1
    microbatches: int = 1
    schedule: str = "none"  # none (inference) | gpipe | 1f1b (training)
    latency_budget_s: float | None = None  # inference: request latency; training: iteration time
    energy_budget_j: float | None = None  # joules per sample
    head: str | None = None  # device feeding inputs / collecting outputs; None = first device
    optimizer_states: int = 1  # extra parameter-sized buffers per device when training (SGD momentum)

    def __post_init__(self) -> None:
        if self.mode not in OBJECTIVES:
            raise PlanError(f"mode {self.mode!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective not in OBJECTIVES[self.mode]:
            raise PlanError(
                f"objective {self.objective!r} does not apply to {self.mode}; "
                f"choose one of {', '.join(OBJECTIVES[self.mode])}"
            )
        schedule = self.schedule
        if self.mode == "training" and schedule == "none":
            object.__setattr__(self, "schedule", "1f1b")
        elif schedule not in SCHEDULES[self.mode]:
            raise PlanError(
                f"schedule {schedule!r} does not apply to {self.mode}; choose one of {', '.join(SCHEDULES[self.mode])}"
            )
        if self.batch < 1 or self.microbatches < 1:
            raise PlanError(f"batch ({self.batch}) and microbatches ({self.microbatches}) must be >= 1")
        if self.batch % self.microbatches:
            divisors = [k for k in range(1, self.batch + 1) if self.batch % k == 0]
            raise PlanError(
                f"batch {self.batch} is not divisible by microbatches {self.microbatches}; "
                f"use one of {divisors} micro-batches"
            )
        for name in ("latency_budget_s", "energy_budget_j"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlanError(f"{name} must be > 0, got {v}")
        if self.optimizer_states < 0:
            raise PlanError(f"optimizer_states must be >= 0, got {self.optimizer_states}")

    @property
    def micro(self) -> int:
        """Samples per micro-batch."""
        return self.batch // self.microbatches

    @property
    def training(self) -> bool:
        return self.mode == "training"


_UNITS = {"time": {"s": 1.0, "ms": 1e-3, "us": 1e-6}, "energy": {"j": 1.0, "mj": 1e-3, "uj": 1e-6}}


def parse_quantity(text: str, kind: str, option: str) -> float:
    """``"50ms"`` -> 0.05 (kind ``time``); ``"30mJ"`` -> 0.03 (kind ``energy``); errors name the option."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]+)\s*", text)
    units = _UNITS[kind]
    if not m or m.group(2).lower() not in units:
        raise PlanError(f"{option} {text!r}: give a number with a unit, one of {', '.join(units)} (e.g. "
                        f"{'50ms' if kind == 'time' else '30mJ'})")
    return float(m.group(1)) * units[m.group(2).lower()]
