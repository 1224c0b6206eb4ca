"""Pipeline schedule simulator (step x stage), the oracle for bubbles and stashed activations.

Like torch pipelining's ``_simulate_comms_compute``: each stage runs its own
fixed order of forward (F) and backward (B) micro-batch actions; an action
starts when its stage is free and its input has arrived (links are delays).
A schedule whose orders can never all finish is reported as a deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplan.errors import PlanError


@dataclass(frozen=True)
class Action:
    stage: int
    kind: str  # "F" | "B"
    mb: int
    start: float
    end: float

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.mb}"


@dataclass(frozen=True)
class Simulation:
    actions: tuple[Action, ...]
    makespan: float  # last action end, plus all-reduce tails when given
    peak_inflight: tuple[int, ...]  # per stage: most micro-batches forwarded but not yet backwarded
    busy_fraction: tuple[float, ...]  # per stage: compute time / makespan (1 - bubble)


def orders(stages: int, microbatches: int, schedule: str) -> list[list[tuple[str, int]]]:
    """Per stage, the sequence of (kind, micro-batch) it runs."""
    M = microbatches
    out = []
    for s in range(stages):
        if schedule == "none":
            out.append([("F", k) for k in range(M)])
        elif schedule == "gpipe":
            out.append([("F", k) for k in range(M)] + [("B", k) for k in range(M)])
        elif schedule == "1f1b":
            warm = min(M, stages - s - 1)
            seq = [("F", k) for k in range(warm)]
            for k in range(M - warm):
                seq += [("F", warm + k), ("B", k)]
            seq += [("B", k) for k in range(M - warm, M)]
            out.append(seq)
        else:
            raise PlanError(f"schedule {schedule!r} is not one of none, gpipe, 1f1b")
    return out


def simulate(fwd: list[float], bwd: list[float], link: list[float], microbatches: int, schedule: str,
             tail: list[float] | None = None) -> Simulation:
    """Run the schedule; ``link[s]`` delays stage s's output to s+1 (and its gradient back)."""
    S = len(fwd)
    seqs = orders(S, microbatches, schedule)
    acts, free = _run(seqs, fwd, bwd, link, [0.0] * S, schedule, microbatches)
    ends = [free[s] + (tail[s] if tail else 0.0) for s in range(S)]
    makespan = max(ends) if ends else 0.0
    peaks = []
    for s in range(S):
        live = peak = 0
        for kind, _ in seqs[s]:
            live += 1 if kind == "F" else -1
            peak = max(peak, live)
        peaks.append(peak if schedule != "none" else 0)
    busy = [sum(a.end - a.start for a in acts if a.stage == s) / makespan if makespan > 0 else 0.0 for s in range(S)]
    return Simulation(actions=tuple(sorted(acts, key=lambda a: (a.start, a.stage))), makespan=makespan,
                      peak_inflight=tuple(peaks), busy_fraction=tuple(busy))


def iteration(fwd: list[float], bwd: list[float], link: list[float], microbatches: int, schedule: str,
              tail: list[float], iterations: int = 6) -> float:
    """Steady-state seconds per training iteration as the runtime runs them (``training/engine.py``): each
    stage runs its actions, then its ``tail`` (gradient all-reduce + optimizer step) after its last
    backward, then starts the next iteration; nothing else waits (no barrier), so a stage's tail may hide
    behind the time its next forward takes to arrive. Measured between the last two of ``iterations``
    back-to-back iterations at stage 0."""
    S = len(fwd)
    seqs = orders(S, microbatches, schedule)
    free = [0.0] * S
    starts = []
    for _ in range(max(iterations, 2)):
        starts.append(free[0])
        _, free = _run(seqs, fwd, bwd, link, free, schedule, microbatches)
        free = [free[s] + tail[s] for s in range(S)]
    starts.append(free[0])
    return starts[-1] - starts[-2]


def _run(seqs, fwd, bwd, link, free: list[float], schedule: str, microbatches: int):
    """One pass of every stage's action order from ``free`` (each stage's ready time): (actions, ready times)."""
    S = len(fwd)
    done: dict[tuple[int, str, int], float] = {}
    pos = [0] * S
    free = list(free)
    acts: list[Action] = []
    remaining = sum(len(q) for q in seqs)
    while remaining:
        progressed = False
        for s in range(S):
            while pos[s] < len(seqs[s]):
                kind, k = seqs[s][pos[s]]
                if kind == "F":
                    dep = 0.0 if s == 0 else done.get((s - 1, "F", k))
                    dep = dep if s == 0 or dep is None else dep + link[s - 1]
                else:
                    if s == S - 1:
                        dep = done.get((s, "F", k))
                    else:
                        up = done.get((s + 1, "B", k))
                        dep = None if up is None else up + link[s]
                if dep is None:
                    break
                start = max(free[s], dep)
                end = start + (fwd[s] if kind == "F" else bwd[s])
                done[(s, kind, k)] = end
                free[s] = end
                acts.append(Action(s, kind, k, start, end))
                pos[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise PlanError(f"schedule {schedule!r} deadlocks with {S} stages and {microbatches} micro-batches")
    return acts, free


def format_order(stages: int, microbatches: int, schedule: str) -> str:
    """Step x stage grid of the schedule's action order (like torch's ``_format_pipeline_order``)."""
    seqs = orders(stages, microbatches, schedule)
    steps = max(len(q) for q in seqs)
    rows = [["step"] + [f"stage {s}" for s in range(stages)]]
    for t in range(steps):
        rows.append([str(t)] + [f"{q[t][0]}{q[t][1]}" if t < len(q) else "" for q in seqs])
    w = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(r[c].ljust(w[c]) for c in range(len(r))).rstrip() for r in rows) + "\n"


def simulate_plan(plan) -> Simulation:
    """Simulate a Plan's schedule with each stage's forward and backward times from the cost table.

    (Plan files written before ``forward_s`` existed fall back to a 1:2 split.)
    """
    if plan.mode == "training":
        fwd = [s.forward_s if s.forward_s is not None else s.compute_s / 3 for s in plan.stages]
        bwd = [s.compute_s - f for s, f in zip(plan.stages, fwd, strict=True)]
        return simulate(fwd, bwd, [s.send_s for s in plan.stages], plan.microbatches, plan.schedule)
    return simulate([s.compute_s for s in plan.stages], [0.0] * len(plan.stages), [s.send_s for s in plan.stages],
                    plan.microbatches, "none")
