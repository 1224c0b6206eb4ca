"""`make setup`'s system-tools step (scripts/setup-system-tools.sh) without root: prints the exact commands, exits 0."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-system-tools.sh"


@pytest.fixture
def bare_path(tmp_path) -> Path:
    """A PATH holding only `id` (reporting a non-root user): none of the tools are found."""
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n")
    (tmp_path / "id").chmod(0o755)
    return tmp_path


def _run(path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("sh") or "/bin/sh", str(SCRIPT)], env={"PATH": str(path), **env},
                          capture_output=True, text=True, timeout=60)


def test_without_root_prints_the_install_command_and_exits_0(bare_path):
    p = _run(bare_path)
    assert p.returncode == 0, p.stderr
    assert "sudo apt-get update && sudo apt-get install -y qemu-user-static binfmt-support debootstrap" in p.stdout
    assert "update-binfmts --enable qemu-aarch64" in p.stdout
    assert "gcc-aarch64-linux-gnu" not in p.stdout  # pip's ziglang links aarch64 libraries


def test_skip_switch(bare_path):
    p = _run(bare_path, EDGEPLAN_SKIP_SYSTEM_TOOLS="1")
    assert p.returncode == 0 and "not checked" in p.stdout and "apt-get" not in p.stdout
