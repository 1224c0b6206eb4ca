"""The frozen LayerGraph: what the planner knows about a model (no torch here).

All per-layer figures are for the traced input (batch ``LayerGraph.batch``);
the cost model divides by the batch to get per-sample figures. Layers are kept
in one topological order chosen to keep cuts cheap; a stage is a contiguous
range of that order, and ``cut_bytes[k]`` is what crosses a cut made after the
first ``k`` layers (``cut_bytes[0]``: the model inputs; ``cut_bytes[n]``: the
outputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeplan import jsonio
from edgeplan.graph.ops import op_class

SCHEMA_VERSION = 1
NO_BATCH_DIM = -1  # LayerGraph.batch_dims: the output has no single batch dimension, no cut may cross it


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor crossing a boundary (model input, output, or a cut)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * _DTYPE_BYTES.get(self.dtype, 4)

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])


_DTYPE_BYTES = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


@dataclass(frozen=True)
class Layer:
    """One computing node of the traced model.

    ``name`` is the fx node name (unique, stable); ``origin`` the module path or
    function it came from (e.g. ``layer1.0.conv1``), so errors can point at the
    model. ``inputs`` are producer layer names or model input names.
    """

    name: str
    op: str
    origin: str
    inputs: tuple[str, ...]
    output: TensorSpec
    flops_fwd: int
    flops_bwd: int
    macs: int
    param_count: int
    param_bytes: int

    @property
    def op_class(self) -> str:
        return op_class(self.op)

    @property
    def out_bytes(self) -> int:
        return self.output.nbytes

    @classmethod
    def from_json(cls, d: dict) -> Layer:
        return cls(
            name=d["name"], op=d["op"], origin=d["origin"], inputs=tuple(d["inputs"]),
            output=TensorSpec.from_json(d["output"]), flops_fwd=d["flops_fwd"],
            flops_bwd=d["flops_bwd"], macs=d["macs"], param_count=d["param_count"],
            param_bytes=d["param_bytes"],
        )


@dataclass(frozen=True)
class LayerGraph:
    """A model as the planner sees it: layers in topological order plus cut costs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]  # names of layers whose outputs are model outputs
    layers: tuple[Layer, ...]
    cut_bytes: tuple[int, ...]  # len(layers) + 1 entries, see module docstring
    schema_version: int = field(default=SCHEMA_VERSION)
    # layers whose output's batch is not dim 0: (name, dim), dim = NO_BATCH_DIM when the output has no single
    # batch dimension (a tuple such as nn.MultiheadAttention's or torch.unbind's, a batch-independent tensor);
    # found by the tracer (graph.batchdims), read by the planner (cut_allowed) and codegen (split)
    batch_dims: tuple[tuple[str, int], ...] = ()

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1

    @property
    def total_params(self) -> int:
        return sum(layer.param_count for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(name)

    def live_at(self, k: int) -> tuple[str, ...]:
        """Names of tensors crossing a cut after the first ``k`` layers.

        A tensor is live if it is produced before the cut (a layer in
        ``layers[:k]`` or a model input) and consumed after it (a layer in
        ``layers[k:]``, or it is a model output). Sorted by producer position.
        """
        produced = [t.name for t in self.inputs] + [layer.name for layer in self.layers[:k]]
        needed = {name for layer in self.layers[k:] for name in layer.inputs}
        needed.update(self.outputs)
        return tuple(name for name in produced if name in needed)

    def branch_ranges(self) -> tuple[tuple[str, int, int], ...]:
        """(input name, start, stop) per model input: the layers fed by that input alone, up to the first join.

        Multi-input traces keep each branch contiguous, in input order, before the joined rest
        (``order.branches_first``); a graph whose order does not (older traces) gets an error.
        """
        from edgeplan.graph.order import input_branches

        names = [layer.name for layer in self.layers]
        branch = input_branches(names, [t.name for t in self.inputs], {x.name: x.inputs for x in self.layers})
        out, pos = [], 0
        for t in self.inputs:
            stop = pos
            while stop < len(names) and branch.get(names[stop]) == t.name:
                stop += 1
            out.append((t.name, pos, stop))
            pos = stop
        if len(branch) != pos:
            raise ValueError(f"LayerGraph {self.name!r}: the branches of its inputs are not contiguous at the "
                             f"front of the layer order; re-trace the model with this edgeplan")
        return tuple(out)

    def cut_allowed(self) -> tuple[bool, ...]:
        """Per cut ``k`` (0..n): whether codegen can split there, i.e. every tensor live at ``k`` has one
        batch dimension (its samples can go to replicas). Cuts 0 and n (model inputs, outputs) always can."""
        n = len(self.layers)
        bad = {name for name, dim in self.batch_dims if dim == NO_BATCH_DIM}
        ok = [True] * (n + 1)
        if not bad:
            return tuple(ok)
        pos = {layer.name: i for i, layer in enumerate(self.layers)}
        last = {name: pos[name] for name in bad}  # live at cuts produced + 1 .. last use
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                if name in last:
                    last[name] = max(last[name], i)
        for name in bad:
            hi = n if name in self.outputs else last[name]
            for k in range(pos[name] + 1, hi + 1):
                ok[k] = False
        ok[0] = ok[n] = True
        return tuple(ok)

    def to_json(self) -> dict:
        d = asdict(self)
        if not self.batch_dims:  # graphs whose cuts are all batch-first keep the digest they always had
            del d["batch_dims"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> LayerGraph:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"LayerGraph schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}"
            )
        return cls(
            name=d["name"],
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(d["outputs"]),
            layers=tuple(Layer.from_json(x) for x in d["layers"]),
            cut_bytes=tuple(d["cut_bytes"]),
            schema_version=d["schema_version"],
            batch_dims=tuple((str(a), int(b)) for a, b in d.get("batch_dims", ())),
        )

    def digest(self) -> str:
        return jsonio.sha256_of(self.to_json())
