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
    assert set(measured.units[0].estimated_figures()) == {"layer_overhead_us", "hop_overhead_us", "busy_power_w"}
    assert {m.backend for m in measured.units[0].measured} == {"onnxruntime", "numpy"}
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
