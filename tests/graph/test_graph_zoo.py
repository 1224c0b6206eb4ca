"""Zoo models against the parameter and MAC counts their papers / reference implementations publish."""

from __future__ import annotations

import pytest

from edgeplan.errors import ModelError
from edgeplan.graph import zoo


def _tolerance(published: int, relative: float) -> float:
    """``relative``, widened to half a unit of the last digit the figure was published with (1.7M -> 0.05M)."""
    digits = str(published).rstrip("0")
    half_unit = 0.5 * 10 ** (len(str(published)) - len(digits))
    return max(relative, half_unit / published)


WITH_PARAMS = sorted(name for name, e in zoo.ZOO.items() if e.published_params is not None)
WITH_MACS = sorted(name for name, e in zoo.ZOO.items() if e.published_macs is not None)


def test_the_brief_models_have_published_figures():
    assert {"lenet5", "resnet18", "mobilenet_v2", "vgg16", "resnet32-cifar", "resnet56-cifar",
            "resnet110-cifar"} <= set(WITH_PARAMS)
    assert {"resnet18", "mobilenet_v2", "vgg16", "resnet32-cifar", "resnet56-cifar"} <= set(WITH_MACS)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_params_match_published(traced_zoo, name):
    entry, graph = zoo.ZOO[name], traced_zoo(name).graph
    direct = sum(p.numel() for p in entry.build().parameters())
    assert graph.total_params == direct  # every parameter is owned by exactly one layer
    tol = _tolerance(entry.published_params, 0.01)
    assert graph.total_params == pytest.approx(entry.published_params, rel=tol)


@pytest.mark.parametrize("name", WITH_MACS)
def test_macs_match_published(traced_zoo, name):
    entry, graph = zoo.ZOO[name], traced_zoo(name).graph
    tol = _tolerance(entry.published_macs, 0.03)
    assert graph.total_macs == pytest.approx(entry.published_macs, rel=tol)


def test_exact_counts_where_known(traced_zoo):
    """Exact figures from the reference implementations (torchvision / timm / LeCun's layer list)."""
    assert traced_zoo("lenet5").graph.total_params == 156 + 2416 + 48120 + 10164 + 850
    assert traced_zoo("resnet18").graph.total_params == 11_689_512
    assert traced_zoo("mobilenet_v2").graph.total_params == 3_504_872


def test_builders_are_deterministic():
    a, b = zoo.ZOO["lenet5"].build(), zoo.ZOO["lenet5"].build()
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_depthwise_convs_detected(traced_zoo):
    ops = {layer.op for layer in traced_zoo("mobilenet_v2-cifar").graph.layers}
    assert {"dwconv2d", "conv2d", "relu6", "add"} <= ops


def test_unknown_zoo_name_lists_valid_names():
    with pytest.raises(ModelError) as err:
        zoo.get("resnet19")
    assert "resnet19" in str(err.value)
    for name in zoo.ZOO:
        assert name in str(err.value)
