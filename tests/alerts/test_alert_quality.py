"""The quality kinds (issue 20) on synthetic intervals through the wire: ``rtt`` (max and the
packet-weighted average), ``retransmit_ratio`` and ``drops`` (records' and the envelope's)."""
from __future__ import annotations

from tests.alert_data import chunked, dropped, interval
from tests.fixtures.alerts import at, engine


def fired(sent) -> list[tuple]:
    return [(m.state, {k: v for k, v in m.labels.items() if k not in ("alertname", "severity")}, m.value)
            for m in sent]


SLOW = {"name": "slow", "kind": "rtt", "by": ["ifname"], "window": "2s", "above": 100}
TCP = {"proto": 6, "dport": 443}


def test_rtt_max_is_the_greatest_in_the_window_and_records_without_one_do_not_count():
    e = engine(SLOW)
    assert e.on_interval(interval("node-1", 0, [
        {"ifname": "veth-a", **TCP, "rtt_min_us": 900, "rtt_avg_us": 40_000, "rtt_max_us": 90_000},
        {"ifname": "veth-b", **TCP, "rtt_min_us": 100, "rtt_avg_us": 200, "rtt_max_us": 300},
        {"ifname": "veth-c", "packets": 9}]), at(0)) == []  # 90 ms: not above 100
    sent = e.on_interval(interval("node-1", 1, [
        {"ifname": "veth-a", **TCP, "rtt_min_us": 900, "rtt_avg_us": 60_000, "rtt_max_us": 100_001},
        {"ifname": "veth-a", **TCP, "sport": 40001, "rtt_min_us": 10, "rtt_avg_us": 20, "rtt_max_us": 30}]), at(1))
    assert fired(sent) == [("firing", {"ifname": "veth-a"}, 100.001)]
    assert sent[0].summary == "ifname=veth-a: RTT max 100.0 ms in 2s, above 100 ms"
    assert fired(e.tick(at(3))) == [("resolved", {"ifname": "veth-a"}, 100.001)]  # interval 1 left the window


def test_rtt_avg_weights_each_record_by_its_packets():
    e = engine({**SLOW, "statistic": "avg", "above": 150})
    sent = e.on_interval(interval("node-1", 0, [
        {"ifname": "veth-a", **TCP, "packets": 10, "rtt_avg_us": 100_000, "rtt_max_us": 400_000},
        {"ifname": "veth-a", **TCP, "sport": 40001, "packets": 30, "rtt_avg_us": 200_000, "rtt_max_us": 210_000},
        {"ifname": "veth-a", "sport": 40002, "packets": 1000},  # UDP, no RTT: not in the average
        {"ifname": "veth-b", **TCP, "packets": 10, "rtt_avg_us": 140_000, "rtt_max_us": 900_000}]), at(0))
    # (10 * 100 ms + 30 * 200 ms) / 40 = 175 ms; veth-b's 140 ms average is under 150 whatever its max
    assert fired(sent) == [("firing", {"ifname": "veth-a"}, 175.0)]
    assert sent[0].summary == "ifname=veth-a: RTT avg 175.0 ms in 2s, above 150 ms"


def test_retransmit_ratio_is_retransmits_over_packets_of_the_window_from_min_packets_on():
    e = engine({"name": "lossy", "kind": "retransmit_ratio", "by": ["ifname"], "where": {"direction": "egress"},
                "window": "2s", "above": 0.02})
    assert e.on_interval(interval("node-1", 0, [
        {"ifname": "veth-a", **TCP, "packets": 600, "retransmits": 12},  # 0.02: not above
        {"ifname": "veth-b", **TCP, "packets": 50, "retransmits": 10},  # 0.2, but 50 packets < 100
        {"ifname": "veth-c", **TCP, "packets": 2000, "retransmits": 20},
        {"ifname": "veth-c", **TCP, "direction": "ingress", "packets": 9, "retransmits": 900}]), at(0)) == []
    sent = e.on_interval(interval("node-1", 1, [
        {"ifname": "veth-a", **TCP, "packets": 400, "retransmits": 19},
        {"ifname": "veth-b", **TCP, "packets": 50, "retransmits": 0}]), at(1))
    # veth-a: 31 / 1000; veth-b: 10 / 100 packets, now enough of them
    assert fired(sent) == [("firing", {"ifname": "veth-a"}, 0.031), ("firing", {"ifname": "veth-b"}, 0.1)]
    assert sent[0].summary == "ifname=veth-a: 31 retransmits in 1000 packets (3.10%) in 2s, above 0.02"


DROPS = {"name": "dropped", "kind": "drops", "by": ["ifname", "drop_reason"], "window": "2s", "above": 10}


def test_drops_count_the_records_and_the_drops_of_no_record_by_reason():
    e = engine(DROPS)
    sent = e.on_interval(chunked("node-1", 0, [
        {"ifname": "veth-a", "sport": 40000 + i, "drop_packets": 2, "drop_bytes": 200, "drop_reason": "NETFILTER_DROP"}
        for i in range(5)] + [
        {"ifname": "veth-b", "drop_packets": 30, "drop_bytes": 3000, "drop_reason": "SOCKET_RCVBUFF"}], 3,
        drops=[dropped("veth-a", 1, "NETFILTER_DROP"), dropped("veth-a", 11), dropped("veth-b", 4, "SOCKET_RCVBUFF")]),
        at(0))
    # veth-a NETFILTER_DROP: 5 x 2 records + 1 of no record = 11; its 11 NO_SOCKET are of no record (once,
    # from chunk 0); veth-b: 30 + 4
    assert sorted(fired(sent), key=str) == sorted([
        ("firing", {"ifname": "veth-a", "drop_reason": "NETFILTER_DROP"}, 11),
        ("firing", {"ifname": "veth-a", "drop_reason": "NO_SOCKET"}, 11),
        ("firing", {"ifname": "veth-b", "drop_reason": "SOCKET_RCVBUFF"}, 34)], key=str)
    summaries = sorted(m.summary for m in sent)
    assert summaries[0] == "ifname=veth-a drop_reason=NETFILTER_DROP: 11 packets dropped in 2s, above 10"


def test_drops_where_a_reason_and_in_bytes_and_a_where_the_envelope_cannot_answer():
    rows = [{"ifname": "veth-a", "proto": 6, "drop_packets": 3, "drop_bytes": 4500, "drop_reason": "NETFILTER_DROP"},
            {"ifname": "veth-a", "sport": 40001, "drop_packets": 1, "drop_bytes": 100, "drop_reason": "NO_SOCKET"}]
    drops = [dropped("veth-a", 2, "NETFILTER_DROP"), dropped("veth-b", 50)]
    e = engine({**DROPS, "by": ["ifname"], "metric": "bytes", "where": {"drop_reason": "NETFILTER_DROP"},
                "above": 0})
    assert fired(e.on_interval(interval("node-1", 0, rows, drops=drops), at(0))) == [
        ("firing", {"ifname": "veth-a"}, 4500 + 120)]
    e = engine({**DROPS, "by": ["drop_reason"], "where": {"proto": "tcp"}, "above": 0})  # no proto for drops of no record
    assert fired(e.on_interval(interval("node-1", 0, rows, drops=drops), at(0))) == [
        ("firing", {"drop_reason": "NETFILTER_DROP"}, 3)]
    e = engine({**DROPS, "by": ["container_name"], "above": 0})  # drops of no record have no container: ""
    assert fired(e.on_interval(interval("node-1", 0, rows, drops=drops), at(0))) == [
        ("firing", {"container_name": ""}, 56)]
