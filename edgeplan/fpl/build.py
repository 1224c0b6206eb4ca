"""``edgeplan fpl``: a single-input model -> K source branches + junction + trunk, written as one Python file.

The model is traced (``edgeplan.graph.load``); the *junction position* is the name of
a layer (an fx node name, as ``edgeplan inspect`` prints them). Everything before it
becomes the branch, which is copied once per source with its own weights; the layer
itself and everything after it become the trunk. A position is valid only where the
cut carries exactly one tensor (inside a residual block two tensors cross, so those
layers are not offered).

The written file needs only torch: each part's leaf layers are rebuilt from their
``torch.nn`` constructor text (checked to rebuild the same layer), its forward is the
fx code of that part, and the Junction's source is copied from
``edgeplan/fpl/junction.py``. Weights start from torch's default initialisation,
seeded, so ``build()`` is deterministic; the branches are seeded differently, so
they start (and stay) independent.
"""

from __future__ import annotations

import inspect
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from edgeplan.errors import ModelError

# fx's code generator refers to these names without importing them (torch.fx.graph._custom_builtins).
_BUILTIN_IMPORTS = {
    "inf": "from math import inf",
    "nan": "from math import nan",
    "NoneType": "NoneType = type(None)",
    "torch": "import torch",
    "device": "from torch import device",
    "fx_pytree": "import torch.fx._pytree as fx_pytree",
    "pytree": "import torch.utils._pytree as pytree",
}
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Part:
    """One side of the cut, as text for the template: layer constructors and the forward body."""

    layers: tuple[tuple[str, str], ...]  # (attribute, constructor expression)
    parameters: tuple[tuple[str, tuple[int, ...]], ...]  # (attribute, shape) of parameters read directly
    forward: str  # "def forward(self, x):\n    ..." (fx code)
    imports: tuple[str, ...]


@dataclass(frozen=True)
class FplModel:
    """What ``edgeplan fpl`` decided: the source model split at ``junction_before`` for ``sources``."""

    model: str
    sources: tuple[str, ...]
    junction_before: str
    input_shape: tuple[int, ...]  # one source's input, batch 1
    feature_shape: tuple[int, ...]  # what each branch hands the junction, batch 1
    branch: Part
    trunk: Part


