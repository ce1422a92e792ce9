"""The alert engine on synthetic intervals: every kind, the alert states, re-sends, the cap,
the persisted baselines. Times are the intervals' own (``now_ns`` given explicitly)."""
from __future__ import annotations

import stat

from connstats.sink.alerts.baseline import BaselineFile
from connstats.sink.alerts.states import fingerprint
from tests.alert_data import SECOND, chunked, interval, overflow
from tests.fixtures.alerts import at, engine

UDP_BURST = {"name": "udp-burst", "kind": "threshold", "metric": "packets", "by": ["ifname", "dst_port"],
             "where": {"proto": "udp", "direction": "egress"}, "window": "3s", "above": 500}


def test_threshold_fires_once_with_its_labels_and_value_and_resolves():
    e = engine(UDP_BURST)
    sent = e.on_interval(interval("node-1", 0, [
        {"dport": 5353, "packets": 600}, {"dport": 5353, "sport": 40001, "packets": 100},
        {"dport": 6000, "packets": 400},  # under the threshold on another port
        {"dport": 5353, "packets": 900, "direction": "ingress"},  # not egress
        {"dport": 5353, "packets": 900, "proto": 6},  # not udp
    ]), at(0))
    labels = {"alertname": "udp-burst", "severity": "warning", "ifname": "veth-a", "dst_port": "5353"}
    assert [(m.state, m.labels, m.value, m.host, m.threshold) for m in sent] == [
        ("firing", labels, 700, "node-1", 500)]
    first = sent[0]
    assert first.fingerprint == fingerprint("udp-burst", {"ifname": "veth-a", "dst_port": "5353"})
    assert (first.started_at, first.ended_at, first.sent_at) == (at(0), 0, at(0))
    assert first.summary == "ifname=veth-a dst_port=5353: 700 packets in 3s, above 500"
    assert e.on_interval(interval("node-1", 1, []), at(1)) == []  # still in the window: no re-send yet
    assert [m.value for m in e.firing(at(1))] == [700]
    resolved = e.tick(at(3))  # interval 0 left the 3 s window
    assert [(m.state, m.value, m.started_at, m.ended_at) for m in resolved] == [
        ("resolved", 700, at(0), at(3))]  # the value it last had in alert
    assert e.firing(at(3)) == [] and e.tick(at(4)) == []


WEB = {"pod": "shop/web-1", "workload": "web", "runtime": "containerd"}
DB = {"pod": "shop/db-0", "workload": "db", "runtime": "containerd"}
WHO_ROWS = [  # through the wire: the process columns travel only because some record has one
    {"ifname": "veth-a", **WEB, "process": "nginx", "pid": 42, "peer_process": "curl", "peer_pid": 7, "packets": 20},
    {"ifname": "veth-a", **WEB, "process": "nginx", "pid": 42, "peer_process": "curl", "peer_pid": 7, "packets": 5,
     "sport": 40001},
    {"ifname": "veth-a", **WEB, "process": "nginx", "pid": 43, "packets": 3, "sport": 40002},
    {"ifname": "veth-b", **DB, "process": "postgres", "pid": 9, "packets": 5},
    {"ifname": "veth-c", "process": "sshd", "pid": 1, "packets": 100},  # the host: no pod, no runtime
]


def test_pods_workloads_runtimes_and_processes_are_by_keys():
    e = engine({"name": "busy-program", "kind": "threshold", "metric": "bytes", "window": "1s", "above": 1000,
                "by": ["pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid"],
                "where": {"runtime": "containerd"}})
    sent = e.on_interval(interval("node-1", 0, WHO_ROWS), at(0))
    assert [(m.labels, m.value) for m in sent] == [(
        {"alertname": "busy-program", "severity": "warning", "pod": "shop/web-1", "workload": "web",
         "runtime": "containerd", "process": "nginx", "pid": "42", "peer_process": "curl", "peer_pid": "7"}, 2500)]


def test_pods_workloads_runtimes_and_processes_are_where_keys():
    e = engine({"name": "db-traffic", "kind": "threshold", "metric": "packets", "window": "1s", "above": 4,
                "by": ["ifname"], "where": {"pod": "shop/db-0", "workload": "db", "runtime": "containerd",
                                            "process": "postgres", "pid": 9, "peer_process": "", "peer_pid": 0}})
    assert [(m.labels["ifname"], m.value) for m in e.on_interval(interval("node-1", 0, WHO_ROWS), at(0))] == [
        ("veth-b", 5)]
    e = engine({"name": "nginx-42-without-peer", "kind": "threshold", "metric": "packets", "window": "1s",
                "above": 0, "by": ["process", "pid"], "where": {"pod": "shop/web-1", "peer_pid": 0}})
    assert [(m.labels, m.value) for m in e.on_interval(interval("node-1", 0, WHO_ROWS), at(0))] == [
        ({"alertname": "nginx-42-without-peer", "severity": "warning", "process": "nginx", "pid": "43"}, 3)]
    e = engine({"name": "host-programs", "kind": "threshold", "metric": "packets", "window": "1s", "above": 0,
                "by": ["process"], "where": {"pod": ""}})
    assert [(m.labels["process"], m.value) for m in e.on_interval(interval("node-1", 0, WHO_ROWS), at(0))] == [
        ("sshd", 100)]


