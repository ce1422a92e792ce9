"""The web API's pure parts: the map built from store rows, the history series, parameters."""
from __future__ import annotations

from dataclasses import replace

import pytest

from connstats.probe.contract import ConfigError
from connstats.sink.history import OVERFLOW, HistoryQuery
from connstats.sink.web.graph import build_map
from connstats.sink.web.queries import Fit, build_series, fit_to_data, history_query, live_filter


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
    query, series, fit = history_query({"since": "2h", "group_by": "port"})
    assert (query.every, query.group_by, series, fit) == (30 * 10**9, "port", 8, None)  # 240 points
    with pytest.raises(ConfigError, match="unknown parameter 'x'; use"):
        live_filter({"x": "1"})
    with pytest.raises(ConfigError, match="proto: unknown protocol 'sctpx'"):
        live_filter({"proto": "sctpx"})


HOST_ENDS = ["10.201.0.1", "10.201.0.5", "192.0.2.1", "127.0.0.1", "172.17.0.1"]  # this host's (netlink's)


def test_this_host_s_addresses_are_one_node_named_for_the_host():
    """Two namespaces, each talking to the host end of its own routed veth: one host node,
    not one outside peer per veth; an address routed through the host stays a peer, and so do
    the addresses of a host the page knows nothing of."""
    rows = [
        row("vethA", "nsa", "egress", "10.201.0.2", "10.201.0.1", 1000),
        row("vethA", "nsa", "ingress", "10.201.0.1", "10.201.0.2", 300, sport=53, dport=1000),  # the host answers
        row("vethB", "nsb", "egress", "10.201.0.6", "10.201.0.5", 2000),
        row("vethB", "nsb", "egress", "10.201.0.6", "198.51.100.7", 70),  # routed through the host: outside
        row("vethC", "nsc", "egress", "10.201.0.10", "10.201.0.9", 5, host="h2"),  # h2's addresses: unknown
    ]
    body = build_map(rows, {"h1": HOST_ENDS})
    assert [(n["id"], n["kind"], n["label"], n["bytes"]) for n in body["nodes"]] == [
        ("container:h1/nsa", "container", "nsa", 1300), ("container:h1/nsb", "container", "nsb", 2070),
        ("container:h2/nsc", "container", "nsc", 5), ("host:h1", "host", "h1", 3300),
        ("peer:10.201.0.9", "peer", "10.201.0.9", 5), ("peer:198.51.100.7", "peer", "198.51.100.7", 70)]
    assert [(e["source"], e["target"], e["bytes"]) for e in body["edges"]] == [
        ("container:h1/nsb", "host:h1", 2000), ("container:h1/nsa", "host:h1", 1000),
        ("host:h1", "container:h1/nsa", 300), ("container:h1/nsb", "peer:198.51.100.7", 70),
        ("container:h2/nsc", "peer:10.201.0.9", 5)]
    assert build_map(rows)["nodes"][3:] == [  # without the host's addresses: as before, a peer per veth
        {"id": f"peer:{a}", "kind": "peer", "label": a, "namespace": "", "workload": "", "bytes": b, "packets": b // 100,
         "processes": []} for a, b in (("10.201.0.1", 1300), ("10.201.0.5", 2000), ("10.201.0.9", 5),
                                       ("198.51.100.7", 70))]


