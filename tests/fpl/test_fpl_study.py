"""The FPL study on a tiny setting: every method runs, and its counted bytes match the tensors' sizes."""

from __future__ import annotations

from benchmarks.studies import fpl


def test_study_counts_what_each_method_sends(tmp_path):
    s = fpl.Settings(epochs=1, batch=32, samples=64, junctions=("fc",))
    doc = fpl.run(s, tmp_path, echo=lambda line: None)
    lines, paths = fpl.report(doc, tmp_path)
    assert {p.suffix for p in paths.values()} == {".json", ".txt", ".png", ".svg"}
    m = doc["methods"]
    assert set(m) == {"fpl@fc", "split@fc", "fedavg", "dsgd"}
    iters, params = 64 // 32, (16 * 9 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)
    feature = 32 * 64 * 4  # a batch of fc1's 64 activations, float32
    # FPL and split learning: each source sends its features, the trunk the gradients back
    for name in ("fpl@fc", "split@fc"):
        sent = m[name][0]["sent"]
        assert sent["cam-a"] == iters * feature and sent["trunk"] == 3 * iters * feature, (name, sent)
    # distributed SGD: every step each board's gradient up and the weights down
    assert m["dsgd"][0]["sent"]["cam-b"] == iters * params * 4
    assert m["dsgd"][0]["sent"]["trunk"] == 3 * iters * params * 4
    # federated averaging: one round per epoch, the model down and up once per board
    assert m["fedavg"][0]["sent"] == {"trunk": 3 * params * 4, "cam-a": params * 4, "cam-b": params * 4,
                                      "cam-c": params * 4}
    assert all(r[0]["busy"]["trunk"] > 0 and r[0]["energy_j"] > 0 for r in m.values())
    assert "fpl@fc junction weights" in "\n".join(lines)
