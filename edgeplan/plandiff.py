"""Readable differences between two plan files: what a golden-plan check prints.

Why not a text diff of the JSON: a plan file is ~300 lines of nested replicas, and a
cost-model tweak moves every predicted float in its last digits. Users want to hear
"stage 1 now starts at layer 14 (layer3.0.conv1)", "cpu-board's share went 0.38 -> 0.5",
"predicted throughput -18% (tolerance 2%)", and nothing when only noise changed.

What is compared: the request (model graph, cluster, mode, objective, batch, ...)
exactly; stage boundaries, devices, units and targets exactly; shares and samples
(shares to 1e-3); predicted figures (plan and per stage: time, energy, memory)
within a relative tolerance; recorded target options exactly. Notes, baselines and
the recorded paths are not compared (they change with the wording or the machine).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeplan import jsonio
from edgeplan.errors import PlanError

DEFAULT_TOLERANCE = 0.02  # relative, for predicted figures
SHARE_TOLERANCE = 1e-3  # absolute, for replica shares

REQUEST_FIELDS = ("model", "graph_sha256", "cluster", "cluster_sha256", "mode", "objective", "batch",
                  "microbatches", "schedule", "solver", "head", "latency_budget_s", "energy_budget_j",
                  "optimizer_states", "input_shape")
PREDICTED_FIELDS = (("latency_s", "latency", "s"), ("throughput", "throughput", "samples/s"),
                    ("energy_j", "energy", "J/sample"), ("iter_s", "time per iteration", "s"))
STAGE_FIGURES = (("compute_s", "compute time", "s"), ("send_s", "send time", "s"), ("energy_j", "energy", "J"))


def as_plan_dict(plan: Any, what: str = "plan") -> dict:
    """A plan as its JSON dict: a Plan, a dict, or a path to a plan.json / artifact folder."""
    if isinstance(plan, Mapping):
        return _rounded(dict(plan))
    if hasattr(plan, "to_json"):
        return _rounded(plan.to_json())
    path = Path(os.fspath(plan))
    if path.is_dir():
        path = path / "plan.json"
    try:
        return jsonio.read(path)
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file ({what}); write it with `edgeplan plan ... --out {path}`"
                        ) from None
    except ValueError as e:
        raise PlanError(f"{path}: not JSON ({e})") from None


def _rounded(d: dict) -> dict:
    """As written to a file (floats rounded, tuples as lists), so a fresh plan compares equal to its file."""
    return json.loads(jsonio.dumps(d))


def _rel(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _figure(label: str, unit: str, a: Any, b: Any, tol: float) -> str | None:
    if a is None or b is None:
        return None if a is b else f"{label}: {_fmt(a)} -> {_fmt(b)}"
    if _rel(float(a), float(b)) <= tol:
        return None
    pct = (float(b) - float(a)) / abs(float(a)) * 100 if a else float("inf")
    return f"{label}: {_fmt(a)} -> {_fmt(b)} {unit} ({pct:+.1f}%, tolerance {tol * 100:g}%)"


def _layers(s: dict) -> str:
    return f"layers [{s['start']}, {s['stop']}) {s['first_layer']}..{s['last_layer']}"


def _group(s: dict) -> str:
    return ", ".join(f"{r['device']}/{r['unit']} ({r['target']}) share {r['share']:.3g}" for r in s["replicas"])


def diff_plans(old: Any, new: Any, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """Differences from plan ``old`` (e.g. the golden file) to plan ``new``, one readable line each; [] if equal."""
    if not 0 <= tolerance < 1:
        raise PlanError(f"tolerance {tolerance!r} must be a fraction in [0, 1), e.g. 0.02 for 2%")
    a, b = as_plan_dict(old, "golden"), as_plan_dict(new)
    out: list[str] = []
    for k in REQUEST_FIELDS:
        if a.get(k) != b.get(k):
            va, vb = a.get(k), b.get(k)
            if k.endswith("sha256"):
                va, vb = str(va)[:12], str(vb)[:12]
            out.append(f"{k}: {_fmt(va)} -> {_fmt(vb)}")
    sa, sb = a.get("stages", []), b.get("stages", [])
    if len(sa) != len(sb):
        out.append(f"stages: {len(sa)} -> {len(sb)}")
    for i in range(max(len(sa), len(sb))):
        if i >= len(sa):
            out.append(f"stage {i} added: {_layers(sb[i])} on {_group(sb[i])}")
            continue
        if i >= len(sb):
            out.append(f"stage {i} removed: {_layers(sa[i])} on {_group(sa[i])}")
            continue
        x, y = sa[i], sb[i]
        if (x["start"], x["stop"]) != (y["start"], y["stop"]):
            out.append(f"stage {i} boundaries: {_layers(x)} -> {_layers(y)}")
        ra, rb = x["replicas"], y["replicas"]
        if [(r["device"], r["unit"], r["target"]) for r in ra] != [(r["device"], r["unit"], r["target"]) for r in rb]:
            out.append(f"stage {i} devices: {_group(x)} -> {_group(y)}")
        else:
            for r, q in zip(ra, rb, strict=True):
                where = f"stage {i} {r['device']}/{r['unit']}"
                if abs(r["share"] - q["share"]) > SHARE_TOLERANCE or r["samples"] != q["samples"]:
                    out.append(f"{where} share: {r['share']:.3g} ({r['samples']} samples) -> "
                               f"{q['share']:.3g} ({q['samples']} samples)")
                line = _figure(f"{where} predicted memory", "bytes", r.get("memory_bytes"), q.get("memory_bytes"),
                               tolerance)
                if line:
                    out.append(line)
        for key, label, unit in STAGE_FIGURES:
            line = _figure(f"stage {i} predicted {label}", unit, x.get(key), y.get(key), tolerance)
            if line:
                out.append(line)
    pa, pb = a.get("predicted") or {}, b.get("predicted") or {}
    for key, label, unit in PREDICTED_FIELDS:
        line = _figure(f"predicted {label}", unit, pa.get(key), pb.get(key), tolerance)
        if line:
            out.append(line)
    oa = {(u["device"], u["unit"]): [list(p) for p in u["options"]] for u in a.get("target_options", [])}
    ob = {(u["device"], u["unit"]): [list(p) for p in u["options"]] for u in b.get("target_options", [])}
    for key in sorted(set(oa) | set(ob)):
        if oa.get(key) != ob.get(key):
            out.append(f"target_options of {key[0]}/{key[1]}: {dict(map(tuple, oa.get(key, [])))} -> "
                       f"{dict(map(tuple, ob.get(key, [])))}")
    return out


def format_diff(lines: list[str], old_name: str, new_name: str) -> str:
    if not lines:
        return f"plans match: {old_name} and {new_name}\n"
    return f"plan changed: {old_name} -> {new_name}\n" + "".join(f"  {line}\n" for line in lines)
