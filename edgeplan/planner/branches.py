"""Plans with placement constraints and parallel branches (flexible parallel learning, issue 16).

A multi-input model whose inputs live on different boards (``--pin input0=cam-a``) runs as
one *branch stage* (``Stage.kind == "branches"``) whose replicas hold DIFFERENT layers: each
input's branch (``LayerGraph.branch_ranges``) on the board its data lives on, all running
concurrently; the joined rest ``[J, n)`` (junction + trunk) is an ordinary pipeline of
stages x replica groups after it. A model without pinned inputs gets no branch stage: the
pipeline covers ``[0, n)`` and its input comes from the head (or the board its one input is
pinned to). Layer pins (``--pin fc=trunk``) make a stage holding the layer run on that
board alone; a pinned input's raw data may only be on its board (every stage whose input
cut carries it runs there alone) unless ``--allow-raw-transfer`` names it.

Pricing, per micro-batch of ``m`` samples (the terms of costmodel's docstring; a branch
is priced like a stage of its own layers on its unit, with all ``m`` samples of its source):

- branch ``b`` on unit ``u``: ``t_b = m (F_u[b) + HB_u (in_b + out_b)) + X_u[b) + H_u``
  (0 for a branch without layers: its input goes straight to the junction); its input
  link ``i_b`` (source board -> branch board, one-way; 0 when equal) and its send
  ``s_b`` to the first trunk stage's group (doubled when training: gradients come back);
- the junction waits for the slowest branch: ``C = max_b (i_b + w_d(b) + s_b)`` with
  ``w_d`` the summed branch time of the branch's board (branches sharing a board run one
  after the other);
- resources ``x``: every branch board (its branches' time), every branch link, every
  trunk stage and link as in costmodel, plus, for a board that runs work in several
  places (a branch and a trunk stage), that board's summed time;
- inference latency ``C + sum_trunk p + (M-1) max p``, throughput ``m / max p``;
  training iteration ``C + sum_trunk p + (M-1) max p + max ar`` (costmodel: a stage
  all-reduces after its last backward);
- memory per board: the sum over its branch and stage replicas (a branch holds its
  weights (+ grads, optimizer state) and the stashed activations of ``m`` samples);
  energy as in costmodel.

``solve`` enumerates every layout (branch units x trunk cuts x disjoint unit groups),
pruned by a compute-only lower bound, and keeps the best feasible one: exact whenever
every cut and board was a candidate and the walk finished (the plan's notes say
otherwise). Samples inside a replica group are split by costmodel.allocate (min-max),
as everywhere in the planner. tests/planner/test_planner_branches.py checks it against
an exhaustive search with its own pricing.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeplan import jsonio
from edgeplan.errors import PlanError
from edgeplan.graph.model import LayerGraph
from edgeplan.planner.costmodel import (
    TRAINABLE_TARGETS,
    Evaluation,
    Prefix,
    ReplicaEval,
    StageEval,
    StageSpec,
    allocate,
    allreduce,
    head_index,
    stash_of,
    transfer,
)
from edgeplan.planner.objective import Objective
from edgeplan.planner.pins import input_devices, layer_devices, resolve_pins, resolve_raw
from edgeplan.planner.plan import Pin, Plan, Predicted, Replica, Stage
from edgeplan.profiles.cost import CostTable

MB = float(1 << 20)
MAX_LAYOUTS = 500000  # trunk layouts (before pruning) the search may face; fewer trunk cuts are tried above it
MAX_SPLITS = 64  # a replica group's sample splits searched one by one up to this many, else the min-max split
MAX_VISITS = 60000  # partial + priced layouts the walk may visit before it stops (the plan's notes then say so)
MAX_TRUNK_DEVICES = 8  # boards the trunk may use (the fastest ones, pinned boards always) beyond this


@dataclass(frozen=True)
class Branch:
    """One model input's branch as the planner prices it (bytes per sample)."""

    input: str
    start: int
    stop: int
    in_bytes: float  # the input tensor
    out_bytes: float  # what it sends to the junction: its tensors live at the junction cut (the raw input too)
    source: int  # device index the input's data lives on (its pinned board, else the head)
    device: int  # device index that runs its layers


@dataclass(frozen=True)
class Problem:
    """What the pinned planner needs beyond the CostTable (``problem_of`` builds it from a LayerGraph)."""

    branches: tuple[Branch, ...]  # () : no branch stage
    join: int  # first trunk layer (0 without branches)
    source: int  # without branches: device index the model input comes from
    layer_pins: tuple[tuple[int, int], ...]  # (layer index >= join, device index)
    raw_cuts: tuple[tuple[int, int, str], ...]  # (cut k >= join, device, input): a stage starting at k runs there alone
    no_cuts: tuple[int, ...] = ()  # trunk cuts codegen cannot split (a live tensor without one batch dimension)


@dataclass(frozen=True)
class Layout:
    branch_units: tuple[int, ...]  # global unit index per branch, in Problem.branches order
    stages: tuple[StageSpec, ...]  # trunk stages over [join, n)


