"""mali: Arm Mali GPUs over OpenCL (RK3588's G610), aarch64 host.

PyPI's TVM wheels are built with OpenCL off, so the board needs a TVM 0.27 runtime built
from source with USE_OPENCL=ON next to the vendor's libmali OpenCL driver.
"""

from __future__ import annotations

from ._gpu import GpuTarget

TARGET = GpuTarget(
    name="mali",
    description="Arm Mali GPU (OpenCL, e.g. RK3588 G610), aarch64 host, TVM dlight schedules",
    kind="opencl",
    option="device",
    default="mali",
    known=("mali",),
    extra=("model",),
    requirements=(
        "vendor OpenCL driver (libmali) + apt-get install ocl-icd-libopencl1",
        "libtvm_runtime.so of TVM 0.27 built from source with USE_OPENCL=ON, in lib/",
        "pip install numpy 'apache-tvm-ffi==0.1.14.post1'",
    ),
)
