"""Several units of one board at work at once: shared-resource accounting and a local search.

A board's units (CPU, GPU, NPU) may run different stages concurrently. What they
share, and how ``costmodel.evaluate`` prices it:

- RAM: every stage on a board draws on the board's one usable RAM; the sum of
  their replicas' memory must fit (``device_memory``).
- NIC: every transfer into or out of the board, whichever of its stages sends
  or receives it, goes through its one link; for a board hosting more than one
  stage the NIC is a resource of its own with per-micro-batch time = the larger
  of the seconds of all bytes it sends and of all bytes it receives
  (``nic_loads``). A board hosting one stage is fully described by the links.
- hand-over between two units of one board: a copy through the board's memory
  (out of the sender unit's memory, into the receiver's: a GPU/NPU has its own
  buffers even where the RAM is shared), priced at each unit's memory bandwidth
  (``handover_s_per_byte``), both directions when training (activations forward,
  gradients back, as for a link). Two CPU units share their buffers: free. It
  is paid on the transfer's own resource, not on the NIC.
- energy: the board's idle power is paid once, each unit's busy-above-idle
  power while it runs (as for any replica).
- a unit still hosts at most one stage (``costmodel.check_layout``).

The DP stays "one unit per device" (its exactness claim is about that space);
``improve`` then tries moving a stage, or the later half of the bottleneck
stage, onto an idle unit of a board already in the plan, priced by the same
evaluator and accepted under ``--min-gain`` like any more complex plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplan.planner import costmodel as cm  # module import: costmodel.py imports this module back
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import HOP_COPIES, CostTable

CPU_TARGETS = frozenset({"arm-cpu", "x86"})


def handover_s_per_byte(costs: CostTable, ua: int, ub: int) -> float:
    """Seconds per byte to hand a tensor from unit ``ua`` to unit ``ub`` of the same board (module docstring):
    one copy out of the sender's memory and one into the receiver's, at each unit's memory bandwidth
    (``costs.mem_bandwidth``, the profile's figure). Not ``hop_byte_s``: that is the socket path a stage call's
    bytes take (measured by the kit or `edgeplan calibrate`, 10x+ two copies), which a hand-over does not take.
    A table without bandwidths (synthetic) falls back to ``hop_byte_s / HOP_COPIES`` (there it is 2 copies at
    the bandwidth by construction), or 0 without either.
    """
    if ua == ub or (costs.units[ua][2] in CPU_TARGETS and costs.units[ub][2] in CPU_TARGETS):
        return 0.0
    if costs.mem_bandwidth is not None:
        return 1.0 / float(costs.mem_bandwidth[ua]) + 1.0 / float(costs.mem_bandwidth[ub])
    if costs.hop_byte_s is None:
        return 0.0
    return (float(costs.hop_byte_s[ua]) + float(costs.hop_byte_s[ub])) / HOP_COPIES


def device_memory(costs: CostTable, replicas) -> dict[int, float]:
    """Bytes each device needs: the sum over the replicas (``ReplicaEval``) it hosts, whatever their unit, each
    with its training rank's torch reserve (``reserve_bytes``: one per process, so a board whose CPU and GPU
    both train pays it twice)."""
    need: dict[int, float] = {}
    for r in replicas:
        need[r.device] = need.get(r.device, 0.0) + r.memory_bytes + r.reserve_bytes
    return need


def multi_stage_devices(costs: CostTable, layout: cm.Layout) -> set[int]:
    """Devices that host more than one stage (on different units)."""
    stages_of: dict[int, set[int]] = {}
    for s, st in enumerate(layout):
        for u, _ in st.replicas:
            stages_of.setdefault(costs.units[u][0], set()).add(s)
    return {d for d, ss in stages_of.items() if len(ss) > 1}


def nic_loads(loads: list[tuple[dict, float]], devices: set[int]) -> list[float]:
    """Per-micro-batch NIC time of each of ``devices``: its bytes out and in over all transfers, each summed.

    ``loads``: (per-(direction, device) seconds of one transfer, times it runs per micro-batch).
    """
    out = []
    for d in sorted(devices):
        tx = sum(f * ld.get(("out", d), 0.0) for ld, f in loads)
        rx = sum(f * ld.get(("in", d), 0.0) for ld, f in loads)
        out.append(max(tx, rx))
    return out


@dataclass(frozen=True)
class Move:
    """One accepted multi-unit change, for the report."""

    stage: int
    unit: int
    beside: int  # the stage on another unit of the same board
    beside_unit: int
    gain: float

    def text(self, costs: CostTable) -> str:
        def name(u: int) -> str:
            return f"{costs.devices[costs.units[u][0]]}:{costs.units[u][1]}"

        return (f"multi-unit: stage {self.stage} on {name(self.unit)} beside stage {self.beside} on "
                f"{name(self.beside_unit)}, gain {self.gain * 100:.1f}%")


def _idle_units(costs: CostTable, layout: cm.Layout) -> list[int]:
    """Units of boards already in the plan that run no stage."""
    busy = {u for st in layout for u, _ in st.replicas}
    boards = {costs.units[u][0] for u in busy}
    return [u for u, (d, _, _) in enumerate(costs.units) if d in boards and u not in busy]


def _single(st: cm.StageSpec, u: int, m: int) -> cm.StageSpec:
    """``st``'s layers on unit ``u`` alone."""
    return cm.StageSpec(st.start, st.stop, ((u, m),))


