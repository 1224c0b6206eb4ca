"""Printable views of a LayerGraph and the input-shape parser the CLI uses (pure Python, no torch)."""

from __future__ import annotations

import re

from edgeplan.errors import ModelError
from edgeplan.graph.model import LayerGraph
from edgeplan.tables import text_table


def parse_input_shape(text: str, option: str = "--input-shape"):
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``; a clear error otherwise.

    A model with several inputs takes one shape for all, or one per input separated by ``;``
    (``"1,3,32,32;1,6"`` -> ``((1, 3, 32, 32), (1, 6))``).
    """
    if ";" in text:
        return tuple(parse_input_shape(part, option) for part in text.split(";"))
    parts = [p.strip() for p in re.split(r"[,x×]", text.strip().strip("()[]"))]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ModelError(
            f"{option} {text!r} is not a shape: give positive integers separated by commas, batch first, "
            f"e.g. {option} 1,3,224,224"
        )
    return tuple(int(p) for p in parts)


def fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(graph: LayerGraph) -> str:
    """One row per layer: what it is, where it came from, its cost, and what a cut after it carries."""
    header = ("#", "name", "op", "origin", "output", "MFLOPs", "params", "act", "cut after")
    rows = []
    for i, layer in enumerate(graph.layers):
        rows.append((
            str(i), layer.name, layer.op, layer.origin, "x".join(map(str, layer.output.shape)),
            f"{layer.flops_fwd / 1e6:.3f}", f"{layer.param_count:,}", fmt_bytes(layer.out_bytes),
            fmt_bytes(graph.cut_bytes[i + 1]),
        ))
    lines = text_table(header, rows, right={0, 5, 6, 7, 8})
    inputs = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))} {t.dtype}" for t in graph.inputs)
    lines += [
        "",
        f"model {graph.name}: {len(graph.layers)} layers, input {inputs} ({fmt_bytes(graph.cut_bytes[0])})",
        f"total: {graph.total_params:,} params, {graph.total_macs / 1e9:.3f} GMACs, "
        f"{sum(layer.flops_fwd for layer in graph.layers) / 1e9:.3f} GFLOPs forward, "
        f"largest cut {fmt_bytes(max(graph.cut_bytes))}",
    ]
    if len(graph.inputs) > 1:  # what `--pin inputK=DEVICE` (or the parameter name) pins
        for k, (name, start, stop) in enumerate(graph.branch_ranges()):
            where = f"layers {start}..{stop - 1} ({graph.layers[start].name}..{graph.layers[stop - 1].name})" \
                if stop > start else "no layers of its own (read at the join)"
            lines.append(f"input{k} = {name}: branch of {where}")
    return "\n".join(lines) + "\n"
