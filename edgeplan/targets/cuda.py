"""cuda: Jetson GPUs (sm_53 Nano, sm_72 Xavier, sm_87 Orin) with an aarch64 host.

The library embeds CUDA source that TVM compiles at load time with NVRTC, so the board
needs full TVM (the CUDA runtime of the wheel) and JetPack's NVRTC; nvcc fatbins would
need nvcc >= 13, which has no sm_53.
"""

from __future__ import annotations

from ._gpu import GpuTarget

TARGET = GpuTarget(
    name="cuda",
    description="NVIDIA Jetson GPU (CUDA sm_53/sm_72/sm_87), aarch64 host, TVM dlight schedules",
    kind="cuda",
    option="arch",
    default="sm_87",
    known=("sm_53", "sm_62", "sm_72", "sm_87"),
    requirements=(
        "JetPack (CUDA runtime + NVRTC) on the board",
        "pip install numpy 'apache-tvm>=0.27,<0.28' 'apache-tvm-ffi==0.1.14.post1' (CUDA kernels compile at load)",
    ),
)
