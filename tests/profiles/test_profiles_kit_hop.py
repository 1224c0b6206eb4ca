"""The profiling kit's hop figures (codegen/kit_runner.py): per frame and per byte, timed through the board
runtime's wire format, predict the time of a frame of another size (a measurement, taken beside them)."""

from __future__ import annotations

from edgeplan.codegen import kit_runner
from edgeplan.runtime import wire


def test_kit_hop_per_frame_and_per_byte_predict_a_larger_frame():
    small, per_byte, frames, large = kit_runner.hop_figures(wire, 64, 1 << 16, 0.1)
    assert large == kit_runner.HOP_LARGE and frames >= 20 and per_byte > 0
    big = 4 << 20
    measured, _ = kit_runner._hop_s(wire, big, 0.1)
    # one frame pays both ends of each byte: 2 x the per-byte figure of a stage call's byte in or out
    predicted = small + 2 * per_byte * (big - 64)
    # 10th percentiles on a shared 2-core machine: within 2x (seen 0.9-1.1x here)
    assert 0.5 < predicted / measured < 2.0, (predicted, measured, small, per_byte)