@dataclass(frozen=True)
class BranchEval:
    unit: int
    device: int
    time_s: float
    forward_s: float
    input_s: float  # source board -> branch board
    send_s: float  # one-way to the first trunk stage
    memory_bytes: float
    reserve_bytes: float = 0.0  # training: its rank's torch reserve (Prefix.reserve)


@dataclass(frozen=True)
class PinnedEval(Evaluation):
    """An Evaluation (its ok / value / score) of a pinned layout: also each branch's board and the pins or
    raw-transfer rules it breaks; ``unsupported`` names what cannot run (text, not stage/unit pairs)."""

    branches: tuple[BranchEval, ...] = ()
    violations: tuple[str, ...] = ()  # broken pins / raw-transfer rules

    @property
    def feasible(self) -> bool:
        return super().feasible and not self.violations


# --- the problem from a LayerGraph and the pins --------------------------------------------------------


def problem_of(graph: LayerGraph, costs: CostTable, objective: Objective, pins: Sequence[Pin],
               raw: Sequence[str] = ()) -> Problem:
    """Branches, pinned layers and raw-data cuts of ``graph`` under ``pins`` (device indices of ``costs``)."""
    dev = {name: k for k, name in enumerate(costs.devices)}
    head = head_index(costs, objective)
    batch = max(1, graph.batch)
    lp = {i: dev[d] for i, d in layer_devices(graph, pins).items()}
    src = {x: dev[d] for x, d in input_devices(pins).items()}
    pin_of = {layer: p for p in pins for layer in p.layers}
    n = len(graph.layers)
    branches: list[Branch] = []
    join = 0
    if len(graph.inputs) > 1 and src:
        ranges = graph.branch_ranges()
        join = ranges[-1][2]
        if join >= n:
            raise PlanError(f"--pin: the inputs of {graph.name!r} never join (no layer reads two of them), so "
                            f"there is no junction to plan branches around; pin layers instead")
        live = set(graph.live_at(join))
        for name, start, stop in ranges:
            devs = {lp[i] for i in range(start, stop) if i in lp}
            where = src.get(name, head)
            if len(devs) > 1 or (name in src and devs and devs != {where}):
                names = sorted({f"--pin {pin_of[graph.layers[i].name].name}="
                                f"{costs.devices[lp[i]]}" for i in range(start, stop) if i in lp})
                raise PlanError(f"{' and '.join(names)} put branch {name!r} on different boards"
                                + (f" than its input's pin ({costs.devices[where]})" if name in src else "")
                                + "; a branch runs on one board: pin it to one")
            device = devs.pop() if devs else where
            out = sum(graph.layers[i].out_bytes for i in range(start, stop) if graph.layers[i].name in live)
            spec = graph.inputs[[t.name for t in graph.inputs].index(name)]
            if name in live:
                out += spec.nbytes
            branches.append(Branch(input=name, start=start, stop=stop, in_bytes=spec.nbytes / batch,
                                   out_bytes=out / batch, source=where, device=device))
        for b in branches:
            if b.source != b.device and b.input in src and b.input not in raw:
                raise PlanError(f"--pin: input {b.input!r} lives on {costs.devices[b.source]} but its branch is "
                                f"pinned to {costs.devices[b.device]}; its raw data would cross a link: pin both to "
                                f"one board or pass --allow-raw-transfer {b.input}")
    source = head
    if not branches and src:  # one pinned input (or several never read apart): its data comes from its board
        firsts = {src[t.name] for t in graph.inputs if t.name in src}
        if len(firsts) > 1:
            raise PlanError("--pin: the model's inputs are pinned to different boards but its layers read them "
                            "together from the first layer on; pin them to one board")
        source = firsts.pop()
    raw_cuts = []
    for x, d in sorted(src.items()):
        if x in raw:
            continue
        for k in range(join, n):
            if x in graph.live_at(k):
                raw_cuts.append((k, d, x))
    allowed = graph.cut_allowed() if hasattr(graph, "cut_allowed") else (True,) * (n + 1)
    return Problem(branches=tuple(branches), join=join, source=source,
                   layer_pins=tuple(sorted((i, d) for i, d in lp.items() if i >= join)), raw_cuts=tuple(raw_cuts),
                   no_cuts=tuple(k for k in range(join + 1, n) if not allowed[k]))


# --- pricing --------------------------------------------------------------------------------------------


def _branch_time(pf: Prefix, b: Branch, u: int, m: int) -> tuple[float, float]:
    """(time, forward part) of one call of branch ``b`` on unit ``u`` with ``m`` samples (0 without layers)."""
    if b.stop == b.start:
        return 0.0, 0.0
    per_call = pf.per_call(u, b.start, b.stop)
    t = m * (pf.F[u, b.stop] - pf.F[u, b.start] + pf.HBi[u] * b.in_bytes + pf.HBo[u] * b.out_bytes) + per_call
    if not pf.training:
        return float(t), float(t)
    fwd = pf.Ffwd[u, b.stop] - pf.Ffwd[u, b.start] + pf.HBin[u] * b.in_bytes + pf.HBout[u] * b.out_bytes
    return float(t), float(m * fwd + per_call / 2)


