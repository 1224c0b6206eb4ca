"""(netns tier) FPL trained through plan --pin / compile / train --data on the emulated fpl-five boards: the bytes
each board's network interface sent match the feature and gradient tensors counted in-process, plus wire overhead."""

from __future__ import annotations

from benchmarks.studies import fpl
from tests.tiers import netns_tier


@netns_tier
def test_emulated_boards_send_the_counted_features(tmp_path):
    s = fpl.Settings(epochs=1, samples=64, junctions=("fc",), emulate=True, emulate_epochs=1, emulate_samples=128)
    em = fpl.run(s, tmp_path, echo=lambda _line: None)["emulated"]
    assert em["epochs"] == 1 and 0 < em["dilation"]
    measured, counted = em["measured_tx_bytes_per_epoch"], em["counted_training_bytes_per_epoch"]
    for src in fpl.SOURCES:  # 4 batches of 32 features of 64 floats out of each source board
        assert counted[src] == 4 * 32 * 64 * 4
        assert 1.0 < measured[src] / counted[src] < 1.5, (src, measured[src], counted[src])
    trunk = em["trunk_boards"][0]
    assert 1.0 < measured[trunk] / counted["trunk"] < 1.5, (measured, counted)
