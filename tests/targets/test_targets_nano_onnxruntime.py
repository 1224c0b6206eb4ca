"""ONNX Runtime (CPU) stages on Jetsons: onnxruntime>=1.20 has wheels for Python 3.10+ only, so a board whose
JetPack's python3 is older (4.6: 3.6, 5.x: 3.8) cannot start the stage. `edgeplan compile` warns in one line
naming the board, stage, what is missing and the fix, and the board's README.txt says the same; the JetPack
comes from the board's GPU unit (target_options.jetpack), the only place the profile records the OS.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.codegen.compile import board_options, compile_plan
from edgeplan.profiles.load import load_cluster
from edgeplan.targets import _cpu, cuda
from tests.codegen.codegen_helpers import make_plan

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "examples" / "clusters" / "rpi4-jetson.yaml"
ORIN = """name: orin-jp5
devices:
  - name: orin
    profile: jetson-orin-nano
    address: 10.0.0.20
    overrides:
      units:
        gpu:
          target_options: {jetpack: "5.1.2"}
  - {name: orin6, profile: jetson-orin-nano, address: 10.0.0.21}
  - {name: rpi-a, profile: rpi4b-4gb, address: 10.0.0.11}
network:
  default: {bandwidth_mbps: 940, latency_ms: 0.2}
"""

pytest.importorskip("onnx", reason="exports the stages to ONNX")


@pytest.fixture(scope="module")
def graph():
    from edgeplan.graph.load import build

    return build("lenet5").graph


def _cpu_plan(graph, device: str, head: str = "rpi-a"):
    """Both lenet5 stages on ``device``'s CPU (arm-cpu), the head elsewhere."""
    plan = make_plan(graph, [len(graph.layers) // 2], [[(device, 1)], [(device, 1)]], head=head, target="arm-cpu")
    return dataclasses.replace(plan, model_ref="lenet5")


def _compile(graph, tmp_path, device: str, cluster) -> tuple[dict, str]:
    out = tmp_path / device
    compile_plan(_cpu_plan(graph, device), "lenet5", out, cluster=cluster, backend="onnxruntime")
    return jsonio.read(out / "compile-report.json"), (out / device / "README.txt").read_text()


def test_the_nanos_jetpack_is_a_board_option_its_cpu_units_see():
    nano = board_options(load_cluster(str(CLUSTER)), None, "jetson")
    assert nano == {"jetpack": "4.6.1", "arch": "sm_53"}
    assert board_options(load_cluster(str(CLUSTER)), None, "rpi-a") == {}
    py = tuple(int(p) for p in cuda.JETPACKS[nano["jetpack"]].python.split("."))
    assert py < _cpu.ORT_MIN_PYTHON  # the premise: stock JetPack 4.6 cannot pip-install onnxruntime>=1.20


def test_compile_warns_for_onnxruntime_on_a_jetpack_4_6_nano(graph, tmp_path):
    from edgeplan.cli import app

    plan_file = tmp_path / "plan.json"
    jsonio.write(plan_file, _cpu_plan(graph, "jetson").to_json())
    r = CliRunner().invoke(app, ["compile", str(plan_file), "--model", "lenet5", "--out", str(tmp_path / "a"),
                                 "--cluster", str(CLUSTER), "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    for stage in (0, 1):  # one line each: board/stage, what is missing, the fix
        line = next(x for x in r.output.splitlines() if x.startswith(f"warning: jetson/stage{stage} (arm-cpu"))
        for part in ("backend onnxruntime", "JetPack 4.6.1's python3 is 3.6", "onnxruntime>=1.20,<2 needs Python "
                     "3.10+", "cannot import onnxruntime", "put the stage on the board's GPU (target cuda, TensorRT)",
                     "no JetPack for sm_53 has Python 3.10"):
            assert part in line, line
    readme = (tmp_path / "a" / "jetson" / "README.txt").read_text()
    assert readme.count("WARNING: JetPack 4.6.1's python3 is 3.6, and onnxruntime>=1.20,<2 needs Python 3.10+") == 1
    assert "pip install numpy 'onnxruntime>=1.20,<2'" in readme  # the install line stays, the warning beside it


def test_the_same_stages_on_a_pi_or_a_jetpack_6_orin_draw_no_warning(graph, tmp_path):
    report, readme = _compile(graph, tmp_path, "rpi-b", str(CLUSTER))
    assert report["warnings"] == [] and "WARNING" not in readme
    (tmp_path / "orin.yaml").write_text(ORIN)
    report, readme = _compile(graph, tmp_path, "orin6", str(tmp_path / "orin.yaml"))  # JetPack 6.0: Python 3.10
    assert report["warnings"] == [] and "WARNING" not in readme


def test_a_jetpack_5_orin_is_told_to_flash_jetpack_6(graph, tmp_path):
    (tmp_path / "orin.yaml").write_text(ORIN)
    report, readme = _compile(graph, tmp_path, "orin", str(tmp_path / "orin.yaml"))
    assert len(report["warnings"]) == 2, report["warnings"]  # stage 0 and stage 1
    assert all("JetPack 5.1.2's python3 is 3.8" in w and "flash JetPack 6.0+ (sm_87 boards)" in w
               for w in report["warnings"])
    assert readme.count("WARNING: JetPack 5.1.2's python3 is 3.8") == 1
