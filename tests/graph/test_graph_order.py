"""The layer-order search on random DAGs: always a topological order, cuts equal LayerGraph.live_at."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.graph.order import choose_order, cut_bytes, greedy_order


@st.composite
def dags(draw):
    n = draw(st.integers(1, 12))
    deps, sizes = {}, {"x": draw(st.integers(1, 64))}
    names = [f"l{i}" for i in range(n)]
    for i, name in enumerate(names):
        pool = ["x"] + names[:i]
        picked = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        deps[name] = tuple(picked)
        sizes[name] = draw(st.integers(1, 64))
    consumed = {d for ds in deps.values() for d in ds}
    outputs = tuple(nm for nm in names if nm not in consumed) or (names[-1],)
    return names, deps, sizes, outputs


def _graph(order, deps, sizes, outputs, cuts) -> LayerGraph:
    layers = tuple(Layer(name=nm, op="add", origin=nm, inputs=deps[nm], output=TensorSpec(nm, (sizes[nm],), "int8"),
                         flops_fwd=0, flops_bwd=0, macs=0, param_count=0, param_bytes=0) for nm in order)
    return LayerGraph(name="g", inputs=(TensorSpec("x", (sizes["x"],), "int8"),), outputs=outputs, layers=layers,
                      cut_bytes=tuple(cuts))


@settings(max_examples=200, deadline=None)
@given(dags())
def test_orders_are_topological_and_cuts_match_live_at(dag):
    names, deps, sizes, outputs = dag
    inputs = [TensorSpec("x", (sizes["x"],), "int8")]
    greedy = greedy_order(names, deps, sizes, outputs)
    assert sorted(greedy) == sorted(names)
    seen = {"x"}
    for nm in greedy:
        assert set(deps[nm]) <= seen
        seen.add(nm)
    for order in (names, greedy):
        cuts = cut_bytes(order, inputs, deps, sizes, outputs)
        g = _graph(order, deps, sizes, outputs, cuts)
        assert cuts == [sum(sizes[t] for t in g.live_at(k)) for k in range(len(order) + 1)]
    kept, order, cuts = choose_order(names, inputs, deps, sizes, outputs)
    fx_cuts = cut_bytes(names, inputs, deps, sizes, outputs)
    assert sum(cuts) <= sum(fx_cuts)
    assert cuts == (fx_cuts if kept == "fx" else cut_bytes(greedy, inputs, deps, sizes, outputs))
    if kept == "fx":
        assert order == names
