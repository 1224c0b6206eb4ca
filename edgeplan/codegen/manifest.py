"""manifest.json: what an artifact folder must hold, byte for byte.

It records the plan's hash, the tool versions that produced the folder, and
every file (relative path, size, sha256), sorted, so the same artifacts always
give the same manifest. ``verify`` compares a folder with its manifest and lists
every missing, extra or altered file; boards and CI run it before trusting a copy.
Python's bytecode caches (``__pycache__/*.pyc``) are not artifacts and are ignored.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from edgeplan import jsonio
from edgeplan.errors import ArtifactError, CompileError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
TOOLS = ("edgeplan", "torch", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools that shape the artifacts (read from package metadata, no imports)."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _is_cache(rel: str) -> bool:
    parts = rel.split("/")
    return "__pycache__" in parts[:-1] and rel.endswith(".pyc")


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` except the manifest itself, as sorted POSIX relative paths."""
    out = []
    for p in root.rglob("*"):
        if p.is_file() or p.is_symlink():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST and not _is_cache(rel):
                out.append(rel)
    return sorted(out)


def build(root: Path, plan_sha256: str, model: str) -> dict:
    """The manifest of the files now under ``root`` (not written)."""
    files = []
    for rel in list_files(root):
        p = root / rel
        files.append({"path": rel, "size": p.stat().st_size, "sha256": file_sha256(p)})
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "plan_sha256": plan_sha256,
        "tools": tool_versions(),
        "files": files,
    }


def write(root: Path, plan_sha256: str, model: str) -> Path:
    """Write ``root/manifest.json`` covering every file now under ``root``; call it last."""
    return jsonio.write(root / MANIFEST, build(root, plan_sha256, model))


def verify(root: str | Path) -> list[str]:
    """Problems with an artifact folder, one line each; empty when it matches its manifest exactly."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact folder; create it with `edgeplan compile`")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; this is not a complete artifact folder, re-run `edgeplan compile`")
    try:
        data = jsonio.read(path)
        expected = {f["path"]: f for f in data["files"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: not a valid manifest ({e}); re-run `edgeplan compile`") from e
    problems = []
    present = set(list_files(root))
    for rel in sorted(expected.keys() - present):
        problems.append(f"missing: {rel}")
    for rel in sorted(present - expected.keys()):
        problems.append(f"extra: {rel}")
    for rel in sorted(expected.keys() & present):
        want = expected[rel]
        p = root / rel
        size = p.stat().st_size
        digest = file_sha256(p)
        if digest != want["sha256"] or size != want["size"]:
            problems.append(
                f"altered: {rel} (expected sha256 {want['sha256'][:16]}... size {want['size']}, "
                f"found sha256 {digest[:16]}... size {size})"
            )
    plan_file = root / "plan.json"
    if "plan.json" in expected and plan_file.is_file() and file_sha256(plan_file) != data.get("plan_sha256"):
        problems.append(f"plan.json: its sha256 differs from the manifest's plan_sha256 {data.get('plan_sha256')}")
    return problems


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace a folder without --force, and never replace one that is not ours."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CompileError(f"{out}: exists and is not a folder; choose another --out")
    if not out.exists():
        return
    if not force:
        raise CompileError(f"{out}: already exists; pass --force to replace it or choose another --out")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CompileError(
            f"{out}: exists and is not an edgeplan artifact folder (no {MANIFEST}); "
            "refusing to replace it even with --force, choose another --out"
        )


def publish(tmp: Path, out: Path, force: bool, plan_sha256: str, model: str) -> Path:
    """Write the manifest of the finished folder ``tmp`` and rename it to ``out``.

    The old folder (with --force) is moved aside first and deleted only after the
    new one is in place, so an interruption never leaves a folder that looks complete.
    """
    write(tmp, plan_sha256, model)
    check_out_dir(out, force)
    if not out.exists():
        os.rename(tmp, out)
        return out
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old = holder / "old"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(holder, ignore_errors=True)
    return out
