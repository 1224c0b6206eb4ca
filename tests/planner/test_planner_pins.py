"""`--pin` / `--allow-raw-transfer`: resolving pins on a traced 3-input model, plans that obey them, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the pin tests trace a 3-input model with torch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from edgeplan.cli import app  # noqa: E402
from edgeplan.errors import PlanError  # noqa: E402
from edgeplan.graph.trace import trace  # noqa: E402
from edgeplan.planner.api import make_plan  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.planner.pins import resolve_pins, resolve_raw  # noqa: E402
from edgeplan.planner.plan import Plan  # noqa: E402
from edgeplan.planner.textform import from_str, to_str  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from tests.graph.test_multi_input import ThreeInput  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIVE = ROOT / "examples" / "clusters" / "fpl-five.yaml"
MODEL = str(ROOT / "tests" / "graph" / "test_multi_input.py") + ":ThreeInput"
TRAIN = Objective(mode="training", objective="time", batch=8, microbatches=2)
CAMS = ("cam_a=cam-a", "input1=cam-b", "input2=cam-c")


class ReadAtJoin(nn.Module):
    """Input ``b`` has no branch of its own: the junction reads its raw data."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, a, b):
        return self.fc(torch.flatten(torch.cat([self.conv(a), b], 1), 1))


@pytest.fixture(scope="module")
def graph():
    return trace(ThreeInput(), (8, 3, 16, 16), "three").graph


@pytest.fixture(scope="module")
def cluster():
    return load_cluster(FIVE)


def test_input_pins_take_their_branch_and_patterns_take_their_layers(graph, cluster):
    pins = resolve_pins(graph, [d.name for d in cluster.devices],
                        ["cam_a=cam-a", "input2=cam-c", "b1=cam-b", "fc=trunk"])
    by = {p.name: p for p in pins}
    assert by["cam_a"].kind == "input" and by["cam_a"].input == "cam_a"
    assert by["cam_a"].layers == tuple(x.name for x in graph.layers[0:4])
    assert by["input2"].input == "cam_c" and by["input2"].layers == tuple(x.name for x in graph.layers[8:12])
    assert by["b1"].kind == "layers" and {graph.index(x) for x in by["b1"].layers} == {4, 5, 6, 7}  # module b1
    assert by["fc"].layers == ("fc",)
    globbed = resolve_pins(graph, ["cam-a"], ["b*.conv=cam-a"])[0]
    assert globbed.layers == ("b0_conv", "b1_conv", "b2_conv")


@pytest.mark.parametrize("pins, message", [
    (["cam_a=cam-z"], "--pin 'cam_a=cam-z': no device 'cam-z' in the cluster; valid devices: cam-a, cam-b"),
    (["input7=cam-a"], "'input7' is neither a model input (input0 (cam_a), input1 (cam_b), input2 (cam_c))"),
    (["cam_a"], "give NAME=DEVICE"),
    (["cam_a=cam-a", "input0=cam-b"], "input 'cam_a' is pinned to two devices"),
    (["b0=cam-a", "b0_conv=cam-b"], "layer 'b0_conv' is pinned to both"),
])
def test_bad_pins_are_one_line_naming_the_flag_and_the_choices(graph, cluster, pins, message):
    with pytest.raises(PlanError, match=None) as err:
        resolve_pins(graph, [d.name for d in cluster.devices], pins)
    text = str(err.value)
    assert message in text and "\n" not in text and "--pin" in text


def test_raw_transfer_names_inputs(graph):
    assert resolve_raw(graph, ["input1", "cam_a"]) == ("cam_a", "cam_b")
    with pytest.raises(PlanError, match="--allow-raw-transfer 'cam_z' is not a model input; valid: input0"):
        resolve_raw(graph, ["cam_z"])


def test_training_plan_runs_branches_on_their_boards_then_the_trunk(graph, cluster):
    plan = make_plan(graph, cluster, TRAIN, pins=CAMS)
    first = plan.stages[0]
    assert first.kind == "branches" and (first.start, first.stop) == (0, 12)
    assert [(r.device, r.input, r.start, r.stop, r.samples) for r in first.replicas] == [
        ("cam-a", "cam_a", 0, 4, 4), ("cam-b", "cam_b", 4, 8, 4), ("cam-c", "cam_c", 8, 12, 4)]
    assert all(s.kind == "pipeline" for s in plan.stages[1:]) and plan.stages[-1].stop == len(graph.layers)
    assert plan.predicted.iter_s > first.compute_s > 0
    assert [p.device for p in plan.pins] == ["cam-a", "cam-b", "cam-c"]
    text = to_str(plan)
    assert text.startswith("three | 0-3@cam-a:cpu&4-7@cam-b:cpu&8-11@cam-c:cpu | 12-")
    with pytest.raises(PlanError, match="parallel branches .* have no text form to re-price"):
        from_str(text)