class _Links:
    """costmodel's transfers and all-reduce, remembered (the search asks for the same pairs thousands of times).

    A transfer goes between replica ends, (device, samples) in replica order, priced the way
    costmodel prices its own stages: per sender -> receiver pair when costmodel has
    ``pair_transfer``, else the whole micro-batch over the group's slowest link.
    """

    def __init__(self, costs: CostTable):
        self.costs = costs
        self.memo: dict[tuple, tuple[float, float]] = {}
        from edgeplan.planner import costmodel

        self.pairwise = getattr(costmodel, "pair_transfer", None)

    def transfer(self, src: tuple[tuple[int, int], ...], dst: tuple[tuple[int, int], ...],
                 bytes_per_sample: float) -> tuple[float, float]:
        key = ("t", src, dst, bytes_per_sample)
        if key not in self.memo:
            if self.pairwise is not None:
                self.memo[key] = self.pairwise(self.costs, src, dst, bytes_per_sample)
            else:
                m = sum(k for _, k in src)
                self.memo[key] = transfer(self.costs, tuple(d for d, _ in src), tuple(d for d, _ in dst),
                                          m * bytes_per_sample)
        return self.memo[key]

    def allreduce(self, group: tuple[int, ...], nbytes: float) -> tuple[float, float]:
        key = ("a", group, nbytes)
        if key not in self.memo:
            self.memo[key] = allreduce(self.costs, group, nbytes)
        return self.memo[key]


