"""Exact ILP (HiGHS) over explicit stage options, for small instances and to certify the DP.

A plan is a path of stage options ("arcs") from layer boundary 0 to n through
nodes (boundary, depth); each arc is a stage ``[i, j)`` on one device subset
with one unit per board kind, its samples split as the evaluator does. Binary
``y`` per arc, at most one arc per device, and continuous bottleneck variables:
``P >= p_a y_a`` (every objective) and, training, ``A >= tail_a y_a`` (a stage's all-reduce + optimizer
step, after its last backward): training time is ``sum + (M-1) P + A`` (``costmodel``).
Energy's ``idle * P`` term is linearised with ``z_a >= P - U (1 - y_a)``.
Transfers are priced per sender -> receiver pair (costmodel): on a uniform
network the send across cut ``j`` takes ``max(busiest sender, busiest
receiver) x bytes / bw + latency``, so one variable per cut, ``L_j >= out_a y_a``
for the arc ending at ``j`` and ``L_j >= in_b y_b`` for the one starting there,
is that time exactly (it is minimised, and ``P >= L_j``). The head's links are
priced inside the first and last arcs. On non-uniform links the send depends on
which devices meet: for every pair of arcs ``a`` ending and ``b`` starting at a
node, ``L_j >= t_ab (y_a + y_b - 1)`` and (energy) ``E_j >= e_ab (y_a + y_b - 1)``
with ``t_ab, e_ab`` the evaluator's per-pair figures (per-link bandwidth, latency
and energy per byte); only small instances (``NONUNIFORM_ARCS``) are applicable.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edgeplan.errors import PlanError
from edgeplan.planner.costmodel import (
    Prefix,
    StageSpec,
    allocate,
    allreduce,
    evaluate,
    head_index,
    optimizer_step,
    pair_transfer,
)
from edgeplan.planner.objective import Objective
from edgeplan.planner.search import Result
from edgeplan.planner.types import device_types
from edgeplan.profiles.cost import CostTable


@dataclass
class _Arc:
    stage: StageSpec
    src: tuple[int, int]  # (boundary, depth index)
    dst: tuple[int, int]
    devices: tuple[int, ...]
    a: float  # additive seconds (stage + the head's links)
    p: float  # bottleneck key: max per-micro-batch time of the stage and the head's links
    e: float  # joules per micro-batch (compute above idle + links)
    idle: float  # watts of the group's devices
    out_s: float = 0.0  # send across its end cut (< n) as its busiest sender sees it: the L_j term
    in_s: float = 0.0  # receive across its start cut (> 0) as its busiest receiver sees it
    reps: tuple[tuple[int, int], ...] = ()  # (device, samples) per replica (non-uniform links: pair rows)
    tail: float = 0.0  # training: all-reduce + optimizer step, once per iteration after the last backward


def _groups(costs: CostTable, head: int):
    """Every device subset with every unit choice (one unit per board kind within the subset)."""
    tp = device_types(costs, head)
    kind = {d: t for t, mem in enumerate(tp.members) for d in mem}
    d = costs.n_devices
    for size in range(1, d + 1):
        for sub in itertools.combinations(range(d), size):
            kinds = sorted({kind[x] for x in sub})
            for pick in itertools.product(*[range(tp.n_units(t)) for t in kinds]):
                sel = dict(zip(kinds, pick, strict=False))
                yield sub, tuple(tp.dev_units[x][sel[kind[x]]] for x in sub)


NONUNIFORM_ARCS = 3000  # non-uniform links: pair rows grow with the square of the stage options


def uniform_links(costs: CostTable) -> bool:
    """Every pair of distinct devices has the same bandwidth, latency and energy per byte."""
    off = ~np.eye(costs.n_devices, dtype=bool)
    bw, lat, epb = costs.bandwidth[off], costs.latency_s[off], costs.energy_per_byte_j[off]
    return not (len(bw) and (np.ptp(bw) > 0 or np.ptp(lat) > 0 or np.ptp(epb) > 0))


def applicable(costs: CostTable, obj: Objective, max_arcs: int, boundaries: int | None = None) -> bool:
    """<= 10 devices and at most ``max_arcs`` stage options (over ``boundaries`` cut positions, 0 and n
    included; default every layer boundary); non-uniform links: at most ``NONUNIFORM_ARCS``."""
    if costs.n_devices > 10:
        return False
    limit = max_arcs if uniform_links(costs) else min(max_arcs, NONUNIFORM_ARCS)
    return _arc_count(costs, obj, boundaries) <= limit


def _arc_count(costs: CostTable, obj: Objective, boundaries: int | None = None) -> int:
    k = _n_cuts(costs) if boundaries is None else boundaries
    groups = sum(1 for _ in _groups(costs, head_index(costs, obj)))
    depth = obj.microbatches if (obj.training and obj.schedule == "1f1b") else 1
    return k * (k - 1) // 2 * groups * depth


def _arcs(costs: CostTable, obj: Objective, bounds: np.ndarray | None = None) -> list[_Arc]:
    pf = Prefix(costs, obj)
    M, train = obj.microbatches, obj.training
    head = head_index(costs, obj)
    n = costs.n_layers
    nD = M if (train and obj.schedule == "1f1b") else 1
    idle_w = np.asarray(costs.idle_power_w, dtype=np.float64)
    busy = np.asarray(costs.busy_power_w, dtype=np.float64)
    arcs: list[_Arc] = []
    groups = list(_groups(costs, head))
    B = [int(b) for b in (np.arange(n + 1) if bounds is None else bounds) if pf.cut_ok[int(b)]]
    for a, i in enumerate(B[:-1]):
        for j in B[a + 1:]:
            for devs, units in groups:
                if any(pf.U[u, j] - pf.U[u, i] > 0 for u in units):
                    continue
                for d in range(nD):
                    stash = 0 if not train else (M if obj.schedule == "gpipe" else min(M, d + 1))
                    arcs += _arcs_at(costs, obj, pf, i, j, devs, units, d, stash, nD, idle_w, busy, head)
    return arcs


def _arcs_at(costs, obj, pf, i, j, devs, units, d, stash, nD, idle_w, busy, head) -> list[_Arc]:
    """The arcs of stage ``[i, j)`` on ``devs`` at depth ``d``: samples split within memory at this stash."""
    m, M, train, n = obj.micro, obj.microbatches, obj.training, costs.n_layers
    ks = allocate(pf, i, j, units, m, stash)
    if min(ks) < 1:
        return []
    if any(pf.memory(i, j, k, stash) > pf.dev_ram[x] for x, k in zip(devs, ks, strict=True)):
        return []
    times = [pf.time(u, i, j, k) for u, k in zip(units, ks, strict=True)]
    tau = max(times)
    params = pf.P[j] - pf.P[i]
    dyn = sum(max(busy[u] - idle_w[costs.units[u][0]], 0.0) * t for u, t in zip(units, times, strict=True))
    ar = ar_e = 0.0
    if train and len(devs) >= 2:
        ar, ar_e = allreduce(costs, devs, params)
    # sends between stages (uniform network): the busiest of this group's NICs; L_j takes the max with the
    # other side. The head's links: exact here (its own share does not travel).
    reps = tuple((x, k) for x, k in zip(devs, ks, strict=True))
    f = 2.0 if train else 1.0
    peer = next((x for x in range(costs.n_devices) if x not in devs), None)
    bw, lat, epb = ((float(costs.bandwidth[devs[0], peer]), float(costs.latency_s[devs[0], peer]),
                     float(costs.energy_per_byte_j[devs[0], peer])) if peer is not None else (np.inf, 0.0, 0.0))
    uniform = uniform_links(costs)
    out_s = f * (max(ks) * pf.cut[j] / bw + lat) if j < n and uniform else 0.0
    in_s = f * (max(ks) * pf.cut[i] / bw + lat) if i > 0 and uniform else 0.0
    if j < n:  # non-uniform: the send's energy is a pair row's
        lt, le = 0.0, (f * m * pf.cut[j] * epb if uniform else 0.0)
    elif not train:
        lt, le = pair_transfer(costs, reps, ((head, m),), pf.cut[j])
    else:
        lt = le = 0.0
    lin, lie = pair_transfer(costs, ((head, m),), reps, pf.cut[0]) if i == 0 and not train else (0.0, 0.0)
    stage = StageSpec(i, j, tuple(zip(units, ks, strict=True)))
    p = max(tau, lt, lin)
    tail = ar + optimizer_step(costs, units, params) if train else 0.0
    if not np.isfinite(p):
        return []
    if j == n:
        if d != 0:
            return []
        dsts = [(n, 0)]
    elif d == nD - 1 and nD > 1:
        dsts = [(j, d), (j, d - 1)]
    else:
        dsts = [(j, max(d - 1, 0))] if nD > 1 else [(j, 0)]
    return [_Arc(stage=stage, src=(i, d), dst=dst, devices=devs, a=tau + lt + lin, p=p,
                 e=dyn + le + lie + ar_e / M, idle=float(sum(idle_w[x] for x in devs)), out_s=out_s, in_s=in_s,
                 reps=reps, tail=tail)
            for dst in dsts]


def _pair_rows(costs: CostTable, obj: Objective, arcs: list[_Arc]) -> list[tuple[int, int, int, float, float]]:
    """(cut, arc ending there, arc starting there, seconds, joules) of the send between every two arcs that
    can follow each other (same node, no shared device), priced as the evaluator does."""
    pf = Prefix(costs, obj)
    f = 2.0 if obj.training else 1.0
    ends: dict[tuple[int, int], list[int]] = {}
    for k, a in enumerate(arcs):
        if a.stage.stop < costs.n_layers:
            ends.setdefault(a.dst, []).append(k)
    rows = []
    for kb, b in enumerate(arcs):
        if b.stage.start == 0:
            continue
        for ka in ends.get(b.src, ()):
            a = arcs[ka]
            if set(a.devices) & set(b.devices):
                continue
            t, e = pair_transfer(costs, a.reps, b.reps, pf.cut[b.stage.start])
            rows.append((b.stage.start, ka, kb, f * t, f * e))
    return rows


TIME_LIMIT_S = 60.0
COARSE_ARCS = 8000  # more stage options than this: the ILP runs on a coarse graph


class ILPTimeLimit(PlanError):
    """HiGHS hit its time limit before it found any plan (not the same as: no plan fits)."""


def check_time_limit(time_limit_s: float) -> None:
    if not time_limit_s > 0:
        raise PlanError(f"--ilp-time-limit {time_limit_s:g}: give a positive number of seconds, e.g. 60")


def coarse_bounds(costs: CostTable, obj: Objective, limit: int = COARSE_ARCS) -> np.ndarray | None:
    """The coarse graph's boundaries the ILP uses when every layer boundary gives more than ``limit`` stage
    options, else None."""
    from edgeplan.planner.dp import coarse_cuts

    if _arc_count(costs, obj) <= limit:
        return None
    k = _n_cuts(costs) - 1
    while k > 2 and _arc_count(costs, obj, k + 1) > limit:
        k -= 1
    pf = Prefix(costs, obj)
    return coarse_cuts(pf.cut, k, pf.cut_ok)


def _n_cuts(costs: CostTable) -> int:
    """Layer boundaries a stage may start or end at (0 and n included; CostTable.cut_ok)."""
    return costs.n_layers + 1 if costs.cut_ok is None else int(np.asarray(costs.cut_ok, dtype=bool).sum())


def solve(costs: CostTable, obj: Objective, time_limit_s: float = TIME_LIMIT_S,
          cuts: np.ndarray | None = None) -> Result:
    """Exact optimum by HiGHS; raises PlanError when the instance does not suit the ILP.

    When every layer boundary would give more than ``COARSE_ARCS`` stage options, the
    ILP runs on a coarse graph (``cuts``, default ``dp.coarse_cuts``: evenly spaced plus the
    cheapest cuts): exact there, ``exact=False`` and a note for the full graph.
    A time-out with a plan in hand returns it with ``exact=False`` and the MIP gap
    in the notes; a time-out with none raises ``ILPTimeLimit``.
    """
    import highspy

    check_time_limit(time_limit_s)
    if costs.n_devices > 10:
        raise PlanError(f"--solver ilp needs a small instance (<= 10 devices, this cluster has {costs.n_devices}); "
                        "use the default --solver dp")
    uniform = uniform_links(costs)
    n = costs.n_layers
    coarse_note = []
    if cuts is None:
        cuts = coarse_bounds(costs, obj, COARSE_ARCS if uniform else NONUNIFORM_ARCS)
    if cuts is not None:
        cuts = np.array(sorted({0, n} | {int(c) for c in cuts}))
        if len(cuts) < _n_cuts(costs):
            coarse_note = [f"ILP on a coarse graph: {len(cuts) - 2} candidate cuts of {n - 1} (exact there, not on "
                           f"the full graph)"]
    arcs = _arcs(costs, obj, cuts)
    if not arcs:
        return Result(layout=None, evaluation=None, exact=True, notes=["ILP: no feasible stage option"])
    kind = obj.objective
    M = obj.microbatches
    nA = len(arcs)
    U = max(max(a.p for a in arcs), max(max(a.out_s, a.in_s) for a in arcs))
    # columns: y (nA) | P | z (nA, energy only) | L (one per inner cut)
    energy = kind == "energy"
    cuts_in = sorted({a.stage.stop for a in arcs if a.stage.stop < n} | {a.stage.start for a in arcs if a.stage.start})
    Lcol = {j: nA + 1 + (nA if energy else 0) + x for x, j in enumerate(cuts_in)}
    Ecol = {j: nA + 1 + (nA if energy else 0) + len(cuts_in) + x for x, j in enumerate(cuts_in)} \
        if energy and not uniform else {}
    train_time = kind == "time"
    ncol = nA + 1 + (nA if energy else 0) + len(cuts_in) + len(Ecol) + (1 if train_time else 0)
    Pcol = nA
    Acol = ncol - 1  # training time: the largest tail
    pair_rows = [] if uniform else _pair_rows(costs, obj, arcs)

    def build(primary: bool, p_cap: float | None):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit_s))
        h.setOptionValue("mip_rel_gap", 1e-9)
        lb = np.zeros(ncol)
        ub = np.ones(ncol)
        ub[Pcol] = U if p_cap is None else p_cap
        if energy:
            ub[nA + 1:nA + 1 + nA] = U
        ub[list(Lcol.values())] = U
        ub[list(Ecol.values())] = np.inf
        if train_time:
            ub[Acol] = np.inf
        cost = np.zeros(ncol)
        lcols = list(Lcol.values())
        if kind == "throughput":
            if primary:
                cost[Pcol] = 1.0
            else:
                cost[:nA] = [a.a for a in arcs]
                cost[lcols] = 1.0
        elif kind == "latency":
            cost[:nA] = [a.a for a in arcs]
            cost[lcols] = 1.0
            cost[Pcol] = M - 1
        elif kind == "time":
            cost[:nA] = [a.a for a in arcs]
            cost[lcols] = 1.0
            cost[Pcol] = M - 1
            cost[Acol] = 1.0
        else:
            cost[:nA] = [a.e for a in arcs]
            cost[nA + 1:nA + 1 + nA] = [a.idle for a in arcs]
            cost[list(Ecol.values())] = 1.0
        h.addVars(ncol, lb, ub)
        h.changeColsCost(ncol, np.arange(ncol), cost)
        h.changeColsIntegrality(nA, np.arange(nA), np.array([highspy.HighsVarType.kInteger] * nA))
        inf = highspy.kHighsInf
        nodes: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for k, a in enumerate(arcs):
            nodes.setdefault(a.src, []).append((k, 1.0))
            nodes.setdefault(a.dst, []).append((k, -1.0))
        n = costs.n_layers
        for node, terms in sorted(nodes.items()):
            rhs = 1.0 if node[0] == 0 else (-1.0 if node[0] == n else 0.0)
            if node[0] == 0 or node[0] == n:
                # source / sink: total over depths handled below
                continue
            idx = np.array([t[0] for t in terms])
            val = np.array([t[1] for t in terms])
            h.addRow(rhs, rhs, len(idx), idx, val)
        src = [k for k, a in enumerate(arcs) if a.src[0] == 0]
        h.addRow(1.0, 1.0, len(src), np.array(src), np.ones(len(src)))
        for dev in range(costs.n_devices):
            idx = [k for k, a in enumerate(arcs) if dev in a.devices]
            if idx:
                h.addRow(-inf, 1.0, len(idx), np.array(idx), np.ones(len(idx)))
        for k, a in enumerate(arcs):  # P >= p_a y_a
            h.addRow(0.0, inf, 2, np.array([Pcol, k]), np.array([1.0, -a.p]))
            if train_time and a.tail > 0:  # A >= tail_a y_a
                h.addRow(0.0, inf, 2, np.array([Acol, k]), np.array([1.0, -a.tail]))
            if energy:  # z_a >= P - U (1 - y_a)
                h.addRow(-U, inf, 3, np.array([nA + 1 + k, Pcol, k]), np.array([1.0, -1.0, -U]))
            if a.stage.stop < n:  # L_j >= what its senders need
                h.addRow(0.0, inf, 2, np.array([Lcol[a.stage.stop], k]), np.array([1.0, -a.out_s]))
            if a.stage.start > 0:  # L_i >= what its receivers need
                h.addRow(0.0, inf, 2, np.array([Lcol[a.stage.start], k]), np.array([1.0, -a.in_s]))
        for col in lcols:  # P >= key of every link
            h.addRow(0.0, inf, 2, np.array([Pcol, col]), np.array([1.0, -1.0]))
        for j, ka, kb, t, e in pair_rows:  # L_j >= t_ab (y_a + y_b - 1); E_j likewise
            h.addRow(-t, inf, 3, np.array([Lcol[j], ka, kb]), np.array([1.0, -t, -t]))
            if Ecol and e > 0:
                h.addRow(-e, inf, 3, np.array([Ecol[j], ka, kb]), np.array([1.0, -e, -e]))
        h.run()
        return h

    def outcome(h) -> tuple[bool, bool]:
        """(optimal, has a plan); raises on a time-out without a plan or an unexpected status."""
        st = h.getModelStatus()
        if st == highspy.HighsModelStatus.kOptimal:
            return True, True
        if st == highspy.HighsModelStatus.kInfeasible:
            return False, False
        has = h.getInfo().primal_solution_status == 2  # feasible point
        if st == highspy.HighsModelStatus.kTimeLimit:
            if has:
                return False, True
            raise ILPTimeLimit(f"ILP: time limit of {time_limit_s:g} s reached before any plan was found "
                               f"({nA} stage options); raise --ilp-time-limit or use --solver dp")
        raise PlanError(f"ILP: HiGHS stopped with status {h.modelStatusToString(st)!r} ({nA} stage options); "
                        "use --solver dp")

    h = build(True, None)
    optimal, has = outcome(h)
    if not has:
        return Result(layout=None, evaluation=None, exact=True, notes=["ILP: no stage options fit together"])
    notes = [f"ILP over {nA} stage options (HiGHS)"]
    if kind == "throughput" and optimal:
        pstar = h.getInfo().objective_function_value
        h2 = build(False, pstar * (1 + 1e-9))
        optimal, has = outcome(h2)
        h = h2 if has else h
    if not optimal:
        notes.append(f"ILP: time limit of {time_limit_s:g} s reached; best plan found so far, not proven optimal "
                     f"(MIP gap {h.getInfo().mip_gap * 100:.2f}%)")
    y = np.array(h.getSolution().col_value[:nA])
    chosen = sorted((arcs[k] for k in np.nonzero(y > 0.5)[0]), key=lambda a: a.stage.start)
    layout = tuple(a.stage for a in chosen)
    ev = evaluate(costs, layout, obj)
    return Result(layout=layout, evaluation=ev, exact=optimal and not coarse_note, notes=coarse_note + notes)
