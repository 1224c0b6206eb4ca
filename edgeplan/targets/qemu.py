"""An arm64 Debian root file system run under qemu-user: where aarch64 stage libraries really execute.

Built once with ``debootstrap --foreign`` + the second stage under binfmt/qemu, then
cached (``~/.cache/edgeplan/arm64-rootfs``, or ``$EDGEPLAN_ARM64_ROOTFS``). It holds
only what a board holds: python3 + numpy from Debian, ``apache-tvm-ffi`` and
``libtvm_runtime.so`` taken from the aarch64 wheels (no full TVM, no compiler), and
``onnxruntime`` when its aarch64 wheel downloads. ``python -m edgeplan.targets.qemu``
builds it ahead of the pytest tier.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CompileError

SUITE = "bookworm"  # python3.11, matching the wheels pinned in pyproject
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-numpy", "ca-certificates")
TVM_WHEEL = "apache-tvm==0.27.*"
TVM_FFI_WHEEL = "apache-tvm-ffi==0.1.14.post1"
ORT_WHEEL = "onnxruntime>=1.20,<2"
GUEST_SITE = "/opt/edgeplan/site"  # PYTHONPATH inside the root fs
GUEST_LIB = "/opt/edgeplan/lib"  # libtvm_runtime*.so inside the root fs
_STAMP = ".edgeplan-ready"


def rootfs_dir() -> Path:
    return Path(os.environ.get("EDGEPLAN_ARM64_ROOTFS", Path.home() / ".cache/edgeplan/arm64-rootfs"))


def unavailable_reason() -> str | None:
    """Why aarch64 emulation cannot run here (None when it can): names the missing tool and how to get it."""
    if sys.platform != "linux":
        return "qemu tier needs Linux"
    if os.geteuid() != 0:
        return "qemu tier needs root (debootstrap and chroot)"
    if not shutil.which("debootstrap"):
        return "debootstrap not installed (apt-get install debootstrap)"
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        return "qemu-user-static not installed (apt-get install qemu-user-static binfmt-support)"
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        enabled = entry.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        enabled = False
    if not enabled:
        return ("binfmt for aarch64 is off (mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc; "
                "update-binfmts --enable qemu-aarch64)")
    return None


def is_ready(root: Path | None = None) -> bool:
    return ((root or rootfs_dir()) / _STAMP).exists()


def _run(argv: Sequence[str], log: Callable[[str], None], timeout: float) -> None:
    log("$ " + " ".join(argv))
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise CompileError(f"`{' '.join(argv)}` failed ({p.returncode}): {(p.stderr or p.stdout)[-2000:]}")


def _download_wheels(dest: Path, log: Callable[[str], None]) -> list[Path]:
    """The aarch64 wheels a board pip-installs, fetched on the host (pip under emulation is slow)."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
            "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
            "--platform", "manylinux2014_aarch64"]
    _run(base + [TVM_WHEEL, TVM_FFI_WHEEL, "typing-extensions>=4.10"], log, 1200)
    try:
        _run(base + [ORT_WHEEL, "flatbuffers", "protobuf", "packaging", "coloredlogs", "humanfriendly",
                     "sympy", "mpmath"], log, 1200)
    except CompileError as e:  # ORT in the root fs is optional: the TVM stages are what the tier must run
        log(f"onnxruntime aarch64 wheel skipped: {e}")
    return sorted(dest.glob("*.whl"))


def _install_wheels(root: Path, wheels: list[Path], log: Callable[[str], None]) -> None:
    """Unpack wheels into GUEST_SITE; from full TVM keep only the runtime libraries, as a board would."""
    site = root / GUEST_SITE.lstrip("/")
    lib = root / GUEST_LIB.lstrip("/")
    site.mkdir(parents=True, exist_ok=True)
    lib.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            if whl.name.startswith("apache_tvm-"):
                for name in z.namelist():
                    if name.startswith("tvm/lib/libtvm_runtime") and name.endswith(".so"):
                        (lib / Path(name).name).write_bytes(z.read(name))
                continue
            z.extractall(site)
        log(f"installed {whl.name}")
    for so in site.rglob("*.so*"):
        so.chmod(0o755)


def ensure_rootfs(log: Callable[[str], None] = print, timeout_s: float = 1800) -> Path:
    """Build the cached root fs if missing (one builder at a time, file-locked); return its path."""
    reason = unavailable_reason()
    if reason:
        raise CompileError(f"cannot build the arm64 root fs: {reason}")
    root = rootfs_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(root):
            return root
        t0 = time.monotonic()
        tmp = root.parent / (root.name + ".building")
        # A finished second stage (python3 there, /debootstrap removed) is kept: only the wheels are redone.
        if not ((tmp / "usr/bin/python3").exists() and not (tmp / "debootstrap").exists()):
            if tmp.exists():
                shutil.rmtree(tmp)
            _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                  "--include=" + ",".join(PACKAGES), SUITE, str(tmp), MIRROR], log, timeout_s)
            _run(["chroot", str(tmp), "/debootstrap/debootstrap", "--second-stage"], log, timeout_s)
        with tempfile.TemporaryDirectory() as d:
            _install_wheels(tmp, _download_wheels(Path(d), log), log)
        probe = ("import ctypes, numpy, tvm_ffi; "
                 f"ctypes.CDLL('{GUEST_LIB}/libtvm_runtime.so', ctypes.RTLD_GLOBAL); print('ok')")
        out = run_python(["-c", probe], root=tmp, timeout=600)
        if out.returncode != 0 or "ok" not in out.stdout:
            raise CompileError(f"arm64 root fs at {tmp} cannot load the TVM runtime: {out.stderr[-2000:]}")
        (tmp / _STAMP).write_text(f"built in {time.monotonic() - t0:.0f} s\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
        log(f"arm64 root fs ready at {root} ({time.monotonic() - t0:.0f} s)")
        return root


def run_python(args: Sequence[str], root: Path | None = None, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the root fs's python3 (aarch64, emulated) with the board-side PYTHONPATH; paths are guest paths."""
    root = root or rootfs_dir()
    guest_env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONPATH": GUEST_SITE,
                 "EDGEPLAN_TVM_RUNTIME_DIR": GUEST_LIB, "OMP_NUM_THREADS": "2", "TVM_NUM_THREADS": "2"}
    guest_env.update(env or {})
    argv = ["chroot", str(root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in guest_env.items()],
            "/usr/bin/python3", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def guest_workdir(root: Path | None = None) -> tuple[Path, str]:
    """A fresh folder inside the root fs: (host path, guest path). The caller removes it."""
    root = root or rootfs_dir()
    base = root / "tmp"
    base.mkdir(exist_ok=True)
    host = Path(tempfile.mkdtemp(prefix="edgeplan-", dir=base))
    return host, "/tmp/" + host.name


def main() -> None:
    """Build the root fs now (``python -m edgeplan.targets.qemu``)."""
    root = ensure_rootfs(log=lambda s: print(s, flush=True))
    print(root)


if __name__ == "__main__":
    main()