def evaluate(costs: CostTable, problem: Problem, layout: Layout, objective: Objective,
             prefix: Prefix | None = None, links: _Links | None = None) -> PinnedEval:
    """Price ``layout`` (module docstring)."""
    pf = prefix or Prefix(costs, objective)
    links = links or _Links(costs)
    m, M, train = objective.micro, objective.microbatches, objective.training
    head = head_index(costs, objective)
    n = costs.n_layers
    stages = layout.stages
    _check_cover(problem, stages, n, m, costs)
    has_b = bool(problem.branches)
    S = len(stages) + (1 if has_b else 0)
    busy = np.asarray(costs.busy_power_w, dtype=np.float64)
    idle = np.asarray(costs.idle_power_w, dtype=np.float64)
    groups = [tuple(costs.units[u][0] for u, _ in st.replicas) for st in stages]
    ends = [tuple((costs.units[u][0], k) for u, k in st.replicas) for st in stages]  # (device, samples)
    e0 = ends[0] if ends else ((head, m),)
    violations: list[str] = []
    unsupported: list[str] = []
    mem: dict[int, float] = {}
    work: dict[int, list[float]] = {}  # per device: its replicas' times (branches and stages)
    ar_of: dict[int, float] = {}
    p_res: list[float] = []
    dyn_j = 0.0
    bevals: list[BranchEval] = []
    for b, u in zip(problem.branches, layout.branch_units, strict=True):
        d = costs.units[u][0]
        if d != b.device:
            violations.append(f"branch {b.input!r} must run on {costs.devices[b.device]}, not {costs.devices[d]}")
        if b.stop > b.start:
            if pf.U[u, b.stop] - pf.U[u, b.start] > 0:
                unsupported.append(f"{costs.devices[d]}:{costs.units[u][1]} cannot run branch {b.input!r}")
            t, fwd = _branch_time(pf, b, u, m)
            ws = b.in_bytes + float(pf.act[b.start:b.stop].max())
            need = (pf.P[b.stop] - pf.P[b.start]) * pf.wfactor + m * (
                stash_of(objective, S, 0) * (pf.A[b.stop] - pf.A[b.start]) + ws)
        else:
            t = fwd = need = 0.0
        in_t, in_e = links.transfer(((b.source, m),), ((d, m),), b.in_bytes)
        send_t, send_e = links.transfer(((d, m),), e0, b.out_bytes)
        link = 2 * send_t if train else send_t
        p_res += [in_t, link]
        dyn_j += in_e + send_e * (2 if train else 1) + max(busy[u] - idle[d], 0.0) * t
        rsv = float(pf.reserve[u]) if b.stop > b.start else 0.0  # its training rank's torch reserve (inference: 0)
        mem[d] = mem.get(d, 0.0) + need + rsv
        work.setdefault(d, []).append(t)
        bevals.append(BranchEval(unit=u, device=d, time_s=float(t), forward_s=float(fwd), input_s=float(in_t),
                                 send_s=float(send_t), memory_bytes=float(need), reserve_bytes=rsv))
    crit = 0.0
    for be in bevals:
        crit = max(crit, be.input_s + sum(work[be.device]) + (2 if train else 1) * be.send_s)
    chain = 0.0
    in_t = 0.0
    if not has_b:
        in_t, in_e = links.transfer(((problem.source, m),), e0, pf.cut[problem.join])
        p_res.append(in_t)
        chain += in_t
        dyn_j += in_e
    pins = dict(problem.layer_pins)
    raw_at = {}
    for k, d, x in problem.raw_cuts:
        raw_at.setdefault(k, []).append((d, x))
    sevals: list[StageEval] = []
    for s, st in enumerate(stages):
        i, j = st.start, st.stop
        stash = stash_of(objective, S, s + (1 if has_b else 0))
        want = {pins[x] for x in range(i, j) if x in pins} | {d for d, _ in raw_at.get(i, ())}
        if want and (len(want) > 1 or groups[s] != (next(iter(want)),)):
            what = [f"layer {costs.layer_names[x]} pinned to {costs.devices[pins[x]]}"
                    for x in range(i, j) if x in pins]
            what += [f"raw input {x!r} of {costs.devices[d]}" for d, x in raw_at.get(i, ())]
            violations.append(f"stage {costs.layer_names[i]}..{costs.layer_names[j - 1]} on "
                              f"{'+'.join(costs.devices[g] for g in groups[s])} holds {', '.join(what)}")
        reps = []
        e_stage = 0.0
        for u, k in st.replicas:
            d = costs.units[u][0]
            if pf.U[u, j] - pf.U[u, i] > 0:
                unsupported.append(f"{costs.devices[d]}:{costs.units[u][1]} cannot run layers "
                                   f"{costs.layer_names[i]}..{costs.layer_names[j - 1]}")
            t = pf.time(u, i, j, k)
            need = pf.memory(i, j, k, stash)
            mem[d] = mem.get(d, 0.0) + need + pf.reserve[u]
            work.setdefault(d, []).append(t)
            e_stage += max(busy[u] - idle[d], 0.0) * t
            reps.append(ReplicaEval(unit=u, device=d, samples=k, time_s=float(t), memory_bytes=float(need),
                                    forward_s=float(pf.forward_time(u, i, j, k)), reserve_bytes=float(pf.reserve[u])))
        slowest = max(reps, key=lambda r: r.time_s)
        tau = slowest.time_s
        if s + 1 < len(stages):
            send_t, send_e = links.transfer(ends[s], ends[s + 1], pf.cut[j])
        elif not train:
            send_t, send_e = links.transfer(ends[s], ((head, m),), pf.cut[j])
        else:
            send_t, send_e = 0.0, 0.0
        ar_t, ar_e = links.allreduce(groups[s], pf.P[j] - pf.P[i]) if train else (0.0, 0.0)
        for d in groups[s]:
            ar_of[d] = ar_t
        link = 2 * send_t if (train and s + 1 < len(stages)) else send_t
        p_res += [tau, link]
        chain += tau + link
        e_stage += send_e * (2 if (train and s + 1 < len(stages)) else 1) + (ar_e / M if train else 0.0)
        dyn_j += e_stage
        sevals.append(StageEval(spec=st, replicas=tuple(reps), compute_s=float(tau), forward_s=slowest.forward_s,
                                send_s=float(send_t), allreduce_s=float(ar_t), energy_j=float(e_stage / m)))
    for ts in work.values():  # a board's own time, whether its work sits in one place or several
        p_res.append(sum(ts))
    period = max(p_res)
    used = sorted(work)
    idle_used = float(sum(idle[d] for d in used))
    if train:
        iter_s = crit + chain + (M - 1) * period + max(ar_of.values(), default=0.0)
        latency = crit + chain
        throughput = objective.batch / iter_s if iter_s > 0 else np.inf
        energy = (dyn_j * M + idle_used * iter_s) / objective.batch
    else:
        iter_s = None
        latency = crit + chain + (M - 1) * period
        throughput = m / period if period > 0 else np.inf
        energy = (dyn_j + idle_used * period) / m
    overflows = tuple((d, float(v), float(costs.ram_bytes[d])) for d, v in sorted(mem.items())
                      if v > costs.ram_bytes[d])
    misses = []
    lat_key = iter_s if train else latency
    if objective.latency_budget_s is not None and lat_key > objective.latency_budget_s * (1 + 1e-12):
        misses.append("latency")
    if objective.energy_budget_j is not None and energy > objective.energy_budget_j * (1 + 1e-12):
        misses.append("energy")
    return PinnedEval(branches=tuple(bevals), stages=tuple(sevals), input_s=float(in_t), latency_s=float(latency),
                      period_s=float(period), throughput=float(throughput), energy_j=float(energy),
                      iter_s=None if iter_s is None else float(iter_s), overflows=overflows,
                      unsupported=tuple(unsupported), violations=tuple(violations), budget_misses=tuple(misses))


def _check_cover(problem: Problem, stages: Sequence[StageSpec], n: int, m: int, costs: CostTable) -> None:
    pos = problem.join
    seen: set[int] = set()
    if not stages:
        raise PlanError("plan has no trunk stages")
    for s, st in enumerate(stages):
        if st.start != pos or st.stop <= st.start:
            raise PlanError(f"trunk stage {s}: layers [{st.start}, {st.stop}) do not continue at layer {pos}")
        pos = st.stop
        for u, _ in st.replicas:
            d = costs.units[u][0]
            if d in seen:
                raise PlanError(f"device {costs.devices[d]!r} is used by more than one trunk stage or replica")
            seen.add(d)
        if sum(k for _, k in st.replicas) != m or any(k < 1 for _, k in st.replicas):
            raise PlanError(f"trunk stage {s}: replica samples must be >= 1 and sum to the micro-batch size {m}")
    if pos != n:
        raise PlanError(f"trunk stages cover layers up to {pos} but the model has {n} layers")


