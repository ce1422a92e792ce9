"""The web API's pure parts: the map built from store rows, the history series, parameters."""
from __future__ import annotations

import pytest

from connstats.probe.contract import ConfigError
from connstats.sink.history import OVERFLOW, HistoryQuery
from connstats.sink.web.queries import build_map, build_series, history_query, live_filter


def row(ifname, container, direction, src, dst, nbytes, proto="udp", host="h1", sport=1000, dport=53):
    return {"host": host, "ifname": ifname, "container_name": container, "direction": direction, "proto": proto,
            "src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": dport, "packets": nbytes // 100,
            "bytes": nbytes}


def test_a_connection_seen_on_both_containers_is_one_edge_from_the_sender():
    rows = [
        row("vethA", "a", "ingress", "10.0.0.1", "10.0.0.2", 100),  # a hairpin copy of a's own frame, first
        row("vethB", "b", "ingress", "10.0.0.1", "10.0.0.2", 4000),
        row("vethA", "a", "egress", "10.0.0.1", "10.0.0.2", 4000),
        row("vethA", "a", "egress", "10.0.0.1", "192.0.2.9", 700, proto="tcp", dport=443),
        row("vethB", "b", "ingress", "198.51.100.7", "10.0.0.2", 300, proto="tcp", sport=443, dport=5000),
        row("eth0", "", "egress", "192.0.2.1", "192.0.2.9", 50),
        row("eth0", "", "ingress", OVERFLOW, OVERFLOW, 999, proto=OVERFLOW),
    ]
    body = build_map(rows)
    assert [(n["id"], n["kind"], n["label"], n["bytes"]) for n in body["nodes"]] == [
        ("container:h1/a", "container", "a", 4700), ("container:h1/b", "container", "b", 4300),
        ("device:h1/eth0", "device", "eth0 (h1)", 50), ("peer:192.0.2.9", "peer", "192.0.2.9", 750),
        ("peer:198.51.100.7", "peer", "198.51.100.7", 300)]
    assert [(e["source"], e["target"], e["bytes"], e["connections"]) for e in body["edges"]] == [
        ("container:h1/a", "container:h1/b", 4000, 1), ("container:h1/a", "peer:192.0.2.9", 700, 1),
        ("peer:198.51.100.7", "container:h1/b", 300, 1), ("device:h1/eth0", "peer:192.0.2.9", 50, 1)]
    assert len(body["connections"]) == 4


def test_history_series_keep_the_busiest_and_every_point():
    query = HistoryQuery(since=0, until=10**12, group_by="iface", every=10**9)
    rows = [{"time": t * 10**9, "ifname": name, "direction": "egress", "bytes": b, "packets": 1}
            for name, t, b in (("a", 1, 5), ("a", 2, 7), ("b", 1, 100), ("c", 3, 1))]
    body = build_series(rows, query, keep=2)
    assert [(s["key"], [(p["time_ms"], p["bytes"]) for p in s["points"]]) for s in body["series"]] == [
        ("b egress", [(1000, 100)]), ("a egress", [(1000, 5), (2000, 7)])]


def test_parameters():
    assert live_filter({"proto": "UDP", "port": "53", "limit": "10"}).proto == 17
    query, series = history_query({"since": "2h", "group_by": "port"})
    assert (query.every, query.group_by, series) == (30 * 10**9, "port", 8)  # 240 points
    with pytest.raises(ConfigError, match="unknown parameter 'x'; use"):
        live_filter({"x": "1"})
    with pytest.raises(ConfigError, match="proto: unknown protocol 'sctpx'"):
        live_filter({"proto": "sctpx"})
