"""`edgeplan inspect` through typer's CliRunner (LeNet-5: fast)."""

from __future__ import annotations

from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.graph.model import LayerGraph


def test_inspect_lenet5_table_and_json(tmp_path):
    out = tmp_path / "graph.json"
    result = CliRunner().invoke(app, ["inspect", "lenet5", "--input-shape", "1,1,32,32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["#", "name", "op", "origin", "output", "MFLOPs", "params", "act", "cut", "after"]
    conv1 = lines[2].split()
    # conv1: 1x6x28x28 output; 2*117,600 MACs + 4,704 bias adds = 0.240 MFLOPs; 156 params; 18,816 B = 18.4 KiB
    assert conv1[:6] == ["0", "conv1", "conv2d", "conv1", "1x6x28x28", "0.240"]
    assert conv1[6] == "156" and conv1[7:9] == ["18.4", "KiB"]
    assert "total: 61,706 params" in result.output
    graph = LayerGraph.from_json(jsonio.read(out))
    assert graph.name == "lenet5" and len(graph.layers) == 12 and graph.total_params == 61_706
    assert out.read_text() == jsonio.dumps(graph.to_json())


def test_inspect_default_shape():
    result = CliRunner().invoke(app, ["inspect", "lenet5"])
    assert result.exit_code == 0 and "input x 1x1x32x32 float32" in result.output


def test_inspect_bad_shape_text():
    result = CliRunner().invoke(app, ["inspect", "lenet5", "--input-shape", "1,3,a"])
    assert result.exit_code == 2
    assert "--input-shape '1,3,a' is not a shape" in result.output


def test_inspect_unknown_model():
    result = CliRunner().invoke(app, ["inspect", "lenet6"])
    assert result.exit_code == 2 and "lenet5" in result.output


def test_graph_package_and_report_import_no_torch():
    """`edgeplan --help` and the pure phases import edgeplan.graph; only trace/zoo/load may pull in torch."""
    import subprocess
    import sys

    code = ("import sys, edgeplan.graph, edgeplan.graph.report, edgeplan.graph.model, edgeplan.graph.ops\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
