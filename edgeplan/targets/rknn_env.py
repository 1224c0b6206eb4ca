"""The rknn-toolkit2 environment: find it, install it, run the worker in it.

rknn-toolkit2 2.5.0 pins old onnx/protobuf/numpy and cannot share the project's
venv, so it gets its own (default ``~/.cache/edgeplan/rknn-venv``, or
``$EDGEPLAN_RKNN_VENV``), set up by ``edgeplan toolchain install rknn`` with the
pip steps below, in this order (the toolkit's own requirement pins conflict, so
it is installed with --no-deps and its runtime needs are listed by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompileError

TOOLKIT_VERSION = "2.5.0"
INSTALL_HINT = "edgeplan toolchain install rknn"
MARKER = ".edgeplan-rknn-ok"  # written after the install verified `from rknn.api import RKNN`
WORKER = Path(__file__).with_name("rknn_worker.py")

# pip argument lists, run in order inside the new venv.
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    ("--no-deps", f"rknn_toolkit2=={TOOLKIT_VERSION}"),
    (
        "protobuf<=4.25.4,>=4.21.6", "psutil", "ruamel.yaml", "scipy", "tqdm", "opencv-python",
        "fast-histogram", "numpy<=1.26.4", "onnx<=1.18.0,>=1.16.1", "onnxruntime",
    ),
    ("torch==2.13.0",),
    ("setuptools<81",),  # the toolkit imports pkg_resources
)
VERIFY = "from rknn.api import RKNN; import importlib.metadata as m; print(m.version('rknn-toolkit2'))"


def default_venv() -> Path:
    env = os.environ.get("EDGEPLAN_RKNN_VENV")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeplan" / "rknn-venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def find_rknn_python(venv: Path | None = None) -> Path | None:
    """The venv's python when a verified install is there, else None (cheap: no subprocess)."""
    venv = venv or default_venv()
    py = venv_python(venv)
    if py.exists() and (venv / MARKER).exists():
        return py
    return None


def require_rknn_python(venv: Path | None = None) -> Path:
    py = find_rknn_python(venv)
    if py is None:
        where = venv or default_venv()
        raise CompileError(f"RKNN toolchain not installed (no verified venv at {where}); run: {INSTALL_HINT}")
    return py


def install(
    venv: Path | None = None,
    python: str | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> Path:
    """Create the venv and pip-install the toolkit; returns the venv's python. Idempotent unless ``force``."""
    venv = venv or default_venv()
    if not force and find_rknn_python(venv) is not None:
        log(f"rknn-toolkit2 already installed in {venv}")
        return venv_python(venv)
    (venv / MARKER).unlink(missing_ok=True)
    base = python or _base_python()
    py = venv_python(venv)
    if not py.exists():
        _check(log, [base, "-m", "venv", str(venv)])
    for args in INSTALL_STEPS:
        _check(log, [str(py), "-m", "pip", "install", *args])
    out = _check(log, [str(py), "-c", VERIFY])
    (venv / MARKER).write_text(json.dumps({"rknn-toolkit2": out.strip().splitlines()[-1]}) + "\n")
    log(f"rknn-toolkit2 {out.strip().splitlines()[-1]} ready in {venv}")
    return py


def _base_python() -> str:
    """The interpreter to build the venv from: the base of the running one (same minor version)."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def _check(log: Callable[[str], None], cmd: list[str]) -> str:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise CompileError(
            f"installing the RKNN toolchain failed at `{' '.join(cmd)}` (exit {proc.returncode}):\n"
            + "\n".join(tail)
            + f"\nfix the cause above and rerun: {INSTALL_HINT} --force"
        )
    return proc.stdout


@dataclass(frozen=True)
class WorkerResult:
    response: dict  # the worker's response.json
    log: str  # the toolkit's stdout+stderr (verbose build log with the layer table)
    seconds: float


def run_worker(request: dict, workdir: Path, timeout_s: float = 900.0, python: Path | None = None) -> WorkerResult:
    """Run rknn_worker.py in the RKNN venv with ``workdir`` as its working directory."""
    py = python or require_rknn_python()
    workdir.mkdir(parents=True, exist_ok=True)
    req_path, resp_path = workdir / "request.json", workdir / "response.json"
    req_path.write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(py), str(WORKER), str(req_path), str(resp_path)],
            cwd=workdir, capture_output=True, text=True, timeout=timeout_s, env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise CompileError(
            f"rknn-toolkit2 did not finish within {timeout_s:.0f} s (work folder {workdir}); "
            "try a smaller stage or a lower optimization_level option"
        ) from e
    log = proc.stdout + proc.stderr
    if not resp_path.exists():
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise CompileError(
            f"rknn worker crashed (exit {proc.returncode}) before writing its response:\n{tail}\n"
            f"if the venv is broken, reinstall it with: {INSTALL_HINT} --force"
        )
    return WorkerResult(json.loads(resp_path.read_text()), log, time.perf_counter() - t0)
