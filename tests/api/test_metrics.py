"""The self-metrics: the probe's and the sink's collectors, the telemetry endpoints,
--stream-replicas and --metrics settings. Probe units use a fake ProbePort; the sink runs
against a real nats-server and a real SQLite file."""
from __future__ import annotations

import asyncio
import http.client
import logging

import aiohttp
import nats
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connstats.cli.config import Config
from connstats.cli.options import NatsFlags
from connstats.cli.settings import ProbeFlags, probe_config, sink_config
from connstats.probe.api.http import HttpApi
from connstats.probe.api.metrics import ProbeMetrics, interval_sums, quality_sums
from connstats.probe.api.totals import ConnectionTotals
from connstats.probe.contract import (
    ConfigError,
    DropCount,
    FlowBatch,
    NatsOptions,
    OverflowCount,
    StreamSettings,
    TransportError,
    ensure_stream,
    flow_stream_config,
    flows_subject,
)
from connstats.probe.contract.flow_batch import JUDGED
from connstats.probe.publish.publisher import FlowPublisher, PublisherStats
from connstats.probe.runtime.telemetry import MetricsServer, Telemetry, parse_metrics_address
from connstats.probe.seams import PolicyReport, ProbeStatus
from connstats.sink.compose import SinkConfig, build_sink
from connstats.sink.consumer import FlowConsumer
from tests.fixtures.metrics import FakeProbe, interval, poll, record, wired
from tests.fixtures.nats import MemoryStore, sample_envelope, sample_records
from tests.fixtures.records import envelope, flow_batch, flow_record
from tests.fixtures.wait import until_async


def scrape(telemetry: Telemetry) -> dict[tuple, float]:
    """Every sample as {(name, (label pairs, sorted)): value}."""
    text = telemetry.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_making_the_self_metrics_subscribes_them_to_nothing():
    probe, telemetry = FakeProbe(), Telemetry(process_metrics=False)
    metrics = ProbeMetrics(probe)
    assert (probe.listeners, telemetry.checks, scrape(telemetry)) == ([], {}, {})
    probe.publish(interval(1, [record(3, "veth0", "egress", 5, 500, 1)]))
    assert metrics.intervals == 0
    wired(probe, telemetry)
    assert len(probe.listeners) == 1 and set(telemetry.checks) == {"probe"}


# -- the probe ---------------------------------------------------------------------------------


def test_interval_sums_group_records_and_overflow_by_device_and_direction():
    batch = interval(1, [record(3, "veth0", "egress", 5, 500, 1), record(3, "veth0", "ingress", 2, 90, 2),
                         record(4, "eth0", "egress", 7, 700, 3), record(3, "veth0", "egress", 1, 60, 4),
                         record(9, "", "ingress", 1, 42, 5)],
                     overflow=[OverflowCount(3, "veth0", "egress", 11, 1100), OverflowCount(0, "", "ingress", 2, 84)])
    records, overflow, verdicts, dropped = interval_sums(batch)
    assert records == {("veth0", "egress"): [6, 560], ("veth0", "ingress"): [2, 90], ("eth0", "egress"): [7, 700],
                       ("ifindex-9", "ingress"): [1, 42]}
    assert overflow == {("veth0", "egress"): [11, 1100], ("unattributed", "ingress"): [2, 84]}
    assert (verdicts, dropped) == ({}, {})  # no record has a verdict
    assert interval_sums(interval(2, [])) == ({}, {}, {}, {})
    # devices that do not name every record's ifindex: grouped by sorting instead, same sums
    unnamed, *_ = interval_sums(FlowBatch(batch.envelope, batch.columns, batch.devices[:1]))
    assert unnamed == {("veth0", "egress"): [6, 560], ("veth0", "ingress"): [2, 90],
                       ("ifindex-4", "egress"): [7, 700], ("ifindex-9", "ingress"): [1, 42]}


