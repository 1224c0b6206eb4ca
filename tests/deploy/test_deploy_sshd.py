"""Deploy over SSH to a real sshd started on loopback (marker `sshd`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edgeplan.deploy import ssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _reason() -> str | None:
    if not Path(SSHD).exists():
        return "sshd tier needs OpenSSH's server (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "sshd tier needs ssh-keygen (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd tier starts sshd with its own config, which needs root here"
    return None


pytestmark = [pytest.mark.sshd, pytest.mark.skipif(_reason() is not None, reason=_reason() or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True)
    (d / "authorized").write_text((d / "client.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()}")
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(d / 'host.pub').read_text().split(' ', 2)[0]} "
                     f"{(d / 'host.pub').read_text().split()[1]}\n")
    yield {"port": port, "key": str(d / "client"), "known_hosts": str(known)}
    proc.terminate()
    proc.wait(timeout=10)


def _artifacts(root: Path) -> Path:
    """A minimal artifact folder: one board with a launcher that records it ran."""
    board = root / "art" / "pi"
    (board / "stage0").mkdir(parents=True)
    (board / "stage0" / "stage.json").write_text('{"stage": 0}\n')
    (board / "stage0" / "module.so").write_bytes(os.urandom(200_000))
    (board / "start.sh").write_text("#!/bin/sh\necho started > started.txt\n")
    (board / "start.sh").chmod(0o755)
    files = [
        {"path": str(p.relative_to(root / "art")), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
         "size": p.stat().st_size}
        for p in sorted(board.rglob("*")) if p.is_file()
    ]
    (root / "art" / "manifest.json").write_text(json.dumps({"files": files}))
    return root / "art"


def test_deploy_copies_only_changed_files_verifies_and_starts(sshd, tmp_path):
    art = _artifacts(tmp_path)
    remote = tmp_path / "board-home"
    target = ssh.parse_address("pi", f"root@127.0.0.1:{sshd['port']}", "root", 22)
    first = ssh.deploy_board(art, target, str(remote), key_filename=sshd["key"], known_hosts=sshd["known_hosts"])
    assert first.verified and first.started
    assert set(first.uploaded) == {"stage0/stage.json", "stage0/module.so", "start.sh"}
    assert (remote / "pi" / "stage0" / "module.so").read_bytes() == (art / "pi" / "stage0" / "module.so").read_bytes()
    deadline = time.time() + 10
    while not (remote / "pi" / "started.txt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (remote / "pi" / "started.txt").exists(), "start.sh did not run on the board"

    # change one file locally: only it travels again
    (art / "pi" / "start.sh").write_text("#!/bin/sh\necho again > started.txt\n")
    manifest = json.loads((art / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["path"] == "pi/start.sh":
            f["sha256"] = hashlib.sha256((art / "pi" / "start.sh").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    second = ssh.deploy_board(art, target, str(remote), key_filename=sshd["key"], known_hosts=sshd["known_hosts"],
                              start=False)
    assert second.uploaded == ("start.sh",) and second.unchanged == 2 and second.verified


def test_deploy_reports_a_file_that_does_not_match_the_manifest(sshd, tmp_path):
    art = _artifacts(tmp_path)
    (art / "pi" / "stage0" / "stage.json").write_text('{"stage": 1}\n')  # altered after compile
    target = ssh.parse_address("pi", f"127.0.0.1:{sshd['port']}", "root", 22)
    result = ssh.deploy_board(art, target, str(tmp_path / "home"), key_filename=sshd["key"],
                              known_hosts=sshd["known_hosts"])
    assert not result.verified and not result.started
    assert result.problems == ("pi/stage0/stage.json: sha256 differs on board",)


def test_unreachable_board_names_the_device(tmp_path):
    art = _artifacts(tmp_path)
    target = ssh.parse_address("pi", f"127.0.0.1:{_free_port()}", "root", 22)
    with pytest.raises(ssh.DeployError, match="device 'pi': cannot SSH to root@127.0.0.1"):
        ssh.deploy_board(art, target, str(tmp_path / "home"), connect_timeout=2)
