"""Placement constraints: ``--pin NAME=DEVICE`` and ``--allow-raw-transfer INPUT`` (issue 16).

A pin ties layers to a board, as a hard constraint of the planner (planner/branches):

- ``NAME`` a model input (its forward() parameter name, or ``inputK`` for the K-th input):
  the input's data lives on that board, and so do the layers only it feeds, up to the
  first join (``LayerGraph.branch_ranges``);
- any other ``NAME`` is a pattern over layers: an fx layer name, a module path (``b0``
  pins every layer of module ``b0`` and its children) or a glob of either (``b0.*``,
  ``layer4*``). A stage holding a pinned layer runs on that board alone.

A pinned input's raw data never crosses a link: every layer that reads it runs on its
board, unless ``--allow-raw-transfer`` names the input. Errors are one line naming the
flag, what was wrong and the valid choices.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from edgeplan.errors import PlanError
from edgeplan.graph.model import LayerGraph
from edgeplan.planner.plan import Pin

_INPUT_K = re.compile(r"^input(\d+)$")


def input_of(graph: LayerGraph, ref: str) -> str | None:
    """The graph input ``ref`` names (parameter name, or ``inputK``); None when it names none."""
    names = [t.name for t in graph.inputs]
    if ref in names:
        return ref
    m = _INPUT_K.match(ref)
    if m and int(m.group(1)) < len(names):
        return names[int(m.group(1))]
    return None


def _input_choices(graph: LayerGraph) -> str:
    return ", ".join(f"input{k} ({t.name})" if t.name != f"input{k}" else t.name for k, t in enumerate(graph.inputs))


def module_path(origin: str) -> str:
    """``b0.conv`` from a layer origin (``b0.conv`` or ``b0.flatten (file.py:12)``)."""
    return origin.split(" (", 1)[0]


def match_layers(graph: LayerGraph, pattern: str) -> tuple[str, ...]:
    """Layers whose name or module path equals ``pattern``, lies under it, or matches it as a glob."""
    out = []
    for layer in graph.layers:
        path = module_path(layer.origin)
        if (layer.name == pattern or path == pattern or path.startswith(pattern + ".")
                or fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(path, pattern)):
            out.append(layer.name)
    return tuple(out)


def parse_pin(text: str) -> tuple[str, str]:
    name, sep, device = text.partition("=")
    if not sep or not name.strip() or not device.strip():
        raise PlanError(f"--pin {text!r}: give NAME=DEVICE, e.g. --pin input0=cam-a or --pin 'fc=trunk'")
    return name.strip(), device.strip()


def resolve_pins(graph: LayerGraph, devices: Sequence[str], pins: Sequence[str]) -> tuple[Pin, ...]:
    """The ``--pin`` texts as Pins with the layers each one pins; refuses unknown names and conflicts."""
    out: list[Pin] = []
    ranges = {name: (start, stop) for name, start, stop in graph.branch_ranges()} if len(graph.inputs) > 1 else {}
    for text in pins:
        name, device = parse_pin(text)
        if device not in devices:
            raise PlanError(f"--pin {text!r}: no device {device!r} in the cluster; valid devices: {', '.join(devices)}")
        inp = input_of(graph, name)
        if inp is not None:
            if len(graph.inputs) > 1:
                start, stop = ranges[inp]
            else:
                start, stop = graph.branch_ranges()[0][1:]
            layers = tuple(x.name for x in graph.layers[start:stop])
            out.append(Pin(name=name, kind="input", input=inp, device=device, layers=layers))
            continue
        layers = match_layers(graph, name)
        if not layers:
            some = ", ".join(x.name for x in graph.layers[:6])
            raise PlanError(
                f"--pin {text!r}: {name!r} is neither a model input ({_input_choices(graph)}) nor a layer name, "
                f"module path or glob of {graph.name!r} (layers: {some}, ...; see `edgeplan inspect`)")
        out.append(Pin(name=name, kind="layers", input="", device=device, layers=layers))
    _check_conflicts(out)
    return tuple(out)


def _check_conflicts(pins: list[Pin]) -> None:
    owner: dict[str, Pin] = {}
    inputs: dict[str, Pin] = {}
    for p in pins:
        if p.kind == "input":
            q = inputs.get(p.input)
            if q is not None and q.device != p.device:
                raise PlanError(f"--pin {p.name}={p.device} conflicts with --pin {q.name}={q.device}: input "
                                f"{p.input!r} is pinned to two devices; keep one of them")
            inputs[p.input] = p
        for layer in p.layers:
            q = owner.get(layer)
            if q is not None and q.device != p.device:
                raise PlanError(f"--pin {p.name}={p.device} conflicts with --pin {q.name}={q.device}: layer "
                                f"{layer!r} is pinned to both; drop one pin or narrow its pattern")
            owner[layer] = p


def resolve_raw(graph: LayerGraph, names: Sequence[str]) -> tuple[str, ...]:
    """``--allow-raw-transfer`` names as graph input names (sorted, unique)."""
    out = set()
    for ref in names:
        inp = input_of(graph, ref)
        if inp is None:
            raise PlanError(f"--allow-raw-transfer {ref!r} is not a model input; valid: {_input_choices(graph)}")
        out.add(inp)
    return tuple(sorted(out))


def layer_devices(graph: LayerGraph, pins: Sequence[Pin]) -> dict[int, str]:
    """Layer index -> the device it is pinned to."""
    index = {x.name: i for i, x in enumerate(graph.layers)}
    return {index[layer]: p.device for p in pins for layer in p.layers}


def input_devices(pins: Sequence[Pin]) -> dict[str, str]:
    """Graph input name -> the device its data lives on (pinned inputs only)."""
    return {p.input: p.device for p in pins if p.kind == "input"}
