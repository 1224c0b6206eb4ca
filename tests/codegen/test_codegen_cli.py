"""`edgeplan compile` / `edgeplan verify` end to end on a tiny zoo model, then the artifacts run locally."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.codegen import manifest
from edgeplan.codegen.compile import compile_plan
from edgeplan.graph.load import build

from .codegen_helpers import make_plan


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    traced = build("lenet5")
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [n // 2], [[("pi-a", 3)], [("pi-b", 2), ("pi-c", 1)]], microbatches=2)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    jsonio.write(path, plan.to_json())
    return traced, plan, path


def test_cli_compile_verify_and_run_locally(lenet, tmp_path):
    traced, plan, plan_path = lenet
    out = tmp_path / "art"
    runner = CliRunner()
    result = runner.invoke(app, ["compile", str(plan_path), "--model", "lenet5", "--out", str(out),
                                 "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "without --cluster" in result.output and "edgeplan verify" in result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pi-a", "pi-b", "pi-c"]
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output

    again = runner.invoke(app, ["compile", str(plan_path), "--model", "lenet5", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output

    # The board folder is self-contained: its runtime copy imports without edgeplan installed on the path.
    board = out / "pi-b"
    subprocess.run(["sh", "-n", str(board / "start.sh")], check=True)
    env = {**os.environ, "PYTHONPATH": str(board), "PYTHONDONTWRITEBYTECODE": "1"}
    code = ("import sys, edgeplan_runtime.worker, edgeplan_runtime.backends\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('edgeplan', 'torch')))")
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", f"board runtime imported edgeplan/torch: {probe.stdout}"

    from edgeplan.runtime.local import run_local

    x = np.random.default_rng(0).standard_normal((2, plan.batch, 1, 32, 32)).astype(np.float32)
    _, res = run_local(out, inputs=[[x[0]], [x[1]]])
    assert res.ok, res.failures
    with torch.no_grad():
        ref = [traced.gm(torch.from_numpy(xi)).numpy() for xi in x]
    for got, want in zip(res.outputs, ref, strict=True):
        assert np.abs(got[0] - want).max() < 1e-4
    assert manifest.verify(out) == []


def test_cli_compile_refuses_a_plan_for_another_model(lenet, tmp_path):
    _, _, plan_path = lenet
    result = CliRunner().invoke(app, ["compile", str(plan_path), "--model", "lenet5", "--input-shape", "2,1,32,32",
                                      "--out", str(tmp_path / "art")])
    assert result.exit_code == 2
    assert "different model/input shape" in result.output
    assert not (tmp_path / "art").exists()


def test_cli_verify_reports_problems(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such artifact folder" in result.output


HOSTS = """\
name: three-hosts
devices:
  - {name: host-a, profile: host, address: 127.0.0.1}
  - {name: host-b, profile: host, address: 127.0.0.1}
  - {name: host-c, profile: host, address: 127.0.0.1}
network:
  default: {bandwidth_mbps: 100000, latency_ms: 0.01}
"""


def test_planner_plan_compiles_and_runs(lenet, tmp_path):
    """A plan from the real planner (not a hand-made one) compiles and its artifacts run."""
    from edgeplan.planner.api import make_plan as plan_model
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster
    from edgeplan.runtime.local import run_local

    traced = lenet[0]
    (tmp_path / "hosts.yaml").write_text(HOSTS)
    cluster = load_cluster(str(tmp_path / "hosts.yaml"))
    plan = plan_model(traced.graph, cluster, Objective(objective="throughput", batch=8, microbatches=2))
    out = compile_plan(plan, "lenet5", tmp_path / "art", backend="onnxruntime", traced=traced)
    assert manifest.verify(out) == []
    x = np.random.default_rng(1).standard_normal((plan.batch, 1, 32, 32)).astype(np.float32)
    _, res = run_local(out, inputs=[[x]])
    assert res.ok, res.failures
    with torch.no_grad():
        want = traced.gm(torch.from_numpy(x)).numpy()
    assert np.abs(res.outputs[0][0] - want).max() < 1e-4
