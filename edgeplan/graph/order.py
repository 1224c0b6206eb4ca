"""The layer order kept from a traced graph, and the bytes live at each cut of it (pure Python).

The planner cuts a LayerGraph into contiguous stages of one topological order; a cut's
bytes are every tensor produced before it and read after it (residual and branch edges
count). ``choose_order`` keeps fx's order unless a greedy list schedule lowers the cuts.
"""

from __future__ import annotations

from edgeplan.graph.model import TensorSpec


def cut_bytes(order: list[str], inputs: list[TensorSpec], deps: dict[str, tuple[str, ...]],
               nbytes: dict[str, int], outputs: tuple[str, ...]) -> list[int]:
    """cut_bytes[k] for a layer order, in O(n): tensor t is live at cuts k in (produced, last use]."""
    n = len(order)
    pos = {name: i for i, name in enumerate(order)}
    for t in inputs:
        pos[t.name] = -1
    last: dict[str, int] = {}
    for i, name in enumerate(order):
        for d in deps[name]:
            last[d] = max(last.get(d, -1), i)
    for o in outputs:
        last[o] = n
    diff = [0] * (n + 2)
    for t, q in last.items():
        p = pos[t]
        if q > p:
            diff[p + 1] += nbytes[t]
            diff[q + 1] -= nbytes[t]
    cuts, acc = [], 0
    for k in range(n + 1):
        acc += diff[k]
        cuts.append(acc)
    return cuts


def greedy_order(fx_order: list[str], deps: dict[str, tuple[str, ...]], nbytes: dict[str, int],
                  outputs: tuple[str, ...]) -> list[str]:
    """List scheduling that always runs the ready layer which grows the live set least.

    Growth = its output bytes minus the bytes of inputs it is the last consumer of; ties
    go to fx order. On ResNet downsampling blocks this runs the (smaller) shortcut first.
    """
    rank = {name: i for i, name in enumerate(fx_order)}
    users: dict[str, set[str]] = {}
    for name in fx_order:
        for d in deps[name]:
            users.setdefault(d, set()).add(name)
    remaining = {t: len(u) for t, u in users.items()}
    waiting = {name: len(set(d for d in deps[name] if d in rank)) for name in fx_order}
    ready = {name for name, w in waiting.items() if w == 0}
    out_set = set(outputs)
    order: list[str] = []

    def growth(name: str) -> int:
        g = nbytes[name] if (name in users or name in out_set) else 0
        return g - sum(nbytes[d] for d in set(deps[name]) if remaining[d] == 1 and d not in out_set)

    while ready:
        best = min(ready, key=lambda c: (growth(c), rank[c]))
        ready.remove(best)
        order.append(best)
        for d in set(deps[best]):
            remaining[d] -= 1
        for u in users.get(best, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.add(u)
    return order


def choose_order(fx_order, inputs, deps, nbytes, outputs) -> tuple[str, list[str], list[int]]:
    """Keep the greedy order only if it lowers the summed cut bytes (the planner's average cut)."""
    fx_cuts = cut_bytes(fx_order, inputs, deps, nbytes, outputs)
    greedy = greedy_order(fx_order, deps, nbytes, outputs)
    greedy_cuts = cut_bytes(greedy, inputs, deps, nbytes, outputs)
    if (sum(greedy_cuts), max(greedy_cuts)) < (sum(fx_cuts), max(fx_cuts)):
        return "greedy", greedy, greedy_cuts
    return "fx", fx_order, fx_cuts


def input_branches(order: list[str], input_names: list[str], deps: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Layer -> the model input whose branch it is in: every tensor it reads comes from that input alone.

    A layer is in input ``x``'s branch when each of its inputs is ``x`` itself or a layer of
    ``x``'s branch; the first layer reading two inputs (or a branch layer and a constant
    layer) is the join, and it and everything after it belong to no branch.
    """
    inputs = set(input_names)
    branch: dict[str, str] = {}
    for name in order:
        owners = {d if d in inputs else branch.get(d, "") for d in deps[name]}
        if len(owners) == 1 and "" not in owners:
            branch[name] = owners.pop()
    return branch


def branches_first(order: list[str], input_names: list[str], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """``order`` with each input's branch moved to the front, one contiguous run per input in input order.

    Still topological: a branch layer reads only its own input and earlier layers of its branch.
    """
    branch = input_branches(order, input_names, deps)
    runs = [[name for name in order if branch.get(name) == x] for x in input_names]
    return [name for run in runs for name in run] + [name for name in order if name not in branch]
