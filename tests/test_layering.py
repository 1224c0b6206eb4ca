"""planner/ and profiles/ must import neither torch nor tvm (DESIGN: torch only at the edges)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edgeplan.planner
import edgeplan.profiles


def _modules(pkg) -> list[str]:
    return [pkg.__name__] + [
        m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")
    ]


def test_planner_and_profiles_import_no_torch_or_tvm():
    mods = _modules(edgeplan.planner) + _modules(edgeplan.profiles) + ["edgeplan.graph.model"]
    code = (
        "import sys, importlib\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', 'tvm_ffi'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch/tvm imported by planner/profiles: {out.stdout}"


def _imported(path) -> set[str]:
    """Every module a source file imports, at module level or inside functions (absolute imports only)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_codegen_imports_nothing_from_training():
    """Training builds on codegen (manifest, split); codegen reaches it only by the plan's mode (no cycle)."""
    from pathlib import Path

    import edgeplan.codegen

    root = Path(edgeplan.codegen.__file__).parent
    bad = {f"{p.name}: {m}" for p in sorted(root.glob("*.py")) for m in _imported(p)
           if m == "edgeplan.training" or m.startswith("edgeplan.training.")}
    assert not bad, f"codegen imports training: {sorted(bad)}"
