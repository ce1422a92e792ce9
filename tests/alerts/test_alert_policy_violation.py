"""The ``policy_violation`` alert kind on synthetic intervals through the wire format: it sees
only records whose verdict is ``deny`` (allowed and ungoverned traffic never counts)."""
from __future__ import annotations

from dataclasses import replace

from connstats.probe.contract import FlowBatch, decode_message, encode_message
from connstats.sink.alerts.kinds import KINDS
from tests.alert_data import envelope, record
from tests.fixtures.alerts import at, engine

RULE = {"name": "segmentation", "kind": "policy_violation", "by": ["container_name", "dst_port"], "window": "2s"}


def judged(seq: int, rows: list[tuple[dict, str]]) -> list[FlowBatch]:
    env = envelope("node-1", seq)
    batch = FlowBatch.from_records(env, [replace(record(env, **row), verdict=verdict) for row, verdict in rows])
    return [decode_message(encode_message(batch))]


def test_denied_packets_fire_per_group_and_allowed_or_ungoverned_ones_never_do():
    assert KINDS["policy_violation"].name == "policy_violation"
    e = engine(RULE)
    assert e.on_interval(judged(0, [({"container": "web", "dport": 5432, "packets": 900}, "allow"),
                                    ({"container": "web", "dport": 22, "packets": 9}, "")]), at(0)) == []
    sent = e.on_interval(judged(1, [({"container": "web", "dport": 22, "packets": 3}, "deny"),
                                    ({"container": "web", "dport": 22, "sport": 40001, "packets": 2}, "deny"),
                                    ({"ifname": "veth-b", "container": "db", "dport": 5432, "packets": 50},
                                     "allow")]), at(1))
    assert [(m.state, m.labels, m.value, m.threshold) for m in sent] == [
        ("firing", {"alertname": "segmentation", "severity": "warning", "container_name": "web", "dst_port": "22"},
         5, 0)]
    assert sent[0].summary == "container_name=web dst_port=22: 5 packets in 2s, above 0"
    assert [m.state for m in e.tick(at(3))] == ["resolved"]


def test_defaults_and_an_extra_condition():
    e = engine({"name": "v", "kind": "policy_violation", "where": {"direction": "ingress"}, "metric": "bytes"})
    sent = e.on_interval(judged(0, [({"dport": 22, "packets": 3}, "deny"),  # egress: not this rule's
                                    ({"dport": 23, "packets": 2, "direction": "ingress"}, "deny")]), at(0))
    assert [(sorted(m.labels), m.value) for m in sent] == [
        (["alertname", "dst_ip", "dst_port", "host", "ifname", "proto", "severity", "src_ip"], 200)]
