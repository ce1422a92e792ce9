"""The alert service against a real nats-server (the deployed roles) and real HTTP receivers:
alerts on the subject and stream, Alertmanager webhooks (failing, recovering, never
answering), and ``firing_alerts`` from the engine and from the stream."""
from __future__ import annotations

import asyncio
import time

import msgspec

from connstats.probe.contract import (
    StreamSettings,
    alerts_subject,
    connect,
    decode_alert,
    encode_alert,
    ensure_stream,
    flow_stream_config,
    flows_subject,
)
from connstats.sink.alerts import firing_alerts
from connstats.sink.alerts.compose import AlertConfig, build_alerts
from connstats.sink.alerts.notify import ALERTS_STREAM
from connstats.sink.alerts.query import FIRING_SUBJECT, RESPONDERS, firing_from_stream
from connstats.sink.alerts.rules import parse_rules
from connstats.sink.alerts.service import ServiceSettings
from tests.fixtures.alerts import HOST, RULE, Receiver, publish
from tests.fixtures.nats import read_stream
from tests.fixtures.wait import until_async


class Running:
    def __init__(self, options, *webhooks: str, rules=(RULE,), state_dir=None, webhook_timeout=5.0) -> None:
        config = AlertConfig(parse_rules({"rule": list(rules)}), options, "engine-1", state_dir, webhooks,
                             ServiceSettings(tick=0.2, drain_timeout=1.0, webhook_timeout=webhook_timeout))
        self.service = build_alerts(config)
        self.stop = asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.service.run(self.stop))
        await asyncio.wait({self.task, asyncio.create_task(self.service.ready.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        return self.service

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def test_firing_and_resolved_reach_the_webhook_and_the_stream(role_nats, flows):
    async with Receiver() as receiver, Running(role_nats.options("alert"), receiver.url) as service:
        await publish(flows, 0, [{"dport": 5353, "packets": 700}, {"dport": 6000, "packets": 400}])
        await until_async(lambda: len(receiver.bodies) == 1, 15.0)
        admin = await connect(role_nats.options("admin"))
        try:
            firing = await firing_alerts(admin)
            assert [(a.labels, a.value, a.state, a.host) for a in firing] == [
                ({"alertname": "udp-burst", "severity": "warning", "ifname": "veth-a", "dst_port": "5353"},
                 700, "firing", HOST)]
            await until_async(lambda: len(receiver.bodies) == 2, 15.0)  # 2 s window, nothing more: resolved
            assert await firing_alerts(admin) == []
        finally:
            await admin.close()
        assert service.engine.stats.sent == {"nats": 2, f"{receiver.url}/api/v2/alerts": 2}

    (path, fired), (_, resolved) = receiver.bodies
    assert path == "/api/v2/alerts"
    labels = {"alertname": "udp-burst", "severity": "warning", "ifname": "veth-a", "dst_port": "5353"}
    assert [(a["labels"], a["annotations"]["value"], a["annotations"]["host"]) for a in fired + resolved] == [
        (labels, "700", HOST), (labels, "700", HOST)]
    assert fired[0]["generatorURL"] == "connstats://engine-1/alerts/udp-burst"
    assert fired[0]["annotations"]["summary"] == "ifname=veth-a dst_port=5353: 700 packets in 2s, above 500"
    assert resolved[0]["startsAt"] == fired[0]["startsAt"] < resolved[0]["endsAt"] < fired[0]["endsAt"]

    stored = await read_stream(role_nats.url.replace("nats://", f"nats://admin:{role_nats.passwords['admin']}@"),
                               ALERTS_STREAM)
    messages = [decode_alert(m.data) for m in stored]  # what the engine published is an AlertMessage
    assert [(m.subject, a.state, a.labels, a.value) for m, a in zip(stored, messages, strict=True)] == [
        ("connstats.v1.alerts.node-1", "firing", labels, 700), ("connstats.v1.alerts.node-1", "resolved", labels, 700)]
    assert messages[1].ended_at <= messages[1].sent_at


async def test_an_engine_started_before_the_stream_misses_no_interval(role_nats):
    """`up` starts its engine and its probe together: the probe makes the flow stream and
    publishes an interval before the engine's next look for the stream (every 0.5 s). The
    consumer made then starts where the engine started, not with the messages after it."""
    async with Receiver() as receiver, Running(role_nats.options("alert"), receiver.url) as service:
        probe = await connect(role_nats.options("probe", HOST))
        try:
            await ensure_stream(probe.jetstream(), flow_stream_config(StreamSettings()))
            await publish(probe, 0, [{"dport": 5353, "packets": 700}])
            await until_async(lambda: len(receiver.bodies) == 1, 15.0)
        finally:
            await probe.close()
        assert service.engine.stats.sent[f"{receiver.url}/api/v2/alerts"] == 1
    [(_, fired)] = receiver.bodies
    assert [(a["labels"]["dst_port"], a["annotations"]["value"]) for a in fired] == [("5353", "700")]


async def test_a_webhook_failing_then_recovering_gets_the_alert(role_nats, flows):
    async with Receiver(statuses=(500, 500)) as receiver, Running(role_nats.options("alert"), receiver.url) as service:
        await publish(flows, 0, [{"packets": 900}])
        await until_async(lambda: len(receiver.bodies) == 1, 15.0)
        assert receiver.attempts == 3
        assert [a["annotations"]["value"] for a in receiver.bodies[0][1]] == ["900"]
        assert service.engine.stats.failed[f"{receiver.url}/api/v2/alerts"] == 2


async def test_a_webhook_that_never_answers_blocks_nothing(role_nats, flows):
    async with Receiver(hang=True) as silent, Receiver() as working, \
            Running(role_nats.options("alert"), silent.url, working.url, webhook_timeout=120) as service:
        for seq in range(3):
            await publish(flows, seq, [{"dport": 7000 + seq, "packets": 900}])
            await until_async(lambda seq=seq: len(working.bodies) == seq + 1, 30.0)
        # all three went out while the silent webhook still holds its first request
        assert [b[1][0]["labels"]["dst_port"] for b in working.bodies] == ["7000", "7001", "7002"]
        await until_async(lambda: service.engine.stats.sent["nats"] == 3, 15.0, "3 alerts on NATS")  # its own queue
        assert (silent.attempts, silent.bodies, service.engine.stats.sent["nats"]) == (1, [], 3)
        assert service.engine.stats.intervals == 3


async def test_firing_alerts_from_the_stream_when_no_engine_answers(role_nats, flows):
    async with Running(role_nats.options("alert"), rules=(RULE | {"window": "30s"},)) as service:
        await publish(flows, 0, [{"packets": 900}])
        await until_async(lambda: service.engine.stats.sent["nats"] == 1, 15.0)
    admin = await connect(role_nats.options("admin"))
    try:
        kept = await firing_alerts(admin, timeout=0.5)
        assert [(a.rule, a.value, a.state) for a in kept] == [("udp-burst", 900, "firing")]
        later = time.time_ns() + 4 * 3600 * 10**9 + 10**9  # re-sends every 1h were due: not valid any more
        assert await firing_from_stream(admin, later) == []
    finally:
        await admin.close()


async def test_what_is_not_an_alert_is_passed_over_in_the_stream_and_in_an_answer(role_nats, flows):
    """Messages on the alerts stream and an answer on the firing subject are read with the
    contract's decoders: whatever is not an ``AlertMessage`` (``FiringAlerts``) is passed over."""
    async with Running(role_nats.options("alert"), rules=(RULE | {"window": "30s"},)) as service:
        await publish(flows, 0, [{"packets": 900}])
        await until_async(lambda: service.engine.stats.sent["nats"] == 1, 15.0)
    alert = await connect(role_nats.options("alert"))
    admin = await connect(role_nats.options("admin"))
    try:
        [good] = await firing_from_stream(admin)
        js = alert.jetstream()
        for bad in (b"not json", b"[]", b'{"a":' * 100 + b"1" + b"}" * 100, msgspec.json.encode({"state": "firing"}),
                    encode_alert(msgspec.structs.replace(good, fingerprint="f2"))[:-1],
                    encode_alert(good).replace(b'"value":900', b'"value":"900"')):
            await js.publish(alerts_subject(HOST), bad)

        async def wrong_answer(msg) -> None:  # an engine that is not one: its alerts lack fields
            await msg.respond(b'{"engine": "x", "alerts": [{"state": "firing", "rule": "made-up"}]}')

        await alert.subscribe(FIRING_SUBJECT, queue=RESPONDERS, cb=wrong_answer)
        await alert.flush()
        assert await firing_alerts(admin) == [good]  # from the stream, the broken ones passed over
    finally:
        await admin.close()
        await alert.close()


async def test_hostile_flow_messages_are_counted_and_skipped(role_nats, flows):
    async with Running(role_nats.options("alert")) as service:
        js = flows.jetstream()
        await js.publish(flows_subject(HOST), b"not json")
        await js.publish(flows_subject(HOST), b'{"schema": 2, "host": "node-1"}')
        await publish(flows, 0, [{"packets": 900}])
        await until_async(lambda: service.engine.stats.sent["nats"] == 1, 15.0)
        stats = service.engine.stats
        assert (stats.undecodable, stats.intervals, stats.rule_errors) == (2, 1, 0)
