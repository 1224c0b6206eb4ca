"""Ranks, sample ranges and pipeline schedules of a training plan (pure data, no torch).

One torch.distributed rank per (stage, replica), numbered stage by stage in the
plan's replica order. Every micro-batch has ``m = batch // microbatches``
samples; replica ``j`` of a stage owns the contiguous range ``[lo, hi)`` of each
micro-batch (cumulative ``Replica.samples``), the same routing as inference
(``edgeplan.runtime.spec``): activations go from each upstream replica to each
downstream replica whose range intersects its own, gradients go back the same
way. A faster board owns more samples; its gradient is the sum over its
samples divided by the global batch, so the all-reduced sum is the gradient of
the global mean loss.

Schedules are lists of actions per stage, printed in torch pipelining's compact
form (``F3`` forward of micro-batch 3, ``B3`` its backward); ``simulate`` dry-runs
them over all stages and flags a deadlock, which is how the tests check them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplan.errors import PlanError
from edgeplan.planner.plan import Plan

SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class RankInfo:
    """One process of the training run: a replica of one stage on one board."""

    rank: int
    device: str
    stage: int
    replica: int  # index inside the stage's replica group
    unit: str
    target: str
    lo: int  # samples [lo, hi) of every micro-batch
    hi: int
    share: float  # hi - lo over the micro-batch size (exact, from the integral samples)
    input: str = ""  # branch stage: the model input this rank's branch reads (its board's own data)

    @property
    def samples(self) -> int:
        return self.hi - self.lo

    @property
    def label(self) -> str:
        """How errors name this rank: board, stage and replica."""
        return f"board {self.device!r} (stage {self.stage}, replica {self.replica}, rank {self.rank})"


def rank_table(plan: Plan, source: str = "plan") -> tuple[RankInfo, ...]:
    """Ranks of a training plan, checked: every stage's samples add up to the micro-batch."""
    if plan.mode != "training":
        raise PlanError(f"{source}: mode is {plan.mode!r}; `edgeplan train` needs a plan made with --mode training")
    if plan.microbatches < 1 or plan.batch % plan.microbatches:
        raise PlanError(
            f"{source}: batch {plan.batch} is not a multiple of microbatches {plan.microbatches}; "
            "re-plan with --batch a multiple of --microbatches"
        )
    if plan.schedule not in SCHEDULES:
        raise PlanError(f"{source}: schedule {plan.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if not plan.stages:
        raise PlanError(f"{source}: the plan has no stages")
    m = plan.batch // plan.microbatches
    ranks: list[RankInfo] = []
    expect_start = 0
    for s in plan.stages:
        if s.start != expect_start or s.stop <= s.start:
            raise PlanError(
                f"{source}: stage {s.index} covers layers [{s.start}, {s.stop}) but must start at layer "
                f"{expect_start}; stages must be contiguous and non-empty — re-run `edgeplan plan`"
            )
        expect_start = s.stop
        if s.kind == "branches":  # parallel input branches: every replica runs its own branch on all m samples
            if s.index != 0 or any(r.samples != m or not r.input for r in s.replicas):
                raise PlanError(f"{source}: branch stage {s.index} must be stage 0 with every replica reading "
                                f"its own input on all {m} samples of a micro-batch; re-run `edgeplan plan`")
            for j, r in enumerate(s.replicas):
                ranks.append(RankInfo(rank=len(ranks), device=r.device, stage=s.index, replica=j, unit=r.unit,
                                      target=r.target, lo=0, hi=m, share=1.0, input=r.input))
            continue
        total = sum(r.samples for r in s.replicas)
        if total != m or any(r.samples < 0 for r in s.replicas):
            raise PlanError(
                f"{source}: stage {s.index} replicas take {[r.samples for r in s.replicas]} samples per "
                f"micro-batch, which must be non-negative and add up to {m} (batch {plan.batch} / "
                f"{plan.microbatches} micro-batches); re-run `edgeplan plan`"
            )
        lo = 0
        for j, r in enumerate(s.replicas):
            ranks.append(RankInfo(
                rank=len(ranks), device=r.device, stage=s.index, replica=j, unit=r.unit, target=r.target,
                lo=lo, hi=lo + r.samples, share=r.samples / m,
            ))
            lo += r.samples
    return tuple(ranks)


def stage_ranks(ranks: tuple[RankInfo, ...], stage: int) -> tuple[RankInfo, ...]:
    return tuple(r for r in ranks if r.stage == stage)


def overlaps(me: RankInfo, peers: tuple[RankInfo, ...]) -> tuple[tuple[RankInfo, int, int], ...]:
    """Peers whose sample range meets mine, with the intersection ``[lo, hi)`` (micro-batch numbering)."""
    out = []
    for p in peers:
        lo, hi = max(me.lo, p.lo), min(me.hi, p.hi)
        if hi > lo:
            out.append((p, lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class Action:
    kind: str  # "F" | "B"
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}"

    @classmethod
    def from_str(cls, text: str) -> Action:
        if len(text) < 2 or text[0] not in "FB" or not text[1:].isdigit():
            raise ValueError(f"not a schedule action: {text!r} (expected F<n> or B<n>)")
        return cls(text[0], int(text[1:]))


def schedule(kind: str, n_stages: int, stage: int, microbatches: int) -> tuple[Action, ...]:
    """The order in which ``stage`` runs forwards and backwards of one iteration.

    GPipe: all forwards, then all backwards (stashes every micro-batch).
    1F1B: ``n_stages - stage - 1`` warm-up forwards, then one forward / one
    backward alternately, then the remaining backwards (stashes at most
    ``n_stages - stage`` micro-batches).
    """
    M = microbatches
    if kind == "gpipe":
        return tuple(Action("F", i) for i in range(M)) + tuple(Action("B", i) for i in range(M))
    if kind == "1f1b":
        warm = min(n_stages - stage - 1, M)
        acts = [Action("F", i) for i in range(warm)]
        f, b = warm, 0
        while f < M:
            acts.append(Action("F", f))
            f += 1
            acts.append(Action("B", b))
            b += 1
        acts += [Action("B", i) for i in range(b, M)]
        return tuple(acts)
    raise PlanError(f"schedule {kind!r} is not one of {', '.join(SCHEDULES)}; use --schedule gpipe or 1f1b")


def format_grid(kind: str, n_stages: int, microbatches: int) -> str:
    """Step x stage grid of the schedule's actions (one row per stage)."""
    rows = [" ".join(f"{a!s:>3}" for a in schedule(kind, n_stages, s, microbatches)) for s in range(n_stages)]
    return "\n".join(f"stage {s}: {row}" for s, row in enumerate(rows))


def simulate(kind: str, n_stages: int, microbatches: int) -> tuple[int, int]:
    """Dry-run the schedule with unit-time actions; returns (steps, max stashed micro-batches).

    A forward of micro-batch i on stage s needs that forward done on s-1; a
    backward needs its forward here and its backward on s+1. Raises
    RuntimeError on a deadlock (no stage can make progress).
    """
    plans = [list(schedule(kind, n_stages, s, microbatches)) for s in range(n_stages)]
    pos = [0] * n_stages
    done: set[tuple[int, str, int]] = set()
    stash = [0] * n_stages
    peak = 0
    steps = 0
    while any(pos[s] < len(plans[s]) for s in range(n_stages)):
        ready = []
        for s in range(n_stages):
            if pos[s] == len(plans[s]):
                continue
            a = plans[s][pos[s]]
            if a.kind == "F":
                ok = s == 0 or (s - 1, "F", a.microbatch) in done
            else:
                ok = (s, "F", a.microbatch) in done and (s == n_stages - 1 or (s + 1, "B", a.microbatch) in done)
            if ok:
                ready.append((s, a))
        if not ready:
            raise RuntimeError(f"{kind} schedule deadlocks at positions {pos}")
        for s, a in ready:
            done.add((s, a.kind, a.microbatch))
            pos[s] += 1
            stash[s] += 1 if a.kind == "F" else -1
        peak = max(peak, max(stash))
        steps += 1
    return steps, peak
