"""`edgeplan devices` and `edgeplan cluster check` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from edgeplan.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"
runner = CliRunner()


def test_devices_lists_every_builtin_profile():
    r = runner.invoke(app, ["devices"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["profile", "usable", "RAM"] and set(lines[1]) == {"─"}
    assert len(lines) == 2 + 10 + 1  # header, rule, one row per profile, what the training reserve is
    nano = next(line for line in lines if line.startswith("jetson-nano "))
    assert "2996 MB" in nano and "estimate" in nano and "gpu:cuda 472 GFLOP/s peak" in nano
    assert "311 MB" in nano and lines[-1].startswith("train reserve: ") and "train_reserve_mb" in lines[-1]
    assert "cpu:arm-cpu" in nano


def test_cluster_check_prints_devices_and_links():
    f = EXAMPLES / "three-node-hetero.yaml"
    r = runner.invoke(app, ["cluster", "check", str(f)])
    assert r.exit_code == 0, r.output
    assert "cluster three-node-hetero: 3 devices" in r.output
    assert "npu-board" in r.output and "rk3566" in r.output and "npu:npu" in r.output
    assert "network default: 940 Mbit/s, 0.2 ms, 8 nJ/byte" in r.output
    assert r.output.rstrip().endswith(": ok")


def test_cluster_check_error_is_one_line_and_non_zero(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: lab\ndevices:\n  - {name: a, profile: rpi9, address: x}\n"
                 "network: {default: {bandwidth_mbps: 1, latency_ms: 1}}\n")
    r = runner.invoke(app, ["cluster", "check", str(f)])
    assert r.exit_code != 0
    out = r.output.strip()  # click >= 8.2 mixes stderr into output
    assert len(out.splitlines()) == 1 and "devices[0].profile" in out and "bad.yaml" in out
