"""Where the head runs (cluster ``head:``): an off-board host's links into and out of the pipeline are priced.

The emulated testbed's head runs on this machine and sends each input over its own shaped leg; a plan that put
the head on the first stage's board priced no link there and read wide_stem +36..93% optimistic after
calibration (benchmarks/bench_truth.py). These tests pin the model: the input link (head -> first stage)
and the output link (last stage -> head) are pipeline resources, the DP and the evaluator agree on them, and
a cluster file that says nothing plans as before.
"""

from __future__ import annotations

import pytest
import yaml

from edgeplan.errors import ProfileError
from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.planner.api import make_plan
from edgeplan.planner.costmodel import StageSpec, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import build_cost_table
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import Cluster

IN_BYTES = 3 * 256 * 256 * 4  # a 256 x 256 RGB float image per sample (wide_stem's input)


def wide_graph(batch: int = 2) -> LayerGraph:
    """Four cheap 1x1-conv-like layers on a wide input, a tiny output (wide_stem's shape)."""
    layers, prev = [], "x"
    shapes = [(batch, 8, 256, 256)] * 3 + [(batch, 4)]
    for i, shape in enumerate(shapes):
        layers.append(Layer(name=f"l{i}", op="conv2d", origin=f"m.l{i}", inputs=(prev,),
                            output=TensorSpec(f"l{i}", shape), flops_fwd=2_000_000 * batch,
                            flops_bwd=4_000_000 * batch, macs=1_000_000 * batch, param_count=64, param_bytes=256))
        prev = f"l{i}"
    cuts = [IN_BYTES * batch] + [8 * 256 * 256 * 4 * batch] * 3 + [4 * 4 * batch]
    return LayerGraph(name="wide", inputs=(TensorSpec("x", (batch, 3, 256, 256)),), outputs=(prev,),
                      layers=tuple(layers), cut_bytes=tuple(cuts))