def test_the_host_through_an_attached_bridge_or_loopback_is_counted_once():
    """docker0 (the host's address on a bridge) and lo attached too: the host's own devices'
    rows are the host's, and what the host sent through the bridge is not drawn again from
    the container's ingress."""
    rows = [
        row("docker0", "", "egress", "172.17.0.1", "172.17.0.2", 400, sport=80, dport=3000),  # host -> c
        row("vethX", "c", "ingress", "172.17.0.1", "172.17.0.2", 400, sport=80, dport=3000),  # the same packets
        row("vethX", "c", "egress", "172.17.0.2", "172.17.0.1", 600, sport=3000, dport=80),  # c -> host
        row("docker0", "", "ingress", "172.17.0.2", "172.17.0.1", 600, sport=3000, dport=80),  # the same
        row("lo", "", "egress", "127.0.0.1", "127.0.0.1", 50, sport=5000, dport=6000),
        row("lo", "", "ingress", "127.0.0.1", "127.0.0.1", 50, sport=5000, dport=6000),
        row("eth0", "", "egress", "192.0.2.1", "192.0.2.9", 10),
        row("eth0", "", "ingress", "192.0.2.9", "192.0.2.1", 20, sport=53, dport=1000),
    ]
    body = build_map(rows, {"h1": HOST_ENDS})
    assert [(n["id"], n["bytes"]) for n in body["nodes"]] == [
        ("container:h1/c", 1000), ("host:h1", 1080), ("peer:192.0.2.9", 30)]
    assert [(e["source"], e["target"], e["bytes"], e["connections"]) for e in body["edges"]] == [
        ("container:h1/c", "host:h1", 600, 1), ("host:h1", "container:h1/c", 400, 1), ("host:h1", "host:h1", 50, 1),
        ("peer:192.0.2.9", "host:h1", 20, 1), ("host:h1", "peer:192.0.2.9", 10, 1)]


def test_pods_are_named_and_grouped_and_each_end_s_process_is_kept():
    rows = [
        row("vethW", "", "egress", "10.244.0.5", "10.244.0.6", 5000, proto="tcp", sport=41000, dport=8080)
        | {"pod": "shop/web-7d9f8c6b5-x2x9z", "workload": "web", "process": "curl", "pid": 812,
           "peer_process": "api-server", "peer_pid": 977},
        row("vethA", "", "ingress", "10.244.0.5", "10.244.0.6", 5000, proto="tcp", sport=41000, dport=8080)
        | {"pod": "shop/api-0", "workload": "api", "process": "api-server", "pid": 977,
           "peer_process": "curl", "peer_pid": 812},
        row("vethA", "", "ingress", "203.0.113.4", "10.244.0.6", 900, proto="tcp", sport=50000, dport=8080)
        | {"pod": "shop/api-0", "workload": "api", "process": "api-server", "pid": 977},
        row("vethD", "dns", "egress", "10.244.1.2", "198.51.100.53", 80, sport=999, dport=53)
        | {"pod": "kube-system/coredns-abc12-zz9x8", "process": "coredns", "pid": 55},
        row("vethE", "legacy", "egress", "10.88.0.2", "198.51.100.53", 10),  # no pod, no process: as before
    ]
    body = build_map(rows)
    assert [(n["id"], n["kind"], n["label"], n["namespace"], n["workload"], n["processes"]) for n in body["nodes"]] == [
        ("container:h1/legacy", "container", "legacy", "", "", []),
        ("peer:198.51.100.53", "peer", "198.51.100.53", "", "", []),
        ("peer:203.0.113.4", "peer", "203.0.113.4", "", "", []),
        ("pod:h1/kube-system/coredns-abc12-zz9x8", "pod", "coredns-abc12-zz9x8", "kube-system", "", [["coredns", 55]]),
        ("pod:h1/shop/api-0", "pod", "api-0", "shop", "api", [["api-server", 977]]),
        ("pod:h1/shop/web-7d9f8c6b5-x2x9z", "pod", "web-7d9f8c6b5-x2x9z", "shop", "web", [["curl", 812]])]
    fields = body["connection_fields"]
    assert [dict(zip(fields, c, strict=True)) for c in body["connections"]] == [
        {"source": "pod:h1/shop/web-7d9f8c6b5-x2x9z", "target": "pod:h1/shop/api-0", "proto": "tcp",
         "src_ip": "10.244.0.5", "src_port": 41000, "dst_ip": "10.244.0.6", "dst_port": 8080, "packets": 50,
         "bytes": 5000, "verdict": "", "source_process": "curl", "source_pid": 812,
         "target_process": "api-server", "target_pid": 977},
        {"source": "peer:203.0.113.4", "target": "pod:h1/shop/api-0", "proto": "tcp", "src_ip": "203.0.113.4",
         "src_port": 50000, "dst_ip": "10.244.0.6", "dst_port": 8080, "packets": 9, "bytes": 900, "verdict": "",
         "source_process": "", "source_pid": 0, "target_process": "api-server", "target_pid": 977},
        {"source": "pod:h1/kube-system/coredns-abc12-zz9x8", "target": "peer:198.51.100.53", "proto": "udp",
         "src_ip": "10.244.1.2", "src_port": 999, "dst_ip": "198.51.100.53", "dst_port": 53, "packets": 0,
         "bytes": 80, "verdict": "", "source_process": "coredns", "source_pid": 55, "target_process": "",
         "target_pid": 0},
        {"source": "container:h1/legacy", "target": "peer:198.51.100.53", "proto": "udp", "src_ip": "10.88.0.2",
         "src_port": 1000, "dst_ip": "198.51.100.53", "dst_port": 53, "packets": 0, "bytes": 10, "verdict": "",
         "source_process": "", "source_pid": 0, "target_process": "", "target_pid": 0}]


