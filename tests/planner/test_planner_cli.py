"""`edgeplan plan` / `edgeplan show` through typer's CliRunner (traces small zoo models with torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeplan.cli import app

ROOT = Path(__file__).resolve().parents[2]
HETERO = str(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")

pytest.importorskip("torch", reason="the plan command traces the model with torch")


def test_plan_writes_json_and_svg_and_show_prints_the_same_report(tmp_path):
    runner = CliRunner()
    out, svg = tmp_path / "plan.json", tmp_path / "plan.svg"
    res = runner.invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--mode", "inference",
                              "--objective", "throughput", "--batch", "8", "--out", str(out), "--svg", str(svg)])
    assert res.exit_code == 0, res.output
    assert "best-single-device" in res.output and "speed-up" in res.output
    assert out.exists() and "<svg" in svg.read_text()
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0, shown.output
    report = res.output.split("wrote ")[0]
    assert shown.output == report


def test_training_plan_with_microbatches():
    res = CliRunner().invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--mode", "training",
                                   "--objective", "time", "--batch", "64", "--microbatches", "8"])
    assert res.exit_code == 0, res.output
    assert "iteration ms" in res.output and "1f1b" in res.output


def test_infeasible_training_names_device_shortfall_and_alternatives(tmp_path):
    cluster = tmp_path / "two-pi3.yaml"
    cluster.write_text(
        "name: two-pi3\n"
        "devices:\n"
        "  - {name: pi0, profile: rpi3b, address: 10.0.0.1}\n"
        "  - {name: pi1, profile: rpi3b, address: 10.0.0.2}\n"
        "network:\n"
        "  default: {bandwidth_mbps: 94, latency_ms: 0.5}\n"
    )
    res = CliRunner().invoke(app, ["plan", "resnet110-cifar", "--cluster", str(cluster), "--mode", "training",
                                   "--objective", "time", "--batch", "128", "--microbatches", "1"])
    assert res.exit_code == 2
    assert "runs out of memory by" in res.output and "pi0" in res.output
    # each rank also holds the torch framework (rpi3b: the default train_reserve_mb), so half the batch no
    # longer fits two boards: the nearest is a quarter
    assert "MB torch reserve" in res.output
    assert "--batch 32" in res.output and "--microbatches" in res.output and "more board" in res.output


@pytest.mark.parametrize("args,match", [
    (["--mode", "training", "--objective", "throughput"], "does not apply to training"),
    (["--objective", "energy", "--latency-budget", "1us"], "best achievable latency"),
    (["--latency-budget", "50"], "--latency-budget '50'"),
])
def test_bad_requests_are_one_line_errors(args, match):
    res = CliRunner().invoke(app, ["plan", "lenet5", "--cluster", HETERO, *args])
    assert res.exit_code == 2, res.output
    assert match in res.output


def test_show_missing_file(tmp_path):
    res = CliRunner().invoke(app, ["show", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "no such plan file" in res.output


def test_min_gain_outside_the_unit_interval_is_one_line():
    res = CliRunner().invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--min-gain", "1.5"])
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "--min-gain 1.5 is outside [0, 1)" in res.output


def test_ilp_time_limit_not_positive_is_one_line():
    res = CliRunner().invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--solver", "ilp",
                                   "--ilp-time-limit", "0"])
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "--ilp-time-limit 0: give a positive" in res.output
