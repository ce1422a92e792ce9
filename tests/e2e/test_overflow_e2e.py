"""Overflow reaches the store: a probe whose maps hold 16 connections sees 500; the stored
device totals still equal what was sent, packet for packet and byte for byte."""
from __future__ import annotations

import json
import sys

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD, connstats
from tests.fixtures.traffic import CONNECTIONS, SEND_FROM_MANY_PORTS, SIZE

pytestmark = pytest.mark.kernel


def test_capacity_16_and_500_connections_store_exact_device_totals(quiet_network, cs_env, start):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--capacity", "16", "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    before = a.counters()
    a.run(sys.executable, "-c", SEND_FROM_MANY_PORTS, b.ipv4, "43000", str(CONNECTIONS), str(SIZE))
    assert up.interrupt() == 0, up.stderr
    after = a.counters()  # the kernel's own count of what crossed the veth: the oracle
    sent = (after["tx_packets"] - before["tx_packets"], after["tx_bytes"] - before["tx_bytes"])
    replies = (after["rx_packets"] - before["rx_packets"], after["rx_bytes"] - before["rx_bytes"])
    assert sent == (CONNECTIONS, CONNECTIONS * (UDP_V4_OVERHEAD + SIZE))
    assert "Traceback" not in up.stderr

    by_iface = connstats(cs_env, "history", "--since", "1h", "--group-by", "iface", "--format", "json")
    assert by_iface.returncode == 0, by_iface.stderr
    totals = {(r["ifname"], r["direction"]): (r["packets"], r["bytes"]) for r in json.loads(by_iface.stdout)}
    # egress: the 500 datagrams; ingress: b's ICMP port-unreachable answers (rate-limited)
    assert totals == {(a.host_if, "egress"): sent, **({(a.host_if, "ingress"): replies} if replies[0] else {})}
    rows = json.loads(connstats(cs_env, "history", "--since", "1h", "--format", "json").stdout)
    egress = [r for r in rows if r["direction"] == "egress"]
    counted = [r for r in egress if r["src_ip"] != "(overflow)"]
    overflow = [r for r in egress if r["src_ip"] == "(overflow)"]
    assert sum(r["packets"] for r in counted + overflow) == CONNECTIONS
    assert len(counted) <= 16 * 2 and len(overflow) == 1  # per interval at most a full map
