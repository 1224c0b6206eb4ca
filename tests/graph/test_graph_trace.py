"""Tracing: LayerGraph contents checked by hand on small models, and the traced gm against the model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeplan import jsonio
from edgeplan.errors import ModelError
from edgeplan.graph.model import LayerGraph
from edgeplan.graph.trace import trace


class SmallResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x))) + x


def test_small_residual_by_hand():
    """x: 1x2x4x4 float32 = 32 values = 128 B; conv1 and relu: 1x4x4x4 = 256 B; conv2 and add: 128 B.

    Layers in order: conv1, relu, conv2, add. x stays live until the add consumes it:
      cut 0: {x}            = 128
      cut 1: {x, conv1}     = 128 + 256 = 384
      cut 2: {x, relu}      = 128 + 256 = 384
      cut 3: {x, conv2}     = 128 + 128 = 256
      cut 4: {add} (output) = 128
    MACs: conv1 16 pixels x 4 out x 2 in = 128; conv2 16 x 2 x 4 = 128.
    FLOPs fwd: conv1 2*128 + 64 bias adds = 320; relu 64; conv2 2*128 + 32 = 288; add 32.
    FLOPs bwd: twice fwd for layers with weights (grad input + grad weight), once otherwise.
    Params: conv1 4*2 + 4 = 12; conv2 2*4 + 2 = 10.
    """
    g = trace(SmallResidual(), (1, 2, 4, 4), "small").graph
    assert [(layer.name, layer.op) for layer in g.layers] == [
        ("conv1", "conv2d"), ("relu", "relu"), ("conv2", "conv2d"), ("add", "add")]
    assert g.cut_bytes == (128, 384, 384, 256, 128)
    assert [layer.macs for layer in g.layers] == [128, 0, 128, 0]
    assert [layer.flops_fwd for layer in g.layers] == [320, 64, 288, 32]
    assert [layer.flops_bwd for layer in g.layers] == [640, 64, 576, 32]
    assert [layer.param_count for layer in g.layers] == [12, 0, 10, 0]
    assert [layer.param_bytes for layer in g.layers] == [48, 0, 40, 0]
    assert g.layers[3].inputs == ("conv2", "x")
    assert g.outputs == ("add",)
    assert g.layers[0].origin == "conv1"
    assert g.layers[3].origin.startswith("add (test_graph_trace.py:")


class Branches(nn.Module):
    """x -> a (conv 1->4) ; x -> b (conv 1->2) ; cat(a, b)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1, bias=False)
        self.b = nn.Conv2d(1, 2, 1, bias=False)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def test_live_at_on_a_branch():
    """x is 1x1x2x2 = 16 B, a 64 B, b 32 B. The greedy order runs the smaller branch b first:
    cut 1 = {x, b} = 48 B, instead of {x, a} = 80 B in fx order; cut 2 = {a, b} = 96 B."""
    model = Branches()
    traced = trace(model, (1, 1, 2, 2), "branches")
    g = traced.graph
    assert [layer.name for layer in g.layers] == ["b", "a", "cat"]
    assert traced.order == "greedy"
    assert g.live_at(0) == ("x",)
    assert g.live_at(1) == ("x", "b")
    assert g.live_at(2) == ("b", "a")
    assert g.live_at(3) == ("cat",)
    assert g.cut_bytes == (16, 48, 96, 96)
    # the GraphModule follows the same order, and still computes the model
    assert [n.name for n in traced.gm.graph.nodes] == ["x", "b", "a", "cat", "output"]
    x = torch.randn(3, 1, 2, 2)  # another batch size works too
    torch.testing.assert_close(traced.gm(x), model(x))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.fc(self.fc(x) * self.scale)


def test_shared_params_counted_once_and_get_attr_folded():
    traced = trace(Tied(), (2, 4), "tied")
    g = traced.graph
    assert [(layer.op, layer.param_count) for layer in g.layers] == [("linear", 20), ("mul", 4), ("linear", 0)]
    assert g.total_params == 24
    assert traced.absorbed == (("scale", "mul"),)
    assert traced.layer_of("scale") == "mul"
    assert g.layers[2].flops_bwd == 2 * g.layers[2].flops_fwd  # still has weights to differentiate


class Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))


def test_shape_arithmetic_is_absorbed_and_batch_stays_dynamic():
    traced = trace(Flatten(), (1, 3, 4), "flat")
    assert [layer.name for layer in traced.graph.layers] == ["view", "fc"]
    assert dict(traced.absorbed) == {"size": "view"}
    assert traced.graph.layers[0].inputs == ("x",)
    assert traced.gm(torch.randn(5, 3, 4)).shape == (5, 2)


