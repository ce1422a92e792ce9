"""End to end: the alert engine on real traffic. Real BPF on test veths, real `up`, `probe` and
`alert` processes, a real nats-server, and a real HTTP receiver (aiohttp) as the webhook."""
from __future__ import annotations

import asyncio
import json
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from connstats.cli.nats_auth import CREDENTIALS_FILE, read_credentials
from connstats.probe.contract import AlertMessage, alerts_subject, decode_alert, decode_message
from tests.fixtures.alerts import THRESHOLD, Webhook
from tests.fixtures.cli import NO_HTTP_CLASH, connstats
from tests.fixtures.nats import read_stream
from tests.fixtures.traffic import SEND_FROM_MANY_PORTS
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel


def stream(url: str, name: str) -> list:
    return asyncio.run(read_stream(url, name))


def admin_url(state: Path) -> str:
    url, users = read_credentials(state / CREDENTIALS_FILE)
    return url.replace("nats://", f"nats://admin:{users.admin.password}@")


def alerts_in(url: str) -> list[tuple[str, AlertMessage]]:
    """The alert messages on the stream, each read with the contract's decoder."""
    try:
        stored = stream(url, "CONNSTATS_ALERTS")
    except Exception:  # the stream is created by the engine; not there yet
        return []
    return [(m.subject, decode_alert(m.data)) for m in stored]


def group(alert: AlertMessage) -> dict:
    return {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}


