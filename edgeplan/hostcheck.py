"""Can these artifacts run on this machine? Checked before `edgeplan run` starts local workers.

Why: a stage built for a board (an aarch64 TVM library, an RKNN model) fails deep
inside its runtime when started here ("Failed to load dynamic shared library");
the user needs to hear which board and target it is and what to do instead.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from edgeplan.errors import ArtifactError

ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "x86", "i386": "x86"}


def host_arch() -> str:
    m = platform.machine().lower()
    return HOST_ALIASES.get(m, m)


def elf_arch(path: Path) -> str | None:
    """The architecture an ELF file was built for (None: not an ELF file, e.g. an .onnx model)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def stage_files(root: Path) -> list[Path]:
    """Every module's stage.json under ``root``: ``<board>/stageS/`` of one compiled plan, and
    ``<board>/<module>/`` of a compiled plan family (its folder names: adapt/compile.py's MODULE_GLOB)."""
    from edgeplan.adapt.compile import MODULE_GLOB

    return sorted({p for pattern in ("stage*", MODULE_GLOB) for p in root.glob(f"*/{pattern}/stage.json")})


def foreign_stages(root: str | os.PathLike[str], arch: str | None = None) -> list[dict]:
    """Stages of artifact folder ``root`` (one plan or a plan family) that cannot run on an ``arch`` machine
    (default: this one); a family's module is named by its folder (``module``), which all its slots share."""
    arch = arch or host_arch()
    root = Path(root)
    found = []
    for stage_json in stage_files(root):
        try:
            spec = json.loads(stage_json.read_text())
        except (OSError, ValueError):
            continue  # discover() reports broken stage files with their own message
        built = elf_arch(stage_json.parent / str(spec.get("module", "")))
        why = None
        if built is not None and built != arch:
            why = f"{spec.get('module')} is an {built} library"
        elif spec.get("backend") == "rknn" and arch != "aarch64":
            why = "an RKNN model runs only on the board's Rockchip NPU (RKNNLite)"
        if why:
            found.append({"device": spec.get("device", stage_json.parent.parent.name),
                          "stage": spec.get("stage"), "module": stage_json.parent.name, "target": spec.get("target"),
                          "backend": spec.get("backend"), "why": why})
    return found


def check_runs_here(root: str | os.PathLike[str], how: str = "--local", arch: str | None = None) -> None:
    """ArtifactError naming each board/stage built for another machine, and the three ways out."""
    arch = arch or host_arch()
    bad = foreign_stages(root, arch)
    if not bad:
        return
    cluster = _cluster_path(Path(root))
    boards = "; ".join(f"board {b['device']} {_where(b)} (target {b['target']}, backend {b['backend']}): "
                       f"{b['why']}" for b in bad)
    raise ArtifactError(
        f"edgeplan run {how}: {root} was compiled for the boards, and this machine is {arch}: {boards}. "
        "Ways out: (1) compile for this machine: plan against an x86 cluster "
        f"(`edgeplan emulate {cluster} --write-cluster emu.yaml`, then plan and compile with emu.yaml), or "
        "`edgeplan compile ... --backend onnxruntime` for CPU stages; (2) run the aarch64 stages under qemu-user "
        "in an arm64 root fs (`make arm64-rootfs`; the qemu test tier does this); "
        f"(3) deploy to the boards: `edgeplan deploy {root} --cluster {cluster}`, then "
        f"`edgeplan run {root} --cluster {cluster}`"
    )


def _where(bad: dict) -> str:
    """``stage S`` in one plan's folder; ``module M`` in a family's, where one module serves several stages."""
    return f"stage {bad['stage']}" if bad["module"].startswith("stage") else f"module {bad['module']}"


def _cluster_path(root: Path) -> str:
    """The cluster file the plan (a family: its initial variant) was made with, for the commands; else CLUSTER."""
    from edgeplan.adapt.compile import SUMMARY

    try:
        plan = root / "plan.json"
        if not plan.is_file():  # a compiled family (adapt/compile.py): its initial variant's plan
            plan = root / str(json.loads((root / SUMMARY).read_text())["initial"]) / "plan.json"
        return json.loads(plan.read_text()).get("cluster_path") or "CLUSTER"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return "CLUSTER"
