"""The runtime's hop cost per call and per byte, fitted by `edgeplan calibrate` from replicas whose bytes per
call differ (issue 14): recovered from synthetic reports of a known board, refused per byte when the bytes
do not vary, clamped with one line when the data say something impossible, written with its provenance."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgeplan.profiles import calibrate as cal
from edgeplan.profiles.cost import hop_byte_s
from edgeplan.profiles.load import load_cluster
from tests.profiles.test_profiles_calibrate import cluster_file, plan_and_report, synthetic_graph

PER_CALL, PER_BYTE = 0.0003, 0.45e-9  # the board's runtime: 0.3 ms + 0.45 ns per byte in or out (host-like)


def _runs(graph, cluster, sizes, hop=lambda b: PER_CALL + PER_BYTE * b, noise=0.0, seed=0):
    """One report per entry of ``sizes`` (bytes in = bytes out per call), two stages on boards a and b; worker
    CPU per call = 4 ms module + ``hop(bytes in + out)``, times (1 + uniform noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for r, nbytes in enumerate(sizes):
        plan, rep = plan_and_report(graph, cluster, [12], lambda s: "ab"[s], [0.004, 0.004], runs=100)
        for st in rep["stages"]:
            h = hop(2 * nbytes) * (1 + rng.uniform(-noise, noise))
            st["replicas"][0].update(cpu_s=100 * (0.004 + h), compute_cpu_s=100 * 0.004,
                                     bytes_in=100 * nbytes, bytes_out=100 * nbytes)
        obs, _ = cal.observations(plan, rep, f"r{r}.json")
        out.append((plan, graph, obs))
    return out


def test_per_call_and_per_byte_are_recovered_from_replicas_with_different_bytes(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    result = cal.fit(cluster, _runs(graph, cluster, [16_384, 131_072, 524_288, 2_097_152], noise=0.03))
    for f in result.fits:
        assert f.hop_byte_fitted and f.hop_fitted
        assert f.after.hop_byte_s == pytest.approx(PER_BYTE, rel=0.05)
        assert f.after.hop_overhead_s == pytest.approx(PER_CALL, rel=0.10)
        assert not [n for n in f.notes if "hop" in n]
    # the 2-copies estimate priced the 4 MiB calls' hop well below what the board spent; the fit prices it
    big = [r for r in result.rows if r.obs.bytes_per_call == 2 * 2_097_152]
    assert len(big) == 2 and all(r.hop_before_s < 0.8 * r.hop_measured_s for r in big)
    assert all(r.hop_after_s == pytest.approx(r.hop_measured_s, rel=0.05) for r in big)
    text = cal.format_fit(result)
    assert len(re.findall(r"per byte +0\.133 -> +0\.4[0-9]* ns \(hop\)\n", text)) == 2


def test_bytes_that_do_not_vary_fit_the_per_call_part_only_and_say_why(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    # one run: a replica per board, two boards of one profile pooled are still too few points; three runs of
    # bytes too alike (their six replicas pooled, too)
    for sizes in ([131_072], [131_072, 140_000, 150_000]):
        result = cal.fit(cluster, _runs(graph, cluster, sizes))
        for f in result.fits:
            assert f.hop_fitted and not f.hop_byte_fitted and f.after.hop_byte_s is None
            (note,) = [n for n in f.notes if "per-byte hop not fitted" in n]
            assert f"({len(sizes)} replica(s)" in note and "several plans or models" in note
            # per call: the median of (hop - the unit's per-byte figure x bytes), as before (2 copies at the
            # memory bandwidth the module fit found)
            want = np.median([PER_CALL + (PER_BYTE - hop_byte_s(f.after)) * 2 * b for b in sizes])
            assert f.after.hop_overhead_s == pytest.approx(want, rel=1e-6)


def test_an_impossible_per_byte_fit_is_clamped_with_one_line(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(cluster_file(tmp_path))
    falling = _runs(graph, cluster, [16_384, 131_072, 524_288], hop=lambda b: 0.004 - 1e-9 * b)
    for f in cal.fit(cluster, falling).fits:  # the hop fell as bytes grew: noise, not a negative cost
        assert f.after.hop_byte_s == 0.0
        (note,) = [n for n in f.notes if "per-byte" in n]
        assert "reads -1 ns/B, outside [0, 1000]; clamped to 0" in note and "\n" not in note
    steep = _runs(graph, cluster, [1_000, 4_000, 16_000], hop=lambda b: 1e-4 + 5e-6 * b)
    for f in cal.fit(cluster, steep).fits:
        assert f.after.hop_byte_s == pytest.approx(cal.MAX_HOP_BYTE_S)
        assert any("reads 5e+03 ns/B" in n and "clamped to 1000" in n for n in f.notes)


def test_the_fitted_per_byte_hop_is_written_with_its_provenance_and_prices_the_next_plan(tmp_path):
    graph = synthetic_graph()
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    result = cal.fit(cluster, _runs(graph, cluster, [16_384, 131_072, 524_288, 2_097_152]))
    new = cal.write_calibrated(path, result, tmp_path / "cal.yaml", sources="r0..r3.json", backend="onnxruntime",
                               when="2026-01-01T00:00:00Z")
    for name in ("a", "b"):
        got = new.device(name).unit("cpu")
        assert got.hop_byte_s == pytest.approx(PER_BYTE, rel=1e-4)
        assert "hop_byte_ns" not in got.estimated_figures()
        (m,) = [m for m in got.measured if m.field == "hop_byte_ns"]
        assert "least squares over 4 replica(s)" in m.how and m.source == "r0..r3.json"
    from edgeplan.profiles.cost import build_cost_table

    assert build_cost_table(graph, new).hop_byte_s.tolist() == pytest.approx([PER_BYTE] * 2, rel=1e-4)


def test_one_run_over_identical_boards_fits_the_per_byte_part_from_their_replicas_together(tmp_path):
    """Three boards of one profile, one run, one replica each on stages whose cuts carry different bytes: no
    board separates per call from per byte alone, the three together do (the same board model)."""
    graph = synthetic_graph()
    path = cluster_file(tmp_path, ("a", "b", "c"))
    cluster = load_cluster(path)
    plan, rep = plan_and_report(graph, cluster, [8, 16], lambda s: "abc"[s], [0.004] * 3, runs=100)
    for st, nbytes in zip(rep["stages"], (16_384, 262_144, 1_048_576), strict=True):
        h = PER_CALL + PER_BYTE * 2 * nbytes
        st["replicas"][0].update(cpu_s=100 * (0.004 + h), compute_cpu_s=100 * 0.004,
                                 bytes_in=100 * nbytes, bytes_out=100 * nbytes)
    result = cal.fit(cluster, [(plan, graph, cal.observations(plan, rep, "r.json")[0])])
    assert len(result.fits) == 3
    for f in result.fits:
        assert f.hop_byte_fitted and f.hop_byte_pooled == "a, b, c"
        assert f.after.hop_byte_s == pytest.approx(PER_BYTE, rel=1e-3)
        assert f.after.hop_overhead_s == pytest.approx(PER_CALL, rel=1e-3)
        assert any("per-byte hop fitted over the replicas of a, b, c" in n for n in f.notes)
    new = cal.write_calibrated(path, result, tmp_path / "cal.yaml", sources="r.json", backend="onnxruntime")
    (m,) = [m for m in new.device("b").unit("cpu").measured if m.field == "hop_byte_ns"]
    assert "boards a, b, c (same profile and figures)" in m.how
    # boards of another profile (or other figures) are not pooled: one replica each keeps the per-call fit only
    other = cal.fit(cluster, [(plan, graph, cal.observations(plan, rep, "r.json")[0][:1])])
    assert not other.fits[0].hop_byte_fitted