def test_plan_json_records_pins_round_trips_and_stays_golden_friendly(graph, cluster, tmp_path):
    plan = make_plan(graph, cluster, TRAIN, pins=CAMS)
    data = json.loads(json.dumps(plan.to_json()))
    assert Plan.from_json(data) == plan
    assert data["pins"][1] == {"name": "input1", "kind": "input", "input": "cam_b", "device": "cam-b",
                               "layers": [x.name for x in graph.layers[4:8]]}
    assert "raw_transfer" not in data and "kind" not in data["stages"][1]
    assert "start" not in data["stages"][1]["replicas"][0]
    again = make_plan(graph, cluster, TRAIN, pins=CAMS)
    assert json.loads(json.dumps(again.to_json())) == data  # deterministic
    golden = ROOT / "tests" / "golden" / "plans" / "mobilenet_v2--rpi4-jetson--train-time.json"
    plain = Plan.from_json(json.loads(golden.read_text())).to_json()  # a plan without pins: none of the new keys
    assert "pins" not in plain and "raw_transfer" not in plain
    for st in (*plain["stages"], *(s for b in plain["baselines"] for s in b["stages"])):
        assert "kind" not in st and not any({"start", "stop", "input"} & set(r) for r in st["replicas"])


def test_layer_pin_puts_its_stage_on_that_board_alone(graph, cluster):
    plan = make_plan(graph, cluster, Objective(mode="inference", objective="latency", batch=8),
                     pins=CAMS + ("fc=cam-b",))
    holder = next(s for s in plan.stages if s.start <= graph.index("fc") < s.stop)
    assert [r.device for r in holder.replicas] == ["cam-b"]


def test_raw_data_read_at_the_join_stays_on_its_board_unless_allowed(cluster):
    g = trace(ReadAtJoin(), (4, 3, 8, 8), "join").graph
    assert g.branch_ranges()[1][1:] == (1, 1)  # b: no layers of its own
    obj = Objective(mode="inference", objective="latency", batch=4)
    kept = make_plan(g, cluster, obj, pins=("a=trunk-2", "b=cam-b"))
    assert [r.device for r in kept.stages[1].replicas] == ["cam-b"]  # the junction runs where b lives
    moved = make_plan(g, cluster, obj, pins=("a=trunk-2", "b=cam-b"), allow_raw=("b",))
    assert moved.raw_transfer == ("b",)
    assert moved.predicted.latency_s <= kept.predicted.latency_s
    with pytest.raises(PlanError, match="raw data of a pinned input may not leave its board"):
        make_plan(g, cluster, obj, pins=("a=trunk-2", "b=cam-b", "cat=cam-c"))  # the join itself elsewhere


def test_pinned_board_without_memory_for_its_branch_names_the_pin(graph, cluster):
    big = Objective(mode="training", objective="time", batch=1 << 19, microbatches=1)
    with pytest.raises(PlanError, match=r"--pin cam_a=cam-a: cam-a has 3646\.0 MB \(3335\.0 MB beside a training "
                                        r"rank's 311 MB torch reserve\) but the branch of input 'cam_a' "
                                        r"needs [0-9.]+ MB; boards that hold it: "):
        make_plan(graph, cluster, big, pins=CAMS)


def test_cli_plan_with_pins_end_to_end(tmp_path):
    out = tmp_path / "plan.json"
    args = ["plan", MODEL, "--cluster", str(FIVE), "--mode", "training", "--objective", "time",
            "--input-shape", "8,3,16,16", "--batch", "8", "--microbatches", "2",
            "--pin", "input0=cam-a", "--pin", "input1=cam-b", "--pin", "input2=cam-c", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "parallel branches: 3 inputs on their boards" in res.output
    data = json.loads(out.read_text())
    assert data["stages"][0]["kind"] == "branches" and len(data["pins"]) == 3
    bad = CliRunner().invoke(app, args[:-2] + ["--pin", "input0=nowhere"])
    assert bad.exit_code == 2 and "no device 'nowhere' in the cluster; valid devices: cam-a" in bad.output


def test_unpinned_input_of_a_pinned_model_runs_its_branch_on_the_head(graph, cluster):
    plan = make_plan(graph, cluster, TRAIN, pins=("input0=cam-b", "input1=cam-c"))
    assert [r.device for r in plan.stages[0].replicas] == ["cam-b", "cam-c", "cam-a"]  # cam-a: the head
    assert any("input 'cam_c' is not pinned: its data comes from the head (cam-a)" in n for n in plan.notes)


def test_pinned_input_of_a_single_input_model_keeps_the_model_on_its_board(cluster):
    single = trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)),
                   (4, 3, 8, 8), "single").graph
    plan = make_plan(single, cluster, Objective(mode="inference", objective="latency", batch=4),
                     pins=("input0=cam-c",))
    assert [[r.device for r in s.replicas] for s in plan.stages] == [["cam-c"]]  # no join: all its branch
    assert plan.pins[0].layers == tuple(x.name for x in single.layers)


def test_budget_no_pinned_plan_meets_says_what_the_best_one_reaches(graph, cluster):
    tight = Objective(mode="inference", objective="latency", batch=8, latency_budget_s=1e-6)
    with pytest.raises(PlanError, match=r"meets the budgets \(the best for latency has latency [0-9.]+ ms and "):
        make_plan(graph, cluster, tight, pins=CAMS)
    loose = make_plan(graph, cluster, Objective(mode="inference", objective="energy", batch=8, latency_budget_s=1.0),
                      pins=CAMS)
    assert loose.predicted.latency_s <= 1.0 and loose.latency_budget_s == 1.0
