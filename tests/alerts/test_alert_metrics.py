"""The alert engine's self-metrics: ``AlertMetrics`` over a real engine and service on a real
nats-server (the deployed roles), fed synthetic intervals, with real HTTP receivers as
webhooks; /readyz on a real ``MetricsServer``; ``CONNSTATS_ALERTS`` and --stream-replicas,
on one server and on a real 3-node JetStream cluster."""
from __future__ import annotations

import asyncio

import aiohttp
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connstats.cli.config import Config
from connstats.cli.options import NatsFlags
from connstats.cli.settings import alert_config
from connstats.probe.contract import NatsOptions, StreamSettings, TransportError, ensure_stream, flow_stream_config
from connstats.probe.runtime.telemetry import MetricsServer, Telemetry
from connstats.sink.alerts.compose import AlertConfig, build_alerts
from connstats.sink.alerts.notify import ALERTS_STREAM
from connstats.sink.alerts.rules import parse_rules
from connstats.sink.alerts.service import ServiceSettings
from tests.fixtures.alerts import HOST, RULE, Receiver, publish
from tests.fixtures.wait import until_async

BURST = RULE | {"window": "1h"}  # nothing resolves while a test runs
QUIET = BURST | {"name": "quiet", "above": 10**9}
NO_TICK = 3600.0  # the timer never evaluates within a test: evaluations are the intervals'


def scrape(telemetry: Telemetry, prefix: str = "connstats_alert") -> dict[tuple, float]:
    """The engine's samples as {(name, (label pairs, sorted)): value}."""
    text = telemetry.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(prefix)}


class Engine:
    """A built alert service running on ``telemetry`` (a fresh one per engine)."""

    def __init__(self, options: NatsOptions, *webhooks: str, rules=(BURST, QUIET), tick: float = NO_TICK,
                 stream: StreamSettings = StreamSettings()) -> None:
        self.telemetry = Telemetry(process_metrics=False)
        config = AlertConfig(parse_rules({"rule": list(rules)}), options, "engine-1", None, webhooks,
                             ServiceSettings(tick=tick, drain_timeout=1.0), stream=stream, telemetry=self.telemetry)
        self.service = build_alerts(config)
        self.stop = asyncio.Event()

    async def __aenter__(self) -> "Engine":
        self.task = asyncio.create_task(self.service.run(self.stop))
        ready = asyncio.create_task(self.service.ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.task.done():
            self.task.result()
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)

    @property
    def stats(self):
        return self.service.engine.stats


def by_target(name: str, nats_value: int, webhook_value: int) -> dict[tuple, float]:
    return {(name, (("target", "nats"),)): nats_value, (name, (("target", "webhook"),)): webhook_value}


async def test_counters_after_three_intervals_and_two_alerts_are_exact(role_nats, flows):
    async with Receiver(statuses=(500,)) as recovering, Receiver(statuses=(400, 400)) as refusing, \
            Engine(role_nats.options("alert"), recovering.url, refusing.url) as engine:
        assert scrape(engine.telemetry)[("connstats_alerts_firing", (("rule", "udp-burst"),))] == 0
        # one interval at a time, each delivered everywhere before the next: exact failure counts
        await publish(flows, 0, [{"dport": 5353, "packets": 700}, {"dport": 6000, "packets": 400}])
        await until_async(lambda: (len(recovering.bodies), refusing.attempts, engine.stats.sent["nats"]) == (1, 1, 1), 15.0)
        await publish(flows, 1, [{"dport": 7000, "packets": 900}])
        await until_async(lambda: (len(recovering.bodies), refusing.attempts, engine.stats.sent["nats"]) == (2, 2, 2), 15.0)
        await publish(flows, 2, [{"dport": 8000, "packets": 100}])
        await until_async(lambda: engine.stats.intervals == 3, 15.0)
        consumer = (("consumer", "connstats-alerts"),)
        await until_async(lambda: (engine.service.metrics.pending, engine.service.metrics.ack_pending) == (0, 0), 15.0)
        samples = scrape(engine.telemetry)

    assert (recovering.attempts, refusing.attempts) == (3, 2)  # 500 then 200, 200; 400, 400
    assert samples == {
        ("connstats_alert_evaluations_total", ()): 3,
        ("connstats_alert_intervals_total", ()): 3,
        ("connstats_alert_incomplete_intervals_total", ()): 0,
        ("connstats_alert_undecodable_messages_total", ()): 0,
        ("connstats_alert_rule_errors_total", ()): 0,
        ("connstats_alerts_firing", (("rule", "udp-burst"),)): 2,
        ("connstats_alerts_firing", (("rule", "quiet"),)): 0,
        **by_target("connstats_alert_notifications_total", 2, 2),  # the refused two are not sent
        **by_target("connstats_alert_notification_failures_total", 0, 3),  # one 500, two 400
        **by_target("connstats_alert_notifications_dropped_total", 0, 2),  # the two a 400 refused
        **by_target("connstats_alert_queued_notifications", 0, 0),
        ("connstats_alert_consumer_pending", consumer): 0,
        ("connstats_alert_consumer_ack_pending", consumer): 0,
        ("connstats_alert_nats_reconnects_total", ()): 0,
    }


