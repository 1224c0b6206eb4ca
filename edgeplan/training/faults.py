"""Fault injection for the training fault tests: a chosen rank dies or freezes at a chosen iteration.

``EDGEPLAN_TRAIN_FAULT=rank:epoch:iteration[:kill|stop]`` in a rank's environment makes
that rank SIGKILL itself (a board that dies) or SIGSTOP itself (a board that hangs:
its watchdog stops too) just before that iteration, so the launcher's and the other
ranks' handling of a lost board is tested on real processes.

``EDGEPLAN_TRAIN_SLOW_START=rank:seconds[:busy|idle]`` makes that rank's start-up
(building its stage module) take that much longer: ``busy`` computes the whole
time (a slow board), ``idle`` sleeps (a board stuck without using its CPU).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

FAULT_ENV = "EDGEPLAN_TRAIN_FAULT"
SLOW_START_ENV = "EDGEPLAN_TRAIN_SLOW_START"


@dataclass(frozen=True)
class FaultPoint:
    rank: int
    epoch: int
    iteration: int
    action: str  # "kill" | "stop"

    def at(self, rank: int, epoch: int, iteration: int) -> bool:
        return (self.rank, self.epoch, self.iteration) == (rank, epoch, iteration)

    def fire(self, watchdog) -> None:
        watchdog.stop()  # a frozen board has no watchdog either
        os.kill(os.getpid(), signal.SIGSTOP if self.action == "stop" else signal.SIGKILL)


def fault_point() -> FaultPoint | None:
    """The fault FAULT_ENV asks for, or None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    return FaultPoint(int(parts[0]), int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else "kill")


def slow_start(rank: int) -> None:
    """Delay this rank's start-up as SLOW_START_ENV asks (nothing when it names another rank or is unset)."""
    spec = os.environ.get(SLOW_START_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if int(parts[0]) != rank:
        return
    end = time.monotonic() + float(parts[1])
    if len(parts) > 2 and parts[2] == "idle":
        time.sleep(float(parts[1]))
        return
    x = 0
    while time.monotonic() < end:  # a slow board: busy the whole time
        x = (x * 31 + 7) % 1_000_003