def _positions(traced) -> tuple[list[fx.Node], dict[str, int]]:
    """gm's nodes, and the index where each layer's block (its absorbed nodes, then itself) starts."""
    nodes = list(traced.gm.graph.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    start = {layer.name: index[layer.name] for layer in traced.graph.layers}
    for node, owner in traced.absorbed:
        start[owner] = min(start[owner], index[node])
    return nodes, start


def _crossing(nodes: list[fx.Node], cut: int) -> list[fx.Node]:
    index = {n: i for i, n in enumerate(nodes)}
    return [n for n in nodes[:cut] if any(index[u] >= cut for u in n.users)]


def junction_points(traced) -> tuple[str, ...]:
    """Layers the junction may sit before: one tensor (not the model input) crosses the cut there."""
    nodes, start = _positions(traced)
    out = []
    for layer in traced.graph.layers:
        live = _crossing(nodes, start[layer.name])
        if len(live) == 1 and live[0].op != "placeholder":
            out.append(layer.name)
    return tuple(out)


def _flat(target: str) -> str:
    name = re.sub(r"\W", "_", target)
    return f"m_{name}" if keyword.iskeyword(name) or name[0].isdigit() else name


def _constructor(name: str, module: nn.Module, model: str) -> str:
    """``nn.<repr>``, accepted only when evaluating it rebuilds the same layer (repr and weight shapes)."""
    text = f"nn.{module!r}"
    ok = type(module).__module__.startswith("torch.nn.modules") and "\n" not in text
    if ok:
        try:
            rebuilt = eval(text, {"nn": nn, "torch": torch})  # noqa: S307 - text is torch's own repr of a torch.nn layer
        except Exception:
            ok = False
        else:
            def shapes(m: nn.Module) -> dict:
                return {k: tuple(v.shape) for k, v in m.state_dict().items()}

            ok = repr(rebuilt) == repr(module) and shapes(rebuilt) == shapes(module)
    if not ok:
        raise ModelError(f"model {model!r}: layer {name!r} ({type(module).__qualname__}) cannot be written into the "
                         "FPL file (only torch.nn layers whose repr rebuilds them); make it a torch.nn layer or "
                         "move the junction so it falls on the other side")
    return text


def _part(traced, nodes: list[fx.Node], keep: list[fx.Node], feed: fx.Node | None, arg: str, model: str,
          result: fx.Node | None) -> Part:
    """A standalone forward for ``keep`` (with ``feed`` read from the placeholder ``arg``)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    placeholder = g.placeholder(arg)
    if feed is not None:
        env[feed] = placeholder
    layers: dict[str, str] = {}
    params: dict[str, tuple[int, ...]] = {}
    root = traced.gm
    for n in keep:
        if n.op == "placeholder":
            env[n] = placeholder
            continue
        if n.op == "output":
            g.output(env[n.args[0]] if isinstance(n.args[0], fx.Node) else fx.map_arg(n.args[0], lambda a: env[a]))
            continue
        new = g.node_copy(n, lambda a: env[a])
        if n.op == "call_module":
            flat = _flat(n.target)
            if flat not in layers:
                layers[flat] = _constructor(n.target, root.get_submodule(n.target), model)
            new.target = flat
        elif n.op == "get_attr":
            owner, _, attr = n.target.rpartition(".")
            t = getattr(root.get_submodule(owner) if owner else root, attr)
            if not isinstance(t, nn.Parameter):
                raise ModelError(f"model {model!r}: {n.name!r} reads the buffer {n.target!r} directly; the FPL "
                                 "file holds torch.nn layers and parameters only")
            flat = _flat(n.target)
            params[flat] = tuple(t.shape)
            new.target = flat
        env[n] = new
    if result is not None:
        g.output(env[result])
    g.lint()
    code = g.python_code(root_module="self")
    src = code.src.strip() + "\n"
    imports = []
    for name in sorted(code.globals):
        if not re.search(rf"\b{re.escape(name)}\b", src):
            continue
        if name not in _BUILTIN_IMPORTS:
            raise ModelError(f"model {model!r}: the code around {result.name if result else 'the output'!r} calls "
                             f"{name!r}, which the FPL file cannot import; use torch functions or torch.nn layers")
        imports.append(_BUILTIN_IMPORTS[name])
    return Part(tuple(layers.items()), tuple(params.items()), src, tuple(imports))


def split(spec: str, sources: tuple[str, ...] | list[str], junction_before: str,
          input_shape: tuple[int, ...] | None = None) -> FplModel:
    """Cut model ``spec`` before layer ``junction_before`` for ``sources`` (one branch each)."""
    from edgeplan.graph import load

    sources = tuple(sources)
    if len(sources) < 2:
        raise ModelError(f"--sources needs at least two source names (comma separated), got {list(sources)}")
    bad = [s for s in sources if not _SOURCE_NAME.match(s)]
    if bad or len(set(sources)) != len(sources):
        raise ModelError(f"--sources: names must be distinct and made of letters, digits, '_', '.', '-' "
                         f"(got {', '.join(sources)})")
    traced = load.build(spec, input_shape)
    valid = junction_points(traced)
    if junction_before not in valid:
        raise ModelError(f"--junction-before {junction_before!r} is not a junction position of {spec!r}; "
                         f"valid layer names (one tensor crosses there): {', '.join(valid)}")
    nodes, start = _positions(traced)
    cut = start[junction_before]
    (feature,) = _crossing(nodes, cut)
    branch = _part(traced, nodes, nodes[:cut], None, "x", spec, feature)
    trunk = _part(traced, nodes, nodes[cut:], feature, "feature", spec, None)
    feature_shape = tuple(traced.graph.layers[traced.graph.index(feature.name)].output.shape)
    return FplModel(spec, sources, junction_before, tuple(traced.graph.inputs[0].shape), feature_shape,
                    branch, trunk)


def render(fpl: FplModel) -> str:
    """The text of the FPL model file (``codegen/templates/fpl_model.py.j2``)."""
    from edgeplan.codegen.render import render as render_template
    from edgeplan.fpl import junction

    imports = sorted(set(fpl.branch.imports + fpl.trunk.imports) - {"import torch"})
    return render_template("fpl_model.py.j2", fpl=fpl, imports=imports,
                           junction_source=inspect.getsource(junction.Junction).rstrip() + "\n",
                           inputs=[f"input{i}" for i in range(len(fpl.sources))])


def write(fpl: FplModel, out: str | Path) -> Path:
    """Write the file and check it: it must build a model whose output matches the original's shape."""
    path = Path(out)
    text = render(fpl)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def load_file(path: str | Path) -> nn.Module:
    """``build()`` of a written FPL file (through the same loader ``edgeplan plan file.py:build`` uses)."""
    from edgeplan.graph.load import load_model

    return load_model(f"{path}:build").module