async def test_hostile_messages_and_a_stuck_webhook_show_in_the_counters(role_nats, flows):
    async with Receiver(hang=True) as stuck, Engine(role_nats.options("alert"), stuck.url) as engine:
        js = flows.jetstream()
        await js.publish(f"connstats.v1.flows.{HOST}", b"not json")
        for seq in range(2):
            await publish(flows, seq, [{"dport": 7000 + seq, "packets": 900}])
        await until_async(lambda: engine.stats.sent["nats"] == 2, 15.0)
        samples = scrape(engine.telemetry)
        assert stuck.attempts == 1  # it holds the first POST; both alerts wait in its queue
    assert {k: v for k, v in samples.items() if "queued" in k[0] or "undecodable" in k[0] or "firing" in k[0]} == {
        ("connstats_alert_undecodable_messages_total", ()): 1,
        ("connstats_alerts_firing", (("rule", "udp-burst"),)): 2,
        ("connstats_alerts_firing", (("rule", "quiet"),)): 0,
        **by_target("connstats_alert_queued_notifications", 0, 2),
    }


async def test_ready_once_the_flow_stream_and_the_durable_consumer_exist(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    async with Engine(options) as engine, MetricsServer(engine.telemetry, "127.0.0.1:0") as server, \
            aiohttp.ClientSession() as http:
        async def get(path: str) -> tuple[int, str]:
            async with http.get(server.url + path) as response:
                return response.status, await response.text()

        assert await get("/readyz") == (503, "alerts: the durable consumer connstats-alerts does not exist yet "
                                             "(it needs the stream CONNSTATS)\n")
        assert await get("/healthz") == (200, "ok\n")
        nc = await nats.connect(nats_server.url)
        try:
            await ensure_stream(nc.jetstream(), flow_stream_config(StreamSettings()))  # as a probe does
        finally:
            await nc.close()
        for _ in range(100):  # the engine subscribes within 0.5 s; the check follows within 0.5 s
            if (await get("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert await get("/readyz") == (200, "ready\n")
        status, text = await get("/metrics")
        assert status == 200 and 'connstats_alerts_firing{rule="udp-burst"} 0.0\n' in text
    assert engine.telemetry.not_ready() == ["alerts: NATS is not connected"]


async def test_stream_replicas_one_server_cannot_have_are_a_one_line_error(nats_server):
    engine = Engine(NatsOptions(servers=(nats_server.url,)), stream=StreamSettings(replicas=3))
    with pytest.raises(TransportError) as caught:
        async with engine:
            pass
    assert str(caught.value) == ("cannot create stream CONNSTATS_ALERTS: replicas > 1 not supported in "
                                 "non-clustered mode; --stream-replicas 3 needs a JetStream cluster of at least "
                                 "3 servers")


async def test_alerts_stream_replicas_on_a_cluster(nats_cluster):
    options = NatsOptions(servers=tuple(nats_cluster.url_list), connect_timeout=2.0)
    async with Engine(options, stream=StreamSettings(replicas=3)):  # created with 3
        pass
    assert await alerts_peers(nats_cluster) == (3, set(nats_cluster.servers))
    async with Engine(options):  # --stream-replicas not set: the existing stream is left alone
        pass
    async with Engine(options, stream=StreamSettings(replicas=3)):  # the same: nothing to change
        pass
    assert await alerts_peers(nats_cluster) == (3, set(nats_cluster.servers))


async def alerts_peers(cluster, timeout: float = 15.0) -> tuple[int, set]:
    """(replicas of CONNSTATS_ALERTS, the servers holding one) once every peer is known by name."""
    nc = await nats.connect(cluster.url_list)
    try:
        async def replicas() -> tuple[int, set]:
            info = await nc.jetstream().stream_info(ALERTS_STREAM)
            return info.config.num_replicas, {info.cluster.leader, *(r.name for r in info.cluster.replicas or ())}

        return await until_async(replicas, timeout, step=0.2, fail=False, accept=lambda found: None not in found[1])
    finally:
        await nc.close()


def test_alert_stream_replicas_come_from_flag_env_or_file(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\nkind = "silent_host"\nfor = "1m"\n')

    def replicas(env: dict, file: dict, flag: int | None = None) -> int | None:
        config = Config(file, {"CONNSTATS_STATE_DIR": str(tmp_path / "state"), **env}, tmp_path / "c.toml")
        return alert_config(config, NatsFlags(), str(rules), None, "h", flag).stream.replicas

    assert replicas({}, {}) is None  # not set: a new stream gets 1, an existing one is left alone
    assert replicas({}, {"nats": {"stream_replicas": 5}}) == 5
    assert replicas({"CONNSTATS_STREAM_REPLICAS": "3"}, {"nats": {"stream_replicas": 5}}) == 3
    assert replicas({"CONNSTATS_STREAM_REPLICAS": "3"}, {}, flag=1) == 1