def judged(batch: FlowBatch, *modes: int) -> FlowBatch:
    """``batch`` as the kernel gives it: with each record's verdict code and the mode it was judged under."""
    judgement = np.zeros(len(batch), JUDGED)
    judgement["verdict"] = [("", "allow", "deny").index(v) for v in batch.column("verdict")]
    judgement["mode"] = modes
    return FlowBatch(batch.envelope, batch.columns, batch.devices, judgement)


def test_interval_sums_group_governed_records_by_verdict_and_deny_under_protect_as_dropped():
    batch = judged(interval(1, [
        record(3, "veth0", "egress", 5, 500, 1, "allow"), record(3, "veth0", "egress", 7, 700, 2, "deny"),
        record(3, "veth0", "egress", 2, 200, 3, "deny"), record(3, "veth0", "ingress", 4, 240, 4, "deny"),
        record(4, "eth0", "egress", 9, 900, 5, ""), record(3, "veth0", "ingress", 1, 60, 6, "allow"),
        record(5, "veth1", "ingress", 3, 330, 7, "deny")],
        overflow=[OverflowCount(3, "veth0", "egress", 11, 1100)]), 2, 2, 1, 2, 0, 2, 1)
    sums = interval_sums(batch, "off")
    assert sums.verdicts == {("veth0", "egress", "allow"): [5, 500], ("veth0", "egress", "deny"): [9, 900],
                             ("veth0", "ingress", "deny"): [4, 240], ("veth0", "ingress", "allow"): [1, 60],
                             ("veth1", "ingress", "deny"): [3, 330]}  # eth0 is not governed; overflow has no verdict
    # deny judged under protect only: the 2 packets judged under monitor (a switch) passed
    assert sums.dropped == {("veth0", "egress"): [7, 700], ("veth0", "ingress"): [4, 240]}
    assert sums.records == {("veth0", "egress"): [14, 1400], ("veth0", "ingress"): [5, 300],
                            ("eth0", "egress"): [9, 900], ("veth1", "ingress"): [3, 330]}
    # without the kernel's judgement (a batch built from records): its text and the mode at publish time
    plain = FlowBatch(batch.envelope, batch.columns, batch.devices)
    assert interval_sums(plain, "protect").dropped == {("veth0", "egress"): [9, 900], ("veth0", "ingress"): [4, 240],
                                                       ("veth1", "ingress"): [3, 330]}
    assert interval_sums(plain, "monitor") == (*sums[:3], {})
    assert interval_sums(interval(2, [record(3, "veth0", "egress", 5, 500, 1)]), "protect")[2:] == ({}, {})
    # the kernel's judgement follows the records through slice and take
    assert interval_sums(batch.slice(1, 3)).dropped == {("veth0", "egress"): [7, 700]}
    assert interval_sums(batch.take([6, 1])).dropped == {("veth0", "egress"): [7, 700]}


class FakePolicy:
    def __init__(self) -> None:
        self.now = PolicyReport()

    def report(self) -> PolicyReport:
        return self.now


