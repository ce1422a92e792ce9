"""Issue 18: ICMPv6 is ``icmpv6`` (not ``58``) in history's JSON and table, and ``--proto
icmpv6`` selects it. Real BPF on test veths, ``ping -6`` between two test namespaces, nft
counters inside them as the oracle, the installed ``connstats`` as a user runs it."""
from __future__ import annotations

import ipaddress
import json

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH, connstats, without_times

pytestmark = pytest.mark.kernel

PINGS = 20
PAYLOAD = 56
ICMPV6_IP_BYTES = 40 + 8 + PAYLOAD  # IPv6 header, ICMPv6 echo header, payload: what nft counts
FRAME = 14 + ICMPV6_IP_BYTES  # what the probe counts: the Ethernet frame


def test_icmpv6_is_named_and_selected_by_proto(test_network, cs_env, start):
    a, b = test_network.hosts
    for host, peer in ((a, b), (b, a)):  # no neighbour discovery between the two: static entries
        host.run("ip", "-6", "neigh", "replace", peer.ipv6, "lladdr", peer.mac, "dev", "eth0", "nud", "permanent")
    b.count("requests", f"ip6 saddr {a.ipv6} ip6 daddr {b.ipv6} icmpv6 type echo-request")
    a.count("replies", f"ip6 saddr {b.ipv6} ip6 daddr {a.ipv6} icmpv6 type echo-reply")
    up = start("up", "--iface", a.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")

    a.run("ping", "-6", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-s", str(PAYLOAD), "-w", "10", b.ipv6)
    assert up.interrupt() == 0
    assert (b.counted("requests"), a.counted("replies")) == ((PINGS, PINGS * ICMPV6_IP_BYTES),) * 2

    result = connstats(cs_env, "history", "--proto", "icmpv6", "--format", "json")
    assert result.returncode == 0, result.stderr
    a6, b6 = (str(ipaddress.ip_address(h.ipv6)) for h in (a, b))  # as connstats writes them
    rows = [r for r in without_times(json.loads(result.stdout)) if {r["src_ip"], r["dst_ip"]} == {a6, b6}]
    assert sorted(rows, key=lambda r: r["direction"]) == [
        {"ifname": a.host_if, "direction": "egress", "proto": "icmpv6", "src_ip": a6, "src_port": 0,
         "dst_ip": b6, "dst_port": 0, "packets": PINGS, "bytes": PINGS * FRAME},
        {"ifname": a.host_if, "direction": "ingress", "proto": "icmpv6", "src_ip": b6, "src_port": 0,
         "dst_ip": a6, "dst_port": 0, "packets": PINGS, "bytes": PINGS * FRAME},
    ]
    every = json.loads(connstats(cs_env, "history", "--format", "json").stdout)
    assert {r["proto"] for r in every} == {"icmpv6"}  # nothing else crossed a's veth, and no "58"
    by_number = connstats(cs_env, "history", "--proto", "58", "--format", "json")
    assert json.loads(by_number.stdout) == json.loads(result.stdout)
    table = connstats(cs_env, "history", "--proto", "icmpv6")
    assert table.returncode == 0 and " icmpv6 " in table.stdout and " 58 " not in table.stdout, table.stdout
    assert "Traceback" not in up.stderr
