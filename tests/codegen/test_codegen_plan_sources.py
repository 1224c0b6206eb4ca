"""The plan remembers its model, input shape and cluster: `edgeplan compile plan.json --out art/` needs nothing else.

Flags stay overrides; another model or another cluster is refused with both hashes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.codegen.compile import compile_plan
from edgeplan.errors import CompileError
from edgeplan.planner.plan import Plan, record_sources

from .codegen_helpers import fx_trace
from .test_codegen_compile import _cluster, _plan
from .test_codegen_split import Branchy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    return fx_trace(Branchy(), (1, 3, 8, 8), "branchy")


def _recorded(traced, cluster_path="gone/cluster.yaml"):
    cluster = _cluster()
    plan = dataclasses.replace(_plan(traced), cluster=cluster.name, cluster_sha256=cluster.digest())
    return record_sources(plan, model_ref="branchy", input_shape=None, cluster_path=cluster_path, cluster=cluster)


def test_sources_round_trip_and_record_only_used_units(traced):
    plan = _recorded(traced)
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert [(u.device, u.unit) for u in plan.target_options] == [("jetson", "cpu"), ("orangepi5", "cpu"),
                                                                 ("rpi4-a", "cpu")]
    assert plan.unit_options("jetson", "cpu") == {"mcpu": "cortex-a72"}
    assert plan.unit_options("jetson", "gpu") is None


def test_compile_without_flags_uses_the_recorded_options(traced, tmp_path, monkeypatch):
    """The cluster file is gone: workers on 127.0.0.1, target options as the plan recorded them."""
    monkeypatch.chdir(tmp_path)
    out = compile_plan(_recorded(traced), None, tmp_path / "art", traced=traced)
    module = (out / "jetson" / "stage1" / "module.py").read_text()
    assert "('mcpu', 'cortex-a72')" in module
    report = jsonio.read(out / "compile-report.json")
    assert report["model_spec"] == "branchy"
    assert any("gone/cluster.yaml (recorded in the plan) not found" in n for n in report["notes"])
    assert jsonio.read(out / "head.json")["address"].startswith("127.0.0.1:")


def test_another_cluster_or_no_recorded_model_is_refused(traced, tmp_path):
    plan = _recorded(traced)
    moved = dataclasses.replace(_cluster(), devices=tuple(
        dataclasses.replace(d, address="10.9.9.9") for d in _cluster().devices))
    with pytest.raises(CompileError, match=rf"sha256 {moved.digest()[:12]}.*sha256 {plan.cluster_sha256[:12]}"):
        compile_plan(plan, None, tmp_path / "art", cluster=moved, traced=traced)
    bare = dataclasses.replace(plan, model_ref="")
    with pytest.raises(CompileError, match="pass --model"):
        compile_plan(bare, None, tmp_path / "art", traced=traced)
    assert not (tmp_path / "art").exists()


def test_cli_plan_then_compile_with_no_other_input(tmp_path, monkeypatch):
    """The README loop: plan with --cluster/--input-shape, compile with only plan.json and --out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clusters").mkdir()
    src = (ROOT / "examples/clusters/three-node-hetero.yaml").read_text()
    (tmp_path / "clusters/shelf.yaml").write_text(src)
    runner = CliRunner()
    r = runner.invoke(app, ["plan", "lenet5", "--cluster", "clusters/shelf.yaml", "--input-shape", "2,1,32,32",
                            "--out", "plan.json"])
    assert r.exit_code == 0, r.output
    data = jsonio.read(tmp_path / "plan.json")
    assert (data["model_ref"], data["input_shape"], data["cluster_path"]) == ("lenet5", [2, 1, 32, 32],
                                                                              "clusters/shelf.yaml")
    used = {(r["device"], r["unit"]) for s in data["stages"] for r in s["replicas"]}
    assert {(u["device"], u["unit"]) for u in data["target_options"]} == used

    r = runner.invoke(app, ["compile", "plan.json", "--out", "art", "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    report = jsonio.read(tmp_path / "art/compile-report.json")
    assert report["model_spec"] == "lenet5" and report["notes"] == []
    assert jsonio.read(tmp_path / "art/head.json")["address"].startswith("192.168.1.")  # from the cluster file

    (tmp_path / "clusters/shelf.yaml").write_text(src.replace("192.168.1.12", "192.168.1.99"))
    r = runner.invoke(app, ["compile", "plan.json", "--out", "art2"])
    assert r.exit_code != 0
    assert "recorded in the plan" in r.output and data["cluster_sha256"][:12] in r.output
    (tmp_path / "clusters/shelf.yaml").write_text(src)
    r = runner.invoke(app, ["compile", "plan.json", "--out", "art2", "--model", "resnet32-cifar"])
    assert r.exit_code != 0 and data["graph_sha256"][:12] in r.output
    assert not (tmp_path / "art2").exists()