def test_policy_counters_add_up_per_interval_and_the_active_policy_is_read_at_scrape_time():
    probe, telemetry, policy = FakeProbe(), Telemetry(process_metrics=False), FakePolicy()
    wired(probe, telemetry, policy)
    got = scrape(telemetry)
    assert [got[f"connstats_policy_{name}", ()] for name in ("mode", "rules", "groups", "governed_devices",
            "violation_events_total", "violation_events_failed_total", "apply_failures_total")] == [0] * 7
    probe.publish(interval(1, [record(3, "veth0", "egress", 5, 500, 1)]))  # no policy yet: zeros per device
    got = scrape(telemetry)
    egress = (("direction", "egress"), ("iface", "veth0"))
    assert {k: v for k, v in got.items() if k[0].startswith("connstats_policy_") and k[1]} == {
        ("connstats_policy_packets_total", (*egress, ("verdict", "allow"))): 0,
        ("connstats_policy_bytes_total", (*egress, ("verdict", "allow"))): 0,
        ("connstats_policy_packets_total", (*egress, ("verdict", "deny"))): 0,
        ("connstats_policy_bytes_total", (*egress, ("verdict", "deny"))): 0,
        ("connstats_policy_dropped_packets_total", egress): 0, ("connstats_policy_dropped_bytes_total", egress): 0}
    policy.now = PolicyReport(mode="protect", rules=3, groups=2, governed_devices=1, violation_events=4,
                              violation_events_failed=1, apply_failures=2)
    probe.publish(judged(interval(2, [record(3, "veth0", "egress", 7, 700, 2, "deny"),
                                      record(3, "veth0", "egress", 2, 120, 3, "allow")]), 2, 2))
    probe.publish(judged(interval(3, [record(3, "veth0", "egress", 3, 300, 2, "deny"),
                                      record(3, "veth0", "ingress", 2, 120, 3, "allow")]), 1, 2))
    got = scrape(telemetry)
    ingress = (("direction", "ingress"), ("iface", "veth0"))
    assert got["connstats_policy_packets_total", (*egress, ("verdict", "deny"))] == 10
    assert got["connstats_policy_bytes_total", (*egress, ("verdict", "deny"))] == 1000
    assert got["connstats_policy_packets_total", (*egress, ("verdict", "allow"))] == 2
    assert got["connstats_policy_packets_total", (*ingress, ("verdict", "allow"))] == 2
    assert got["connstats_policy_packets_total", (*ingress, ("verdict", "deny"))] == 0
    assert (got["connstats_policy_dropped_packets_total", egress], got["connstats_policy_dropped_bytes_total", egress]
            ) == (7, 700)  # the 3 of interval 3 were judged under monitor
    assert got["connstats_policy_dropped_packets_total", ingress] == 0
    assert [got[f"connstats_policy_{name}", ()] for name in ("mode", "rules", "groups", "governed_devices",
            "violation_events_total", "violation_events_failed_total", "apply_failures_total")] == [2, 3, 2, 1, 4, 1, 2]
    assert got["connstats_packets_total", egress] == 5 + 9 + 3  # the traffic counters as before


def test_counters_add_up_every_published_interval_with_overflow_included():
    probe, telemetry = FakeProbe(), Telemetry()
    wired(probe, telemetry)
    probe.publish(interval(1, [record(3, "veth0", "egress", 5, 500, 1), record(3, "veth0", "ingress", 2, 90, 2)],
                           overflow=[OverflowCount(3, "veth0", "egress", 11, 1100)]), poll(1, 2, 0))
    probe.publish(interval(2, [record(3, "veth0", "egress", 4, 400, 1)]), poll(2, 1, 0, seconds=0.2, drain=0.15))
    probe.publish(interval(2, [], overflow=[OverflowCount(3, "veth0", "egress", 1, 64)]))  # no new poll
    got = scrape(telemetry)
    egress, ingress = (("direction", "egress"), ("iface", "veth0")), (("direction", "ingress"), ("iface", "veth0"))
    assert got["connstats_packets_total", egress] == 5 + 11 + 4 + 1
    assert got["connstats_bytes_total", egress] == 500 + 1100 + 400 + 64
    assert got["connstats_packets_total", ingress] == 2 and got["connstats_bytes_total", ingress] == 90
    assert got["connstats_overflow_packets_total", egress] == 12
    assert got["connstats_overflow_bytes_total", egress] == 1164
    assert ("connstats_overflow_packets_total", ingress) not in got
    assert got["connstats_intervals_total", ()] == 3
    assert got["connstats_interval_records_count", ()] == 3 and got["connstats_interval_records_sum", ()] == 3
    # one poll observed per polled interval, never twice
    assert got["connstats_poll_duration_seconds_count", ()] == 2
    assert got["connstats_poll_duration_seconds_sum", ()] == pytest.approx(0.23)
    assert got["connstats_drain_duration_seconds_sum", ()] == pytest.approx(0.17)
    assert got["connstats_drain_duration_seconds_bucket", (("le", "0.1"),)] == 1
    assert got["connstats_map_entries", (("family", "ipv4"),)] == 1
    assert got["connstats_map_entries", (("family", "ipv6"),)] == 0
    assert got["connstats_map_capacity", (("family", "ipv6"),)] == 100


