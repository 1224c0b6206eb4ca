"""Receive-side link figures (wire.Reader.timed, issue 12) in /metrics and `edgeplan top`: a worker's rx_links and
the head's own, named per Prometheus conventions (counters in bytes and seconds, receiver as board/stage, sender
as peer), and top's throughput as it arrived between two polls."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("prometheus_client", reason="/metrics is written with prometheus_client")


def _status():
    from tests.runtime.test_runtime_metrics import sample_status

    st = copy.deepcopy(sample_status())
    st["workers"]["pi-b/stage1"]["monitor"] = copy.deepcopy(st["workers"]["pi-a/stage0"]["monitor"])
    st["workers"]["pi-b/stage1"]["monitor"]["rx_links"] = {
        "pi-a/stage0": {"rx_timed_bytes_total": 4e6, "rx_timed_seconds_total": 0.5, "rx_whole_bytes_total": 1e6}}
    st["rx_links"] = {"pi-b/stage1": {"rx_timed_bytes_total": 2e6, "rx_timed_seconds_total": 1.0,
                                      "rx_whole_bytes_total": 0}}
    return st


def test_metrics_name_the_receiver_and_the_sender():
    from edgeplan.runtime.metrics import exposition

    text = exposition(_status()).decode()
    assert 'edgeplan_link_rx_timed_bytes_total{board="pi-b",peer="pi-a/stage0",stage="1"} 4e+06' in text \
        or 'edgeplan_link_rx_timed_bytes_total{board="pi-b",stage="1",peer="pi-a/stage0"} 4e+06' in text, text
    assert "# TYPE edgeplan_link_rx_timed_seconds_total counter" in text
    assert "# TYPE edgeplan_link_rx_whole_bytes_total counter" in text
    head = [ln for ln in text.splitlines() if ln.startswith("edgeplan_link_rx_timed_seconds_total") and
            'board="head"' in ln]
    assert len(head) == 1 and 'peer="pi-b/stage1"' in head[0] and head[0].endswith(" 1.0"), head


def test_top_lists_them_apart_from_the_senders_figures():
    from rich.console import Console

    from edgeplan import top
    from edgeplan.runtime.metrics import exposition

    st = _status()
    first = top.parse(exposition(st).decode(), at=10.0)
    assert first.rx_links[("pi-b", "1", "pi-a/stage0")] == {
        "rx_timed_bytes": 4e6, "rx_timed_seconds": 0.5, "rx_whole_bytes": 1e6}
    assert ("pi-b", "1", "pi-a/stage0") not in first.links  # not a link from the receiver to its sender
    ln = st["workers"]["pi-b/stage1"]["monitor"]["rx_links"]["pi-a/stage0"]
    ln["rx_timed_bytes_total"] += 1e6
    ln["rx_timed_seconds_total"] += 0.8  # 10 Mbit/s since the first poll (the mean so far: 64 -> 38 Mbit/s)
    second = top.parse(exposition(st).decode(), at=12.0)
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(top.render(second, first))
    out = console.export_text()
    rx = out[out.index("links (receive side"):]  # the receive-side table, after the senders' one
    cells = [[c.strip() for c in x.split("\u2502")[1:-1]] for x in rx.splitlines() if x.count("\u2502") == 6]
    assert ["pi-a/stage0", "pi-b/stage1", "10.0", "5.0", "1.0"] in cells, cells
    assert ["pi-b/stage1", "head", "-", "2.0", "0.0"] in cells, cells  # nothing new since the last poll
