"""Plan families (issue 12 item 1): condition text form, grid errors, dedupe, default family, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.errors import PlanError
from edgeplan.planner import family as fm
from edgeplan.planner.api import make_plan
from edgeplan.planner.objective import Objective

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "clusters" / "three-node-hetero.yaml"
OBJ = Objective(objective="throughput", batch=4)


@pytest.fixture(scope="module")
def graph():
    pytest.importorskip("torch", reason="plan families trace a zoo model with torch")
    from edgeplan.graph.load import build

    return build("resnet18").graph


@pytest.fixture(scope="module")
def cluster():
    from edgeplan.profiles.load import load_cluster

    return load_cluster(CLUSTER)


@pytest.mark.parametrize("text", ["nominal", "bandwidth=0.25", "bandwidth:cpu-board/gpu-board=0.5",
                                  "slowdown:gpu-board=3", "absent:cpu-board",
                                  "bandwidth=0.5+slowdown:gpu-board=3+absent:cpu-board"])
def test_condition_text_parses_back(text):
    c = fm.parse_condition(text)
    assert str(c) == text
    assert fm.parse_condition(str(c)) == c


def test_identity_factors_and_order_do_not_make_new_conditions():
    assert fm.parse_condition("bandwidth=1") == fm.NOMINAL
    a = fm.parse_condition("slowdown:gpu-board=3+bandwidth:gpu-board/cpu-board=0.5")
    b = fm.parse_condition("bandwidth:cpu-board/gpu-board=0.5+slowdown:gpu-board=3")
    assert a == b and str(a) == "bandwidth:cpu-board/gpu-board=0.5+slowdown:gpu-board=3"


@pytest.mark.parametrize("entry, words", [
    ("bandwidth=1,-0.5", ["--variants entry 1", "bandwidth scale", "'-0.5'", "positive"]),
    ("bandwidth=fast", ["--variants entry 1", "'fast' is not a number"]),
    ("slowdown:gpu=1,3", ["--variants entry 1", "unknown device 'gpu'", "gpu-board"]),
    ("bandwidth:gpu-board/nope=0.5", ["--variants entry 1", "unknown device 'nope'"]),
    ("absent:npu-board", ["--variants entry 1", "head board"]),
    ("speed=2", ["--variants entry 1", "is not one of"]),
    ("slowdown:gpu-board=3+absent:cpu-board", ["--variants entry 1", "one axis per --variants"]),
])
def test_grid_errors_are_one_line_naming_the_entry_and_field(cluster, entry, words):
    with pytest.raises(PlanError) as e:
        fm.expand_grid([entry], cluster, "npu-board")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_grid_is_the_product_with_nominal_first_and_no_duplicates():
    got = [str(c) for c in fm.expand_grid(["bandwidth=1,0.5,0.25", "slowdown:gpu-board=1,3", "absent:cpu-board"])]
    assert got[0] == "nominal"
    assert len(got) == len(set(got)) == 3 * 2 * 2
    assert "bandwidth=0.25+slowdown:gpu-board=3+absent:cpu-board" in got


def test_default_family_covers_each_board_and_link_but_never_drops_the_head(cluster):
    got = [str(c) for c in fm.default_conditions(cluster, "npu-board")]
    assert got == ["nominal", "slowdown:npu-board=3", "slowdown:gpu-board=3", "slowdown:cpu-board=3",
                   "bandwidth=0.25", "absent:gpu-board", "absent:cpu-board"]


def test_apply_is_pure_and_matches_scale_costs(graph, cluster):
    from edgeplan.profiles.cost import build_cost_table

    cond = fm.parse_condition("bandwidth=0.5+bandwidth:cpu-board/gpu-board=0.5+slowdown:gpu-board=3")
    before = cluster.digest()
    scaled = fm.apply(cluster, cond)
    assert cluster.digest() == before and scaled.digest() != before
    assert scaled.link("gpu-board", "cpu-board").bandwidth == pytest.approx(cluster.default_link.bandwidth * 0.25)
    assert scaled.link("npu-board", "cpu-board").bandwidth == pytest.approx(cluster.default_link.bandwidth * 0.5)
    direct = build_cost_table(graph, scaled)
    fast = fm.scale_costs(build_cost_table(graph, cluster), cond)
    for k in ("fwd_s", "bwd_s", "fixed_s", "bandwidth", "hop_s", "hop_byte_s", "latency_s"):
        np.testing.assert_allclose(getattr(fast, k), getattr(direct, k), rtol=1e-12, err_msg=k)
    gone = fm.apply(cluster, fm.parse_condition("absent:cpu-board"))
    assert [d.name for d in gone.devices] == ["npu-board", "gpu-board"]


def test_each_variant_is_the_plan_of_its_condition_and_layouts_are_deduped(graph, cluster):
    conds = fm.expand_grid(["bandwidth=1,0.25", "slowdown:cpu-board=1,1.01"], cluster)
    fam, plans = fm.make_family(graph, cluster, OBJ, conds)
    assert [v.condition for v in fam.variants] == [str(c) for c in conds]
    keys = {fm.layout_key(p) for p in plans.values()}
    assert len(keys) == len(plans) < len(conds)  # a 1% slowdown of the slowest board changes no layout
    for c, v in zip(conds, fam.variants, strict=True):
        direct = make_plan(graph, fm.apply(cluster, c), OBJ)
        assert fm.layout_key(plans[v.plan]) == fm.layout_key(direct), str(c)
        assert v.throughput == pytest.approx(direct.predicted.throughput, rel=1e-5)
    for m in fam.modules:  # every module listed by the plans that run it, and only those
        for name, p in plans.items():
            runs = any((r.device, r.unit, s.start, s.stop, r.samples) == (m.device, m.unit, m.start, m.stop, m.samples)
                       for s in p.stages for r in s.replicas)
            assert runs == (name in m.plans)


def test_family_json_is_deterministic_and_round_trips(graph, cluster, tmp_path):
    conds = fm.default_conditions(cluster, "npu-board")
    a, pa = fm.make_family(graph, cluster, OBJ, conds)
    b, _ = fm.make_family(graph, cluster, OBJ, conds)
    assert jsonio.dumps(a.to_json()) == jsonio.dumps(b.to_json())
    fm.write_family(tmp_path / "f", a, pa)
    again, plans = fm.load_family(tmp_path / "f")
    assert again == a and set(plans) == {f for f, _ in a.plans}
    assert "absent:cpu-board" in fm.format_family(again)


def _cluster():
    from edgeplan.profiles.load import load_cluster

    return load_cluster(CLUSTER)


def test_cli_plan_variants_writes_a_folder_and_show_prints_the_table(tmp_path):
    pytest.importorskip("torch", reason="traces resnet18")
    from edgeplan.cli import app

    out = tmp_path / "plans"
    r = CliRunner().invoke(app, ["plan", "resnet18", "--cluster", str(CLUSTER), "--batch", "4",
                                 "--variants", "bandwidth=1,0.25", "--variants", "slowdown:gpu-board=1,3",
                                 "--out", f"{out}/"])
    assert r.exit_code == 0, r.output
    fam, plans = fm.load_family(out)
    assert len(fam.variants) == 4 and all(p.model_ref == "resnet18" for p in plans.values())
    from edgeplan.codegen.compile import resolve_sources

    for name, p in plans.items():  # each plan compiles for the nominal cluster's boards (digest check passes)
        spec, clu, _, notes = resolve_sources(p, None, None, None, out)
        assert spec == "resnet18" and clu is not None and clu.digest() == fam.cluster_sha256 and not notes, name
    r2 = CliRunner().invoke(app, ["show", str(out)])
    assert r2.exit_code == 0 and "bandwidth=0.25+slowdown:gpu-board=3" in r2.output
    default = CliRunner().invoke(app, ["plan", "resnet18", "--cluster", str(CLUSTER), "--batch", "4",
                                       "--variants", "default", "--out", str(tmp_path / "d")])
    assert default.exit_code == 0, default.output
    assert [v.condition for v in fm.load_family(tmp_path / "d")[0].variants] == [
        str(c) for c in fm.default_conditions(_cluster(), "npu-board")]
    bad = CliRunner().invoke(app, ["plan", "resnet18", "--cluster", str(CLUSTER), "--variants", "slowdown:x=2"])
    assert bad.exit_code != 0 and "--variants entry 1" in bad.output and "unknown device 'x'" in bad.output


def test_a_family_that_cannot_be_loaded_at_once_names_the_board_and_the_least_useful_variants(graph, tmp_path):
    """npu-board with 150 MB usable: each plan fits (<= 51 MB there) but all its modules (~265 MB) do not."""
    from edgeplan.profiles.load import load_cluster

    text = CLUSTER.read_text().replace("    profile: rk3566  #", "    overrides: {ram_mb: 750}\n    profile: rk3566  #")
    (tmp_path / "small.yaml").write_text(text)
    small = load_cluster(tmp_path / "small.yaml")
    assert small.device("npu-board").ram_bytes == 150 << 20
    with pytest.raises(PlanError) as e:
        fm.make_family(graph, small, OBJ, fm.default_conditions(small, "npu-board"))
    msg = str(e.value)
    assert "\n" not in msg
    m = re.search(r"npu-board needs ([\d.]+) MB of 150.0 MB \(([\d.]+) MB over\)", msg)
    assert m and float(m.group(1)) - 150 == pytest.approx(float(m.group(2)), abs=0.11)
    assert "gpu-board needs" not in msg and "leave out the least useful variants" in msg
    # the named variants are the ones whose plans gain least over the nominal plan under their condition
    named = re.findall(r"(\S+) \((plan-\d\.json), (-?[\d.]+)% better", msg)
    assert len(named) == 3 and [float(g) for _, _, g in named] == sorted(float(g) for _, _, g in named)
    fam, _ = fm.make_family(graph, load_cluster(CLUSTER), OBJ, fm.default_conditions(small, "npu-board"))
    assert all(fam.variant(fm.parse_condition(c)).plan == p for c, p, _ in named)