def test_kernel_drops_by_reason_and_retransmits_are_counted_per_device_from_the_quality_columns():
    probe, telemetry = FakeProbe(), Telemetry(process_metrics=False)
    wired(probe, telemetry)
    veth, eth = dict(ifindex=3, ifname="veth0"), dict(ifindex=4, ifname="eth0")
    batch = flow_batch(envelope(), [
        flow_record(**veth, drop_packets=3, drop_bytes=300, drop_reason="NETFILTER_DROP", retransmits=4),
        flow_record(**veth, src_port=40001, drop_packets=1, drop_bytes=50, drop_reason="SOCKET_RCVBUFF"),
        flow_record(**eth, retransmits=2), flow_record(**veth, src_port=40002),
        flow_record(**eth, src_port=40001, retransmits=5, drop_packets=2, drop_bytes=100, drop_reason="NETFILTER_DROP"),
    ]).with_drops([DropCount(3, "veth0", "NETFILTER_DROP", 2, 120), DropCount(9, "", "NO_SOCKET", 1, 60)])
    assert quality_sums(batch) == ({("veth0", "NETFILTER_DROP"): [5, 420], ("veth0", "SOCKET_RCVBUFF"): [1, 50],
                                    ("eth0", "NETFILTER_DROP"): [2, 100], ("ifindex-9", "NO_SOCKET"): [1, 60]},
                                   {"veth0": 4, "eth0": 7})
    probe.publish(batch)
    probe.publish(batch)
    probe.current = ProbeStatus(**{**vars(probe.current), "measuring_quality": True, "quality_failures": 2,
                                   "quality_sockets_expired": 5})
    got = scrape(telemetry)
    drops = {key: value for key, value in got.items() if key[0].startswith("connstats_drop")}
    assert drops == {
        ("connstats_drops_total", (("ifname", "eth0"), ("reason", "NETFILTER_DROP"))): 4,
        ("connstats_drops_total", (("ifname", "ifindex-9"), ("reason", "NO_SOCKET"))): 2,
        ("connstats_drops_total", (("ifname", "veth0"), ("reason", "NETFILTER_DROP"))): 10,
        ("connstats_drops_total", (("ifname", "veth0"), ("reason", "SOCKET_RCVBUFF"))): 2,
        ("connstats_drop_bytes_total", (("ifname", "eth0"), ("reason", "NETFILTER_DROP"))): 200,
        ("connstats_drop_bytes_total", (("ifname", "ifindex-9"), ("reason", "NO_SOCKET"))): 120,
        ("connstats_drop_bytes_total", (("ifname", "veth0"), ("reason", "NETFILTER_DROP"))): 840,
        ("connstats_drop_bytes_total", (("ifname", "veth0"), ("reason", "SOCKET_RCVBUFF"))): 100}
    assert {key: value for key, value in got.items() if key[0] == "connstats_retransmits_total"} == {
        ("connstats_retransmits_total", (("ifname", "eth0"),)): 14,
        ("connstats_retransmits_total", (("ifname", "veth0"),)): 8}
    assert [got[name, ()] for name in ("connstats_quality", "connstats_quality_failures_total",
                                       "connstats_quality_sockets_expired_total")] == [1, 2, 5]
    assert quality_sums(interval(3, [record(3, "veth0", "egress", 5, 500, 1)])) == ({}, {})


def test_a_map_over_80_percent_full_is_a_warning_once_not_every_interval(caplog):
    probe = FakeProbe()
    wired(probe, Telemetry(process_metrics=False))
    with caplog.at_level(logging.WARNING, logger="connstats.probe"):
        probe.publish(interval(1, []), poll(1, entries4=80, entries6=80))
        assert caplog.records == []  # 80% is not above 80%
        probe.publish(interval(2, []), poll(2, entries4=81, entries6=3))
        probe.publish(interval(3, []), poll(3, entries4=99, entries6=3))
    assert [r.getMessage() for r in caplog.records] == [
        "the IPv4 flow map was 81% full (81 of 100 connections) in the last interval; beyond it packets "
        "are counted per device only: raise --capacity or shorten --interval"]


