"""End to end: the alert engine's self-metrics on real `connstats up --rules --metrics` (real
BPF on test veths, real traffic, the embedded nats-server, a real HTTP receiver as the
webhook) and on a real standalone `connstats alert` (--metrics from the environment) beside
a real nats-server. Every process is stopped by pid at teardown."""
from __future__ import annotations

import asyncio

import nats
import pytest

from connstats.probe.contract import StreamSettings, ensure_stream, flow_stream_config
from tests.fixtures.alerts import THRESHOLD, Webhook
from tests.fixtures.cli import assert_one_line_error, connstats
from tests.fixtures.metrics import get, samples
from tests.fixtures.nats import free_port
from tests.fixtures.wait import until

RULE = (("rule", "udp-burst"),)


def notifications(got: dict, name: str = "connstats_alert_notifications_total") -> tuple[float, float]:
    """(nats, webhook) of one per-target counter."""
    return got[(name, (("target", "nats"),))], got[(name, (("target", "webhook"),))]


@pytest.mark.kernel
def test_up_serves_the_engine_metrics_firing_and_webhook_counts_exact(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    rules = tmp_path / "rules.toml"
    rules.write_text(THRESHOLD)
    http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with Webhook() as hook:
        up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", "--rules", str(rules),
                   "--webhook", hook.url, "--http", http, "--metrics", metrics)
        up.wait_for("connstats up: watching")
        endpoint = f"http://{metrics}"
        until(lambda: get(endpoint + "/readyz") == (200, "ready\n"), 30, "ready probe, sink and engine")
        quiet = samples(endpoint)
        assert (quiet[("connstats_alerts_firing", RULE)], notifications(quiet)) == (0, (0, 0))

        a.traffic("udp", b.ipv4, 5353, 40001, 1000, 100)  # over 500 on one port: fires once
        until(lambda: len(hook.alerts()) == 1, 40, "firing alert at the webhook")
        fired = until(lambda: (got := samples(endpoint))[("connstats_alert_notifications_total",
                                                               (("target", "nats"),))] == 1 and got, 20,
                           "the alert published on NATS")
        on_http_listener = samples(f"http://{http}")  # the same registry on the probe's listener
        until(lambda: len(hook.alerts()) == 2, 40, "resolved alert at the webhook")
        resolved = until(lambda: (got := samples(endpoint))[("connstats_alert_notifications_total",
                                                                  (("target", "nats"),))] == 2 and got, 20,
                              "the resolution published on NATS")
        received = len(hook.alerts())
        assert up.interrupt() == 0
    assert "Traceback" not in up.stderr

    assert fired[("connstats_alerts_firing", RULE)] == 1
    assert notifications(fired) == (1, 1)
    assert on_http_listener[("connstats_alerts_firing", RULE)] == 1
    assert resolved[("connstats_alerts_firing", RULE)] == 0
    assert notifications(resolved) == (2, received) == (2, 2)  # exactly what the receiver got
    for name in ("connstats_alert_notification_failures_total", "connstats_alert_notifications_dropped_total",
                 "connstats_alert_queued_notifications"):
        assert notifications(resolved, name) == (0, 0)
    assert resolved[("connstats_alert_rule_errors_total", ())] == 0
    assert resolved[("connstats_alert_undecodable_messages_total", ())] == 0
    # the probe's and the sink's metrics on the same endpoint: up serves one for all it runs
    assert ("connstats_packets_total", (("direction", "egress"), ("iface", a.host_if))) in resolved
    assert ("connstats_sink_messages_total", ()) in resolved


def test_standalone_alert_metrics_from_the_environment_and_readiness(cs_env, start, nats_server, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(THRESHOLD)
    bad = connstats(cs_env, "alert", "--rules", str(rules), "--metrics", "nope")
    assert_one_line_error(bad, "metrics address 'nope' is not ADDR:PORT; use e.g. 127.0.0.1:9465")

    address = f"127.0.0.1:{free_port()}"
    cs_env["CONNSTATS_METRICS"] = address  # the same setting as the sink's: flag, env or [metrics] address
    engine = start("alert", "--rules", str(rules), "--nats", nats_server.url)
    engine.wait_for("connstats alert: 1 rules")
    endpoint = f"http://{address}"
    assert get(endpoint + "/healthz") == (200, "ok\n")
    assert get(endpoint + "/readyz") == (503, "alerts: the durable consumer connstats-alerts does not exist yet "
                                              "(it needs the stream CONNSTATS)\n")
    asyncio.run(create_flow_stream(nats_server.url))  # as the first probe or sink does
    until(lambda: get(endpoint + "/readyz") == (200, "ready\n"), 20, "ready engine")
    got = samples(endpoint)
    assert (got[("connstats_alerts_firing", RULE)], notifications(got)) == (0, (0, 0))
    assert ("process_cpu_seconds_total", ()) in got
    assert engine.interrupt() == 0
    assert "Traceback" not in engine.stderr


async def create_flow_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_stream(nc.jetstream(), flow_stream_config(StreamSettings()))
    finally:
        await nc.close()
