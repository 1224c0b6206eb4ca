"""Compact text form of a plan that parses back (like torch pipelining's ``_Action``).

``resnet18 | 0-21@rk3588:gpu | 22-60@rpi4a:cpu*0.5+rpi4b:cpu*0.5``: the model,
then per stage its inclusive layer range and its replicas ``device:unit`` with
their sample share (omitted when the stage has one replica). A branch stage
(parallel input branches, planner/branches) prints each replica's own range
joined by ``&`` (``0-3@cam-a:cpu&4-7@cam-b:cpu | 8-9@trunk:gpu``); it does not parse back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeplan.errors import PlanError

_STAGE = re.compile(r"^(\d+)-(\d+)@(.+)$")
_REPLICA = re.compile(r"^([^:*+|@\s]+):([A-Za-z0-9_-]+)(?:\*([0-9.eE+-]+))?$")


@dataclass(frozen=True)
class TextStage:
    start: int
    stop: int  # exclusive
    replicas: tuple[tuple[str, str, float], ...]  # (device, unit, share)


def stage_str(start: int, stop: int, replicas) -> str:
    reps = list(replicas)
    parts = []
    for dev, unit, share in reps:
        parts.append(f"{dev}:{unit}" + ("" if len(reps) == 1 else f"*{share:.6g}"))
    return f"{start}-{stop - 1}@" + "+".join(parts)


def to_str(plan) -> str:
    """Text form of a ``Plan``."""
    stages = [
        "&".join(stage_str(r.start, r.stop, [(r.device, r.unit, 1.0)]) if r.stop > r.start
                 else f"{r.input}@{r.device}:{r.unit}" for r in s.replicas)  # parallel branches; empty: input only
        if getattr(s, "kind", "pipeline") == "branches" else
        stage_str(s.start, s.stop, [(r.device, r.unit, r.share) for r in s.replicas])
        for s in plan.stages
    ]
    return " | ".join([plan.model, *stages])


def from_str(text: str) -> tuple[str, tuple[TextStage, ...]]:
    """Parse the text form back into (model, stages); errors say which part is wrong."""
    parts = [p.strip() for p in text.strip().split("|")]
    if len(parts) < 2 or not parts[0]:
        raise PlanError(f"plan text {text!r}: expected 'model | first-last@device:unit | ...'")
    stages = []
    for k, part in enumerate(parts[1:]):
        if "&" in part:
            raise PlanError(f"plan text stage {k} {part!r}: parallel branches ('&', planner/branches) have no "
                            f"text form to re-price; plan them with `edgeplan plan --pin`")
        m = _STAGE.match(part)
        if not m:
            raise PlanError(f"plan text stage {k} {part!r}: expected 'first-last@device:unit[*share]+...'")
        start, last = int(m.group(1)), int(m.group(2))
        if last < start:
            raise PlanError(f"plan text stage {k} {part!r}: last layer {last} is before first layer {start}")
        reps = []
        items = m.group(3).split("+")
        for item in items:
            r = _REPLICA.match(item.strip())
            if not r:
                raise PlanError(f"plan text stage {k} replica {item!r}: expected 'device:unit' or 'device:unit*share'")
            share = float(r.group(3)) if r.group(3) else (1.0 if len(items) == 1 else None)
            if share is None:
                raise PlanError(f"plan text stage {k} replica {item!r}: a group of several replicas needs '*share'")
            reps.append((r.group(1), r.group(2), share))
        stages.append(TextStage(start=start, stop=last + 1, replicas=tuple(reps)))
    return parts[0], tuple(stages)
