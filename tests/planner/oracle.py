"""An exhaustive oracle that shares no code with the planner's ``allocate`` / ``evaluate`` / ``Prefix``.

It enumerates every layout of a small inference instance: stage cuts x ordered
disjoint device groups x a unit per board kind in each group x *every* integer
split of the micro-batch over the group (not the planner's greedy split), and
prices each one from the raw CostTable arrays:

- a replica's call: ``k * (sum fwd + hop_byte * cut_in + hop_send_byte * cut_out) + sum fixed + hop`` (the
  send figure is the per-byte one when the table has none); its memory:
  weights + ``k * (cut_in + max act)``, which must fit the device's RAM;
- a transfer between groups: as the runtime routes it, each sender sends each receiver the samples
  their contiguous ranges (in replica order) share, all flows at once; its time is the busiest NIC's
  (sending and receiving apart) seconds of bytes plus the largest latency of a pair that carries data
  (``nic_time``). ``simulate_flows`` checks that figure by a fluid event simulation of the flows
  sharing the NICs fairly (tests/planner/test_planner_pairs.py);
- time: the micro-batches are run through the chain of resources (input link, stages, links,
  output link) by an event simulation, each resource taking them in order, starting each one when
  both the resource and the micro-batch are free; latency is the last finish, the period is the
  spacing of finishes in steady state (measured between two long runs);
- energy per sample: every replica's busy-above-idle power x its call time, the used boards' idle
  power over one period, and the bytes sent x the link's energy per byte, over the micro-batch.
"""

from __future__ import annotations

import itertools

import numpy as np

from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable


def _splits(m: int, g: int):
    """Every way to give ``m`` samples to ``g`` replicas, each at least one."""
    for cuts in itertools.combinations(range(1, m), g - 1):
        b = (0, *cuts, m)
        yield tuple(b[i + 1] - b[i] for i in range(g))


def _run(times: list[float], jobs: int) -> list[float]:
    """Event simulation of ``jobs`` identical micro-batches through resources in series: finish times."""
    free = [0.0] * len(times)
    out = []
    for _ in range(jobs):
        t = 0.0
        for r, p in enumerate(times):
            t = max(t, free[r]) + p
            free[r] = t
        out.append(t)
    return out


def _flows(costs: CostTable, src, dst, bytes_per_sample: float) -> list[tuple[int, int, float]]:
    """(sender device, receiver device, bytes) for every pair of overlapping sample ranges (not to itself)."""
    out = []
    lo_a = 0
    for x, ka in src:
        lo_b = 0
        for y, kb in dst:
            n = min(lo_a + ka, lo_b + kb) - max(lo_a, lo_b)
            if n > 0 and x != y:
                out.append((x, y, n * bytes_per_sample))
            lo_b += kb
        lo_a += ka
    return out


def nic_time(costs: CostTable, src, dst, bytes_per_sample: float) -> tuple[float, float]:
    """(seconds, joules): the busiest NIC's seconds of bytes + the largest latency; energy per byte per pair."""
    flows = _flows(costs, src, dst, bytes_per_sample)
    if not flows:
        return 0.0, 0.0
    busy: dict[tuple, float] = {}
    for x, y, b in flows:
        for k in (("out", x), ("in", y)):
            busy[k] = busy.get(k, 0.0) + b / float(costs.bandwidth[x, y])
    lat = max(float(costs.latency_s[x, y]) for x, y, _ in flows)
    return max(busy.values()) + lat, sum(b * float(costs.energy_per_byte_j[x, y]) for x, y, b in flows)


def simulate_flows(costs: CostTable, src, dst, bytes_per_sample: float) -> tuple[float, float]:
    """(seconds, joules) of a group-to-group transfer by event simulation of its flows.

    ``src``/``dst``: (device, samples) per replica in replica order. Every flow runs at once; a flow
    between x and y at a fraction f of the link's bandwidth uses f of x's sending NIC and of y's
    receiving NIC; fractions are shared max-min fairly (progressive filling) and re-shared whenever a
    flow ends. The transfer ends when its last flow does, plus the largest latency among its flows.
    """
    flows = _flows(costs, src, dst, bytes_per_sample)
    if not flows:
        return 0.0, 0.0
    left = {i: b for i, (_, _, b) in enumerate(flows)}
    bw = {i: float(costs.bandwidth[x, y]) for i, (x, y, _) in enumerate(flows)}
    t = 0.0
    while left:
        share: dict[int, float] = {}
        cap = {}
        for i in left:
            x, y, _ = flows[i]
            cap[("out", x)] = 1.0
            cap[("in", y)] = 1.0
        active = set(left)
        while active:  # progressive filling: raise all unfrozen fractions until a NIC is full
            users: dict[tuple, list[int]] = {}
            for i in active:
                x, y, _ = flows[i]
                users.setdefault(("out", x), []).append(i)
                users.setdefault(("in", y), []).append(i)
            nic = min(users, key=lambda k: (cap[k] / len(users[k]), k))
            inc = cap[nic] / len(users[nic])
            for i in active:
                share[i] = share.get(i, 0.0) + inc
            for k, us in users.items():
                cap[k] -= inc * len(us)
            active -= set(users[nic])
        dt = min(left[i] / (share[i] * bw[i]) for i in left)
        t += dt
        for i in list(left):
            left[i] -= share[i] * bw[i] * dt
            if left[i] <= 1e-9 * flows[i][2]:
                del left[i]
    lat = max(float(costs.latency_s[x, y]) for x, y, _ in flows)
    energy = sum(b * float(costs.energy_per_byte_j[x, y]) for x, y, b in flows)
    return t + lat, energy