MAX_CUTS = 24  # split points tried per bottleneck stage (evenly spaced over its allowed cuts)


def _candidates(costs: CostTable, obj: Objective, layout: cm.Layout, ev: cm.Evaluation, pf: cm.Prefix):
    """Layouts one multi-unit step away: (layout, the stage put on an idle unit, that unit).

    Steps: move a single-replica stage onto the idle unit; split the bottleneck stage
    (slowest compute) in two and put either half on the idle unit.
    """
    m = obj.micro
    b = max(range(len(layout)), key=lambda s: ev.stages[s].compute_s)
    st = layout[b]
    cuts = [c for c in range(st.start + 1, st.stop) if pf.cut_ok[c]]
    if len(cuts) > MAX_CUTS:
        cuts = [cuts[round(x * (len(cuts) - 1) / (MAX_CUTS - 1))] for x in range(MAX_CUTS)]
    for u in _idle_units(costs, layout):
        for s, other in enumerate(layout):
            if len(other.replicas) == 1:
                yield layout[:s] + (_single(other, u, m),) + layout[s + 1:], s, u
        for c in cuts:
            first = cm.StageSpec(st.start, c, st.replicas)
            yield layout[:b] + (first, cm.StageSpec(c, st.stop, ((u, m),))) + layout[b + 1:], b + 1, u
            second = cm.StageSpec(c, st.stop, st.replicas)
            yield layout[:b] + (cm.StageSpec(st.start, c, ((u, m),)), second) + layout[b + 1:], b, u


def _rebalance(costs: CostTable, obj: Objective, layout: cm.Layout, pf: cm.Prefix) -> cm.Layout | None:
    """Re-split each stage's samples over its replicas for the new stage count (stash depends on it);
    None when a replica would get no sample."""
    S = len(layout)
    out = []
    for s, st in enumerate(layout):
        if len(st.replicas) == 1:
            out.append(st)
            continue
        units = tuple(u for u, _ in st.replicas)
        ks = cm.allocate(pf, st.start, st.stop, units, obj.micro, cm.stash_of(obj, S, s))
        if min(ks) < 1:  # a replica left without samples: not a layout
            return None
        out.append(cm.StageSpec(st.start, st.stop, tuple(zip(units, ks, strict=True))))
    return tuple(out)


def improve(costs: CostTable, obj: Objective, layout: cm.Layout, ev: cm.Evaluation, *, min_gain: float,
            prefix: cm.Prefix | None = None, rounds: int = 4) -> tuple[cm.Layout, cm.Evaluation, list[Move]]:
    """Hill-climb over multi-unit steps from ``layout``; each accepted step gains at least ``min_gain``.

    Every candidate is priced by ``costmodel.evaluate`` (shared RAM, NIC, hand-over copies)
    and must be feasible and within the budgets. Returns the final layout, its
    evaluation and the accepted moves (empty: nothing beat the plan by ``min_gain``).
    """
    pf = prefix or cm.Prefix(costs, obj)
    moves: list[Move] = []
    if obj.training:  # not searched for training yet (NPU and Mali units do not train at all)
        return layout, ev, moves
    for _ in range(rounds):
        if not _idle_units(costs, layout):
            break
        base = ev.value(obj)
        best = None
        for cand, s, u in _candidates(costs, obj, layout, ev, pf):
            cand = _rebalance(costs, obj, cand, pf)
            if cand is None:
                continue
            got = cm.evaluate(costs, cand, obj, prefix=pf)
            if not got.ok:
                continue
            if best is None or got.score(obj) < best[1].score(obj):
                best = (cand, got, s, u)
        if best is None:
            break
        cand, got, s, u = best
        gain = (base - got.value(obj)) / base if base > 0 else 0.0
        if gain < max(min_gain, 1e-9):
            break
        d = costs.units[u][0]
        beside = next(((t, v) for t, st in enumerate(cand) for v, _ in st.replicas
                       if t != s and costs.units[v][0] == d), (s, u))
        moves.append(Move(stage=s, unit=u, beside=beside[0], beside_unit=beside[1], gain=gain))
        layout, ev = cand, got
    return layout, ev, moves
