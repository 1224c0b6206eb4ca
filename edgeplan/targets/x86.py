"""x86: this machine's CPU (LLVM for the host, or ONNX Runtime); what local runs and tests use."""

from __future__ import annotations

from ._cpu import CpuTarget

TARGET = CpuTarget(
    name="x86",
    description="this machine's x86-64 CPU: TVM LLVM build or ONNX Runtime, the faster measured per stage",
    mtriple=None,
    cc=None,
    default_mcpu=None,
    known_mcpu=(),
)