def test_for_delays_firing_and_a_short_blip_never_fires():
    e = engine(UDP_BURST | {"for": "2s", "window": "1s"})
    assert e.on_interval(interval("node-1", 0, [{"packets": 600}]), at(0)) == []
    assert e.on_interval(interval("node-1", 1, []), at(1)) == []  # gone before 2 s: forgotten
    for seq in (2, 3):
        assert e.on_interval(interval("node-1", seq, [{"packets": 600}]), at(seq)) == []
    fired = e.on_interval(interval("node-1", 4, [{"packets": 700}]), at(4))
    assert [(m.state, m.value, m.started_at) for m in fired] == [("firing", 700, at(4))]


def test_firing_alerts_are_re_sent_at_most_once_per_repeat():
    e = engine(UDP_BURST | {"repeat": "2s", "window": "1s"})
    states = [[m.state for m in e.on_interval(interval("node-1", s, [{"packets": 600}]), at(s))]
              for s in range(6)]
    assert states == [["firing"], [], ["firing"], [], ["firing"], []]


def test_below_fires_for_a_group_that_went_quiet():
    e = engine({"name": "too-quiet", "kind": "threshold", "metric": "bytes", "by": ["dst_port"],
                "window": "2s", "below": 1000})
    assert e.on_interval(interval("node-1", 0, [{"packets": 20, "dport": 80}]), at(0)) == []
    assert e.on_interval(interval("node-1", 1, []), at(1)) == []
    quiet = e.on_interval(interval("node-1", 2, []), at(2))
    assert [(m.labels["dst_port"], m.value) for m in quiet] == [("80", 0)]


def test_a_storm_is_one_summary_alert_then_single_alerts_again():
    e = engine({"name": "per-peer", "kind": "threshold", "metric": "packets", "by": ["dst_ip"],
                "window": "1s", "above": 10, "cap": 3})
    many = [{"dst": f"10.1.0.{i}", "packets": 50} for i in range(1, 9)]
    storm = e.on_interval(interval("node-1", 0, many), at(0))
    assert [(m.state, m.labels, m.value, m.threshold) for m in storm] == [
        ("firing", {"alertname": "per-peer", "severity": "warning", "storm": "true"}, 8, 3)]
    assert storm[0].summary.startswith("8 alerts of rule per-peer at once (cap 3), e.g. dst_ip=10.1.0.1: 50 packets")
    calm = e.on_interval(interval("node-1", 1, many[:2]), at(1))
    assert sorted((m.state, m.labels.get("dst_ip", "storm")) for m in calm) == [
        ("firing", "10.1.0.1"), ("firing", "10.1.0.2"), ("resolved", "storm")]


def test_cross_host_groups_are_sent_as_the_engine_and_one_host_groups_as_that_host():
    e = engine(UDP_BURST | {"by": ["dst_port"]})
    e.on_interval(interval("node-1", 0, [{"packets": 300, "dport": 1}, {"packets": 600, "dport": 2}]), at(0))
    sent = e.on_interval(interval("node-2", 0, [{"packets": 300, "dport": 1}]), at(0))
    assert sorted((m.labels["dst_port"], m.value, m.host) for m in sent) == [
        ("1", 600, "engine-1")]
    assert [(m.labels["dst_port"], m.host) for m in e.firing(at(0))] == [("2", "node-1"), ("1", "engine-1")]


def test_chunks_of_one_interval_count_as_one():
    rows = [{"sport": 30000 + i, "packets": 10} for i in range(100)]
    whole, split = engine(UDP_BURST), engine(UDP_BURST)
    a = whole.on_interval(interval("node-1", 0, rows), at(0))
    b = split.on_interval(chunked("node-1", 0, rows, 4), at(0))
    assert [m.value for m in a] == [m.value for m in b] == [1000]


def test_overflow_counts_from_the_envelope():
    e = engine({"name": "map-full", "kind": "overflow", "by": ["host", "ifname"], "window": "2s"})
    assert e.on_interval(interval("node-1", 0, [{}]), at(0)) == []
    sent = e.on_interval(interval("node-1", 1, [{}], overflow=[overflow("veth-b", 37)]), at(1))
    assert [(m.labels, m.value, m.host) for m in sent] == [
        ({"alertname": "map-full", "severity": "warning", "host": "node-1", "ifname": "veth-b"}, 37, "node-1")]
    split = chunked("node-1", 2, [{"sport": i} for i in range(10)], 3, overflow=[overflow("veth-b", 5)])
    assert e.on_interval(split, at(2)) == []
    assert [m.value for m in e.firing(at(2))] == [42]
    assert [m.state for m in e.tick(at(4))] == ["resolved"]