def test_publisher_devices_and_readiness_come_from_the_probe_status():
    probe, telemetry = FakeProbe(), Telemetry()
    wired(probe, telemetry)
    assert telemetry.not_ready() == ["probe: the classifier is not loaded yet"]
    stats = PublisherStats(published_messages=7, published_records=70, duplicates=1, retries=3, rejected=2,
                           dropped_messages=4, dropped_records=40, outbox_depth=5, outbox_bytes=5000,
                           connected=False, reconnects=6)
    probe.current = ProbeStatus(loaded=True, publisher=stats, attached_devices=2, attach_failures=1, last_poll=None,
                                naming_processes=True, naming_failures=3)
    assert telemetry.not_ready() == ["probe: NATS is not connected"]
    got = scrape(telemetry)
    expected = {
        "connstats_published_messages_total": 7, "connstats_published_records_total": 70,
        "connstats_outbox_messages": 5, "connstats_outbox_bytes": 5000,
        "connstats_outbox_dropped_messages_total": 4, "connstats_outbox_dropped_records_total": 40,
        "connstats_nats_reconnects_total": 6, "connstats_attached_devices": 2, "connstats_attach_failures_total": 1,
        "connstats_process_naming": 1, "connstats_process_naming_failures_total": 3,
    }
    assert {name: got[name, ()] for name in expected} == expected
    assert got["connstats_publish_errors_total", (("kind", "retried"),)] == 3
    assert got["connstats_publish_errors_total", (("kind", "rejected"),)] == 2
    probe.current = ProbeStatus(**{**vars(probe.current), "publisher": PublisherStats(
        **{**vars(stats), "connected": True})})
    assert telemetry.not_ready() == []


def test_two_probes_in_one_process_have_registries_of_their_own():
    first, second = FakeProbe(), FakeProbe()
    telemetry_1, telemetry_2 = Telemetry(), Telemetry()
    wired(first, telemetry_1)
    wired(second, telemetry_2)  # no "Duplicated timeseries": another registry
    first.publish(interval(1, [record(3, "veth0", "egress", 5, 500, 1)]))
    second.publish(interval(1, [record(3, "veth0", "egress", 7, 700, 1)]))
    key = ("connstats_packets_total", (("direction", "egress"), ("iface", "veth0")))
    assert (scrape(telemetry_1)[key], scrape(telemetry_2)[key]) == (5, 7)
    with pytest.raises(ConfigError, match="two parts called 'probe'"):
        telemetry_1.add_check("probe", lambda: None)


# -- the endpoints -----------------------------------------------------------------------------


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_metrics_server_answers_metrics_healthz_and_readyz():
    telemetry = Telemetry()
    state = {"nats": "NATS is not connected", "store": "the store does not answer"}
    telemetry.add_check("probe", lambda: state["nats"])
    telemetry.add_check("sink", lambda: state["store"])
    telemetry.add_check("broken", lambda: 1 / 0)
    async with MetricsServer(telemetry, "127.0.0.1:0") as server:
        assert await get(server.url + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert await get(server.url + "/readyz") == (503, "text/plain; charset=utf-8", (
            "probe: NATS is not connected\nsink: the store does not answer\n"
            "broken: its readiness check failed: ZeroDivisionError('division by zero')\n"))
        del telemetry.checks["broken"]
        state["nats"] = state["store"] = None
        assert await get(server.url + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
        status, content_type, body = await get(server.url + "/metrics")
        assert (status, content_type.split(";")[0]) == (200, "text/plain")
        assert "process_cpu_seconds_total" in body
    assert Telemetry().not_ready() == ["nothing has started yet"]


def test_metrics_addresses():
    assert parse_metrics_address("9465") == ("127.0.0.1", 9465)  # a bare port: loopback
    assert parse_metrics_address("0.0.0.0:9465") == ("0.0.0.0", 9465)
    assert parse_metrics_address("[::1]:9") == ("::1", 9)
    for bad in ("", ":9465", "host:", "host:http", "1.2.3.4:99999"):
        with pytest.raises(ConfigError, match="is not ADDR:PORT"):
            parse_metrics_address(bad)


def test_probe_metrics_address_is_checked_when_the_probe_is_built():
    from connstats.probe.compose import metrics_services
    assert metrics_services(None, Telemetry()) == []
    with pytest.raises(ConfigError) as bad:
        metrics_services("host:http", Telemetry())
    assert str(bad.value) == "metrics address 'host:http' is not ADDR:PORT; use e.g. 127.0.0.1:9465"

async def test_metrics_listener_in_use_is_a_one_line_error():
    async with MetricsServer(Telemetry(), "127.0.0.1:0") as taken:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken.port} for metrics: .*"
                                              "pick another --metrics ADDR:PORT"):
            await MetricsServer(Telemetry(), f"127.0.0.1:{taken.port}").start()