def cluster(tmp_path, head=None, names=("a", "b")):
    doc = {"name": "wide", "devices": [{"name": n, "profile": "host", "address": "127.0.0.1"} for n in names],
           "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    if head is not None:
        doc["head"] = head
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_cluster(path)


HOST = {"name": "gw", "address": "10.0.0.9", "bandwidth_mbps": 40, "latency_ms": 2}  # 5 MB/s: 157 ms per sample


def test_an_off_board_head_is_a_device_without_units_linked_to_every_board(tmp_path):
    clu = cluster(tmp_path, HOST)
    assert Cluster.from_json(clu.to_json()) == clu  # plans and artifacts carry it as JSON
    costs = build_cost_table(wide_graph(), clu)
    assert costs.devices == ("a", "b", "gw") and costs.head == 2
    assert all(d != 2 for d, _, _ in costs.units)  # it runs no stage
    for b in (0, 1):
        assert costs.bandwidth[2, b] == costs.bandwidth[b, 2] == pytest.approx(5e6)
        assert costs.latency_s[2, b] == pytest.approx(0.002)
    # a cluster file without `head:` is what it was: same devices, head on the first, same digest
    plain = cluster(tmp_path)
    assert build_cost_table(wide_graph(), plain).devices == ("a", "b")
    assert build_cost_table(wide_graph(), plain).head == 0 and "head" not in plain.to_json()
    named = cluster(tmp_path, "b")
    assert build_cost_table(wide_graph(), named).head == 1 and named.digest() != plain.digest()


def test_the_head_link_is_the_bottleneck_and_the_plan_says_so(tmp_path):
    """Inputs of 786 KB per sample over a 5 MB/s head link: whatever the layout, each micro-batch of 2 crosses
    it in 2 x 786432 / 5e6 + 2 ms = 316.6 ms, so the throughput is 2 / 0.3166 samples/s; the DP's plan, its
    evaluation and that figure agree. With the head on board ``a`` (the default) the same model is compute bound."""
    graph = wide_graph()
    clu = cluster(tmp_path, HOST)
    obj = Objective(batch=2)
    plan = make_plan(graph, clu, obj, min_gain=0.0)
    assert plan.head == "gw"
    link_s = 2 * IN_BYTES / 5e6 + 0.002
    costs = build_cost_table(graph, clu)
    layout = tuple(StageSpec(st.start, st.stop, tuple((costs.units.index(next(
        u for u in costs.units if costs.devices[u[0]] == r.device and u[1] == r.unit)), r.samples)
        for r in st.replicas)) for st in plan.stages)
    ev = evaluate(costs, layout, obj)
    assert ev.input_s == pytest.approx(link_s)
    assert ev.period_s == pytest.approx(link_s) and ev.throughput == pytest.approx(2 / link_s)
    assert plan.predicted.throughput == pytest.approx(ev.throughput, rel=1e-5)
    # latency counts both head links once: input, the stages and their sends, the output back to gw
    assert ev.latency_s == pytest.approx(ev.input_s + sum(s.compute_s + s.send_s for s in ev.stages))
    assert ev.stages[-1].send_s == pytest.approx(2 * 16 / 5e6 + 0.002)
    # every single-board layout pays the same link: no layout beats it
    for u in range(len(costs.units)):
        assert evaluate(costs, (StageSpec(0, 4, ((u, 2),)),), obj).period_s >= link_s * (1 - 1e-9)
    on_board = make_plan(graph, cluster(tmp_path), obj, min_gain=0.0)
    assert on_board.head == "a" and on_board.predicted.throughput > 5 * plan.predicted.throughput


def test_head_entry_errors_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(ProfileError, match=r"head.*unknown device 'c'.*name a device"):
        cluster(tmp_path, "c")
    with pytest.raises(ProfileError, match=r"head\.name.*'a' is a device of the cluster.*head: a"):
        cluster(tmp_path, {"name": "a", "address": "10.0.0.9", "bandwidth_mbps": 100, "latency_ms": 0})
    with pytest.raises(ProfileError, match=r"head.*unknown field 'bw'"):
        cluster(tmp_path, {"name": "gw", "bw": 100})


def test_the_heads_address_is_where_compile_and_top_point_the_boards(tmp_path):
    """The boards send results to the head: compile's head slot and `edgeplan top`'s URL use the head host's
    address, not the first board's."""
    from edgeplan import top
    from edgeplan.codegen.compile import assign_slots

    clu = cluster(tmp_path, HOST)
    plan = make_plan(wide_graph(), clu, Objective(batch=2), min_gain=0.0)
    head, _ = assign_slots(plan, clu)
    assert head.host == "10.0.0.9"
    assert top.head_url(tmp_path / "cluster.yaml", 8000) == "http://10.0.0.9:8000"
    assert top.head_url(tmp_path / "cluster.yaml", 8000, "a") == "http://127.0.0.1:8000"


def test_with_an_off_board_head_every_board_may_be_absent_in_a_family(tmp_path):
    """`plan --variants`: the head takes the requests, so it is never absent; an off-board head leaves every
    board free to go (the default before `head:` kept the first board)."""
    from edgeplan.planner import family

    clu = cluster(tmp_path, HOST)
    assert clu.head_name == "gw" and cluster(tmp_path).head_name == "a" and cluster(tmp_path, "b").head_name == "b"
    absent = {c.absent for c in family.default_conditions(clu, clu.head_name)}
    assert {("a",), ("b",)} <= absent


def test_cluster_check_says_where_the_head_runs(tmp_path):
    from typer.testing import CliRunner

    from edgeplan.cli import app

    cluster(tmp_path, HOST)
    out = CliRunner().invoke(app, ["cluster", "check", str(tmp_path / "cluster.yaml")]).output
    assert "head: gw (off the boards at 10.0.0.9; link to every board 40 Mbit/s, 2 ms" in out
    cluster(tmp_path)
    out = CliRunner().invoke(app, ["cluster", "check", str(tmp_path / "cluster.yaml")]).output
    assert "head: a (the first device)" in out