def _kind(costs: CostTable, d: int, head: int):
    us = [u for u, x in enumerate(costs.units) if x[0] == d]
    hop = [0.0 if costs.hop_s is None else float(costs.hop_s[u]) for u in us]
    hb = [0.0 if costs.hop_byte_s is None else float(costs.hop_byte_s[u]) for u in us]
    hs = hb if costs.hop_send_byte_s is None else [float(costs.hop_send_byte_s[u]) for u in us]
    return ("head",) if d == head else (float(costs.ram_bytes[d]), float(costs.idle_power_w[d]),
                                        tuple((costs.fwd_s[u].tobytes(), costs.fixed_s[u].tobytes(),
                                               costs.supported[u].tobytes(), float(costs.busy_power_w[u]),
                                               hop[k], hb[k], hs[k]) for k, u in enumerate(us)))


def oracle(costs: CostTable, obj: Objective) -> float | None:
    """The best objective value (seconds of latency, seconds of period, or joules per sample) or None."""
    assert not obj.training, "the oracle prices inference plans"
    n, D, m = costs.n_layers, costs.n_devices, obj.micro
    head = 0 if obj.head is None else costs.devices.index(obj.head)
    units = [[u for u, x in enumerate(costs.units) if x[0] == d] for d in range(D)]
    kinds = [_kind(costs, d, head) for d in range(D)]
    act, cut, par = (np.asarray(a, dtype=np.float64) for a in (costs.act_bytes, costs.cut_bytes, costs.param_bytes))
    hop = np.zeros(len(costs.units)) if costs.hop_s is None else np.asarray(costs.hop_s, dtype=np.float64)
    hopb = np.zeros(len(costs.units)) if costs.hop_byte_s is None else np.asarray(costs.hop_byte_s, dtype=np.float64)
    hops = hopb if costs.hop_send_byte_s is None else np.asarray(costs.hop_send_byte_s, dtype=np.float64)
    best = None
    for S in range(1, min(D, n) + 1):
        for inner in itertools.combinations(range(1, n), S - 1):
            bounds = (0, *inner, n)
            for labels in itertools.product(range(-1, S), repeat=D):
                groups = [[d for d in range(D) if labels[d] == s] for s in range(S)]
                if any(not g for g in groups):
                    continue
                # one unit per board kind within a group
                per_stage = []
                for s, g in enumerate(groups):
                    ks = sorted({kinds[d] for d in g}, key=repr)
                    first = {k: next(d for d in g if kinds[d] == k) for k in ks}
                    opts = []
                    for pick in itertools.product(*[range(len(units[first[k]])) for k in ks]):
                        sel = dict(zip(ks, pick, strict=True))
                        us = [units[d][sel[kinds[d]]] for d in g]
                        i, j = bounds[s], bounds[s + 1]
                        if all(costs.supported[u, i:j].all() for u in us):
                            opts.append(us)
                    per_stage.append(opts)
                for choice in itertools.product(*per_stage):
                    for shares in itertools.product(*[list(_splits(m, len(g))) for g in groups]):
                        v = _price(costs, obj, bounds, groups, choice, shares, head, act, cut, par, hop,
                                   (hopb, hops))
                        if v is not None and (best is None or v < best):
                            best = v
    return best


def _price(costs, obj, bounds, groups, choice, shares, head, act, cut, par, hop, per_byte) -> float | None:
    m, M = obj.micro, obj.microbatches
    S = len(groups)
    times, dyn = [], 0.0
    reps = [list(zip(groups[s], shares[s], strict=True)) for s in range(S)]
    t, e = nic_time(costs, [(head, m)], reps[0], cut[0])
    times.append(t)
    dyn += e
    for s in range(S):
        i, j = bounds[s], bounds[s + 1]
        tau = 0.0
        for d, u, k in zip(groups[s], choice[s], shares[s], strict=True):
            t = (k * (costs.fwd_s[u, i:j].sum() + per_byte[0][u] * cut[i] + per_byte[1][u] * cut[j])
                 + costs.fixed_s[u, i:j].sum() + hop[u])
            if par[i:j].sum() + k * (cut[i] + act[i:j].max()) > costs.ram_bytes[d]:
                return None
            tau = max(tau, t)
            dyn += max(float(costs.busy_power_w[u]) - float(costs.idle_power_w[d]), 0.0) * t
        times.append(tau)
        t, e = nic_time(costs, reps[s], reps[s + 1] if s + 1 < S else [(head, m)], cut[j])
        times.append(t)
        dyn += e
    latency = _run(times, M)[-1]
    long = _run(times, 40)
    period = (long[-1] - long[19]) / 20
    if obj.objective == "latency":
        return latency
    if obj.objective == "throughput":
        return period
    idle = sum(float(costs.idle_power_w[d]) for g in groups for d in g)
    return (dyn + idle * period) / m