def raw_get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_the_probe_http_api_serves_telemetry_to_any_host_name_and_checks_the_rest():
    class NoDevices:
        def devices(self):
            return []

    telemetry = Telemetry()
    telemetry.add_check("probe", lambda: None)
    api = HttpApi(NoDevices(), "127.0.0.1", 0, ConnectionTotals(), telemetry)
    await api.start()
    try:
        # Prometheus and kubelet call a listener by its DNS name: the read-only paths allow it
        assert await asyncio.to_thread(raw_get, api.port, "/readyz", "probe.monitoring.svc:9102") == (200, b"ready\n")
        assert await asyncio.to_thread(raw_get, api.port, "/healthz", "probe:9102") == (200, b"ok\n")
        status, body = await asyncio.to_thread(raw_get, api.port, "/metrics", "probe:9102")
        assert status == 200 and b"# TYPE process_cpu_seconds_total counter" in body
        status, body = await asyncio.to_thread(raw_get, api.port, "/traffic_device_connection_stats", "probe:9102")
        assert status == 403 and b"is not this API" in body
    finally:
        await api.close()


# -- the sink, on a real nats-server and SQLite --------------------------------------------------


async def test_sink_metrics_count_what_it_stored_and_dead_lettered(nats_server, tmp_path):
    options = NatsOptions(servers=(nats_server.url,), reconnect_time_wait=0.1, connect_timeout=1.0)
    async with FlowPublisher(options) as publisher:
        messages = 0
        for seq, count in enumerate([5, 7, 11]):
            envelope = sample_envelope(seq)
            messages += await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, count)))
        assert await publisher.flush(20)
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().publish(flows_subject("node-1.example"), b"not a flow message")
    await nc.jetstream().publish(flows_subject("other-host"), (await nc.jetstream().get_msg("CONNSTATS", 1)).data)
    sink = build_sink(SinkConfig(nats=options, store=f"sqlite:{tmp_path / 'flows.sqlite'}"))
    sink.metrics.refresh_every = 0.05
    telemetry = sink.config.telemetry
    async with FlowConsumer(nc, MemoryStore()):  # the durable consumer exists; nothing fetched yet
        await sink.metrics.refresh(nc, MemoryStore())
    await nc.close()
    lag = scrape(telemetry)
    assert lag["connstats_sink_consumer_pending", (("consumer", "connstats-sink"),)] == messages + 2  # the lag
    assert lag["connstats_sink_consumer_ack_pending", (("consumer", "connstats-sink"),)] == 0
    assert telemetry.not_ready() == ["sink: NATS is not connected"]
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))

    def consumed() -> bool:  # the three good messages stored, the two bad ones (after them) dead-lettered
        got = scrape(telemetry)
        assert not task.done()
        return (got["connstats_sink_messages_total", ()] >= messages
                and got.get(("connstats_sink_consumer_pending", (("consumer", "connstats-sink"),))) == 0
                and got.get(("connstats_sink_consumer_ack_pending", (("consumer", "connstats-sink"),))) == 0
                and sum(got.get(("connstats_sink_dead_letters_total", (("reason", r),)), 0)
                        for r in ("undecodable", "wrong_subject")) >= 2)

    await until_async(consumed, 30, "every message consumed")
    assert telemetry.not_ready() == []
    got = scrape(telemetry)
    assert got["connstats_sink_messages_total", ()] == messages == 3
    assert got["connstats_sink_records_total", ()] == 23
    assert got["connstats_sink_write_duration_seconds_count", ()] == 1  # the three in one transaction
    dead = {reason: got["connstats_sink_dead_letters_total", (("reason", reason),)]
            for reason in ("undecodable", "wrong_subject", "store_refused", "store_failed")}
    assert dead == {"undecodable": 1, "wrong_subject": 1, "store_refused": 0, "store_failed": 0}
    assert (got["connstats_sink_store_errors_total", ()], got["connstats_sink_naks_total", ()]) == (0, 0)
    assert got["connstats_sink_consumer_ack_pending", (("consumer", "connstats-sink"),)] == 0
    assert got["connstats_sink_nats_reconnects_total", ()] == 0
    stop.set()
    await task
    assert telemetry.not_ready() == ["sink: NATS is not connected"]


