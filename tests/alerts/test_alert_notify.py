"""The notification queue (bounded, retrying, counting), the Alertmanager body and the CLI's
rules check: pure code and the installed command (the chunk assembly is
tests/contract/test_flow_intervals.py)."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import msgspec

from connstats.probe.contract import AlertMessage
from connstats.probe.runtime.backoff import Backoff
from connstats.sink.alerts.notify import DeliveryFailed, NotificationQueue, alertmanager_alerts, alertmanager_url
from connstats.sink.alerts.stats import AlertStats

CONNSTATS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "connstats"

FIRING = AlertMessage(
    fingerprint="0f3c2a9d81b4e6a7", state="firing", rule="udp-burst", kind="threshold", severity="warning",
    host="web-1", engine="web.example", labels={"alertname": "udp-burst", "severity": "warning", "dst_port": "5353"},
    value=184220, threshold=100000, summary="dst_port=5353: 184220 packets in 30s, above 100000", description="",
    started_at=1_796_168_412_000_000_000, ended_at=0, sent_at=1_796_168_412_250_000_000, repeat_ns=60_000_000_000)


def test_the_alertmanager_body():
    resolved = msgspec.structs.replace(FIRING, state="resolved", ended_at=1_796_168_472_500_000_000,
                                       sent_at=1_796_168_472_500_000_000, value=7.25, description="see runbook")
    assert alertmanager_alerts([FIRING, resolved]) == [
        {"labels": {"alertname": "udp-burst", "severity": "warning", "dst_port": "5353"},
         "annotations": {"summary": "dst_port=5353: 184220 packets in 30s, above 100000", "value": "184220",
                         "host": "web-1", "fingerprint": "0f3c2a9d81b4e6a7"},
         "startsAt": "2026-12-01T23:40:12.000Z", "endsAt": "2026-12-01T23:44:12.250Z",
         "generatorURL": "connstats://web%2Eexample/alerts/udp-burst"},
        {"labels": {"alertname": "udp-burst", "severity": "warning", "dst_port": "5353"},
         "annotations": {"summary": "dst_port=5353: 184220 packets in 30s, above 100000",
                         "description": "see runbook", "value": "7.25", "host": "web-1",
                         "fingerprint": "0f3c2a9d81b4e6a7"},
         "startsAt": "2026-12-01T23:40:12.000Z", "endsAt": "2026-12-01T23:41:12.500Z",
         "generatorURL": "connstats://web%2Eexample/alerts/udp-burst"},
    ]
    assert alertmanager_url("http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert alertmanager_url("http://am:9093/api/v2/alerts") == "http://am:9093/api/v2/alerts"


class Target:
    name = "test"

    def __init__(self, failures: list) -> None:
        self.failures = failures  # what each call raises, in turn (None: delivered)
        self.delivered: list = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def deliver(self, alerts):
        await self.gate.wait()
        failure = self.failures.pop(0) if self.failures else None
        if failure:
            raise failure
        self.delivered += [a["n"] for a in alerts]

    async def close(self):
        pass


async def test_the_queue_retries_drops_the_oldest_and_counts():
    stats = AlertStats()
    target = Target([DeliveryFailed("HTTP 500"), DeliveryFailed("HTTP 400", retry=False)])
    queue = NotificationQueue(target, stats, capacity=5, batch=2, backoff=Backoff(first=0.01, ceiling=0.01))
    target.gate.clear()  # the target hangs: everything queues
    runner = asyncio.create_task(queue.run())
    queue.put([{"n": i} for i in range(8)])  # 3 over the capacity: 0, 1, 2 dropped at once
    assert stats.dropped["test"] == 3
    target.gate.set()
    assert await queue.drain(5.0)
    runner.cancel()
    # 3,4 failed (500) and were retried, then failed for good (400): dropped; 5,6 and 7 delivered
    assert target.delivered == [5, 6, 7]
    assert (stats.sent["test"], stats.failed["test"], stats.dropped["test"]) == (3, 2, 5)


def test_the_cli_checks_a_rules_file_in_one_line(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[[rule]]\nname = "a"\nkind = "overflow"\n[[rule]]\nname = "b"\nkind = "silent_host"\nfor = "1m"\n')
    bad.write_text('[[rule]]\nname = "a"\nkind = "threshold"\nmetric = "packets"\nwindow = "1m"\n')
    ok = subprocess.run([str(CONNSTATS), "alert", "--check", str(good)], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: 2 rules OK (overflow 1, silent_host 1)\n", "")
    for argv in (["alert", "--check", str(bad)], ["alert", "--rules", str(bad)], ["up", "--rules", str(bad)]):
        failed = subprocess.run([str(CONNSTATS), *argv], capture_output=True, text=True,
                                env={"CONNSTATS_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
        assert (failed.returncode, failed.stdout, failed.stderr) == (
            1, "", f"error: {bad}: rule 'a': key 'above': give exactly one of above and below\n"), argv


async def test_a_webhook_password_never_reaches_the_logs_or_errors():
    """The URL's user:password is sent (basic auth, as the operator asked) but what is logged
    and raised names the webhook with ``***`` in its place."""
    from aiohttp import web

    from connstats.sink.alerts.notify import WebhookTarget

    seen = []

    async def refuse(request):
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    target = WebhookTarget(f"http://am:s3cret@127.0.0.1:{port}")
    try:
        try:
            await target.deliver([FIRING])
        except DeliveryFailed as exc:
            failure = str(exc)
        assert failure == f"HTTP 500 from http://***@127.0.0.1:{port}/api/v2/alerts"
        assert target.name == f"http://***@127.0.0.1:{port}/api/v2/alerts"
        assert seen == ["Basic YW06czNjcmV0"]  # am:s3cret
    finally:
        await target.close()
        await runner.cleanup()


def test_connstats_alerts_rows_are_the_alert_messages_fields():
    from connstats.cli.alert import alert_row

    row = {"fingerprint": "0f3c2a9d81b4e6a7", "state": "firing", "rule": "udp-burst", "kind": "threshold",
           "severity": "warning", "host": "web-1", "value": 184220, "threshold": 100000,
           "summary": "dst_port=5353: 184220 packets in 30s, above 100000", "description": "",
           "started_at": 1_796_168_412_000_000_000, "ended_at": 0, "sent_at": 1_796_168_412_250_000_000,
           "repeat_ns": 60_000_000_000, "engine": "web.example"}
    assert alert_row(FIRING) == row | {"labels": "dst_port=5353"}
    assert alert_row(FIRING, structured=True) == row | {"labels": {"dst_port": "5353"}}