class Inner(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.gate = Inner()

    def forward(self, x):
        return self.gate(self.stem(x))


def test_untraceable_model_names_module_line_and_fix():
    with pytest.raises(ModelError) as err:
        trace(Untraceable(), (1, 3, 4, 4), "untraceable")
    msg = str(err.value)
    assert "'gate'" in msg and "test_graph_trace.py:" in msg
    assert "torch.where" in msg and "leaf" in msg
    # the suggested fix works: keep the submodule whole
    g = trace(Untraceable(), (1, 3, 4, 4), "untraceable", leaf_modules=(Inner,)).graph
    assert [(layer.name, layer.op) for layer in g.layers] == [("stem", "conv2d"), ("gate", "custom")]


def test_wrong_input_shape_says_what_was_tried_and_expected():
    from edgeplan.graph.load import build

    with pytest.raises(ModelError) as err:
        build("lenet5", (1, 3, 32, 32))
    msg = str(err.value)
    assert "(1, 3, 32, 32)" in msg and "(1, 1, 32, 32)" in msg and "conv1" in msg


@pytest.mark.parametrize("shape", [(), (1, 0, 4), (1, -3)])
def test_bad_shape_values(shape):
    with pytest.raises(ModelError, match="positive integers"):
        trace(SmallResidual(), shape, "small")


@pytest.mark.parametrize("name", ["resnet18-cifar", "mobilenet_v2-cifar", "vit-tiny", "resnet32-cifar"])
def test_gm_matches_model_and_layer_order(traced_zoo, name):
    from edgeplan.graph import zoo

    traced = traced_zoo(name)
    g, model = traced.graph, zoo.ZOO[name].build()
    x = torch.randn(2, *g.inputs[0].shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(traced.gm(x), model(x))
    # gm nodes: placeholders, then each layer preceded by the nodes it absorbs, then output
    owner = dict(traced.absorbed)
    seq = [owner.get(n.name, n.name) for n in traced.gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]] == [layer.name for layer in g.layers]
    assert len(seq) == len(g.layers) + len(traced.absorbed)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2-cifar", "vit-tiny", "resnet56-cifar"])
def test_cut_bytes_equal_live_set(traced_zoo, name):
    g = traced_zoo(name).graph
    sizes = {t.name: t.nbytes for t in g.inputs} | {layer.name: layer.out_bytes for layer in g.layers}
    assert len(g.cut_bytes) == len(g.layers) + 1
    assert g.cut_bytes == tuple(sum(sizes[t] for t in g.live_at(k)) for k in range(len(g.layers) + 1))
    assert g.cut_bytes[0] == g.inputs[0].nbytes
    assert g.cut_bytes[-1] == sum(sizes[o] for o in g.outputs)


def test_greedy_order_runs_resnet_shortcut_first(traced_zoo):
    """Measured: greedy lowers ResNet-18's mean cut by 1.4% (716.9 -> 707.1 KiB), ResNet-32 by 4.3%."""
    traced = traced_zoo("resnet18")
    g = traced.graph
    assert traced.order == "greedy"
    assert g.index("layer2_0_downsample_0") < g.index("layer2_0_conv1")


@pytest.mark.parametrize("name", ["resnet18-cifar", "vit-tiny", "lenet5"])
def test_json_round_trip(traced_zoo, name):
    g = traced_zoo(name).graph
    again = LayerGraph.from_json(json.loads(jsonio.dumps(g.to_json())))
    assert again == g
    assert again.digest() == g.digest()


def test_vit_attention_is_matmul_softmax(traced_zoo):
    g = traced_zoo("vit-tiny").graph
    ops = [layer.op for layer in g.layers]
    assert ops.count("matmul") == 2 * 6 and ops.count("softmax") == 6 and ops.count("layernorm") == 2 * 6 + 1
    qk = next(layer for layer in g.layers if layer.op == "matmul")
    assert qk.output.shape == (1, 3, 65, 65)
    assert qk.macs == 3 * 65 * 65 * 64  # heads x tokens x tokens x head_dim


def test_multihead_attention_module_is_a_leaf():
    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    traced = trace(MHA(), (1, 5, 8), "mha")
    g = traced.graph
    assert [(layer.op, layer.output.shape) for layer in g.layers] == [("attention", (5 * 8,)), ("getitem", (1, 5, 8))]
    # in-projection 5x8x24 + scores 2x5x5x4 + values 2x5x5x4 + out-projection 5x8x8
    assert g.layers[0].macs == 5 * 8 * 24 + 2 * (2 * 5 * 5 * 4) + 5 * 8 * 8
    assert g.layers[0].param_count == 8 * 24 + 24 + 8 * 8 + 8
