"""Group interchangeable devices into types so the DP state stays small.

Two devices share a type when their hardware rows are identical (every unit's
costs, support, power; RAM; idle power) and their links are too: after
refinement, the link between any two devices depends only on the two types
(and, for two devices of one type, on that type). For a training plan the units'
fitted training figures (``CostTable.training``: per-call cost, scales, optimizer,
torch.distributed overheads) are part of the row: two boards of one profile
calibrated apart are two types, else the DP would price both as the first and
split samples the evaluator gives to neither. The head device is always a
type of its own (type 0), since it is the only one that sends inputs. When
links break that symmetry in a way refinement cannot fix, the offending types
are split into single devices (exact, just a bigger state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeplan.profiles.cost import CostTable


@dataclass(frozen=True)
class DeviceTypes:
    members: tuple[tuple[int, ...], ...]  # device indices per type, ascending; type 0 = (head,)
    dev_units: tuple[tuple[int, ...], ...]  # per device: its global unit indices in order
    bw: np.ndarray  # [T, T] bandwidth between two distinct devices of the types
    lat: np.ndarray  # [T, T]
    epb: np.ndarray  # [T, T]
    uniform: bool  # every pair of distinct devices has the same link

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(m) for m in self.members)

    def unit(self, t: int, local: int) -> int:
        """Global unit index of the ``local``-th unit of type ``t``'s first device (rows are shared)."""
        return self.dev_units[self.members[t][0]][local]

    def n_units(self, t: int) -> int:
        return len(self.dev_units[self.members[t][0]])


def _unit_value(arr, u: int) -> float:
    return 0.0 if arr is None else float(arr[u])


def _training_rows(costs: CostTable, dev_units: list[list[int]], d: int) -> tuple:
    """Device ``d``'s fitted training figures (every per-unit and per-device array of ``TrainingCosts``)."""
    tc = costs.training
    per_unit = tuple(tuple(b"" if getattr(tc, f) is None else np.asarray(getattr(tc, f)[u]).tobytes()
                           for f in _TRAINING_UNIT_FIELDS) for u in dev_units[d])
    return per_unit, np.asarray(tc.p2p[d]).tobytes(), np.asarray(tc.allreduce[d]).tobytes()


_TRAINING_UNIT_FIELDS = ("fwd_scale", "bwd_scale", "layer_s", "layer_overhead_s", "call_s", "call_peer_s",
                         "opt_byte_s", "opt_call_s", "module_call_s")


def _hw_key(costs: CostTable, dev_units: list[list[int]], d: int, training: bool = False) -> tuple:
    rows = []
    for u in dev_units[d]:
        rows.append((
            costs.units[u][1], costs.units[u][2], float(costs.busy_power_w[u]),
            np.asarray(costs.fwd_s[u]).tobytes(), np.asarray(costs.bwd_s[u]).tobytes(),
            np.asarray(costs.fixed_s[u]).tobytes(), np.asarray(costs.supported[u]).tobytes(),
            _unit_value(costs.hop_s, u), _unit_value(costs.hop_byte_s, u), _unit_value(costs.hop_send_byte_s, u),
        ))
    fitted = _training_rows(costs, dev_units, d) if training and costs.training is not None else None
    reserve = float(costs.train_reserve_bytes[d]) if training and costs.train_reserve_bytes is not None else 0.0
    return (float(costs.ram_bytes[d]), reserve, float(costs.idle_power_w[d]), tuple(rows), fitted)


def _link(costs: CostTable, a: int, b: int) -> tuple[float, float, float]:
    return (float(costs.bandwidth[a, b]), float(costs.latency_s[a, b]), float(costs.energy_per_byte_j[a, b]))


def device_types(costs: CostTable, head: int, training: bool = False) -> DeviceTypes:
    """Types of ``costs``' devices; ``training``: fitted training figures tell boards apart too."""
    d = costs.n_devices
    dev_units: list[list[int]] = [[] for _ in range(d)]
    for u, (di, _, _) in enumerate(costs.units):
        dev_units[di].append(u)
    keys: dict[tuple, int] = {}
    label = [0] * d
    for x in range(d):
        key = ("head",) if x == head else _hw_key(costs, dev_units, x, training)
        label[x] = keys.setdefault(key, len(keys))
    while True:  # refine by the set of links to each class
        sig = {}
        new = [0] * d
        for x in range(d):
            per_class: dict[int, set] = {}
            for y in range(d):
                if y != x:
                    per_class.setdefault(label[y], set()).add(_link(costs, x, y) + _link(costs, y, x))
            key = (label[x], tuple(sorted((c, tuple(sorted(v))) for c, v in per_class.items())))
            new[x] = sig.setdefault(key, len(sig))
        if len(sig) == len(set(label)):
            break
        label = new
    # split classes whose links are still not uniform per class pair
    while True:
        classes: dict[int, list[int]] = {}
        for x in range(d):
            classes.setdefault(label[x], []).append(x)
        bad = set()
        for a, ma in classes.items():
            for b, mb in classes.items():
                vals = {_link(costs, x, y) for x in ma for y in mb if x != y}
                if len(vals) > 1:
                    bad.update((a, b))
        if not bad:
            break
        nxt = max(label) + 1
        for c in sorted(bad):
            for x in classes[c][1:]:
                label[x] = nxt
                nxt += 1
    groups: dict[int, list[int]] = {}
    for x in range(d):
        groups.setdefault(label[x], []).append(x)
    members = sorted((tuple(g) for g in groups.values()), key=lambda g: (g != (head,), g[0]))
    T = len(members)
    bw = np.full((T, T), np.inf)
    lat = np.zeros((T, T))
    epb = np.zeros((T, T))
    for a in range(T):
        for b in range(T):
            pairs = [(x, y) for x in members[a] for y in members[b] if x != y]
            if pairs:
                bw[a, b], lat[a, b], epb[a, b] = _link(costs, *pairs[0])
    off = {_link(costs, x, y) for x in range(d) for y in range(d) if x != y}
    return DeviceTypes(members=tuple(members), dev_units=tuple(tuple(u) for u in dev_units),
                       bw=bw, lat=lat, epb=epb, uniform=len(off) <= 1)
