"""A board no report ran takes a fitted twin's figures only where they make it slower (calibrate._no_faster).

bench_truth, vit-tiny on the emulated rpi4-jetson: the first run used the jetson alone; its fit put the jetson's
per-call hop at 0.62x the file's, that factor went onto the three rpi boards (their hop 51 -> 31.9 ms), and
the re-plan moved onto them for a 0.4% predicted gain and measured +222% throughput error. These tests fit a
run on one board of the emulated three-node-hetero and read what its scaled twin (same profile, figures x 0.3)
takes: nothing faster, everything slower, and per figure when the fit moved figures both ways.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from edgeplan.profiles import calibrate as cal
from edgeplan.profiles.cost import hop_byte_s, hop_send_byte_s
from edgeplan.profiles.load import load_cluster
from tests.profiles.test_profiles_calibrate import plan_and_report, synthetic_graph
from tests.profiles.test_profiles_calibrate_head import emulated

BYTES = 2 * 262144  # plan_and_report's bytes in + out per call


def run_on_board0(tmp_path, time_factor: float, hop_factor: float):
    """Fit a one-board run whose module calls take ``time_factor`` x board 0's figures and whose runtime hop
    per call is ``hop_factor`` x its file's; the third board is edited off the twin scale."""
    graph = synthetic_graph()
    path = emulated(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["devices"][2]["overrides"]["units"]["cpu"]["throughput_gflops"]["gemm"] *= 3  # not a twin
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cluster = load_cluster(path)
    name = cluster.devices[0].name
    unit = cluster.devices[0].unit("cpu")
    layers = cal._Layers(graph)
    times = [time_factor * layers.module_s(unit, 0, 12, 4), time_factor * layers.module_s(unit, 12, 24, 4)]
    plan, rep = plan_and_report(graph, cluster, [12], lambda s: name, times)
    hop = hop_factor * unit.hop_overhead_s + (hop_byte_s(unit) + hop_send_byte_s(unit)) * BYTES / 2  # in = out
    for st, t in zip(rep["stages"], times, strict=True):
        st["replicas"][0]["cpu_s"] = 100 * (t + hop)
    result = cal.fit(cluster, [(plan, graph, cal.observations(plan, rep, "r.json")[0])])
    return cluster, path, result, layers


def test_a_fit_that_made_the_run_board_faster_leaves_its_twin_as_in_the_file(tmp_path):
    """Module calls at 0.5x and the hop at 0.62x board 0's figures: board 0 is fitted faster; its twin keeps
    every figure of its own file (on the old code it took both: 2x throughput, 0.62x hop), says which and
    why, and is written back as the file had it."""
    cluster, path, result, layers = run_on_board0(tmp_path, 0.5, 0.62)
    fits = {f.device: f for f in result.fits}
    d0, d1 = cluster.devices[0].name, cluster.devices[1].name
    own = cluster.device(d1).unit("cpu")
    assert fits[d0].after.hop_overhead_s == pytest.approx(0.62 * fits[d0].before.hop_overhead_s, rel=1e-6)
    assert layers.module_s(fits[d0].after, 0, 12, 4) == pytest.approx(0.5 * layers.module_s(fits[d0].before, 0, 12, 4),
                                                                       rel=0.02)
    twin = fits[d1]
    assert twin.inferred_from == d0 and "figures x 0.3" in twin.notes[0]
    assert twin.after.throughput == own.throughput and twin.after.mem_bandwidth == own.mem_bandwidth
    assert twin.after.hop_overhead_s == own.hop_overhead_s and twin.after.layer_overhead_s == own.layer_overhead_s
    assert hop_byte_s(twin.after) == hop_byte_s(own) and hop_send_byte_s(twin.after) == hop_send_byte_s(own)
    kept = twin.notes[1]
    assert "hop_overhead_us" in kept and "throughput_gflops.*" in kept and cal.TRANSFER_RULE in kept
    new = cal.write_calibrated(path, result, tmp_path / "cal.yaml", sources="r.json", backend="onnxruntime")
    got = new.device(d1).unit("cpu")
    for c, f in own.throughput:
        assert got.flops_per_s(c) == pytest.approx(f, rel=1e-5)
    assert got.hop_overhead_s == pytest.approx(own.hop_overhead_s, rel=1e-5)
    assert "keeps its file's" in cal.format_fit(result)


def test_a_fit_that_made_the_run_board_slower_slows_its_twin_alike(tmp_path):
    """Module calls at 3x and the hop at 2x board 0's figures: the twin takes both, scaled (as before this
    rule), and no figure is kept."""
    cluster, _path, result, layers = run_on_board0(tmp_path, 3.0, 2.0)
    fits = {f.device: f for f in result.fits}
    d0, d1 = cluster.devices[0].name, cluster.devices[1].name
    own = cluster.device(d1).unit("cpu")
    twin = fits[d1]
    assert twin.inferred_from == d0 and len(twin.notes) == 1
    assert twin.after.hop_overhead_s == pytest.approx(2.0 * own.hop_overhead_s, rel=0.02)
    for a, b in ((0, 12), (12, 24)):
        assert layers.module_s(twin.after, a, b, 4) == pytest.approx(3.0 * layers.module_s(own, a, b, 4), rel=0.02)


def test_per_figure_a_twin_takes_what_is_slower_and_keeps_what_would_be_faster(tmp_path):
    """A fit that moved figures both ways (conv 2x faster, gemm 2x slower, memory 1.5x faster, per-layer cost
    2x, per-call hop 0.5x, per-byte hop 3x): the twin takes gemm, the per-layer and the per-byte cost, and
    keeps conv, memory and the per-call hop (on the old code it took all six)."""
    cluster = load_cluster(emulated(tmp_path))
    d0, d1 = cluster.devices[0], cluster.devices[1]
    before = d0.unit("cpu")
    after = cal._scaled(before, {"conv": 0.5, "gemm": 2.0}, 1 / 1.5, 2 * before.layer_overhead_s)
    after = dataclasses.replace(after, hop_overhead_s=0.5 * before.hop_overhead_s,
                                hop_byte_s=3 * before.hop_byte_s)
    fit = cal.UnitFit(d0.name, "cpu", "per-class", 10, before, after, hop_fitted=True, hop_byte_fitted=True)
    (twin,) = [f for f in cal._same_profile_peers(cluster, [fit]) if f.device == d1.name]
    own = d1.unit("cpu")
    got = twin.after
    assert got.flops_per_s("conv") == own.flops_per_s("conv")
    assert got.flops_per_s("gemm") == pytest.approx(own.flops_per_s("gemm") / 2, rel=1e-9)
    assert got.flops_per_s("elementwise") == pytest.approx(own.flops_per_s("elementwise"), rel=1e-9)
    assert got.mem_bandwidth == own.mem_bandwidth
    assert got.layer_overhead_s == pytest.approx(2 * own.layer_overhead_s, rel=0.03)
    assert got.hop_overhead_s == own.hop_overhead_s
    assert got.hop_byte_s == pytest.approx(3 * own.hop_byte_s, rel=0.03)
    kept = twin.notes[1]
    assert all(k in kept for k in ("throughput_gflops.conv", "mem_bandwidth_gbs", "hop_overhead_us"))
    assert not any(k in kept for k in ("gemm", "layer_overhead_us", "hop_byte_ns"))
