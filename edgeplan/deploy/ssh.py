"""Deploy artifact folders to boards over SSH (paramiko + SFTP).

Per board: check the board's host key against known_hosts (unknown keys are refused
unless accept-new is asked for, like ssh's StrictHostKeyChecking=accept-new; a changed
key is always refused), log in as the cluster file's user (never root by default),
hash what is already there (a short Python snippet on the board, so the board needs
only python3), upload only files whose sha256 differs (each to a temp name, then
renamed, so a dropped connection never leaves a half file under the real name),
verify every file against the manifest on the board, then stop the old workers
and start the board's launcher in the background.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
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


# Runs on the board before new workers start: stop the old ones of this folder. Old workers are
# (1) the process group recorded in edgeplan.pid by the previous deploy (start.sh and its workers),
# (2) any process whose working directory is this folder and whose command line is start.sh or an
# edgeplan_runtime worker (started by hand, or by a deploy that predates the pid file), and (3) the
# systemd unit edgeplan-stage, when it is active (via sudo -n when not root). SIGTERM first (start.sh
# stops its workers on it), SIGKILL after 5 s. Prints JSON: what was stopped, what could not be, and
# edgeplan workers of other folders (they may hold the same ports).
_STOP_SNIPPET = r"""
import json, os, signal, subprocess, sys, time
root = os.path.realpath(sys.argv[1])
me = {os.getpid(), os.getppid()}
out = {"stopped": [], "errors": [], "others": [], "unit": None}
def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
try:
    if subprocess.call(["systemctl", "is-active", "--quiet", "edgeplan-stage"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
        cmd = ["systemctl", "stop", "edgeplan-stage"]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n"] + cmd
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode == 0:
            out["unit"] = "edgeplan-stage.service"
        else:
            out["errors"].append("edgeplan-stage.service is running and `%s` failed (%s); stop it on the board "
                                 "(sudo systemctl stop edgeplan-stage) or allow the deploy user passwordless sudo "
                                 "for systemctl" % (" ".join(cmd), r.stdout.decode(errors="replace").strip()))
except OSError:
    pass
targets = set()
groups = set()
try:
    with open(os.path.join(root, "edgeplan.pid")) as f:
        pid = int(f.read().split()[0])
    if alive(pid) and "start.sh" in cmdline(pid):
        targets.add(pid)
        try:
            if os.getpgid(pid) == pid:
                groups.add(pid)
        except OSError:
            pass
except (OSError, ValueError, IndexError):
    pass
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in me:
        continue
    pid = int(name)
    cl = cmdline(pid)
    if "edgeplan_runtime" not in cl and "start.sh" not in cl:
        continue
    try:
        cwd = os.path.realpath(os.readlink("/proc/%d/cwd" % pid))
    except OSError:
        continue
    if cwd == root:
        targets.add(pid)
    elif "edgeplan_runtime.worker" in cl:
        out["others"].append({"pid": pid, "cwd": cwd})
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in groups:
        try:
            os.killpg(g, sig)
        except OSError:
            pass
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as e:
            out["errors"].append("pid %d: %s" % (pid, e))
    deadline = time.time() + 5.0
    while time.time() < deadline and any(alive(p) for p in targets):
        time.sleep(0.05)
    if not any(alive(p) for p in targets):
        break
out["stopped"] = sorted(targets)
left = [p for p in targets if alive(p)]
if left:
    out["errors"].append("still running after SIGKILL: %s" % left)
try:
    os.remove(os.path.join(root, "edgeplan.pid"))
except OSError:
    pass
print(json.dumps(out))
"""

# Starts start.sh in its own session (setsid, where the board has it) so a later deploy can stop
# start.sh and every worker it started by their process group; its pid goes to edgeplan.pid.
_START = ("cd {root} && if command -v setsid >/dev/null 2>&1; then "
          "nohup setsid ./start.sh > edgeplan.log 2>&1 < /dev/null & echo $! > edgeplan.pid; else "
          "nohup ./start.sh > edgeplan.log 2>&1 < /dev/null & echo $! > edgeplan.pid; fi")


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
    stopped: tuple[int, ...] = ()  # pids of the old workers (and their start.sh) stopped before starting
    notes: tuple[str, ...] = ()  # host key recorded, systemd unit stopped, workers of other folders


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


DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key (as `ssh-keygen -lf` prints it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _host_key_policy(device: str, known_hosts: Path, accept_new: bool, notes: list[str]):
    """paramiko policy for a host key that known_hosts does not have: record it (accept_new) or refuse.
    A key that differs from a recorded one never reaches this: paramiko raises BadHostKeyException."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise DeployError(
                    f"device {device!r}: host {hostname} is not in {known_hosts} (its {key.get_name()} key is "
                    f"{fingerprint(key)}); check that fingerprint on the board (ssh-keygen -lf "
                    "/etc/ssh/ssh_host_*_key.pub) and deploy again with --accept-new-host-keys to record it")
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(known_hosts, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(hostname, key.get_name(), key)
            notes.append(f"recorded the host key of {hostname} ({key.get_name()} {fingerprint(key)}) in {known_hosts}")

    return Policy()


def _connect(target: SshTarget, key_filename: str | None, connect_timeout: float, known_hosts: Path,
             accept_new: bool, notes: list[str]):
    import paramiko

    client = paramiko.SSHClient()
    if known_hosts.exists():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"{known_hosts}: cannot read it as a known_hosts file ({e}); fix it or pass "
                              "--known-hosts FILE") from None
    client.set_missing_host_key_policy(_host_key_policy(target.device, known_hosts, accept_new, notes))
    where = f"{target.user}@{target.host}:{target.port}"
    try:
        client.connect(target.host, port=target.port, username=target.user, key_filename=key_filename,
                       timeout=connect_timeout, banner_timeout=connect_timeout, auth_timeout=connect_timeout,
                       allow_agent=key_filename is None, look_for_keys=key_filename is None)
    except DeployError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        raise DeployError(
            f"device {target.device!r}: the host key of {host} CHANGED: {known_hosts} has {e.expected_key.get_name()} "
            f"{fingerprint(e.expected_key)}, the board offered {e.key.get_name()} {fingerprint(e.key)}; refusing "
            "(a reinstalled board, or someone in between). If the board was reinstalled, remove the old key with "
            f"`ssh-keygen -R '{host}' -f {known_hosts}` and deploy again with --accept-new-host-keys") from None
    except (OSError, paramiko.SSHException) as e:
        client.close()
        raise DeployError(
            f"device {target.device!r}: cannot SSH to {where} ({e}); "
            "check the address and `user` in the cluster file, and --identity"
        ) from e
    return client


def stop_old_workers(client, remote_root: str) -> dict:
    """Stop the workers a previous deploy (or anyone) started from ``remote_root`` on the board; see
    _STOP_SNIPPET for what counts. Returns its JSON: stopped pids, errors, workers of other folders."""
    return json.loads(_exec(client, f"python3 - {shlex.quote(remote_root)}", stdin=_STOP_SNIPPET))


def deploy_board(
    artifacts: Path, target: SshTarget, remote_dir: str, *, key_filename: str | None = None,
    start: bool = True, connect_timeout: float = 10.0, known_hosts: str | None = None,
    accept_new_host_keys: bool = False,
) -> BoardResult:
    """Upload, verify and (``start``) restart one board. ``known_hosts`` defaults to ~/.ssh/known_hosts;
    a host missing from it is refused unless ``accept_new_host_keys``; a changed key is always refused."""
    local_root = artifacts / target.device
    expected = manifest_files(artifacts, target.device)
    notes: list[str] = []
    kh = Path(os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS))
    client = _connect(target, key_filename, connect_timeout, kh, accept_new_host_keys, notes)
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
        bad_files = [
            f"{target.device}/{rel}: " + ("missing on board" if rel not in after else "sha256 differs on board")
            for rel, digest in sorted(expected.items()) if after.get(rel) != digest
        ]
        problems = list(bad_files)
        started, stopped = False, ()
        if start and not bad_files:
            old = stop_old_workers(client, remote_root)
            stopped = tuple(old["stopped"])
            if old["unit"]:
                notes.append(f"stopped {old['unit']}; the new workers run from {remote_root}/start.sh "
                             "(reinstall the unit from there to keep them across reboots)")
            for other in old["others"]:
                notes.append(f"an edgeplan worker of another folder is running (pid {other['pid']}, "
                             f"{other['cwd']}); it may hold this plan's ports")
            problems += [f"{target.device}: cannot stop the old workers: {e}" for e in old["errors"]]
            if not old["errors"]:
                _exec(client, _START.format(root=shlex.quote(remote_root)))
                started = True
        return BoardResult(target.device, tuple(uploaded), len(expected) - len(uploaded), sent,
                           not bad_files, started, tuple(problems),
                           stopped, tuple(notes))
    finally:
        client.close()


