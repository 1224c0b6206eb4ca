"""Board profiles and cluster files: every built-in loads, merges work, bad input names file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from edgeplan.errors import ProfileError
from edgeplan.graph.ops import OP_CLASSES
from edgeplan.profiles.load import list_profiles, load_cluster, load_profile
from edgeplan.profiles.merge import BOARDS_DIR
from edgeplan.profiles.model import Cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"
EXPECTED_IDS = {
    "rpi3b", "rpi4b-2gb", "rpi4b-4gb", "rpi4b-8gb", "rpi5", "jetson-nano", "jetson-orin-nano",
    "rk3588", "rk3566", "host",
}


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_every_builtin_profile_loads_with_all_op_classes():
    ids = {pid for pid, _, _ in list_profiles()}
    assert ids == EXPECTED_IDS  # rpi4b is abstract (a base) and not listed
    for pid in ids:
        p = load_profile(pid)
        assert p.estimate, pid
        assert 0 < p.ram_bytes < 16 * 2**30, pid
        for u in p.units:
            rates = dict(u.throughput)
            assert tuple(rates) == OP_CLASSES, (pid, u.name)
            assert all(0 < r <= u.peak_flops for r in rates.values()), (pid, u.name)
            # depthwise runs far below dense conv on every unit
            assert rates["dwconv"] <= 0.25 * rates["conv"], (pid, u.name)
            assert u.mem_bandwidth > 0 and u.busy_power_w > p.idle_power_w  # busy includes idle


def test_every_builtin_file_says_estimate_and_comments_every_number():
    for path in sorted(BOARDS_DIR.glob("*/*.yaml")):
        assert yaml.safe_load(path.read_text())["estimate"] is True, path
        for n, line in enumerate(path.read_text().splitlines(), 1):
            body = line.split("#", 1)[0]
            value = body.split(":", 1)[1].strip() if ":" in body else body.strip().lstrip("- ")
            if value.replace(".", "", 1).isdigit():
                assert "#" in line, f"{path.name}:{n}: number without a source comment: {line.strip()}"


def test_targets_and_options_match_the_boards():
    nano = {u.name: u for u in load_profile("jetson-nano").units}
    assert nano["gpu"].target == "cuda" and dict(nano["gpu"].target_options)["arch"] == "sm_53"
    assert dict(nano["cpu"].target_options)["mcpu"] == "cortex-a57"
    orin = {u.name: u for u in load_profile("jetson-orin-nano").units}
    assert orin["gpu"].target == "cuda" and dict(orin["gpu"].target_options)["arch"] == "sm_87"
    rk = {u.name: u for u in load_profile("rk3588").units}
    assert (rk["gpu"].target, rk["npu"].target) == ("mali", "npu")
    assert dict(rk["npu"].target_options)["platform"] == "rk3588"
    small = {u.name: u for u in load_profile("rk3566").units}
    assert dict(small["npu"].target_options)["platform"] == "rk3566"
    assert small["npu"].supports("conv2d") and not small["npu"].supports("layernorm")
    assert not small["npu"].supports("softmax") and not small["npu"].supports("gelu")
    assert small["cpu"].supports("layernorm")  # CPUs run every op
    assert load_profile("host").units[0].target == "x86"
    assert dict(load_profile("rpi4b-4gb").units[0].target_options)["mcpu"] == "cortex-a72"


def test_extends_merges_deeply():
    base = load_profile("rpi4b-4gb")
    fast = load_profile("rpi4b-8gb")
    assert fast.ram_bytes - base.ram_bytes == (8192 - 4096) * 2**20
    b, f = dict(base.units[0].throughput), dict(fast.units[0].throughput)
    assert f["conv"] == 12e9 and b["conv"] == 10e9  # overridden
    assert f["norm"] == b["norm"]  # same value restated
    assert fast.units[0].mem_bandwidth == base.units[0].mem_bandwidth  # inherited, not restated
    assert dict(fast.units[0].target_options) == dict(base.units[0].target_options)


def test_abstract_base_is_refused_with_the_variants():
    with pytest.raises(ProfileError, match=r"rpi4b\.yaml.*base.*rpi4b-2gb"):
        load_profile("rpi4b")


def test_profile_by_path_extends_a_builtin(tmp_path):
    p = _write(tmp_path / "measured.yaml", """\
        extends: rpi4b-4gb
        estimate: false
        units:
          cpu:
            throughput_gflops: {conv: "11000 MFLOP/s"}
            layer_overhead_us: "0.04 ms"
        """)
    prof = load_profile(str(p))
    assert prof.id == "measured" and not prof.estimate
    assert prof.units[0].flops_per_s("conv") == pytest.approx(11e9)
    assert prof.units[0].layer_overhead_s == pytest.approx(40e-6)


def test_example_clusters_load():
    c = load_cluster(EXAMPLES / "three-node-hetero.yaml")
    assert [d.profile for d in c.devices] == ["rk3566", "rk3588", "rpi4b-2gb"]
    assert [u.name for u in c.device("gpu-board").units] == ["cpu", "gpu"]  # npu removed by override
    assert c.default_link.bandwidth == pytest.approx(940e6 / 8)
    assert c.secret_env == "EDGEPLAN_SECRET"
    ten = load_cluster(EXAMPLES / "ten-rpi3b.yaml")
    assert len(ten.devices) == 10 and {d.profile for d in ten.devices} == {"rpi3b"}
    assert ten.link("pi0", "pi9").bandwidth == pytest.approx(94e6 / 8)
    mixed = load_cluster(EXAMPLES / "rpi4-jetson.yaml")
    assert sorted(d.profile for d in mixed.devices) == ["jetson-nano", "rpi4b-4gb", "rpi4b-4gb", "rpi4b-4gb"]


def test_cluster_round_trips_through_json():
    c = load_cluster(EXAMPLES / "three-node-hetero.yaml")
    again = Cluster.from_json(c.to_json())
    assert again == c and again.digest() == c.digest()


def test_cluster_overrides_and_links(tmp_path):
    f = _write(tmp_path / "c.yaml", """\
        name: lab
        devices:
          - name: a
            profile: rpi4b-4gb
            address: 10.0.0.1
            overrides:
              ram_mb: 3000
              units: {cpu: {throughput_gflops: {conv: 9}, mem_bandwidth_gbs: 3.5}}
          - {name: b, profile: rpi3b, address: 10.0.0.2}
          - {name: c, profile: rpi3b, address: 10.0.0.3}
        network:
          default: {bandwidth_mbps: 1000, latency_ms: 0.1, energy_nj_per_byte: 5}
          links:
            - {between: [a, b], bandwidth_mbps: "1 Gbit/s", latency_ms: "500 us"}
        """)
    c = load_cluster(f)
    a = c.device("a")
    assert a.ram_bytes == (3000 - 450) * 2**20
    assert a.units[0].flops_per_s("conv") == 9e9 and a.units[0].flops_per_s("gemm") == 8e9
    assert a.units[0].mem_bandwidth == 3.5e9
    ab = c.link("b", "a")
    assert (ab.bandwidth, ab.latency_s, ab.energy_per_byte_j) == (pytest.approx(125e6), pytest.approx(5e-4), 5e-9)
    assert c.link("b", "c") == c.default_link


# --- one test per kind of bad input: the message names the file and the field ---------------

GOOD_DEVICE = "{name: a, profile: rpi3b, address: 10.0.0.1}"
NET = "network: {default: {bandwidth_mbps: 100, latency_ms: 1}}"


def _cluster(tmp_path: Path, devices: str, network: str = NET) -> Path:
    return _write(tmp_path / "bad.yaml", f"name: lab\ndevices:\n{devices}\n{network}\n")


def _error(path) -> str:
    with pytest.raises(ProfileError) as e:
        load_cluster(path)
    return str(e.value)


def test_missing_field(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b}"))
    assert "bad.yaml" in msg and "devices[0].address" in msg and "missing" in msg


def test_missing_field_in_a_profile_names_the_profile_file(tmp_path):
    p = _write(tmp_path / "half.yaml", """\
        name: Half board
        vendor: test
        ram_mb: 1024
        reserved_mb: 100
        idle_power_w: 1
        units: {cpu: {kind: cpu, target: arm-cpu, peak_gflops: 10, mem_bandwidth_gbs: 1, busy_power_w: 1,
                      layer_overhead_us: 1, throughput_gflops: {conv: 1}}}
        """)
    with pytest.raises(ProfileError) as e:
        load_profile(str(p))
    assert "half.yaml" in str(e.value) and "units.cpu.throughput_gflops.dwconv" in str(e.value)


def test_negative_bandwidth(tmp_path):
    msg = _error(_cluster(tmp_path, f"  - {GOOD_DEVICE}", "network: {default: {bandwidth_mbps: -5, latency_ms: 1}}"))
    assert "bad.yaml" in msg and "network.default.bandwidth_mbps" in msg and "-5" in msg and "> 0" in msg


def test_zero_bandwidth_in_an_override(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, "
                                    "overrides: {units: {cpu: {mem_bandwidth_gbs: 0}}}}"))
    assert "bad.yaml" in msg and "devices[0].overrides.units.cpu.mem_bandwidth_gbs" in msg and "> 0" in msg


def test_unknown_profile_lists_valid_ids(tmp_path):
    msg = _error(_cluster(tmp_path, f"  - {GOOD_DEVICE}\n  - {{name: b, profile: rpi9, address: x}}"))
    assert "bad.yaml" in msg and "devices[1].profile" in msg and "'rpi9'" in msg
    for pid in EXPECTED_IDS:
        assert pid in msg


def test_duplicate_device_name(tmp_path):
    msg = _error(_cluster(tmp_path, f"  - {GOOD_DEVICE}\n  - {GOOD_DEVICE}"))
    assert "bad.yaml" in msg and "devices[1].name" in msg and "duplicate" in msg and "devices[0]" in msg


def test_unknown_unit_in_override(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, overrides: {units: {gpu: {}}}}"))
    assert "bad.yaml" in msg and "devices[0].overrides.units.gpu" in msg and "cpu" in msg


def test_unknown_op_class(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, "
                                    "overrides: {units: {cpu: {throughput_gflops: {convolution: 3}}}}}"))
    assert "bad.yaml" in msg and "devices[0].overrides.units.cpu.throughput_gflops.convolution" in msg
    assert "dwconv" in msg  # lists the allowed classes


def test_npu_op_the_target_cannot_compile(tmp_path):
    """supported_ops may only narrow the target's own list (targets.npu.NPU_OPS): groupnorm is a known kind
    that no NPU backend compiles, so a unit listing it would be given layers its compile refuses."""
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rk3566, address: x, "
                                    "overrides: {units: {npu: {supported_ops: [conv2d, groupnorm]}}}}"))
    assert "devices[0].overrides.units.npu.supported_ops" in msg and "cannot compile groupnorm" in msg


def test_bad_units(tmp_path):
    net = "network: {default: {bandwidth_mbps: 100, latency_ms: 3 MB}}"
    msg = _error(_cluster(tmp_path, f"  - {GOOD_DEVICE}", net))
    assert "bad.yaml" in msg and "network.default.latency_ms" in msg and "'MB'" in msg and "ms" in msg


def test_throughput_above_peak(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, "
                                    "overrides: {units: {cpu: {throughput_gflops: {conv: 50}}}}}"))
    assert "devices[0].overrides.units.cpu.throughput_gflops.conv" in msg and "<= 19.2" in msg


def test_unknown_field(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, overrides: {ram: 3}}"))
    assert "devices[0].overrides.ram" in msg and "ram_mb" in msg


def test_link_to_unknown_device(tmp_path):
    net = ("network: {default: {bandwidth_mbps: 1, latency_ms: 1}, "
           "links: [{between: [a, z], bandwidth_mbps: 1, latency_ms: 1}]}")
    msg = _error(_cluster(tmp_path, f"  - {GOOD_DEVICE}", net))
    assert "network.links[0].between[1]" in msg and "'z'" in msg


def test_extends_cycle(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\nname: A\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\nname: B\n")
    with pytest.raises(ProfileError) as e:
        load_profile(str(tmp_path / "a.yaml"))
    msg = str(e.value)
    assert ".yaml: extends: cycle" in msg and "a -> b -> a" in msg


def test_extends_unknown_base(tmp_path):
    _write(tmp_path / "a.yaml", "extends: nosuchboard\nname: A\n")
    with pytest.raises(ProfileError) as e:
        load_profile(str(tmp_path / "a.yaml"))
    assert "a.yaml: extends: unknown profile 'nosuchboard'" in str(e.value) and "rpi3b" in str(e.value)


def test_not_yaml(tmp_path):
    f = _write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(ProfileError, match=r"bad\.yaml: not valid YAML at line"):
        load_cluster(f)


def test_busy_power_below_idle(tmp_path):
    msg = _error(_cluster(tmp_path, "  - {name: a, profile: rpi3b, address: x, overrides: {idle_power_w: 5}}"))
    assert "units.cpu.busy_power_w" in msg and "below idle_power_w" in msg and "rpi3b.yaml" in msg
