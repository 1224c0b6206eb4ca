"""(netns tier) The FPL study's runs through plan / compile / train on the emulated fpl-five boards: FPL with its trunk
split over two boards, and federated averaging over the three source boards (each reading its own view). The bytes
each board's network interface sent match the tensors counted from the plan's cuts (FPL) or gloo's ring all-reduce
modelled (fedavg), plus wire overhead; the report prints them with their labels. (The study's --emulate also runs
fpl with one trunk board and dsgd; the test takes two.) The boards are emulated at one speed (equal CPU quotas):
the bytes do not depend on it, and at their real ratio the cameras get 0.03 of a core here, which made each
run take ~2.5 min of torch start-up."""

from __future__ import annotations

from benchmarks.studies import fpl
from edgeplan.profiles.load import load_cluster
from edgeplan.testbed import emulate
from tests.tiers import netns_tier


@netns_tier
def test_emulated_boards_send_the_counted_bytes(tmp_path):
    # a notional host as fast as one camera: the five equal boards share this machine's cores (~0.35 each)
    # without measuring the host first
    cam = emulate.board_speed(load_cluster(fpl.CLUSTER), "cam-a")
    s = fpl.Settings(epochs=1, samples=64, junctions=("fc",), emulate=True, emulate_epochs=1, emulate_samples=128,
                     emulate_runs=("fpl-2trunk", "fedavg"), emulate_equal_boards=True, host_gflops=cam / 1e9)
    doc = fpl.run(s, tmp_path, echo=lambda _line: None)
    runs = doc["runtime"]
    assert set(runs) == {"fpl@fc 2 trunk boards", "fedavg"}
    for name, r in runs.items():
        assert r["emulated"] and r["equal_boards"] and 0 < r["dilation"] and len(r["test_accuracy"]) == 1, name
        measured = r["measured_tx_bytes_per_epoch"]
        expected = r.get("counted_training_bytes_per_epoch") or r["modelled_ring_bytes_per_epoch"]
        for board, want in expected.items():
            assert 1.0 < measured[board] / want < 1.5, (name, board, measured[board], want)
    feature = 4 * 32 * 64 * 4  # 4 batches of 32 features of 64 floats
    two = runs["fpl@fc 2 trunk boards"]
    assert two["trunk_boards"] == ["trunk", "trunk-2"]
    # trunk: the three branches' gradients back and the joined features on to trunk-2, which sends their gradient
    assert two["counted_training_bytes_per_epoch"] == {**{s: feature for s in fpl.SOURCES}, "trunk": 4 * feature,
                                                       "trunk-2": feature}
    params = (16 * 9 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)
    assert runs["fedavg"]["modelled_ring_bytes_per_epoch"]["cam-a"] == 2 * 2 / 3 * params * 4  # one round
    lines, _ = fpl.report(doc, tmp_path)
    text = "\n".join(lines)
    assert "measured-in-emulation" in text and "modelled (ring)" in text and "counted" in text
    assert "every board at cam-a's speed" in text
