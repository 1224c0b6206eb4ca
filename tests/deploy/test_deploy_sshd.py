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
    if not os.access(SSHD, os.X_OK):  # absent, or present but not runnable
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


# --- host keys -------------------------------------------------------------------------------------


def _host_line(sshd) -> str:
    return Path(sshd["known_hosts"]).read_text()


def test_unknown_host_key_is_refused_by_default(sshd, tmp_path):
    art = _artifacts(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text("")
    target = ssh.parse_address("pi", f"127.0.0.1:{sshd['port']}", "root", 22)
    with pytest.raises(ssh.DeployError) as e:
        ssh.deploy_board(art, target, str(tmp_path / "home"), key_filename=sshd["key"], known_hosts=str(known))
    msg = str(e.value)
    assert f"[127.0.0.1]:{sshd['port']}" in msg and "--accept-new-host-keys" in msg and "SHA256:" in msg
    assert known.read_text() == "" and not (tmp_path / "home").exists()


def test_accept_new_records_the_key_then_it_is_known(sshd, tmp_path):
    art = _artifacts(tmp_path)
    known = tmp_path / "ssh" / "known_hosts"  # folder and file created
    target = ssh.parse_address("pi", f"127.0.0.1:{sshd['port']}", "root", 22)
    r = ssh.deploy_board(art, target, str(tmp_path / "home"), key_filename=sshd["key"], known_hosts=str(known),
                         accept_new_host_keys=True, start=False)
    assert r.verified and any("recorded the host key" in n for n in r.notes)
    host, kind, b64 = known.read_text().split()
    want = _host_line(sshd).split()
    assert (host, kind, b64) == (f"[127.0.0.1]:{sshd['port']}", want[1], want[2])
    again = ssh.deploy_board(art, target, str(tmp_path / "home"), key_filename=sshd["key"], known_hosts=str(known),
                             start=False)  # no flag: now known
    assert again.verified and again.notes == () and known.read_text().count("\n") == 1


def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path):
    art = _artifacts(tmp_path)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
    before = known.read_text()
    target = ssh.parse_address("pi", f"127.0.0.1:{sshd['port']}", "root", 22)
    with pytest.raises(ssh.DeployError, match="CHANGED") as e:
        ssh.deploy_board(art, target, str(tmp_path / "home"), key_filename=sshd["key"], known_hosts=str(known),
                         accept_new_host_keys=True)
    assert "ssh-keygen -R" in str(e.value)
    assert known.read_text() == before and not (tmp_path / "home").exists()


# --- stopping the old workers ----------------------------------------------------------------------


def _pids_in(folder: Path) -> set[int]:
    """Live (non-zombie) start.sh / worker processes whose working directory is ``folder``.

    Matches whole argv elements, so a short-lived ``sh -c "cd ... && ./start.sh ..."`` of a deploy's
    ssh session (whose one argument merely contains start.sh) is not counted as a worker."""
    out = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            if not any(a.endswith(b"/start.sh") or a == b"start.sh" or a == b"edgeplan_runtime.worker"
                       for a in argv):
                continue
            if os.path.realpath(os.readlink(p / "cwd")) == str(folder.resolve()):
                if (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.add(int(p.name))
        except OSError:
            continue
    return out


def _long_running_artifacts(root: Path, tag: str) -> Path:
    art = _artifacts(root)
    board = art / "pi"
    (board / "start.sh").write_text(
        "#!/bin/sh\n"
        f"echo {tag} $$ >> starts.txt\n"
        "python3 -c 'import time; time.sleep(300)' edgeplan_runtime.worker --stage stage0/stage.json &\n"
        "wait\n")
    manifest = json.loads((art / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["path"] == "pi/start.sh":
            f["sha256"] = hashlib.sha256((board / "start.sh").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def _wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_redeploy_stops_the_old_workers_before_starting_new_ones(sshd, tmp_path):
    home = tmp_path / "home"
    target = ssh.parse_address("pi", f"127.0.0.1:{sshd['port']}", "root", 22)
    kw = {"key_filename": sshd["key"], "known_hosts": sshd["known_hosts"]}
    first = ssh.deploy_board(_long_running_artifacts(tmp_path / "v1", "v1"), target, str(home), **kw)
    folder = home / "pi"
    assert first.started and first.stopped == ()
    assert _wait_for(lambda: len(_pids_in(folder)) == 2), "start.sh and its worker did not come up"
    time.sleep(0.3)  # the set must be settled, not caught mid-fork
    old = _pids_in(folder)
    assert len(old) == 2, old
    stray = subprocess.Popen(["python3", "-c", "import time; time.sleep(300)", "edgeplan_runtime.worker"],
                             cwd=folder)  # a worker started by hand in the same folder
    try:
        second = ssh.deploy_board(_long_running_artifacts(tmp_path / "v2", "v2"), target, str(home), **kw)
        assert second.started and "start.sh" in second.uploaded
        assert set(second.stopped) == old | {stray.pid}
        assert stray.wait(timeout=10) != 0  # killed, not exited by itself
        assert not (old & _pids_in(folder))
        assert _wait_for(lambda: len(_pids_in(folder)) == 2), "the new start.sh and worker did not come up"
        starts = (folder / "starts.txt").read_text().split()
        assert starts[0::2] == ["v1", "v2"]
    finally:
        stray.kill()
        stray.wait()
        for pid in _pids_in(folder):
            os.kill(pid, 9)


def test_cli_deploys_as_the_cluster_user_and_reports_the_restart(sshd, tmp_path):
    from typer.testing import CliRunner

    from edgeplan.cli import app

    art = _artifacts(tmp_path)
    cluster = tmp_path / "c.yaml"
    base = ("name: c\ndevices:\n  - name: pi\n    profile: rpi4b-4gb\n    address: 127.0.0.1:{port}\n{user}"
            "network:\n  default: {{bandwidth_mbps: 100, latency_ms: 1}}\n")
    args = ["deploy", str(art), "--cluster", str(cluster), "--remote-dir", str(tmp_path / "home"),
            "--identity", sshd["key"], "--known-hosts", sshd["known_hosts"]]

    cluster.write_text(base.format(port=sshd["port"], user=""))
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and not (tmp_path / "home").exists()
    assert f"{cluster}: devices[0] (pi): no SSH user; add `user: LOGIN`" in res.output

    cluster.write_text(base.format(port=sshd["port"], user="    user: root\n"))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "pi             root@127.0.0.1: sent 3 files" in res.output
    assert "verified, no old workers running, started" in res.output
    assert _wait_for(lambda: (tmp_path / "home" / "pi" / "started.txt").exists())

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = CliRunner().invoke(app, args[:-1] + [str(empty)])
    assert res.exit_code != 0 and "--accept-new-host-keys" in res.output and len(res.output.splitlines()) == 1
