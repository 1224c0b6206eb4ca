"""Cluster file fields used only by deploy/top: a device's SSH `user` and the `head` address."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplan.errors import ProfileError
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import Cluster

BASE = """name: c
{head}devices:
  - name: a
    profile: rpi4b-4gb
    address: 10.0.0.1
{user}  - name: b
    profile: rpi4b-4gb
    address: 10.0.0.2
network:
  default: {{bandwidth_mbps: 100, latency_ms: 1}}
"""


def cluster(tmp_path: Path, head: str = "", user: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(head=f"head: {head}\n" if head else "", user=f"    user: {user}\n" if user else ""))
    return path


def test_user_and_head_are_read_and_round_trip(tmp_path: Path):
    c = load_cluster(cluster(tmp_path, head="192.168.1.10", user="pi"))
    assert c.head == "192.168.1.10"
    assert c.device("a").user == "pi" and c.device("b").user is None
    assert Cluster.from_json(c.to_json()) == c


def test_user_and_head_do_not_change_the_plan_digest(tmp_path: Path):
    plain = load_cluster(cluster(tmp_path))
    assert "head" not in plain.to_json() and "user" not in plain.to_json()["devices"][0]
    (tmp_path / "x").mkdir()
    with_fields = load_cluster(cluster(tmp_path / "x", head="10.0.0.9", user="edge"))
    assert with_fields.digest() == plain.digest()  # plans made before adding them still compile


def test_bad_user_names_the_file_and_field(tmp_path: Path):
    with pytest.raises(ProfileError, match=r"devices\[0\]\.user|devices.0.user") as e:
        load_cluster(cluster(tmp_path, user="'pi; rm -rf /'"))
    assert "c.yaml" in str(e.value)
