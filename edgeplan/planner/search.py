"""The objective search: which table-DP passes (``dp.DPSolver.run_pass``) answer each objective.

throughput: the smallest bottleneck, then the smallest sum under it. latency: the
smallest sum, then branch and bound over candidate bottleneck values (sum +
weight x bottleneck). training time: the same over boxes of two thresholds, the
bottleneck and the largest stage tail (all-reduce + optimizer step; ``_time_search``).
energy: branch and bound over candidate thresholds, idle power weighted by each
interval's low end.

``Result.exact`` means exact on the graph the DP ran on: the full one, or a coarse
one of ``blocks`` blocks (``dp.block_cuts``: runs of layers between cheap cuts,
chosen when the full search would not fit its budget; ``Result.coarse``). A
coarse or otherwise reduced result is then refined on the full graph
(``refine``); ``notes`` says which. How far the plan can be from the fine graph's
optimum is what the lower bound (``bound.lower_bound``) says.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from edgeplan.planner.costmodel import Evaluation, Layout, evaluate
from edgeplan.planner.dp import WORK_BUDGET, DPSolver
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable

MAX_PASSES = 200
HEURISTIC_PASSES = 6  # once reductions made the DP a heuristic, stop the threshold search early (refine follows)
ENERGY_PASSES = 400
COARSE_PASSES = 12  # latency's bottleneck search on a coarse graph: 3-5 passes on ResNet-50 x 16, 51 on a synthetic


@dataclass
class Result:
    layout: Layout | None
    evaluation: Evaluation | None
    exact: bool
    notes: list[str] = field(default_factory=list)
    passes: int = 0
    blocks: int | None = None  # a coarse graph's blocks the DP ran on (None: the full graph)
    layers: int | None = None  # the full graph's layers, beside ``blocks``

    @property
    def coarse(self) -> bool:
        """``exact`` holds on a coarse graph of ``blocks`` blocks only, not on the full graph."""
        return self.blocks is not None


def solve(costs: CostTable, objective: Objective, *, work_budget: float = WORK_BUDGET,
          ignore_memory: bool = False, cuts: np.ndarray | None = None, refine: bool = True) -> Result:
    """Best layout for ``objective`` (budgets handled by ``api``); exact unless ``notes`` says otherwise.

    ``cuts``: stage boundaries to search (a coarse graph; default every layer boundary, reduced when the
    instance is large); ``refine=False`` keeps the DP's own optimum (to compare with the ILP on the same cuts).
    """
    dp = DPSolver(costs, objective, work_budget=work_budget, ignore_memory=ignore_memory, cuts=cuts)
    res = optimise(dp, objective)
    res.notes[:0] = dp.notes
    res.exact = res.exact and dp.exact and not dp.unpriced  # on the coarse graph when dp.coarse
    if dp.coarse:
        res.blocks, res.layers = len(dp.bnd) - 1, costs.n_layers
    if refine and (not res.exact or dp.coarse) and res.layout is not None and not ignore_memory:
        from edgeplan.planner.refine import refine as local_search

        lay, ev, moves = local_search(costs, objective, res.layout, prefix=dp.pf)
        if better(ev, res.evaluation, objective):
            a, b = res.evaluation.value(objective), ev.value(objective)
            what = "coarse-graph optimum" if res.exact else "heuristic result"
            res.notes.append(f"DP {what} refined on the full graph by {moves} local move(s) (cuts, "
                             f"devices, units, merges): {(a - b) / a * 100:.2f}% better")
            res.layout, res.evaluation = lay, ev
    return res


def better(ev: Evaluation, best: Evaluation | None, obj: Objective) -> bool:
    """``ev`` scores strictly better than ``best`` (objective, then latency; relative tolerance 1e-12)."""
    if best is None:
        return True
    a, b = ev.score(obj), best.score(obj)
    tol = 1e-12 * max(abs(b[0]), 1e-300)
    return a[0] < b[0] - tol or (abs(a[0] - b[0]) <= tol and a[1] < b[1] - 1e-12 * abs(b[1]))


def _limit(dp: DPSolver) -> int:
    """Passes the latency bottleneck search may run: the coarse graph's blocks were sized for a few (its
    time target), so past ``COARSE_PASSES`` it stops there too and says so (``exact`` False, refined)."""
    if not dp.exact:
        return HEURISTIC_PASSES
    return COARSE_PASSES if dp.coarse else MAX_PASSES


def _eval(dp: DPSolver, layout: Layout) -> Evaluation:
    return evaluate(dp.costs, layout, dp.obj, prefix=dp.pf)


def optimise(dp: DPSolver, obj: Objective, cp: float = 1.0, ce: float = 0.0) -> Result:
    kind = obj.objective
    M = obj.microbatches
    notes: list[str] = []
    best_l, best_e, passes, exact = None, None, 0, True
    loose = []  # plans whose sends into wide groups the DP priced below the cost model (dp.prices_exactly)

    def consider(layout):
        nonlocal best_l, best_e
        if not dp.prices_exactly(layout):
            loose.append(layout)
        ev = _eval(dp, layout)
        if ev.empty:  # a replica without samples is no layout (dp._rebuild drops such members; kept as a guard)
            return
        if better(ev, best_e, obj):
            best_l, best_e = layout, ev

    if kind == "throughput":
        got = dp.run_pass("max", bkey="p")
        passes += 1
        if got is not None:
            got2 = dp.run_pass("sum", theta=got[0], bkey="p")
            passes += 1
            # the period is a max pass's: exact on a uniform network (tie-breaking latency may be a bound)
            lay = got2[1] if got2 is not None else got[1]
            loose += [x for x in (got[1], lay) if not dp.prices_exactly(x, "max")]
            best_l, best_e = lay, _eval(dp, lay)
    elif kind == "time":
        passes, exact = _time_search(dp, obj, consider, lambda: best_e, notes)
    elif kind == "latency":
        # objective = sum + w * max. The unconstrained pass gives the smallest sum (floor); then branch and
        # bound over candidate bottleneck values: on an interval [c_a, c_b] no plan beats sum(c_b) + w c_a.
        bkey = "p"
        w = float(M - 1)
        got = dp.run_pass("sum", bkey=bkey)
        passes += 1
        if got is not None:
            consider(got[1])
        if got is not None and w > 0:
            floor = got[0]
            lo = dp.run_pass("max", bkey=bkey)
            passes += 1
            cands = dp.candidates(bkey)
            cands = cands[(cands >= lo[0] * (1 - 1e-12)) & (cands < _peak(dp, got[1], bkey) * (1 - 1e-12))]
            stack = [(0, len(cands) - 1)] if len(cands) else []
            while stack:
                a, b = stack.pop()
                best_v = best_e.value(obj) * (1 - 1e-12)
                if floor + w * cands[a] >= best_v:
                    continue
                if passes >= _limit(dp):
                    exact = False
                    notes.append(f"DP heuristic: bottleneck search stopped after {passes} passes")
                    break
                got = dp.run_pass("sum", theta=float(cands[b]), bkey=bkey)
                passes += 1
                if got is None:
                    continue
                consider(got[1])
                if got[0] + w * cands[a] >= best_e.value(obj) * (1 - 1e-12) or a == b:
                    continue
                b2 = int(np.searchsorted(cands, _peak(dp, got[1], bkey) * (1 - 1e-12))) - 1
                if b2 < a:
                    continue
                mid = (a + b2) // 2
                stack += [(mid + 1, b2), (a, mid)]
    elif kind == "energy":
        # m * E* = min over candidate thresholds theta of pass(theta) = min dyn + idle * theta over plans whose
        # every p <= theta. Branch and bound over candidate intervals [a, b]: a pass feasible at b with idle
        # weighted by a is a lower bound for the whole interval, and its plan is a real one.
        # One pass per threshold b, without idle power, answers every interval [a, b]: its optimum from each
        # start state r (at most so many devices left) plus idle(r) * c_a is that bound (dp.state_values).
        # And a state whose optimum at b has bottleneck P is done on [P, c_b]: no threshold there beats
        # its plan (same devices, same sum, idle x P at least); only thresholds below P remain for it.
        lo = dp.run_pass("max", bkey="p")
        passes += 1
        if lo is not None:
            first = _eval(dp, lo[1])  # the fastest plan: a first incumbent (only a bound's foil: not checked
            if not first.empty:  # for exact pricing, since the search does not stop at it)
                best_l, best_e = lo[1], first
            cands = dp.candidates("p")
            cands = cands[cands >= lo[0] * (1 - 1e-12)]
            idle = dp.state_idle()
            at: dict[int, tuple | None] = {}
            stack = [(0, len(cands) - 1)]
            dp.peaks = True
            while stack:
                a, b = stack.pop()
                if b not in at:
                    if passes >= (HEURISTIC_PASSES if not dp.exact else 2 * COARSE_PASSES if dp.coarse
                                  else ENERGY_PASSES):  # coarse: 6-18 passes measured
                        exact = False
                        notes.append(f"DP heuristic: energy search stopped after {passes} passes")
                        break
                    got = dp.run_pass("sum", cp=0.0, ce=1.0, theta=float(cands[b]))
                    passes += 1
                    at[b] = None if got is None else (dp.state_values(), dp.state_peaks(), dp._last)
                if at[b] is None:
                    continue
                vals, peaks, dp._last = at[b]
                with np.errstate(invalid="ignore"):
                    live = vals + idle * float(cands[a]) < best_e.energy_j * dp.m * (1 - 1e-12)
                if not live.any():
                    continue
                with np.errstate(invalid="ignore"):  # each live state's plan, as the DP prices it
                    top = np.where(live, vals + idle * peaks, np.inf)
                r = int(np.argmin(top))
                lay = dp.layout_from(r)
                if lay is not None:
                    seen = len(loose)
                    consider(lay)
                    if len(loose) > seen and _eval(dp, lay).energy_j * dp.m <= top[r] * (1 + 1e-12):
                        loose.pop()  # the evaluator prices it no higher than the DP: what it closes stays closed
                live &= vals + idle * float(cands[a]) < best_e.energy_j * dp.m * (1 - 1e-12)
                if not live.any() or a == b:
                    continue
                b2 = min(b, int(np.searchsorted(cands, peaks[live].max() * (1 - 1e-12))) - 1)  # last below a peak
                if b2 < a:
                    continue
                mid = (a + b2) // 2
                stack += [(mid + 1, b2), (a, mid)]
            dp.peaks = False
    if loose:
        exact = False
        notes.append("DP lower bound: a send into a wide replica group was priced by its busiest sender (the "
                     "evaluator prices every sender -> receiver pair)")
    return Result(layout=best_l, evaluation=best_e, exact=exact, notes=notes, passes=passes)


def _peak(dp: DPSolver, layout: Layout, bkey: str) -> float:
    return evaluate(dp.costs, layout, dp.obj, prefix=dp.pf).period_s


def _incumbent(dp: DPSolver, obj: Objective) -> float:
    """The best feasible baseline's objective value (``baselines``: a few evaluations), inf if none."""
    from edgeplan.planner.baselines import baselines

    vals = [ev.value(obj) for _, _, ev, _ in baselines(dp.costs, obj, dp.pf) if ev is not None and ev.feasible]
    return min(vals, default=np.inf)


