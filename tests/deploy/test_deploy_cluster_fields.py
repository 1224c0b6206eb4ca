"""The cluster file field used only by deploy: a device's SSH `user`."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplan.errors import ProfileError
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import Cluster

BASE = """name: c
devices:
  - name: a
    profile: rpi4b-4gb
    address: 10.0.0.1
{user}  - name: b
    profile: rpi4b-4gb
    address: 10.0.0.2
network:
  default: {{bandwidth_mbps: 100, latency_ms: 1}}
"""


def cluster(tmp_path: Path, user: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(user=f"    user: {user}\n" if user else ""))
    return path


def test_user_is_read_and_round_trips(tmp_path: Path):
    c = load_cluster(cluster(tmp_path, user="pi"))
    assert c.device("a").user == "pi" and c.device("b").user is None
    assert Cluster.from_json(c.to_json()) == c


def test_user_does_not_change_the_plan_digest(tmp_path: Path):
    plain = load_cluster(cluster(tmp_path))
    assert "user" not in plain.to_json()["devices"][0]
    (tmp_path / "x").mkdir()
    with_fields = load_cluster(cluster(tmp_path / "x", user="edge"))
    assert with_fields.digest() == plain.digest()  # plans made before adding them still compile


def test_bad_user_names_the_file_and_field(tmp_path: Path):
    with pytest.raises(ProfileError, match=r"devices\[0\]\.user|devices.0.user") as e:
        load_cluster(cluster(tmp_path, user="'pi; rm -rf /'"))
    assert "c.yaml" in str(e.value)