def test_spike_over_its_own_baseline():
    e = engine({"name": "spike", "kind": "spike", "metric": "packets", "by": ["dst_port"], "window": "1s",
                "factor": 5, "baseline": "10s", "learn": "3s", "min": 10})
    for seq in range(6):
        assert e.on_interval(interval("node-1", seq, [{"packets": 20}]), at(seq)) == []
    sent = e.on_interval(interval("node-1", 6, [{"packets": 500}]), at(6))
    assert [(m.labels["dst_port"], m.value, m.threshold) for m in sent] == [("5353", 500, 5)]
    assert [m.state for m in e.on_interval(interval("node-1", 7, [{"packets": 20}]), at(7))] == ["resolved"]


NEW_PORT = {"name": "new-port", "kind": "new_port", "by": ["ifname"], "where": {"direction": "egress"},
            "learn": "3s", "window": "2s"}


def test_new_port_after_learning_and_the_baseline_survives_a_restart(tmp_path):
    file = BaselineFile(tmp_path / "alerts-baseline.json")
    e = engine(NEW_PORT, baseline=file)
    for seq, port in enumerate((80, 443, 53)):  # learning: 3 s
        assert e.on_interval(interval("node-1", seq, [{"dport": port}]), at(seq)) == []
    sent = e.on_interval(interval("node-1", 3, [{"dport": 8080}, {"dport": 80}]), at(3))
    assert [(m.labels, m.value, m.host) for m in sent] == [
        ({"alertname": "new-port", "severity": "warning", "ifname": "veth-a", "dst_port": "8080"}, 1, "node-1")]
    assert e.on_interval(interval("node-1", 4, [{"dport": 8080}]), at(4)) == []  # once only
    e.save(force=True)
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600

    again = engine(NEW_PORT, baseline=file)  # a restart: nothing learned again, nothing forgotten
    assert again.on_interval(interval("node-1", 10, [{"dport": p} for p in (80, 443, 53, 8080)]), at(10)) == []
    sent = again.on_interval(interval("node-1", 11, [{"dport": 9090}]), at(11))
    assert [m.labels["dst_port"] for m in sent] == ["9090"]
    assert [m.state for m in again.tick(at(14))] == ["resolved"]


def test_new_peer_per_container():
    e = engine({"name": "new-peer", "kind": "new_peer", "by": ["container_name"], "learn": "1s"})
    e.on_interval(interval("node-1", 0, [{"dst": "10.9.0.1", "container": "web"}]), at(0))
    sent = e.on_interval(interval("node-1", 1, [{"dst": "10.9.0.1", "container": "web"},
                                                {"dst": "10.9.0.1", "container": "db", "ifname": "veth-b"},
                                                {"dst": "10.9.0.2", "container": "web"}]), at(1))
    assert sorted((m.labels["container_name"], m.labels["dst_ip"]) for m in sent) == [
        ("db", "10.9.0.1"), ("web", "10.9.0.2")]


def test_silent_host_fires_on_the_timer_and_resolves_when_it_publishes_again(tmp_path):
    rule = {"name": "silent", "kind": "silent_host", "for": "3s"}
    e = engine(rule, baseline=BaselineFile(tmp_path / "b.json"))
    e.on_interval(interval("node-1", 0, []), at(0))
    e.on_interval(interval("node-2", 0, []), at(0))
    assert e.tick(at(1)) == []
    assert e.on_interval(interval("node-2", 2, []), at(2)) == []
    fired = e.tick(at(2) + SECOND)
    assert [(m.state, m.labels, m.host, m.value) for m in fired] == [
        ("firing", {"alertname": "silent", "severity": "warning", "host": "node-1"}, "node-1", 3.1)]
    assert fired[0].summary == "host node-1 published nothing for 3s"
    back = e.on_interval(interval("node-1", 5, []), at(5))  # node-1 is back; node-2 went quiet meanwhile
    assert [(m.state, m.host) for m in back] == [("resolved", "node-1"), ("firing", "node-2")]


def test_a_failing_kind_is_counted_and_the_other_rules_go_on(monkeypatch):
    e = engine(UDP_BURST, NEW_PORT)

    def broken(table):
        raise RuntimeError("boom")

    monkeypatch.setattr(e.kinds[1], "observe", broken)
    sent = e.on_interval(interval("node-1", 0, [{"packets": 600}]), at(0))
    assert [m.rule for m in sent] == ["udp-burst"] and e.stats.rule_errors == 1
