"""`edgeplan compile --profiling-kit`: the CLI writes each ONNX Runtime board's kit (profile.sh,
profiling/kit.json, run_kit.py) into the artifact folder, inside its manifest; without the flag it writes none."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from edgeplan import jsonio  # noqa: E402
from edgeplan.cli import app  # noqa: E402
from edgeplan.graph.load import build  # noqa: E402

from ..codegen.codegen_helpers import make_plan  # noqa: E402


def test_compile_profiling_kit_flag_writes_the_kit(tmp_path):
    traced = build("lenet5")
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [n // 2], [[("pi-a", 1)], [("pi-b", 1)]])
    plan_path = tmp_path / "plan.json"
    jsonio.write(plan_path, plan.to_json())
    runner = CliRunner()
    r = runner.invoke(app, ["compile", str(plan_path), "--model", "lenet5", "--out", str(tmp_path / "kit"),
                            "--backend", "onnxruntime", "--profiling-kit"])
    assert r.exit_code == 0, r.output
    for dev in ("pi-a", "pi-b"):
        board = tmp_path / "kit" / dev
        assert (board / "profile.sh").is_file()
        kit = jsonio.read(board / "profiling" / "kit.json")
        assert kit  # what each module computes, read by the board's runner
        assert (board / "profiling" / "run_kit.py").is_file()
    assert runner.invoke(app, ["verify", str(tmp_path / "kit")]).exit_code == 0  # the kit is in the manifest
    r = runner.invoke(app, ["compile", str(plan_path), "--model", "lenet5", "--out", str(tmp_path / "plain"),
                            "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "plain" / "pi-a" / "profile.sh").exists()
    assert not (tmp_path / "plain" / "pi-a" / "profiling").exists()
