"""Multi-input tracing: one LayerGraph input per forward() tensor, each input's branch contiguous first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeplan.errors import ModelError
from edgeplan.graph.order import input_branches
from edgeplan.graph.report import format_table
from edgeplan.graph.trace import trace


class Branch(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(self.relu(self.conv(x))), 1)


class ThreeInput(nn.Module):
    """Three small CNN branches, a junction (learned weights over the stacked features) and an fc."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.b0, self.b1, self.b2 = Branch(width), Branch(width), Branch(width)
        self.junction = nn.Parameter(torch.ones(3) / 3)
        self.fc = nn.Linear(width, 10)

    def forward(self, cam_a, cam_b, cam_c):
        feats = torch.stack([self.b2(cam_c), self.b0(cam_a), self.b1(cam_b)], 1)  # fx order interleaves
        return self.fc((feats * self.junction.view(1, 3, 1)).sum(1))


def test_three_inputs_trace_into_three_input_nodes_with_contiguous_branches():
    t = trace(ThreeInput(), (2, 3, 16, 16), "three")
    g = t.graph
    assert [x.name for x in g.inputs] == ["cam_a", "cam_b", "cam_c"]
    assert all(x.shape == (2, 3, 16, 16) for x in g.inputs)
    ranges = g.branch_ranges()
    assert [r[0] for r in ranges] == ["cam_a", "cam_b", "cam_c"]
    assert [(r[1], r[2]) for r in ranges] == [(0, 4), (4, 8), (8, 12)]
    for name, start, stop in ranges:  # each branch holds that input's module layers only
        prefix = {"cam_a": "b0", "cam_b": "b1", "cam_c": "b2"}[name]
        assert all(layer.origin.startswith(prefix) for layer in g.layers[start:stop])
    # topological: every layer's inputs come earlier (or are model inputs)
    seen = {x.name for x in g.inputs}
    for layer in g.layers:
        assert set(layer.inputs) <= seen, layer.name
        seen.add(layer.name)
    # the junction cut carries the three feature tensors only
    assert set(g.live_at(12)) == {g.layers[3].name, g.layers[7].name, g.layers[11].name}
    assert g.cut_bytes[12] == sum(g.layers[k].out_bytes for k in (3, 7, 11))


def test_traced_multi_input_module_computes_the_model():
    model = ThreeInput()
    t = trace(model, (2, 3, 16, 16), "three")
    xs = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        assert torch.allclose(t.gm(*xs), model(*xs), atol=1e-6)


def test_one_shape_per_input_and_mismatches_are_refused():
    t = trace(ThreeInput(), ((2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 12, 12)), "three")
    assert [x.shape for x in t.graph.inputs] == [(2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 12, 12)]
    with pytest.raises(ModelError, match="takes 3 inputs .* but 2 input shapes"):
        trace(ThreeInput(), ((2, 3, 16, 16), (2, 3, 8, 8)), "three")
    with pytest.raises(ModelError, match="disagree on the batch"):
        trace(ThreeInput(), ((2, 3, 16, 16), (3, 3, 8, 8), (2, 3, 12, 12)), "three")


def test_inspect_lists_each_input_and_its_branch():
    text = format_table(trace(ThreeInput(), (1, 3, 8, 8), "three").graph)
    assert "input cam_a 1x3x8x8 float32, cam_b 1x3x8x8 float32, cam_c 1x3x8x8 float32" in text
    assert "input1 = cam_b: branch of layers 4..7" in text


def test_input_read_at_the_join_has_an_empty_branch():
    deps = {"a1": ("x",), "j": ("a1", "y"), "o": ("j",)}
    assert input_branches(["a1", "j", "o"], ["x", "y"], deps) == {"a1": "x"}


def test_single_input_order_is_unchanged():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x))

    g = trace(Net(), (1, 4), "net").graph
    assert [x.name for x in g.layers] == ["a", "b"]
    assert g.branch_ranges() == (("x", 0, 2),)


def test_one_shape_per_input_from_the_flag_and_from_the_model_file(tmp_path):
    from edgeplan.graph.load import build
    from edgeplan.graph.report import parse_input_shape
    from edgeplan.planner.plan import _shape

    assert parse_input_shape("2,3,16,16;2,3,8,8;2x3x4x4") == ((2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 4, 4))
    with pytest.raises(ModelError, match="--input-shape '2,a' is not a shape"):
        parse_input_shape("2,3,8,8;2,a")
    f = tmp_path / "three.py"
    f.write_text("from tests.graph.test_multi_input import ThreeInput\n"
                 "INPUT_SHAPE = [(2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 4, 4)]\n"
                 "def build():\n    return ThreeInput()\n")
    g = build(f"{f}:build").graph
    assert [x.shape for x in g.inputs] == [(2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 4, 4)]
    assert _shape([[2, 3, 16, 16], [2, 3, 8, 8]]) == ((2, 3, 16, 16), (2, 3, 8, 8))  # plan.json read back