def points(seconds: list[int], nbytes: int = 100, key: str = "c1", host: str = "h1") -> list[dict]:
    return [{"time": s * SECOND, "host": host, "container_name": key, "packets": 1, "bytes": nbytes,
             "first_seen": s * SECOND + 1, "last_seen": s * SECOND + SECOND // 2} for s in seconds]


SECOND = 10**9
NOW = 1_800_000_000  # s


def test_the_default_chart_range_fits_the_data():
    query, series, fit = history_query({"fit": "1"})  # the last hour, read per second
    assert (query.every, query.until - query.since, fit) == (SECOND, 3600 * SECOND, Fit(None))
    hour = HistoryQuery(since=(NOW - 3600) * SECOND, until=NOW * SECOND, group_by="container", every=SECOND)

    # 8 s of 1-second intervals, 40 s ago: 30 s (the least) ending with the last point's bucket, 8 points of 1 s
    fitted, rows = fit_to_data(hour, points(list(range(NOW - 40, NOW - 32))), Fit())
    assert (fitted.since, fitted.until, fitted.every) == ((NOW - 62) * SECOND, (NOW - 32) * SECOND, SECOND)
    assert [r["time"] // SECOND for r in rows] == list(range(NOW - 40, NOW - 32))

    # 20 minutes of 10-second intervals: buckets of 10 s (5 s buckets would leave every other one empty)
    starts = list(range(NOW - 1500, NOW - 300, 10))
    fitted, rows = fit_to_data(hour, points(starts), Fit())
    assert ((fitted.since, fitted.until, fitted.every) ==
            ((NOW - 1500) * SECOND, (NOW - 309) * SECOND, 10 * SECOND))
    assert [(r["time"] // SECOND, r["bytes"]) for r in rows] == [(s, 100) for s in starts]

    # two series, 50 minutes: 30 s buckets hold the sums of the 1 s points
    fitted, rows = fit_to_data(hour, points(list(range(NOW - 3000, NOW - 1))) + points([NOW - 2990], 7, "c2"), Fit())
    assert (fitted.since, fitted.every) == ((NOW - 3000) // 30 * 30 * SECOND, 30 * SECOND)
    assert sum(r["bytes"] for r in rows) == 2999 * 100 + 7
    assert [(r["time"] // SECOND, r["bytes"]) for r in rows if r["container_name"] == "c2"] == [
        ((NOW - 2990) // 30 * 30, 7)]

    # the every asked for stays; no data: the asked range stays
    assert fit_to_data(hour, points([NOW - 100]), Fit(5 * SECOND))[0].every == 5 * SECOND
    assert fit_to_data(hour, [], Fit()) == (replace(hour, every=30 * SECOND), [])
    with pytest.raises(ConfigError, match="fit='yes' is not 1"):
        history_query({"fit": "yes"})


def test_history_per_pod():
    query, _, _ = history_query({"group_by": "pod"})
    rows = [{"time": 0, "pod": pod, "bytes": b, "packets": 1} for pod, b in (("shop/api-0", 5), ("", 9))]
    assert [s["key"] for s in build_series(rows, query, keep=8)["series"]] == ["(no pod)", "shop/api-0"]