# -- settings ---------------------------------------------------------------------------------------


def test_stream_replicas_and_metrics_come_from_flag_env_or_file(tmp_path):
    def configs(env: dict, file: dict, flag: int | None = None):
        config = Config(file, {"CONNSTATS_STATE_DIR": str(tmp_path), **env}, tmp_path / "c.toml")
        probe = probe_config(config, NatsFlags(), ["lo"], None, "h", "none",
                             ProbeFlags(docker_socket="none", stream_replicas=flag))
        sink = sink_config(config, NatsFlags(), None, None, stream_replicas=flag)
        return probe.publisher_settings().stream.replicas, sink.stream.replicas, config.get("metrics")

    assert configs({}, {}) == (None, None, None)  # not set: a new stream gets 1, an existing one is left
    assert configs({}, {"nats": {"stream_replicas": 5}, "metrics": {"address": "0.0.0.0:9465"}}) == (5, 5, "0.0.0.0:9465")
    assert configs({"CONNSTATS_STREAM_REPLICAS": "3", "CONNSTATS_METRICS": "9465"},
                   {"nats": {"stream_replicas": 5}}) == (3, 3, "9465")
    assert configs({"CONNSTATS_STREAM_REPLICAS": "3"}, {}, flag=1) == (1, 1, None)
    with pytest.raises(ConfigError, match=r"\$CONNSTATS_STREAM_REPLICAS: 0 is not a positive number; fix the setting"):
        configs({"CONNSTATS_STREAM_REPLICAS": "0"}, {})


async def test_replicas_one_server_cannot_have_are_a_one_line_error(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        with pytest.raises(TransportError) as caught:
            await ensure_stream(js, flow_stream_config(StreamSettings(replicas=3)))
        assert str(caught.value) == ("cannot create stream CONNSTATS: replicas > 1 not supported in non-clustered "
                                     "mode; --stream-replicas 3 needs a JetStream cluster of at least 3 servers")
        await ensure_stream(js, flow_stream_config(StreamSettings()))  # not set: the server's 1
        assert (await js.stream_info("CONNSTATS")).config.num_replicas == 1
    finally:
        await nc.close()


def test_a_failure_in_the_metrics_is_logged_and_never_stops_the_probe(caplog):
    class BrokenStatus(FakeProbe):
        broken = False

        def status(self):
            if self.broken:
                raise RuntimeError("status broke")
            return super().status()

    probe, telemetry = BrokenStatus(), Telemetry(process_metrics=False)
    wired(probe, telemetry)
    probe.broken = True
    with caplog.at_level(logging.ERROR, logger="connstats.probe"):
        probe.publish(interval(7, [record(3, "veth0", "egress", 5, 500, 1)]))  # does not raise
    assert [r.getMessage() for r in caplog.records] == ["the self-metrics missed interval 7"]
    assert telemetry.not_ready() == ["probe: its readiness check failed: RuntimeError('status broke')"]
