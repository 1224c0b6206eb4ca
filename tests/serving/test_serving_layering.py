"""The serving stack stays out of the stage worker, and batcher.py stays board-safe (stdlib + numpy)."""

from __future__ import annotations

import subprocess
import sys


def _imported(module: str) -> set[str]:
    code = f"import sys, importlib; importlib.import_module({module!r}); print(','.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.strip().split(",")}


def test_worker_and_batcher_import_no_serving_stack_and_edgeplan_imports_no_torch():
    heavy = {"starlette", "uvicorn", "prometheus_client", "httpx", "torch", "tritonclient"}
    assert not _imported("edgeplan.runtime.worker") & heavy
    assert not _imported("edgeplan.runtime.batcher") & heavy
    mods = _imported("edgeplan")
    assert "torch" not in mods and "numpy" not in mods  # edgeplan.connect is lazy
