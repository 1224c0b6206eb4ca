"""Clear errors at the edges (issue 17 item 3): foreign artifacts under `run --local`, training's default
objective, runs that survived faults, and check-only nodes (torch._assert) in traces."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeplan import hostcheck, jsonio
from edgeplan.cli import app
from edgeplan.errors import ArtifactError
from edgeplan.graph.trace import trace

ROOT = Path(__file__).resolve().parents[2]
HETERO = str(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")


def _stage(root: Path, device: str, stage: int, target: str, backend: str, module: str, payload: bytes) -> None:
    d = root / device / f"stage{stage}"
    d.mkdir(parents=True)
    (d / "stage.json").write_text(json.dumps({"device": device, "stage": stage, "target": target,
                                              "backend": backend, "module": module}))
    (d / module).write_bytes(payload)


def _elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\0" * 11 + machine.to_bytes(2, "little") + b"\0" * 44


def test_foreign_stages_name_board_target_and_ways_out(tmp_path):
    _stage(tmp_path, "gpu-board", 0, "arm-cpu", "tvm", "stage.so", _elf(183))
    _stage(tmp_path, "npu-board", 1, "npu", "rknn", "model.rknn", b"RKNN")
    _stage(tmp_path, "cpu-board", 2, "arm-cpu", "onnxruntime", "stage.onnx", b"onnx")  # portable
    bad = hostcheck.foreign_stages(tmp_path, "x86_64")
    assert [(b["device"], b["target"]) for b in bad] == [("gpu-board", "arm-cpu"), ("npu-board", "npu")]
    (tmp_path / "plan.json").write_text(json.dumps({"cluster_path": "clusters/shelf.yaml"}))
    with pytest.raises(ArtifactError) as e:
        hostcheck.check_runs_here(tmp_path, arch="x86_64")
    msg = str(e.value)
    for part in ("board gpu-board stage 0 (target arm-cpu", "aarch64 library", "this machine is x86_64",
                 "edgeplan emulate clusters/shelf.yaml", "qemu", f"edgeplan deploy {tmp_path} --cluster "
                 "clusters/shelf.yaml"):
        assert part in msg
    assert hostcheck.foreign_stages(tmp_path / "gpu-board" / "..", "aarch64") == []  # npu-board: on the board
    hostcheck.check_runs_here(tmp_path / "cpu-board" / "..", arch="aarch64")


def test_run_local_refuses_foreign_artifacts_before_starting_workers(tmp_path):
    _stage(tmp_path, "gpu-board", 0, "arm-cpu", "tvm", "stage.so", _elf(183 if hostcheck.host_arch() != "aarch64"
                                                                         else 62))
    r = CliRunner().invoke(app, ["run", str(tmp_path), "--local", "--requests", "1"])
    assert r.exit_code == 2
    assert "board gpu-board stage 0 (target arm-cpu" in r.output and "Ways out" in r.output


def test_training_plan_defaults_to_objective_time(tmp_path):
    out = tmp_path / "train.json"
    r = CliRunner().invoke(app, ["plan", "lenet5", "--cluster", HETERO, "--mode", "training", "--batch", "16",
                                 "--microbatches", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert jsonio.read(out)["objective"] == "time"
    r = CliRunner().invoke(app, ["plan", "lenet5", "--cluster", HETERO, "--out", str(tmp_path / "inf.json")])
    assert r.exit_code == 0, r.output
    assert jsonio.read(tmp_path / "inf.json")["objective"] == "throughput"


@pytest.fixture(scope="module")
def lenet_art(tmp_path_factory):
    """lenet5 on two local x86 boards, ONNX Runtime stages."""
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.graph.load import build

    from ..codegen.codegen_helpers import make_plan

    traced = build("lenet5")
    plan = make_plan(traced.graph, [len(traced.graph.layers) // 2], [[("a", 2)], [("b", 2)]])
    return compile_plan(plan, "lenet5", tmp_path_factory.mktemp("art") / "art", backend="onnxruntime",
                        traced=traced)


def test_run_that_survived_a_fault_exits_0_with_a_warning_and_3_with_strict(lenet_art, monkeypatch):
    """The real run answers every request; a fault it routed around is added to its result."""
    from edgeplan.runtime import local
    from edgeplan.runtime.head import Fault

    real = local.run_local

    def survived(*a, **kw):
        art, res = real(*a, **kw)
        assert not res.failures and not res.faults
        res.faults.append(Fault(device="b", stage=1, address="127.0.0.1:7702", reason="killed (test)",
                                detected_at_s=0.1))
        return art, res

    monkeypatch.setattr(local, "run_local", survived)
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(lenet_art), "--local", "--requests", "4"])
    assert r.exit_code == 0, r.output
    assert "warning: all 4 requests succeeded, routed around 1 failed worker(s): board b stage 1" in r.output
    r = runner.invoke(app, ["run", str(lenet_art), "--local", "--requests", "4", "--strict"])
    assert r.exit_code == 3, r.output
    monkeypatch.setattr(local, "run_local", real)
    r = runner.invoke(app, ["run", str(lenet_art), "--local", "--requests", "4", "--strict"])
    assert r.exit_code == 0 and "warning" not in r.output, r.output


# A ViT written the way torchvision writes vit_b_16: shape checks with torch._assert in
# _process_input and in the encoder (torchvision is not a dependency of edgeplan).
VIT_SRC = textwrap.dedent('''
    import torch
    from torch import nn

    INPUT_SHAPE = (1, 3, 32, 32)


    class EncoderBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim)
            self.heads, self.qkv, self.proj = 2, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.ln_2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            torch._assert(x.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {x.shape}")
            y = self.ln_1(x)
            n, t, d = y.shape
            q, k, v = self.qkv(y).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
            x = x + y
            return x + self.mlp(self.ln_2(x))


    class Encoder(nn.Module):
        def __init__(self, dim, seq):
            super().__init__()
            self.pos_embedding = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
            self.block = EncoderBlock(dim)
            self.ln = nn.LayerNorm(dim)

        def forward(self, x):
            torch._assert(x.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {x.shape}")
            return self.ln(self.block(x + self.pos_embedding))


    class TinyViT(nn.Module):
        def __init__(self, image_size=32, patch=8, dim=32, classes=10):
            super().__init__()
            self.image_size, self.patch_size, self.dim = image_size, patch, dim
            self.conv_proj = nn.Conv2d(3, dim, patch, patch)
            self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.encoder = Encoder(dim, (image_size // patch) ** 2 + 1)
            self.heads = nn.Linear(dim, classes)

        def _process_input(self, x):
            n, c, h, w = x.shape
            p = self.patch_size
            torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
            torch._assert(w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!")
            x = self.conv_proj(x)
            x = x.reshape(n, self.dim, (h // p) * (w // p))
            return x.permute(0, 2, 1)

        def forward(self, x):
            x = self._process_input(x)
            n = x.shape[0]
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
            x = self.encoder(x)
            return self.heads(x[:, 0])


    def build():
        torch.manual_seed(0)
        return TinyViT()
''')


def _vit_module(tmp_path: Path):
    import importlib.util

    path = tmp_path / "tinyvit.py"
    path.write_text(VIT_SRC)
    spec = importlib.util.spec_from_file_location("tinyvit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def test_assert_nodes_are_dropped_from_traces(tmp_path):
    _, mod = _vit_module(tmp_path)
    model = mod.build().eval()
    traced = trace(model, mod.INPUT_SHAPE, "tinyvit")
    targets = [n.target for n in traced.gm.graph.nodes if n.op == "call_function"]
    assert torch._assert not in targets
    assert not any(layer.name.startswith("_assert") or layer.name.startswith("eq") for layer in traced.graph.layers)
    x = torch.randn(*mod.INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(traced.gm(x), model(x), atol=1e-5)


def test_vit_with_asserts_plans_compiles_and_runs(tmp_path, monkeypatch):
    """The README loop on it: plan on two x86 boards, compile (plan.json only), run --local --check."""
    path, _ = _vit_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.yaml").write_text(textwrap.dedent('''
        name: two-hosts
        devices:
          - {name: a, profile: host, address: 127.0.0.1}
          - {name: b, profile: host, address: 127.0.0.1}
        network:
          default: {bandwidth_mbps: 1000, latency_ms: 0.1}
    '''))
    runner = CliRunner()
    r = runner.invoke(app, ["plan", f"{path.name}:build", "--cluster", "two.yaml", "--batch", "2", "--out",
                            "plan.json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compile", "plan.json", "--out", "art", "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", "art", "--local", "--requests", "3", "--check", "--tolerance", "1e-4"])
    assert r.exit_code == 0, r.output
    assert "max abs error" in r.output  # every output compared with PyTorch (exit 2 beyond the tolerance)
