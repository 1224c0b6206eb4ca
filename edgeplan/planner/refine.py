"""Local refinement on the fine graph of a plan the DP found on a reduced space.

When the DP had to reduce its search (candidate cuts, single-type groups,
device bundles), its plan is a good start but not an optimum. This pass moves
one thing at a time and keeps a move when the one evaluator prices the plan
better: a cut to any layer boundary between its neighbours, a device into or
out of a group (mixed board types allowed), a device from one group to
another, a device's unit, two adjacent stages merged. Shares are re-split by
``allocate`` (memory-aware) after every move. Deterministic: moves are tried
in a fixed order and the rounds and moves priced are bounded, not timed.
"""

from __future__ import annotations

from edgeplan.planner.costmodel import Evaluation, Layout, Prefix, StageSpec, allocate, evaluate, stash_of
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable

MAX_ROUNDS = 6
MAX_PRICED = 4000  # moves priced in all, so 64-board clusters stay within seconds (the order is fixed)
CUT_WINDOW = 12  # positions tried on each side of a cut, plus evenly spaced ones in between


def _better(a: Evaluation, b: Evaluation, obj: Objective) -> bool:
    x, y = a.score(obj), b.score(obj)
    tol = 1e-12 * max(abs(y[0]), 1e-300)
    return x[0] < y[0] - tol or (abs(x[0] - y[0]) <= tol and x[1] < y[1] - 1e-12 * abs(y[1]))


class _Search:
    def __init__(self, costs: CostTable, obj: Objective, pf: Prefix):
        self.costs, self.obj, self.pf = costs, obj, pf
        self.dev_units = [[u for u, x in enumerate(costs.units) if x[0] == d] for d in range(costs.n_devices)]
        self.splits: dict[tuple, tuple[int, ...] | None] = {}  # most moves leave most stages as they were

    def build(self, stages: list[tuple[int, int, tuple[int, ...]]]) -> Layout | None:
        """(start, stop, units) per stage -> a layout with memory-aware shares (None if a replica gets none)."""
        S = len(stages)
        out = []
        for s, (i, j, units) in enumerate(stages):
            if not units or j <= i:
                return None
            key = (i, j, units, stash_of(self.obj, S, s))
            if key not in self.splits:
                ok = not any(self.pf.U[u, j] - self.pf.U[u, i] > 0 for u in units)
                ks = allocate(self.pf, i, j, units, self.obj.micro, key[3]) if ok else None
                self.splits[key] = ks if ks is not None and min(ks) >= 1 else None
            ks = self.splits[key]
            if ks is None:
                return None
            out.append(StageSpec(i, j, tuple(zip(units, ks, strict=True))))
        return tuple(out)

    def price(self, stages) -> tuple[Layout, Evaluation] | None:
        lay = self.build(stages)
        if lay is None:
            return None
        ev = evaluate(self.costs, lay, self.obj, prefix=self.pf)
        return (lay, ev) if ev.feasible else None

    def neighbours(self, stages: list[tuple[int, int, tuple[int, ...]]]):
        """Every single move from ``stages``, in a fixed order."""
        S = len(stages)
        used = {self.costs.units[u][0] for _, _, us in stages for u in us}
        free = [d for d in range(self.costs.n_devices) if d not in used]
        # cuts
        for s in range(1, S):
            lo, hi = stages[s - 1][0] + 1, stages[s][1] - 1
            cur = stages[s][0]
            span = hi - lo
            pos = set(range(max(lo, cur - CUT_WINDOW), min(hi, cur + CUT_WINDOW) + 1))
            if span > 0:
                pos |= {lo + round(span * t / 8) for t in range(9)}
            for p in sorted(x for x in pos - {cur} if self.pf.cut_ok[x]):  # only cuts codegen can split
                new = list(stages)
                new[s - 1] = (stages[s - 1][0], p, stages[s - 1][2])
                new[s] = (p, stages[s][1], stages[s][2])
                yield new
        # merge adjacent stages
        for s in range(1, S):
            new = list(stages)
            new[s - 1:s + 1] = [(stages[s - 1][0], stages[s][1], stages[s - 1][2] + stages[s][2])]
            yield new
        # a free device (any unit) joins a group
        for d in free:
            for u in self.dev_units[d]:
                for s in range(S):
                    new = list(stages)
                    new[s] = (stages[s][0], stages[s][1], stages[s][2] + (u,))
                    yield new
        # a device leaves its group, moves to another, or switches unit
        for s in range(S):
            for r, u in enumerate(stages[s][2]):
                rest = stages[s][2][:r] + stages[s][2][r + 1:]
                if rest:
                    new = list(stages)
                    new[s] = (stages[s][0], stages[s][1], rest)
                    yield new
                    for s2 in range(S):
                        if s2 != s:
                            new = list(stages)
                            new[s] = (stages[s][0], stages[s][1], rest)
                            new[s2] = (stages[s2][0], stages[s2][1], stages[s2][2] + (u,))
                            yield new
                d = self.costs.units[u][0]
                for u2 in self.dev_units[d]:
                    if u2 != u:
                        new = list(stages)
                        new[s] = (stages[s][0], stages[s][1], rest[:r] + (u2,) + rest[r:])
                        yield new
                for d2 in free:  # swap with a free device
                    for u2 in self.dev_units[d2]:
                        new = list(stages)
                        new[s] = (stages[s][0], stages[s][1], rest[:r] + (u2,) + rest[r:])
                        yield new


def refine(costs: CostTable, obj: Objective, layout: Layout, prefix: Prefix | None = None,
           rounds: int = MAX_ROUNDS) -> tuple[Layout, Evaluation, int]:
    """Best-improvement local search from ``layout``; returns (layout, evaluation, moves taken)."""
    pf = prefix or Prefix(costs, obj)
    search = _Search(costs, obj, pf)
    cur = [(st.start, st.stop, tuple(u for u, _ in st.replicas)) for st in layout]
    best = search.price(cur)
    if best is None:
        ev = evaluate(costs, layout, obj, prefix=pf)
        return layout, ev, 0
    moves = priced = 0
    for _ in range(rounds):
        step = None
        for cand in search.neighbours(cur):
            priced += 1
            if priced > MAX_PRICED:
                break
            got = search.price(cand)
            if got is not None and _better(got[1], (step or best)[1], obj):
                step = (got[0], got[1], cand)
        if step is None:
            break
        best, cur = (step[0], step[1]), step[2]
        moves += 1
        if priced > MAX_PRICED:
            break
    return best[0], best[1], moves
