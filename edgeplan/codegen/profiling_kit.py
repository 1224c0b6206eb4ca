"""The board-side profiling kit (issue 14 item 2): what `sh <board>/profile.sh` times on the board.

For each board and unit of a plan whose stages run on ONNX Runtime, codegen writes
``<board>/profiling/``: one single-layer module per op class the model uses (the
class's layer with the most FLOPs, at the replica's micro-batch, so the sizes are
the model's own), a tiny module for the fixed cost of one call, ``kit.json`` (what
each module computes) and ``run_kit.py`` (needs only numpy and the board's
``edgeplan_runtime``). ``profile.sh`` runs it and prints a measured profile
overlay (JSON, which is YAML): ``extends`` the board's profile, with the measured
throughput per op class, per-layer and per-call (hop) overheads, each with its
provenance under ``measured``. It also times the model cut into ``WINDOWS``
contiguous windows (with the fusions a runtime makes inside a stage) and writes
them to ``profiling/timings.json`` for ``edgeplan calibrate --kit``, which fits
the board per op class from them as from a run. TVM-built boards (cuda, mali, arm-cpu with TVM)
get no kit yet: their stages would need the same modules built by TVM.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from edgeplan import jsonio

RUNNER = Path(__file__).with_name("kit_runner.py")
RUNNER_AS = "run_kit.py"  # its name in the kit folder on the board
KIT_DIR = "profiling"
TINY = "tiny.onnx"
WINDOWS = 8  # contiguous windows of the model timed whole, so `edgeplan calibrate --kit` can fit per op class


def _representatives(graph) -> dict[str, int]:
    """op class -> index of its layer with the most forward FLOPs (classes without FLOPs are left out)."""
    best: dict[str, int] = {}
    for i, layer in enumerate(graph.layers):
        c = layer.op_class
        if layer.flops_fwd > 0 and (c not in best or layer.flops_fwd > graph.layers[best[c]].flops_fwd):
            best[c] = i
    return best


def _layer_module(traced, plan, i: int):
    """The fx module of layer ``i`` alone (a 3-stage probe split around it) and its stage graph."""
    from edgeplan.codegen.split import split_stages
    from edgeplan.planner.plan import Stage

    graph = traced.graph
    n = len(graph.layers)
    bounds = [b for b in (0, i, i + 1, n) if 0 <= b <= n]
    bounds = sorted(set(bounds))
    stages = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        stages.append(Stage(index=k, start=a, stop=b, first_layer=graph.layers[a].name,
                            last_layer=graph.layers[b - 1].name, replicas=(), compute_s=0.0, send_s=0.0,
                            energy_j=0.0))
    probe = dataclasses.replace(plan, stages=tuple(stages))
    return next(s for s in split_stages(traced, probe) if s.start == i)


def _windows(traced, plan, n_windows: int):
    """The model cut into ``n_windows`` contiguous windows of about equal layer counts (stage graphs)."""
    from edgeplan.codegen.split import split_stages
    from edgeplan.planner.plan import Stage

    graph = traced.graph
    n = len(graph.layers)
    k = max(1, min(n_windows, n))
    bounds = sorted({round(j * n / k) for j in range(k + 1)})
    stages = tuple(Stage(index=w, start=a, stop=b, first_layer=graph.layers[a].name,
                         last_layer=graph.layers[b - 1].name, replicas=(), compute_s=0.0, send_s=0.0, energy_j=0.0)
                   for w, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)))
    return split_stages(traced, dataclasses.replace(plan, stages=stages))


def _example_inputs(graph, stage, samples: int) -> tuple:
    import torch

    specs = {t.name: t for t in graph.inputs}
    specs.update({layer.name: layer.output for layer in graph.layers})
    moved = dict(stage.batch_dims)
    gen = torch.Generator().manual_seed(0)
    out = []
    for name in stage.inputs:
        spec = specs[name]
        shape = list(spec.shape)
        d = moved.get(name, 0)
        shape = [samples] + shape[:d] + shape[d + 1:]
        dtype = getattr(torch, spec.dtype)
        out.append(torch.randn(shape, generator=gen, dtype=dtype) if dtype.is_floating_point
                   else torch.randint(0, 2, shape, generator=gen, dtype=dtype))
    return tuple(out)


def write_kits(root: Path, plan, traced, cluster=None) -> list[str]:
    """Write a kit into ``root/<device>/`` for every ONNX Runtime replica of ``plan``; returns the devices.

    Modules are exported once per (op class, samples) and copied to each board that needs them.
    """
    import torch

    from edgeplan.targets import _onnx

    graph = traced.graph
    batch = max(1, graph.batch)
    reps = _representatives(graph)
    boards: dict[tuple[str, str], dict] = {}
    for st in plan.stages:
        for r in st.replicas:
            spec = jsonio.read(root / r.device / f"stage{st.index}" / "stage.json")
            if spec.get("backend") != "onnxruntime":
                continue
            key = (r.device, r.unit)
            b = boards.setdefault(key, {"samples": r.samples, "input_bytes": 0})
            b["samples"] = max(b["samples"], r.samples)
            b["input_bytes"] = max(b["input_bytes"], int(sum(t["nbytes"] if "nbytes" in t else _nbytes(t)
                                                                 for t in spec["inputs"])))
    if not boards:
        return []
    built: dict[tuple[str, int], tuple[Path, dict]] = {}
    windows_built: dict[int, list[tuple[Path, dict]]] = {}
    with _tmpdir() as tmp:
        for (device, unit), b in sorted(boards.items()):
            kit = root / device / KIT_DIR
            kit.mkdir(parents=True, exist_ok=True)
            modules = []
            for cls, i in sorted(reps.items()):
                key = (cls, b["samples"])
                if key not in built:
                    stage = _layer_module(traced, plan, i)
                    path = Path(tmp) / f"{cls}-{b['samples']}.onnx"
                    inputs = _example_inputs(graph, stage, b["samples"])
                    _onnx.export(stage.gm, inputs, path, f"profiling kit: layer {graph.layers[i].name!r} ({cls})")
                    layer = graph.layers[i]
                    built[key] = (path, {
                        "op_class": cls, "layer": layer.name, "origin": layer.origin,
                        "flops": layer.flops_fwd / batch * b["samples"],
                        "inputs": [[list(x.shape), str(x.dtype).replace("torch.", "")] for x in inputs]})
                path, meta = built[key]
                shutil.copyfile(path, kit / f"{cls}.onnx")
                modules.append({"file": f"{cls}.onnx", **meta})
            if b["samples"] not in windows_built:
                import numpy as np

                from edgeplan.codegen.split import random_inputs, run_chain

                done = []
                wins = _windows(traced, plan, WINDOWS)
                # each window gets the activations the model really feeds it (seeded random model inputs):
                # data, not only sizes, sets the speed (e.g. denormal values in random-weight models)
                chain = run_chain(wins, random_inputs(graph, b["samples"], 0))
                for stage, (inputs, _) in zip(wins, chain, strict=True):
                    path = Path(tmp) / f"window{stage.index}-{b['samples']}.onnx"
                    _onnx.export(stage.gm, inputs, path, f"profiling kit: layers [{stage.start}, {stage.stop})")
                    data = Path(tmp) / f"window{stage.index}-{b['samples']}.npz"
                    np.savez(data, *[x.numpy() for x in inputs])
                    done.append((path, data, {"start": stage.start, "stop": stage.stop,
                                              "inputs": [[list(x.shape), str(x.dtype).replace("torch.", "")]
                                                         for x in inputs]}))
                windows_built[b["samples"]] = done
            windows = []
            for w, (path, data, meta) in enumerate(windows_built[b["samples"]]):
                shutil.copyfile(path, kit / f"window{w}.onnx")
                shutil.copyfile(data, kit / f"window{w}.npz")
                windows.append({"file": f"window{w}.onnx", "data": f"window{w}.npz", **meta})
            tiny = Path(tmp) / TINY
            if not tiny.exists():
                _onnx.export(torch.nn.ReLU(), (torch.zeros(1, 1),), tiny, "profiling kit: tiny module")
            shutil.copyfile(tiny, kit / TINY)
            dev = cluster.device(device) if cluster is not None else None
            u = dev.unit(unit) if dev is not None else None
            jsonio.write(kit / "kit.json", {
                "device": device, "unit": unit, "backend": "onnxruntime", "samples": b["samples"],
                "profile": dev.profile if dev is not None else None,
                "peak_gflops": (u.peak_flops / 1e9) if u is not None and u.peak_flops else None,
                "plan_sha256": plan.digest(), "model": graph.name, "modules": modules, "tiny": TINY,
                "hop_bytes": [64, max(b["input_bytes"], 1 << 16)], "windows": windows,
                "graph_sha256": plan.graph_sha256,
            })
            shutil.copyfile(RUNNER, kit / RUNNER_AS)
            (root / device / "profile.sh").write_text(
                "#!/bin/sh\n# Time this board's profiling kit; prints a measured profile overlay (JSON = YAML).\n"
                "# Usage: sh profile.sh > <board>-measured.yaml   (needs numpy + onnxruntime, as the stages)\n"
                'cd "$(dirname "$0")" && exec "${PYTHON:-python3}" profiling/run_kit.py profiling "$@"\n')
    return sorted({d for d, _ in boards})


def _nbytes(t: dict) -> int:
    n = 1
    for d in t["shape"]:
        n *= int(d)
    return n * {"float64": 8, "int64": 8, "float16": 2, "int8": 1, "uint8": 1, "bool": 1}.get(t["dtype"], 4)


def _tmpdir() -> Any:
    import tempfile

    return tempfile.TemporaryDirectory(prefix="edgeplan-kit-")
