"""arm-cpu: Cortex-A boards (Pi 3/4/5, RK3588, Jetson CPUs), LLVM aarch64 + NEON, cross-linked (gcc or ziglang).

``target_options.mcpu`` comes from the board profile (cortex-a53 Pi 3, cortex-a72 Pi 4,
cortex-a76 Pi 5 / RK3588); backend auto picks TVM or ONNX Runtime per stage by the
measured x86 ratio (see _cpu.py).
"""

from __future__ import annotations

from ._cpu import CpuTarget

KNOWN_MCPU = (
    "generic", "cortex-a35", "cortex-a53", "cortex-a55", "cortex-a57", "cortex-a72", "cortex-a73",
    "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-a78ae", "cortex-x1", "carmel",
    "neoverse-n1", "neoverse-n2",
)

TARGET = CpuTarget(
    name="arm-cpu",
    description="aarch64 Cortex-A CPU with NEON (cross-compiled), or ONNX Runtime, chosen per stage",
    mtriple="aarch64-linux-gnu",
    cc="aarch64-linux-gnu-gcc",
    default_mcpu="cortex-a72",
    known_mcpu=KNOWN_MCPU,
)