# --- the exact search -----------------------------------------------------------------------------------


def _units_of(costs: CostTable, objective: Objective, d: int) -> list[int]:
    return [u for u, (dv, _, t) in enumerate(costs.units)
            if dv == d and (not objective.training or t in TRAINABLE_TARGETS)]


def _groups(costs: CostTable, objective: Objective, devices: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty set of devices, each with each of its usable units (tuples of unit indices)."""
    per = {d: _units_of(costs, objective, d) for d in devices}
    devs = [d for d in devices if per[d]]
    out = []
    for r in range(1, len(devs) + 1):
        for combo in itertools.combinations(devs, r):
            out += [tuple(us) for us in itertools.product(*(per[d] for d in combo))]
    return out


def _count(after: dict[int, list[int]], start: int, n: int, groups_by_mask: dict[int, int]) -> int:
    """Layouts of the trunk from ``start`` (stop positions x disjoint groups), counted without pricing them."""
    memo: dict[tuple[int, int], int] = {}

    def go(pos: int, used: int) -> int:
        if pos == n:
            return 1
        if (pos, used) not in memo:
            memo[(pos, used)] = sum(cnt * go(stop, used | mask) for stop in after[pos]
                                    for mask, cnt in groups_by_mask.items() if mask & used == 0)
        return memo[(pos, used)]

    return go(start, 0)


def solve(costs: CostTable, problem: Problem, objective: Objective, *,
          max_layouts: int = MAX_LAYOUTS) -> tuple[Layout | None, PinnedEval | None, list[str], bool]:
    """Best feasible layout within the budgets (None if none), notes, and whether the search was exhaustive."""
    pf = Prefix(costs, objective)
    n, m = costs.n_layers, objective.micro
    notes: list[str] = []
    b_opts = []
    for b in problem.branches:
        us = [u for u in _units_of(costs, objective, b.device)
              if b.stop == b.start or pf.U[u, b.stop] - pf.U[u, b.start] == 0]
        if not us:
            units = [costs.units[u] for u in range(len(costs.units)) if costs.units[u][0] == b.device]
            missing = next((costs.layer_names[x] for x in range(b.start, b.stop)
                            if not any(costs.supported[u, x] for u in range(len(costs.units))
                                       if costs.units[u][0] == b.device)), None)
            why = f"none of its units runs layer {missing!r}" if missing else \
                f"its units ({', '.join(f'{n}/{t}' for _, n, t in units)}) cannot train (training uses CPU and CUDA)"
            raise PlanError(f"--pin: {costs.devices[b.device]} cannot {'train' if objective.training else 'run'} "
                            f"the branch of input {b.input!r}: {why}; pin the input to another board")
        b_opts.append(us)
    devices = list(range(costs.n_devices))
    if len(devices) > MAX_TRUNK_DEVICES:  # keep the pinned boards and the fastest others
        must = {d for _, d in problem.layer_pins} | {d for _, d, _ in problem.raw_cuts}
        speed = sorted(devices, key=lambda d: min((pf.F[u, n] - pf.F[u, problem.join]
                                                   for u in _units_of(costs, objective, d)), default=np.inf))
        keep = list(must) + [d for d in speed if d not in must]
        devices = sorted(keep[:max(MAX_TRUNK_DEVICES, len(must))])
        notes.append(f"pinned search: the trunk may use {len(devices)} of {costs.n_devices} boards (the pinned and "
                     f"fastest ones)")
    groups = _groups(costs, objective, devices)
    masks = [sum({1 << costs.units[u][0] for u in g}) for g in groups]
    by_mask: dict[int, int] = {}
    for mask in masks:
        by_mask[mask] = by_mask.get(mask, 0) + 1
    interior = [k for k in range(problem.join + 1, n) if k not in problem.no_cuts]
    forced = {k for k, _, _ in problem.raw_cuts if k > problem.join}
    for i, _ in problem.layer_pins:  # a pinned layer's own boundaries
        forced.update(x for x in (i, i + 1) if problem.join < x < n)
    ranked = sorted((k for k in interior if k not in forced), key=lambda k: (pf.cut[k], k))
    n_branch = math.prod(len(o) for o in b_opts) if b_opts else 1
    def layouts(keep: int) -> tuple[list[int], dict[int, list[int]], int]:
        allowed = sorted(set(ranked[:keep]) | forced)
        after = {p: [k for k in allowed if k > p] + [n] for p in [problem.join, *allowed]}
        return allowed, after, n_branch * _count(after, problem.join, n, by_mask)

    lo, hi = 0, len(ranked)  # keep the most cheap cuts whose layouts fit the budget (the count grows with them)
    if layouts(hi)[2] > max_layouts:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if layouts(mid)[2] <= max_layouts else (lo, mid - 1)
    allowed, after, _ = layouts(hi)
    exact = len(allowed) == len(interior) and len(devices) == costs.n_devices
    if not exact:
        notes.append(f"pinned search over {len(allowed)} of {len(interior)} trunk cuts (the cheapest) and "
                     f"{len(devices)} of {costs.n_devices} boards: optimal among those, not proven optimal overall")
    stash_base = 1 if problem.branches else 0
    n_stages_max = len(devices)
    links = _Links(costs)
    shares: dict[tuple, list] = {}
    approx = [False]  # some group's split was costmodel.allocate's, not searched
    lows: dict[tuple, float | None] = {}
    # stash of a trunk stage is at least this whatever the final number of stages (for lower bounds)
    stash_lb = 0 if not objective.training else (objective.microbatches if objective.schedule == "gpipe" else 1)
    M = objective.microbatches
    best: list = [None]  # (layout, evaluation)

    def low(i: int, j: int, g: tuple[int, ...]) -> float | None:
        """A lower bound on the stage's time (None: it cannot fit its boards' memory with any stash)."""
        key = (i, j, g)
        if key not in lows:
            caps = [min(pf.capacity(u, i, j, stash_lb), m) for u in g]
            fits = min(caps) >= 1 and sum(caps) >= m  # some split holds every replica's samples
            ks = allocate(pf, i, j, g, m, stash_lb) if len(g) > 1 else (m,)  # min-max within those caps
            lows[key] = max(pf.time(u, i, j, k) for u, k in zip(g, ks, strict=True)) if fits else None
        return lows[key]

    idle_w = [float(x) for x in costs.idle_power_w]

    def beaten(crit0: float, total: float, top: float, used: int = 0, dyn0: float = 0.0) -> bool:
        """Whether no completion of a partial trunk can meet the budgets or beat the best layout's score (value,
        then latency or iteration time): compute-only lower bounds (links, memory and the trunk's busy power
        ignored; energy: the branches' busy energy + the idle power of the boards used so far over the period)."""
        chain = crit0 + total + (M - 1) * max(top, crit0)  # lower bound of latency / iteration time
        energy = 0.0
        if not objective.training:
            idle = sum(w for d, w in enumerate(idle_w) if used >> d & 1)
            energy = (dyn0 + idle * max(top, crit0)) / m
        if objective.latency_budget_s is not None and chain > objective.latency_budget_s * (1 + 1e-12):
            return True
        if objective.energy_budget_j is not None and energy > objective.energy_budget_j * (1 + 1e-12):
            return True
        if best[0] is None:
            return False
        value = {"energy": energy, "throughput": max(top, crit0)}.get(objective.objective, chain)
        return (value, chain) > best[0][1].score(objective)

    def splits(i: int, j: int, g: tuple[int, ...], stash: int) -> list[tuple[int, ...]]:
        """Sample splits of a group worth pricing: all of them while few (transfers depend on the split), else
        costmodel.allocate's min-max split."""
        key = (i, j, g, stash)
        if key not in shares:
            if len(g) == 1:
                shares[key] = [(m,)]
            elif math.comb(m - 1, len(g) - 1) <= MAX_SPLITS:
                shares[key] = [tuple(b - a for a, b in zip((0, *c), (*c, m), strict=True))
                               for c in itertools.combinations(range(1, m), len(g) - 1)]
            else:
                ks = allocate(pf, i, j, g, m, stash)
                shares[key] = [ks] if all(k >= 1 for k in ks) else []
                approx[0] = True
        return shares[key]

    def priced(i: int, j: int, g: tuple[int, ...], stash: int) -> list[tuple[float, tuple[int, ...]]]:
        """(stage compute time, split) of the splits whose replicas fit their boards alone, fastest first."""
        key = ("p", i, j, g, stash)
        if key not in shares:
            out = []
            for ks in splits(i, j, g, stash):
                if all(pf.memory(i, j, k, stash) <= pf.unit_ram[u] for u, k in zip(g, ks, strict=True)):
                    out.append((max(pf.time(u, i, j, k) for u, k in zip(g, ks, strict=True)), ks))
            shares[key] = sorted(out)
        return shares[key]

    def leaf(bu: tuple[int, ...], crit0: float, trunk: list[tuple[int, int, tuple[int, ...]]]) -> None:
        S = len(trunk) + stash_base
        ctx["used"] = ctx["bmask"] | sum({1 << costs.units[u][0] for _, _, g in trunk for u in g})
        options = [priced(i, j, g, stash_of(objective, S, s + stash_base)) for s, (i, j, g) in enumerate(trunk)]
        for combo in itertools.product(*options):
            visits[0] += 1
            if visits[0] > MAX_VISITS:
                return
            taus = [t for t, _ in combo]
            if beaten(crit0, sum(taus), max(taus), ctx["used"], ctx["dyn0"]):
                continue
            specs = tuple(StageSpec(i, j, tuple(zip(g, ks, strict=True)))
                          for (i, j, g), (_, ks) in zip(trunk, combo, strict=True))
            lay = Layout(branch_units=bu, stages=specs)
            ev = evaluate(costs, problem, lay, objective, prefix=pf, links=links)
            if ev.ok and (best[0] is None or ev.score(objective) < best[0][1].score(objective)):
                best[0] = (lay, ev)

    visits = [0]
    ctx: dict[str, float | int] = {}  # per choice of branch units: their boards (mask) and busy energy
    need: dict[tuple[int, int], set[int]] = {}  # boards a stage must run on alone (pins, raw data)

    def walk(bu, crit0, pos, used, acc, total, top) -> None:
        visits[0] += 1
        if visits[0] > MAX_VISITS:
            return
        if pos == n:
            leaf(bu, crit0, acc)
            return
        if len(acc) >= n_stages_max:
            return
        for stop in reversed(after[pos]):  # the longest stage first: simple layouts give early bounds
            want = need.get((pos, stop))
            if want is None:
                want = need[(pos, stop)] = ({d for x, d in problem.layer_pins if pos <= x < stop}
                                            | {d for k, d, _ in problem.raw_cuts if k == pos})
            for g, mask in zip(groups, masks, strict=True):
                if mask & used or (want and (len(want) > 1 or mask != 1 << next(iter(want)) or len(g) != 1)):
                    continue
                t = low(pos, stop, g)
                if t is None:
                    continue
                if beaten(crit0, total + t, max(top, t), used | mask | ctx["bmask"], ctx["dyn0"]):
                    continue
                acc.append((pos, stop, g))
                walk(bu, crit0, stop, used | mask, acc, total + t, max(top, t))
                acc.pop()

    for bu in itertools.product(*b_opts) if b_opts else [()]:
        work: dict[int, float] = {}
        for b, u in zip(problem.branches, bu, strict=True):
            work[b.device] = work.get(b.device, 0.0) + _branch_time(pf, b, u, m)[0]
        crit0 = max(work.values(), default=0.0)  # the busiest branch board: on the critical path, and a resource
        ctx["bmask"] = sum({1 << costs.units[u][0] for u in bu})
        ctx["dyn0"] = sum(max(float(costs.busy_power_w[u]) - idle_w[costs.units[u][0]], 0.0)
                          * _branch_time(pf, b, u, m)[0] for b, u in zip(problem.branches, bu, strict=True))
        walk(tuple(bu), crit0, problem.join, 0, [], 0.0, 0.0)
    best = best[0]
    if approx[0]:
        exact = False
        notes.append(f"pinned search: groups with more than {MAX_SPLITS} ways to split a micro-batch use the "
                     f"min-max split")
    if visits[0] > MAX_VISITS:
        exact = False
        notes.append(f"pinned search stopped after {MAX_VISITS} layouts: the best plan found, not proven optimal")
    if best is None:
        return None, None, notes, exact
    return best[0], best[1], notes, exact


# --- the Plan -------------------------------------------------------------------------------------------


def check_branch_memory(costs: CostTable, problem: Problem, objective: Objective, pins: Sequence[Pin]) -> None:
    """Refuse a pinned board that cannot hold its branch (weights, optimizer state, stashed activations)."""
    pf = Prefix(costs, objective)
    S = 2
    for b in problem.branches:
        if b.stop == b.start:
            continue
        ws = b.in_bytes + float(pf.act[b.start:b.stop].max())
        need = (pf.P[b.stop] - pf.P[b.start]) * pf.wfactor + objective.micro * (
            stash_of(objective, S, 0) * (pf.A[b.stop] - pf.A[b.start]) + ws)
        cap = float(pf.dev_ram[b.device])  # training: less its rank's torch reserve
        if need > cap:
            fits = [costs.devices[d] for d in range(costs.n_devices) if pf.dev_ram[d] >= need]
            flag = next((f"--pin {p.name}={p.device}" for p in pins if p.input == b.input), "--pin")
            rsv = float(costs.ram_bytes[b.device]) - cap
            has = (f"{float(costs.ram_bytes[b.device]) / MB:.1f} MB ({cap / MB:.1f} MB beside a training rank's "
                   f"{rsv / MB:.0f} MB torch reserve)" if rsv > 0 else f"{cap / MB:.1f} MB")
            raise PlanError(f"{flag}: {costs.devices[b.device]} has {has} but the branch of input "
                            f"{b.input!r} needs {need / MB:.1f} MB; boards that hold it: "
                            f"{', '.join(fits) if fits else 'none (lower --batch or raise --microbatches)'}")


def plan_pinned(graph: LayerGraph, costs: CostTable, objective: Objective, pin_texts: Sequence[str],
                raw_texts: Sequence[str] = (), *, model: str = "model", graph_sha256: str = "",
                cluster: str = "cluster", cluster_sha256: str = "", max_layouts: int = MAX_LAYOUTS) -> Plan:
    """The best plan obeying ``--pin`` (and ``--allow-raw-transfer``); PlanError naming the flag otherwise."""
    head_index(costs, objective)
    pins = resolve_pins(graph, costs.devices, pin_texts)
    raw = resolve_raw(graph, raw_texts)
    problem = problem_of(graph, costs, objective, pins, raw)
    check_branch_memory(costs, problem, objective, pins)
    layout, ev, notes, exact = solve(costs, problem, objective, max_layouts=max_layouts)
    if layout is None:
        free = replace(objective, latency_budget_s=None, energy_budget_j=None)
        relaxed = solve(costs, problem, free, max_layouts=max_layouts)[1] if free != objective else None
        if relaxed is not None:
            what = "iteration time" if objective.training else "latency"
            got = relaxed.iter_s if objective.training else relaxed.latency_s
            raise PlanError(f"no plan obeying the pins meets the budgets (the best for {objective.objective} has "
                            f"{what} {got * 1e3:.4g} ms and {relaxed.energy_j * 1e3:.4g} mJ/sample); raise "
                            f"--latency-budget/--energy-budget or drop a --pin")
        raise PlanError("no plan obeys the pins within the boards' memory: every layout overflows a board or breaks "
                        "a pin (raw data of a pinned input may not leave its board); drop a --pin, pass "
                        "--allow-raw-transfer INPUT, lower --batch or add boards")
    if problem.branches:
        notes.append(f"parallel branches: {len(problem.branches)} inputs on their boards, joined at layer "
                     f"{problem.join} ({costs.layer_names[problem.join]})")
        pinned = {p.input for p in pins if p.kind == "input"}
        for b in problem.branches:
            if b.input not in pinned:
                notes.append(f"input {b.input!r} is not pinned: its data comes from the head "
                             f"({costs.devices[b.source]}) and its branch runs on {costs.devices[b.device]}")
    notes.append("baselines omitted: they ignore --pin")
    return plan_of_pinned(costs, problem, layout, objective, ev, pins=pins, raw=raw, model=model,
                          graph_sha256=graph_sha256, cluster=cluster, cluster_sha256=cluster_sha256, notes=notes)


def plan_of_pinned(costs: CostTable, problem: Problem, layout: Layout, objective: Objective, ev: PinnedEval, *,
                   pins: Sequence[Pin], raw: Sequence[str], model: str, graph_sha256: str, cluster: str,
                   cluster_sha256: str, notes: Sequence[str]) -> Plan:
    m = objective.micro
    out: list[Stage] = []
    if problem.branches:
        reps = []
        for b, be in zip(problem.branches, ev.branches, strict=True):
            reps.append(Replica(device=costs.devices[be.device], unit=costs.units[be.unit][1],
                                target=costs.units[be.unit][2], share=1.0, samples=m,
                                memory_bytes=int(math.ceil(be.memory_bytes)),
                                capacity_bytes=int(costs.ram_bytes[be.device]), start=b.start, stop=b.stop,
                                reserve_bytes=int(math.ceil(be.reserve_bytes)),
                                input=b.input))
        e = sum(max(float(costs.busy_power_w[be.unit]) - float(costs.idle_power_w[be.device]), 0.0) * be.time_s
                for be in ev.branches)
        out.append(Stage(index=0, start=0, stop=problem.join, first_layer=costs.layer_names[0],
                         last_layer=costs.layer_names[problem.join - 1], replicas=tuple(reps),
                         compute_s=max(be.time_s for be in ev.branches), send_s=max(be.send_s for be in ev.branches),
                         energy_j=e / m, forward_s=max(be.forward_s for be in ev.branches)
                         if objective.training else None, kind="branches"))
    for st in ev.stages:
        reps = tuple(
            Replica(device=costs.devices[r.device], unit=costs.units[r.unit][1], target=costs.units[r.unit][2],
                    share=r.samples / m, samples=r.samples, memory_bytes=int(math.ceil(r.memory_bytes)),
                    capacity_bytes=int(costs.ram_bytes[r.device]), reserve_bytes=int(math.ceil(r.reserve_bytes)))
            for r in st.replicas)
        out.append(Stage(index=len(out), start=st.spec.start, stop=st.spec.stop,
                         first_layer=costs.layer_names[st.spec.start],
                         last_layer=costs.layer_names[st.spec.stop - 1], replicas=reps, compute_s=st.compute_s,
                         send_s=st.send_s, energy_j=st.energy_j,
                         forward_s=st.forward_s if objective.training else None))
    head = costs.devices[head_index(costs, objective)]
    plan = Plan(
        model=model, graph_sha256=graph_sha256, cluster=cluster, cluster_sha256=cluster_sha256,
        mode=objective.mode, objective=objective.objective, batch=objective.batch,
        microbatches=objective.microbatches, schedule=objective.schedule, solver="pinned", head=head,
        stages=tuple(out), predicted=Predicted(latency_s=ev.latency_s, throughput=ev.throughput, energy_j=ev.energy_j,
                                               iter_s=ev.iter_s),
        notes=tuple(notes), latency_budget_s=objective.latency_budget_s, energy_budget_j=objective.energy_budget_j,
        optimizer_states=objective.optimizer_states, pins=tuple(pins), raw_transfer=tuple(raw),
    )
    return Plan.from_json(json.loads(jsonio.dumps(plan.to_json())))
