"""Cost table: shapes, a hand-computed entry, link matrices, the stage/transfer helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.planner.costmodel import Prefix
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import build_cost_table
from edgeplan.profiles.load import load_cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"

BOARD = """\
name: Round-number board
vendor: test
estimate: true
ram_mb: 1024
reserved_mb: 24
idle_power_w: 2
units:
  cpu:
    kind: cpu
    target: arm-cpu
    peak_gflops: 40
    throughput_gflops: {conv: 10, dwconv: 2, gemm: 8, norm: 1, pool: 1, elementwise: 1, reduce: 1, data: 1}
    mem_bandwidth_gbs: 2
    busy_power_w: 3
    layer_overhead_us: 20
"""


def _graph(batch: int = 4) -> LayerGraph:
    """conv 3->8 (3x3, pad 1) on 8x8, then relu; traced at ``batch``."""
    x = TensorSpec("x", (batch, 3, 8, 8))
    macs = batch * 8 * 8 * 8 * 27
    conv = Layer("conv", "conv2d", "features.0", ("x",), TensorSpec("conv", (batch, 8, 8, 8)),
                 flops_fwd=2 * macs, flops_bwd=4 * macs, macs=macs, param_count=224, param_bytes=896)
    relu = Layer("relu", "relu", "features.1", ("conv",), TensorSpec("relu", (batch, 8, 8, 8)),
                 flops_fwd=batch * 512, flops_bwd=batch * 512, macs=0, param_count=0, param_bytes=0)
    return LayerGraph("tiny", (x,), ("relu",), (conv, relu), (x.nbytes, conv.out_bytes, relu.out_bytes))


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "round.yaml").write_text(BOARD)
    f = tmp_path / "c.yaml"
    f.write_text(textwrap.dedent("""\
        name: pair
        devices:
          - {name: a, profile: round.yaml, address: 10.0.0.1}
          - {name: b, profile: round.yaml, address: 10.0.0.2,
             overrides: {units: {cpu: {throughput_gflops: {conv: 20}}}}}
          - {name: c, profile: rk3566, address: 10.0.0.3}
        network:
          default: {bandwidth_mbps: 80, latency_ms: 1, energy_nj_per_byte: 10}
          links: [{between: [a, c], bandwidth_mbps: 8, latency_ms: 2}]
        """))
    return load_cluster(f)


def test_shapes_and_per_device_arrays(cluster):
    t = build_cost_table(_graph(), cluster)
    assert t.units == ((0, "cpu", "arm-cpu"), (1, "cpu", "arm-cpu"), (2, "cpu", "arm-cpu"), (2, "npu", "npu"))
    for arr in (t.fwd_s, t.bwd_s, t.fixed_s, t.supported):
        assert arr.shape == (4, 2)
    assert t.param_bytes.shape == t.act_bytes.shape == (2,) and t.cut_bytes.shape == (3,)
    assert t.bandwidth.shape == t.latency_s.shape == t.energy_per_byte_j.shape == (3, 3)
    assert t.ram_bytes.tolist() == [1000 * 2**20, 1000 * 2**20, (4096 - 600) * 2**20]
    assert t.idle_power_w.tolist() == [2.0, 2.0, 1.5] and t.busy_power_w.tolist() == [3.0, 3.0, 3.5, 2.5]
    assert t.layer_names == ("conv", "relu") and t.layer_ops == ("conv2d", "relu")


def test_hand_computed_entries(cluster):
    """Per sample (batch 4): input 3*8*8*4 B = 768 B, conv output 8*8*8*4 B = 2048 B,
    conv FLOPs 2 * 8*8*8*27 = 27648, params 896 B. Unit a/cpu: conv 10 GFLOP/s, 2 GB/s, 20 us.

    fwd_s[a, conv]   = max(27648 / 10e9, (768 + 2048) / 2e9) = max(2.7648e-6, 1.408e-6) = 2.7648e-6
    bwd_s[a, conv]   = max(55296 / 10e9, (2*768 + 2048) / 2e9) = max(5.5296e-6, 1.792e-6) = 5.5296e-6
    fixed_s[a, conv] = 20e-6 + 896 / 2e9 = 20.448e-6
    fwd_s[a, relu]   = max(512 / 1e9, (2048 + 2048) / 2e9) = 2.048e-6 (memory bound)
    bwd_s[a, relu]   = max(512 / 1e9, (2*2048 + 2048) / 2e9) = 3.072e-6
    fwd_s[b, conv]   = max(27648 / 20e9, 1.408e-6) = 1.4080e-6 (b's conv override: 20 GFLOP/s)
    hop_byte_s[a] = 2 copies / 2e9 = 1e-9 s per byte (no hop_overhead_us: hop_s 0)
    stage [0, 2) on a, 4 samples (the planner's one evaluator, Prefix.time):
      4 * (2.7648e-6 + 2.048e-6 + 1e-9 * (768 + 2048)) + (20.448e-6 + 20e-6) = 70.9632e-6
    training: 4 * (2.7648 + 2.048 + 5.5296 + 3.072 + 2 * 2.816)e-6 + 2 * 40.448e-6
    link a -> b: 80 Mbit/s = 10e6 B/s, 1 ms; a -> c: 8 Mbit/s = 1e6 B/s, 2 ms; 10 nJ/B a -> b
    """
    t = build_cost_table(_graph(), cluster)
    assert t.fwd_s[0, 0] == pytest.approx(2.7648e-6)
    assert t.bwd_s[0, 0] == pytest.approx(5.5296e-6)
    assert t.fixed_s[0, 0] == pytest.approx(20.448e-6)
    assert t.fwd_s[0, 1] == pytest.approx(2.048e-6)
    assert t.fixed_s[0, 1] == pytest.approx(20e-6)
    assert t.fwd_s[1, 0] == pytest.approx(1.408e-6)
    assert t.cut_bytes.tolist() == [768, 2048, 2048] and t.act_bytes.tolist() == [2048, 2048]
    assert t.hop_s[0] == 0.0 and t.hop_byte_s[0] == pytest.approx(1e-9)
    assert Prefix(t, Objective(batch=4)).time(0, 0, 2, 4) == pytest.approx(70.9632e-6)
    assert t.bwd_s[0, 1] == pytest.approx(3.072e-6)
    training = Objective(mode="training", objective="time", batch=4)
    assert Prefix(t, training).time(0, 0, 2, 4) == pytest.approx(
        4 * (2.7648e-6 + 2.048e-6 + 5.5296e-6 + 3.072e-6 + 2 * 2.816e-6) + 2 * 40.448e-6)
    assert (t.bandwidth[0, 1], t.latency_s[0, 1]) == pytest.approx((10e6, 1e-3))
    assert (t.bandwidth[0, 2], t.latency_s[0, 2]) == pytest.approx((1e6, 2e-3))
    assert t.bandwidth[1, 1] == np.inf and t.energy_per_byte_j[0, 1] == pytest.approx(10e-9)


def test_per_sample_figures_do_not_depend_on_the_traced_batch(cluster):
    t1, t8 = build_cost_table(_graph(1), cluster), build_cost_table(_graph(8), cluster)
    for name in ("fwd_s", "bwd_s", "fixed_s", "cut_bytes", "act_bytes"):
        np.testing.assert_allclose(getattr(t1, name), getattr(t8, name))


def test_links_matrix_is_symmetric_with_free_diagonal(cluster):
    t = build_cost_table(_graph(), cluster)
    assert np.all(np.isinf(np.diag(t.bandwidth))) and np.all(np.diag(t.latency_s) == 0)
    np.testing.assert_array_equal(t.bandwidth, t.bandwidth.T)
    assert t.bandwidth[0, 2] == pytest.approx(1e6) and t.bandwidth[0, 1] == pytest.approx(1e7)
    assert t.energy_per_byte_j[0, 2] == pytest.approx(10e-9)  # a link without its own energy uses the default


def test_unsupported_layers_cost_infinity_on_the_npu():
    x = TensorSpec("x", (1, 16, 64))
    ln = Layer("ln", "layernorm", "norm", ("x",), TensorSpec("ln", (1, 16, 64)), 5 * 1024, 8 * 1024, 0, 128, 512)
    fc = Layer("fc", "linear", "head", ("ln",), TensorSpec("fc", (1, 16, 64)), 2 * 16 * 64 * 64, 4 * 16 * 64 * 64,
               16 * 64 * 64, 4160, 16640)
    g = LayerGraph("t", (x,), ("fc",), (ln, fc), (4096, 4096, 4096))
    t = build_cost_table(g, load_cluster(EXAMPLES / "three-node-hetero.yaml"))
    npu = t.units.index((0, "npu", "npu"))
    assert t.supported[npu].tolist() == [False, True]
    assert np.isinf(t.fwd_s[npu, 0]) and np.isfinite(t.fwd_s[npu, 1])
    assert np.isinf(t.fwd_s[npu, 0:2].sum() + t.fixed_s[npu, 0:2].sum())  # a stage holding it: infeasible
    assert np.isfinite(t.fwd_s[npu, 1:2].sum() + t.fixed_s[npu, 1:2].sum())
    assert t.supported[[i for i, u in enumerate(t.units) if u[2] != "npu"]].all()


def test_dense_conv_is_faster_per_flop_than_depthwise_on_every_example_unit():
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for d in load_cluster(f).devices:
            for u in d.units:
                assert u.flops_per_s("conv") > 3 * u.flops_per_s("dwconv"), (f.name, d.name, u.name)


def test_runtime_hop_cost_per_unit():
    """hop_s is the profile's hop_overhead_us; hop_byte_s = HOP_COPIES / memory bandwidth:
    the x86 host (850 us, 15 GB/s) -> 8.5e-4 s per call and 2 / 15e9 s per byte."""
    from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
    from edgeplan.profiles.cost import HOP_COPIES
    from edgeplan.profiles.load import load_profile
    from edgeplan.profiles.model import Cluster, Link

    x = TensorSpec("x", (1, 4))
    layer = Layer("fc", "linear", "fc", ("x",), TensorSpec("fc", (1, 4)), 32, 64, 16, 20, 80)
    graph = LayerGraph("tiny", (x,), ("fc",), (layer,), (16, 16))
    host = load_profile("host").instantiate("h", "127.0.0.1")
    t = build_cost_table(graph, Cluster("c", (host,), Link("*", "*", 1e8, 0.0)))
    assert t.hop_s.tolist() == pytest.approx([850e-6])
    assert t.hop_byte_s.tolist() == pytest.approx([HOP_COPIES / 15e9])


def test_measured_hop_byte_ns_replaces_the_copies_and_round_trips(tmp_path):
    """A unit's ``hop_byte_ns`` (the runtime's seconds per byte in or out, measured) prices the per-byte hop
    instead of 2 copies at memory bandwidth; it survives the cluster's JSON round trip, counts in the digest,
    and a unit without it keeps the copies and the old JSON / digest (plans made before stay valid)."""
    from edgeplan.errors import ProfileError
    from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
    from edgeplan.profiles.cost import HOP_COPIES
    from edgeplan.profiles.model import Cluster

    body = ("name: c\ndevices:\n  - {name: a, profile: host, address: 127.0.0.1%s}\n"
            "  - {name: b, profile: host, address: 127.0.0.1}\n"
            "network: {default: {bandwidth_mbps: 100, latency_ms: 1}}\n")
    (tmp_path / "plain.yaml").write_text(body % "")
    (tmp_path / "c.yaml").write_text(body % ", overrides: {units: {cpu: {hop_byte_ns: 0.45}}}")
    plain, c = load_cluster(tmp_path / "plain.yaml"), load_cluster(tmp_path / "c.yaml")
    assert c.device("a").unit("cpu").hop_byte_s == pytest.approx(0.45e-9)
    assert c.device("b").unit("cpu").hop_byte_s is None
    assert "hop_byte_s" not in plain.to_json()["devices"][0]["units"][0]  # older files and digests unchanged
    assert Cluster.from_json(c.to_json()) == c and c.digest() != plain.digest()
    x = TensorSpec("x", (1, 4))
    layer = Layer("fc", "linear", "fc", ("x",), TensorSpec("fc", (1, 4)), 32, 64, 16, 20, 80)
    t = build_cost_table(LayerGraph("tiny", (x,), ("fc",), (layer,), (16, 16)), c)
    assert t.hop_byte_s.tolist() == pytest.approx([0.45e-9, HOP_COPIES / 15e9])
    (tmp_path / "bad.yaml").write_text(body % ", overrides: {units: {cpu: {hop_byte_ns: -1}}}")
    with pytest.raises(ProfileError, match=r"hop_byte_ns.*out of range"):
        load_cluster(tmp_path / "bad.yaml")


def test_a_slowed_board_prices_its_measured_per_byte_hop_slower_in_families_as_in_the_cost_table(tmp_path):
    """planner/family.apply (a condition's cluster, planned by the family) and scale_costs (the adaptive
    policies' re-pricing) agree on a board whose per-byte hop was measured: both scale it by the slowdown."""
    from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
    from edgeplan.planner import family

    (tmp_path / "c.yaml").write_text(
        "name: c\ndevices:\n  - {name: a, profile: host, address: 127.0.0.1, "
        "overrides: {units: {cpu: {hop_byte_ns: 0.45}}}}\n  - {name: b, profile: host, address: 127.0.0.1}\n"
        "network: {default: {bandwidth_mbps: 100, latency_ms: 1}}\n")
    c = load_cluster(tmp_path / "c.yaml")
    x = TensorSpec("x", (1, 4))
    layer = Layer("fc", "linear", "fc", ("x",), TensorSpec("fc", (1, 4)), 32, 64, 16, 20, 80)
    graph = LayerGraph("tiny", (x,), ("fc",), (layer,), (16, 16))
    cond = family.parse_condition("slowdown:a=3+slowdown:b=2")
    direct = build_cost_table(graph, family.apply(c, cond)).hop_byte_s
    assert direct.tolist() == pytest.approx(family.scale_costs(build_cost_table(graph, c), cond).hop_byte_s.tolist())
    assert direct[0] == pytest.approx(3 * 0.45e-9)


def test_handover_between_units_copies_at_memory_bandwidth_not_at_the_measured_socket_hop(tmp_path):
    """A hand-over between two units of one board (RK3588 NPU -> CPU) is one copy out of each unit's memory:
    1/bw_npu + 1/bw_cpu from the profile's mem_bandwidth_gbs. A measured ``hop_byte_ns`` (the socket path, here
    40 ns/B as a kit reads on a slow board) must not move it: it was hop_byte_s / 2, i.e. 20 ns/B, ~50x the copy.
    A slowdown divides the bandwidth alike in family.apply and family.scale_costs."""
    from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
    from edgeplan.planner import family, units

    body = ("name: c\ndevices:\n  - {name: rock, profile: rk3588, address: 127.0.0.1%s}\n"
            "network: {default: {bandwidth_mbps: 100, latency_ms: 1}}\n")
    (tmp_path / "plain.yaml").write_text(body % "")
    (tmp_path / "kit.yaml").write_text(body % ", overrides: {units: {npu: {hop_byte_ns: 40}, cpu: {hop_byte_ns: 30}}}")
    x = TensorSpec("x", (1, 4))
    layer = Layer("fc", "linear", "fc", ("x",), TensorSpec("fc", (1, 4)), 32, 64, 16, 20, 80)
    graph = LayerGraph("tiny", (x,), ("fc",), (layer,), (16, 16))
    plain, kit = load_cluster(tmp_path / "plain.yaml"), load_cluster(tmp_path / "kit.yaml")
    dev = kit.device("rock")
    want = 1 / dev.unit("npu").mem_bandwidth + 1 / dev.unit("cpu").mem_bandwidth
    names = [u.name for u in dev.units]
    npu, cpu = names.index("npu"), names.index("cpu")
    for c in (plain, kit):
        t = build_cost_table(graph, c)
        assert units.handover_s_per_byte(t, npu, cpu) == pytest.approx(want)
        assert units.handover_s_per_byte(t, npu, npu) == 0.0
    t = build_cost_table(graph, kit)
    assert t.hop_byte_s[npu] == pytest.approx(40e-9) and want < 1e-9  # the two figures are 40x+ apart
    cond = family.parse_condition("slowdown:rock=2")
    direct = build_cost_table(graph, family.apply(kit, cond))
    scaled = family.scale_costs(t, cond)
    assert units.handover_s_per_byte(direct, npu, cpu) == pytest.approx(2 * want)
    assert units.handover_s_per_byte(scaled, npu, cpu) == pytest.approx(2 * want)