def _time_search(dp: DPSolver, obj: Objective, consider, best, notes: list[str],
                 cap: float | None = None) -> tuple[int, bool]:
    """Training time ``T = sum p + w max p + max tail`` (``w = M - 1``; tail: a stage's all-reduce + optimizer
    step, ``costmodel``): two bottlenecks, so branch and bound over boxes of candidate thresholds
    ``[p_a, p_b] x [t_a, t_b]`` (indices into the sorted candidates). A ``sum`` pass with every stage
    option within ``(p_b, t_b)`` gives the box's smallest sum ``s``; no plan in the box beats
    ``s + w p_a + t_a``. The plan found, with peaks ``(P, A)``, is no worse than any plan of the box
    with ``p >= P`` and ``tail >= A`` (their sum is at least ``s``), so what is left of the box is
    ``p < P`` and (``p >= P``, ``tail < A``), or ``tail < A`` and (``tail >= A``, ``p < P``) when the
    tail spans more seconds of the objective than the bottleneck; each part is halved where its bound is
    loosest (the side whose thresholds span more seconds of the objective), inherits ``s`` as a lower
    bound of its sums, and parts are searched lowest bound first.

    ``cap``: the iteration time of a feasible plan (the best baseline, ``_incumbent``). Since
    ``T >= M max p + max tail``, the optimum, if no worse, has every key ``<= cap / M`` and tail ``<= cap``:
    the search runs within those thresholds from its first pass (most stage options drop out), and
    starts again without them when its best is worse than ``cap`` (a baseline the DP's graph cannot
    express). Returns (passes, exact)."""
    cap = _incumbent(dp, obj) if cap is None else cap
    w = float(dp.M - 1)
    p_cap, a_cap = cap / dp.M * (1 + 1e-9), cap * (1 + 1e-9)
    got = dp.run_pass("sum", theta=p_cap, theta_a=a_cap)
    passes, exact = 1, True
    if got is None:
        if np.isfinite(cap):
            more, exact = _time_search(dp, obj, consider, best, notes, cap=np.inf)
            return passes + more, exact
        return passes, exact
    consider(got[1])
    floor = got[0]
    if w > 0:
        lo = dp.run_pass("max", theta=p_cap, theta_a=a_cap)
        passes += 1
        cp = dp.candidates("p")
        cp = cp[(cp >= lo[0] * (1 - 1e-12)) & (cp <= p_cap)]
    else:  # one micro-batch: the bottleneck does not count; one unbounded "candidate"
        cp = np.array([p_cap])
    ct = dp.tail_candidates()
    ct = ct[ct <= a_cap]

    def low(i: int) -> float:
        return w * cp[i] if w > 0 else 0.0

    def peaks(layout) -> tuple[float, float]:
        ev = evaluate(dp.costs, layout, dp.obj, prefix=dp.pf)
        return ev.period_s, max(st.allreduce_s + st.optimizer_s for st in ev.stages)

    def rest(a: int, b: int, c: int, d: int, layout, s: float) -> list[tuple[float, int, int, int, int, float]]:
        P, A = peaks(layout)
        b2 = min(b, int(np.searchsorted(cp, P * (1 - 1e-12))) - 1) if w > 0 else a - 1  # last index p < P
        d2 = min(d, int(np.searchsorted(ct, A * (1 - 1e-12))) - 1)  # last index tail < A
        out = []
        if A - ct[c] > (w * (P - cp[a]) if w > 0 else 0.0):  # the tail spans more: cut the box along it
            if d2 >= c:
                out.append((a, b, c, d2))
            if b2 >= a and max(c, d2 + 1) <= d:
                out.append((a, b2, max(c, d2 + 1), d))
        else:
            if b2 >= a:
                out.append((a, b2, c, d))
            if d2 >= c and max(a, b2 + 1) <= b:
                out.append((max(a, b2 + 1), b, c, d2))
        halves = []
        for a_, b_, c_, d_ in out:
            if b_ > a_ and (d_ == c_ or low(b_) - low(a_) >= ct[d_] - ct[c_]):
                m_ = (a_ + b_) // 2
                halves += [(m_ + 1, b_, c_, d_), (a_, m_, c_, d_)]
            elif d_ > c_:
                m_ = (c_ + d_) // 2
                halves += [(a_, b_, m_ + 1, d_), (a_, b_, c_, m_)]
            else:
                halves.append((a_, b_, c_, d_))
        return [(s + low(a_) + ct[c_], a_, b_, c_, d_, s) for a_, b_, c_, d_ in halves]

    heap = rest(0, len(cp) - 1, 0, len(ct) - 1, got[1], floor) if len(ct) else []
    heapq.heapify(heap)
    while heap:
        bound, a, b, c, d, _ = heapq.heappop(heap)
        best_v = best().value(obj) * (1 - 1e-12)
        if bound >= best_v:
            break  # lowest bound first: no box left can beat the best plan
        if w > 0:  # T >= M max p + max tail: thresholds past what could still beat the best plan go
            b = min(b, int(np.searchsorted(cp, (best_v - ct[c]) / dp.M * (1 + 1e-9), side="right")) - 1)
            d = min(d, int(np.searchsorted(ct, (best_v - dp.M * cp[a]) * (1 + 1e-9), side="right")) - 1)
            if b < a or d < c:
                continue
        if passes >= (MAX_PASSES if dp.exact else HEURISTIC_PASSES):
            exact = False
            notes.append(f"DP heuristic: bottleneck search stopped after {passes} passes")
            break
        got = dp.run_pass("sum", theta=float(cp[b]), theta_a=float(ct[d]))
        passes += 1
        if got is None:
            continue
        consider(got[1])
        if got[0] + low(a) + ct[c] >= best().value(obj) * (1 - 1e-12) or (a == b and c == d):
            continue
        for box in rest(a, b, c, d, got[1], got[0]):
            heapq.heappush(heap, box)
    if exact and np.isfinite(cap) and best().value(obj) > cap * (1 + 1e-9):  # the thresholds may have hidden it
        more, exact = _time_search(dp, obj, consider, best, notes, cap=np.inf)
        passes += more
    return passes, exact