def test_up_threshold_fires_once_then_resolves_on_webhook_and_nats(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    rules = tmp_path / "rules.toml"
    # firing for about 13 s (the window less `for`): `connstats alerts` lists it in that time
    # also on a loaded machine, where the command alone may take seconds to start
    rules.write_text(THRESHOLD.replace('window = "5s"', 'window = "15s"'))
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    with Webhook() as hook:
        up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", "--rules", str(rules),
                   "--webhook", hook.url, *NO_HTTP_CLASH)
        up.wait_for("connstats up: watching")
        assert "alerts 1 rules; " in up.stderr
        a.traffic("udp", b.ipv4, 5353, 40001, 1000, 100)  # over 500 on one port
        a.traffic("udp", b.ipv4, 5354, 40002, 300, 100)  # under it on another
        until(lambda: len(hook.alerts()) == 1, timeout=40.0, what="firing alert at the webhook")
        listed = connstats(cs_env, "alerts", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        until(lambda: len(hook.alerts()) == 2, timeout=40.0, what="resolved alert at the webhook")
        resolved_at = hook.posts[1][1]
        assert connstats(cs_env, "alerts").stdout == "no alert is firing\n"
        url = admin_url(state)
        on_nats = alerts_in(url)
        assert up.interrupt() == 0
    assert "Traceback" not in up.stderr

    labels = {"alertname": "udp-burst", "severity": "warning", "ifname": a.host_if, "dst_port": "5353"}
    host = socket.gethostname()
    [firing] = json.loads(listed.stdout)
    assert (firing["rule"], firing["severity"], firing["labels"], firing["value"], firing["host"]) == (
        "udp-burst", "warning", {"ifname": a.host_if, "dst_port": "5353"}, 1000, host)
    fired, resolved = hook.alerts()
    assert [hook.posts[0][0], hook.posts[1][0]] == ["/api/v2/alerts", "/api/v2/alerts"]
    assert (fired["labels"], fired["annotations"]["value"], resolved["labels"]) == (labels, "1000", labels)
    assert fired["annotations"]["summary"] == f"ifname={a.host_if} dst_port=5353: 1000 packets in 15s, above 500"
    assert resolved["startsAt"] == fired["startsAt"] < resolved["endsAt"]
    ends = time.mktime(time.strptime(resolved["endsAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert ends <= resolved_at
    assert fired["generatorURL"].endswith("/alerts/udp-burst")
    assert [(subject, a.state, a.labels, a.value) for subject, a in on_nats] == [
        (alerts_subject(host), "firing", labels, 1000), (alerts_subject(host), "resolved", labels, 1000)]


NEW_PORT = """
[[rule]]
name = "new-port"
kind = "new_port"
by = ["ifname"]
where = { proto = "udp", direction = "egress" }
learn = "3s"
window = "3s"
"""


def test_new_port_after_learning_and_a_restart_keeps_the_baseline(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    rules = tmp_path / "rules.toml"
    rules.write_text(NEW_PORT)
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    up = start("up", "--iface", a.host_if, "--interval", "1", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    url = admin_url(state)

    def new_ports() -> list[str]:
        return [group(alert)["dst_port"] for _, alert in alerts_in(url) if alert.state == "firing"]

    engine = start("alert", "--rules", str(rules))  # finds up's NATS and logs in as its alert user
    engine.wait_for("connstats alert: 1 rules")
    a.traffic("udp", b.ipv4, 6001, 41001, 5, 50)  # learning
    time.sleep(4.5)
    a.traffic("udp", b.ipv4, 6002, 41002, 5, 50)
    until(lambda: new_ports() == ["6002"], timeout=40.0, what="new_port alert for 6002")
    assert engine.interrupt() == 0
    baseline = state / "alerts-baseline.json"
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o600
    assert sorted(json.loads(baseline.read_text())["rules"]["new-port"]["known"][1]) == [6001, 6002]

    again = start("alert", "--rules", str(rules))
    again.wait_for("connstats alert: 1 rules")
    a.traffic("udp", b.ipv4, 6001, 41003, 5, 50)  # known from before the restart: no alert
    a.traffic("udp", b.ipv4, 6002, 41004, 5, 50)
    time.sleep(2.5)
    a.traffic("udp", b.ipv4, 6003, 41005, 5, 50)
    until(lambda: new_ports() == ["6002", "6003"], timeout=40.0, what="new_port alert for 6003")
    [(subject, last)] = [(s, m) for s, m in alerts_in(url) if m.state == "firing"][-1:]
    assert (subject, last.labels, last.value) == (
        alerts_subject(socket.gethostname()),
        {"alertname": "new-port", "severity": "warning", "ifname": a.host_if, "dst_port": "6003"}, 1)
    assert again.interrupt() == 0 and up.interrupt() == 0
    assert "Traceback" not in up.stderr + engine.stderr + again.stderr


PROBE_RULES = """
[[rule]]
name = "map-full"
kind = "overflow"
by = ["host", "ifname"]
window = "60s"
for = "3s"                        # all 500 flows were sent by then: the value is their overflow

[[rule]]
name = "silent"
kind = "silent_host"
for = "3s"
severity = "critical"

[[rule]]
name = "spike"
kind = "spike"
metric = "packets"
by = ["ifname", "dst_port"]
where = { dst_port = 5360, direction = "egress" }
window = "2s"
factor = 4
baseline = "10s"
learn = "3s"
min = 1000
"""


def test_overflow_spike_and_silent_host_with_a_separate_probe(quiet_network, cs_env, start, nats_server, tmp_path):
    a, b = quiet_network
    rules = tmp_path / "rules.toml"
    rules.write_text(PROBE_RULES)
    target = ("--nats", nats_server.url)
    engine = start("alert", "--rules", str(rules), "--host", "e2e-engine", *target)
    engine.wait_for("connstats alert: 3 rules")
    probe = start("probe", "--iface", a.host_if, "--capacity", "16", "--interval", "1", "--host", "e2e-probe",
                  *target, *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")

    def fired(rule: str) -> list[AlertMessage]:
        return [m for _, m in alerts_in(nats_server.url) if m.rule == rule and m.state == "firing"]

    a.traffic("udp-paced", b.ipv4, 5360, 42000, 400, 60, 4)  # 100 packets a second: the baseline
    time.sleep(1.0)
    a.traffic("udp", b.ipv4, 5360, 42000, 4000, 60)  # the spike
    until(lambda: fired("spike"), timeout=40.0, what="spike alert")
    a.run(sys.executable, "-c", SEND_FROM_MANY_PORTS, b.ipv4, "43000", "500", "80")  # 500 flows, map of 16
    until(lambda: fired("map-full"), timeout=40.0, what="overflow alert")
    assert probe.interrupt() == 0
    until(lambda: fired("silent"), timeout=30, what="silent_host alert")
    assert engine.interrupt() == 0
    assert "Traceback" not in engine.stderr + probe.stderr

    flows = [decode_message(m.data) for m in stream(nats_server.url, "CONNSTATS") if ".flows." in m.subject]
    overflow = [o for f in flows for o in f.envelope.overflow if o.ifname == a.host_if]
    overflowed = sum(o.packets for o in overflow)  # both directions (b's ICMP answers too)
    counted = sum(p for f in flows for p, port, d in zip(f.columns.packets, f.columns.dst_port, f.columns.direction, strict=True)
                  if port == 5600 and d == "egress")
    assert counted + sum(o.packets for o in overflow if o.direction == "egress") == 500 and overflowed > 0
    assert [(group(m), m.host, m.value) for m in fired("map-full")] == [
        ({"host": "e2e-probe", "ifname": a.host_if}, "e2e-probe", overflowed)]

    [spike] = fired("spike")
    in_window = sum(p for f in flows if spike.sent_at - 2 * 10**9 < f.envelope.interval_end <= spike.sent_at
                    for p, port, d in zip(f.columns.packets, f.columns.dst_port, f.columns.direction, strict=True)
                    if port == 5360 and d == "egress")
    assert (group(spike), spike.value, spike.threshold) == (
        {"ifname": a.host_if, "dst_port": "5360"}, in_window, 4)
    assert 1000 <= spike.value <= 4400

    [silent] = fired("silent")
    assert (silent.labels, silent.host, silent.severity) == (
        {"alertname": "silent", "severity": "critical", "host": "e2e-probe"}, "e2e-probe", "critical")
    assert 3.0 <= silent.value < 10.0