def parse_address(device: str, address: str, default_user: str | None, default_port: int) -> SshTarget:
    """``[user@]host[:port]`` from a cluster file's device address; the user falls back to
    ``default_user`` and there is no built-in one (never a silent root)."""
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
    if not (user or default_user):
        raise DeployError(f"device {device!r}: no SSH user; write it as `user: LOGIN` in the cluster file")
    return SshTarget(device, host, port_n, user or default_user)


def target_for(device, index: int, cluster_file: str | Path, ssh_user: str | None = None,
               ssh_port: int = 22) -> SshTarget:
    """The SSH login of a cluster device (profiles.model.Device): its ``user`` field (or a ``user@`` in
    its address), else ``ssh_user``; an error naming the file and device when there is none, because
    deploying as root by default would hand root to whatever the artifacts run."""
    where = f"{cluster_file}: devices[{index}] ({device.name})"
    addr_user = device.address.rpartition("@")[0]
    if addr_user and device.user and addr_user != device.user:
        raise DeployError(f"{where}: the address names user {addr_user!r} but `user` is {device.user!r}; "
                          "keep one of them")
    user = addr_user or device.user or ssh_user
    if not user:
        raise DeployError(f"{where}: no SSH user; add `user: LOGIN` to the device (edgeplan does not log in as "
                          "root unless told to) or pass --ssh-user LOGIN")
    return parse_address(device.name, device.address, user, ssh_port)
