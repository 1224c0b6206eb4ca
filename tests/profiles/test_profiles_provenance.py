"""Per-figure provenance: which figures of a profile are measured (how, when, on what), which are estimates."""

from __future__ import annotations

import textwrap

import pytest

from edgeplan.errors import ProfileError
from edgeplan.profiles.load import load_cluster, load_profile
from edgeplan.profiles.report import figures_basis, format_cluster, plan_basis

STAMP = "{how: fit, when: '2026-01-01T00:00:00Z', backend: onnxruntime, from: r.json}"


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_profiles_are_estimates_and_say_so():
    u = load_profile("host").units[0]
    assert u.measured == () and len(u.estimated_figures()) == 13
    assert figures_basis(u) == "all 13 figures estimates"


def test_measured_figures_load_and_a_later_override_makes_a_figure_an_estimate_again(tmp_path):
    _write(tmp_path / "board.yaml", f"""\
        extends: host
        units:
          cpu:
            throughput_gflops: {{conv: 50, gemm: 60}}
            measured:
              throughput_gflops.conv: {STAMP}
              throughput_gflops.gemm: {STAMP}
        """)
    clu = _write(tmp_path / "c.yaml", """\
        name: c
        devices:
          - {name: a, profile: board.yaml, address: 127.0.0.1}
          - name: b
            profile: board.yaml
            address: 127.0.0.1
            overrides: {units: {cpu: {throughput_gflops: {conv: 20}}}}
        network: {default: {bandwidth_mbps: 100, latency_ms: 1}}
        """)
    c = load_cluster(clu)
    a, b = c.device("a").unit("cpu"), c.device("b").unit("cpu")
    assert {m.field for m in a.measured} == {"throughput_gflops.conv", "throughput_gflops.gemm"}
    assert {m.field for m in b.measured} == {"throughput_gflops.gemm"}  # conv now comes from c.yaml: an estimate
    assert c.device("a").estimate and "2/13 figures measured: throughput of conv, gemm measured 2026-01-01T00:00:00Z " \
                                      "on onnxruntime (r.json)" in figures_basis(a)
    assert "a:cpu: 2/13" in plan_basis(c, (("a", "cpu"), ("b", "cpu")))
    assert "1/13 figures measured: throughput of gemm measured" in format_cluster(c)


def test_provenance_does_not_change_the_cluster_digest(tmp_path):
    body = "name: c\ndevices:\n  - {name: a, profile: board.yaml, address: 127.0.0.1}\n" \
           "network: {default: {bandwidth_mbps: 100, latency_ms: 1}}\n"
    _write(tmp_path / "board.yaml", "extends: host\nunits: {cpu: {throughput_gflops: {conv: 50}}}\n")
    plain = load_cluster(_write(tmp_path / "c.yaml", body))
    _write(tmp_path / "board.yaml", f"extends: host\nunits: {{cpu: {{throughput_gflops: {{conv: 50}}, "
                                    f"measured: {{throughput_gflops.conv: {STAMP}}}}}}}\n")
    marked = load_cluster(tmp_path / "c.yaml")
    assert marked.devices[0].units[0].measured and not plain.devices[0].units[0].measured
    assert marked.digest() == plain.digest()
    assert "measured" not in plain.to_json()["devices"][0]["units"][0]  # older cluster JSON unchanged


@pytest.mark.parametrize("entry, error", [
    ("throughput_gflops.warp: " + STAMP, r"board.yaml: units.cpu.measured.throughput_gflops.warp: unknown figure"),
    ("mem_bandwidth_gbs: {how: x, when: y, backend: z}", r"units.cpu.measured.mem_bandwidth_gbs.from: missing"),
    ("mem_bandwidth_gbs: {how: x, when: y, backend: z, from: w, by: me}", r"unknown field 'by'; allowed: how, when"),
])
def test_bad_provenance_names_file_and_field(tmp_path, entry, error):
    _write(tmp_path / "board.yaml", f"extends: host\nunits: {{cpu: {{measured: {{{entry}}}}}}}\n")
    with pytest.raises(ProfileError, match=error):
        load_profile(str(tmp_path / "board.yaml"))
