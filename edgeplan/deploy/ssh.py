"""Deploy artifact folders to boards over SSH (paramiko + SFTP).

Per board: hash what is already there (a short Python snippet on the board, so
the board needs only python3), upload only files whose sha256 differs (each to
a temp name, then renamed, so a dropped connection never leaves a half file
under the real name), verify every file against the manifest on the board, and
optionally start the board's launcher in the background.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path

from edgeplan import jsonio
from edgeplan.errors import ArtifactError, EdgeplanError

# Runs on the board: print {relative path: sha256} of every file under a folder.
_HASH_SNIPPET = r"""
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
if os.path.isdir(root):
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = h.hexdigest()
print(json.dumps(out))
"""


class DeployError(EdgeplanError):
    """A board could not be reached, written to, or failed verification."""


@dataclass(frozen=True)
class SshTarget:
    device: str
    host: str
    port: int
    user: str


@dataclass(frozen=True)
class BoardResult:
    device: str
    uploaded: tuple[str, ...]
    unchanged: int
    bytes_sent: int
    verified: bool
    started: bool
    problems: tuple[str, ...] = ()


def manifest_files(artifacts: Path, device: str) -> dict[str, str]:
    """The manifest's files of one board folder, keyed relative to that folder."""
    manifest_path = artifacts / "manifest.json"
    if not manifest_path.exists():
        raise ArtifactError(f"{manifest_path}: missing; is {artifacts} the output of `edgeplan compile`?")
    manifest = jsonio.read(manifest_path)
    prefix = device + "/"
    files = {f["path"][len(prefix):]: f["sha256"] for f in manifest["files"] if f["path"].startswith(prefix)}
    if not files:
        raise ArtifactError(f"{manifest_path}: no files for device {device!r}")
    return files


def _exec(client, command: str, stdin: str | None = None, timeout: float = 60.0) -> str:
    chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
    if stdin is not None:
        chan_in.write(stdin)
        chan_in.channel.shutdown_write()
    out = chan_out.read().decode()
    status = chan_out.channel.recv_exit_status()
    if status != 0:
        raise DeployError(f"`{command}` exited {status}: {chan_err.read().decode().strip()}")
    return out


def _remote_hashes(client, remote_root: str) -> dict[str, str]:
    out = _exec(client, f"python3 - {shlex.quote(remote_root)}", stdin=_HASH_SNIPPET)
    return json.loads(out)


def _mkdirs(sftp, path: str) -> None:
    parts = []
    while path not in ("", "/"):
        parts.append(path)
        path = posixpath.dirname(path)
    for p in reversed(parts):
        try:
            sftp.stat(p)
        except OSError:
            sftp.mkdir(p)


def deploy_board(
    artifacts: Path, target: SshTarget, remote_dir: str, *, key_filename: str | None = None,
    start: bool = True, connect_timeout: float = 10.0, known_hosts: str | None = None,
) -> BoardResult:
    import paramiko

    local_root = artifacts / target.device
    expected = manifest_files(artifacts, target.device)
    client = paramiko.SSHClient()
    if known_hosts:
        client.load_host_keys(known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.WarningPolicy())
    try:
        client.connect(target.host, port=target.port, username=target.user, key_filename=key_filename,
                       timeout=connect_timeout, banner_timeout=connect_timeout, auth_timeout=connect_timeout)
    except (OSError, paramiko.SSHException) as e:
        raise DeployError(
            f"device {target.device!r}: cannot SSH to {target.user}@{target.host}:{target.port} ({e}); "
            "check the address in the cluster file, --ssh-user and --identity"
        ) from e
    try:
        remote_root = posixpath.join(remote_dir, target.device)
        have = _remote_hashes(client, remote_root)
        sftp = client.open_sftp()
        uploaded, sent = [], 0
        for rel, digest in sorted(expected.items()):
            if have.get(rel) == digest:
                continue
            src = local_root / rel
            dst = posixpath.join(remote_root, rel)
            _mkdirs(sftp, posixpath.dirname(dst))
            tmp = dst + ".part"
            sftp.put(str(src), tmp)
            sftp.posix_rename(tmp, dst)
            sftp.chmod(dst, src.stat().st_mode & 0o777)
            uploaded.append(rel)
            sent += src.stat().st_size
        after = _remote_hashes(client, remote_root)
        problems = tuple(
            f"{target.device}/{rel}: " + ("missing on board" if rel not in after else "sha256 differs on board")
            for rel, digest in sorted(expected.items()) if after.get(rel) != digest
        )
        started = False
        if start and not problems:
            _exec(client, f"cd {shlex.quote(remote_root)} && (nohup ./start.sh > edgeplan.log 2>&1 &)")
            started = True
        return BoardResult(target.device, tuple(uploaded), len(expected) - len(uploaded), sent,
                           not problems, started, problems)
    finally:
        client.close()


def parse_address(device: str, address: str, default_user: str, default_port: int) -> SshTarget:
    """``[user@]host[:port]`` from a cluster file's device address."""
    user, _, hostport = address.rpartition("@")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, ""
    if not host:
        raise DeployError(f"device {device!r}: address {address!r} has no host; use [user@]host[:port]")
    try:
        port_n = int(port) if port else default_port
    except ValueError:
        raise DeployError(f"device {device!r}: port {port!r} in address {address!r} is not a number") from None
    return SshTarget(device, host, port_n, user or default_user)
