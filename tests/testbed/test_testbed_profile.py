"""`edgeplan profile`: a measured profile of this machine, in the same format as the built-in ones."""

from __future__ import annotations

from typer.testing import CliRunner

from edgeplan.cli import app
from edgeplan.graph.ops import OP_CLASSES
from edgeplan.profiles.load import load_cluster, load_profile


def test_measured_profile_loads_and_serves_a_cluster(tmp_path):
    out = tmp_path / "boards" / "me.yaml"
    res = CliRunner().invoke(app, ["profile", "--out", str(out), "--seconds", "0.05", "--threads", "1"])
    assert res.exit_code == 0, res.output
    measured, base = load_profile(str(out)), load_profile("host")
    # only throughput and memory bandwidth are measured here: still an estimate, and it says which figures
    assert measured.estimate is True and base.estimate is True
    assert set(measured.units[0].estimated_figures()) == {"layer_overhead_us", "hop_overhead_us", "hop_byte_ns",
                                                          "busy_power_w"}
    assert {m.backend for m in measured.units[0].measured} == {"onnxruntime"}
    assert measured.ram_bytes == base.ram_bytes and measured.idle_power_w == base.idle_power_w  # from the base
    cpu = measured.units[0]
    assert all(cpu.flops_per_s(c) > 0 for c in OP_CLASSES)
    assert cpu.flops_per_s("conv") != base.units[0].flops_per_s("conv")  # measured, not inherited
    assert cpu.peak_flops >= max(cpu.flops_per_s(c) for c in OP_CLASSES)
    (tmp_path / "c.yaml").write_text(
        "name: mine\ndevices:\n  - name: me\n    profile: boards/me.yaml\n    address: 127.0.0.1\n"
        "network:\n  default: {bandwidth_mbps: 1000, latency_ms: 0.1}\n")
    cluster = load_cluster(tmp_path / "c.yaml")
    assert cluster.device("me").units[0].throughput == cpu.throughput


def test_measured_bandwidth_prices_another_memory_bound_layer_as_onnx_runtime_runs_it(tmp_path):
    """The memory bandwidth comes from ONNX Runtime's memory-bound benchmarks, so the cost model's memory
    term (bytes / bandwidth) prices a memory-bound layer of another shape as it runs: a ReLU6 on a
    0.5 MB activation (a 64 MB numpy copy, as measured before, read 5.8-13.5 GB/s on this machine and
    priced such layers 4-10x slow). Best-of timing on both sides; the margin covers cache-size effects."""
    import torch

    from edgeplan.graph.trace import trace
    from edgeplan.testbed import calibrate

    speed = calibrate.measure(0.1, classes=("norm", "elementwise"))
    shape = (1, 32, 64, 64)
    module = torch.nn.Sequential(torch.nn.ReLU6())
    graph = trace(module.eval(), shape, "relu6").graph
    path = tmp_path / "relu6.onnx"
    torch.onnx.export(module, (torch.randn(shape),), str(path), dynamo=False, opset_version=17)
    measured = calibrate._time_ort(path, shape, 0.2)
    predicted = calibrate._layer_bytes(graph) / speed.mem_bandwidth
    assert 0.4 < measured / predicted < 2.5, (measured, predicted, speed.mem_bandwidth)
