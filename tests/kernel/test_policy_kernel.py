"""The policy in the kernel: exact counts, verdicts and drops on real veths.

Topology (tests/fixtures/netns.py): namespaces a and b behind host-side veths on a bridge.
Groups select the veths (``ifaces``), or the pods the ContainerIndex says are behind them
(``pods``, ``k8s_namespaces``, ``labels``); their addresses come from the namespaces behind
them (resolve.endpoints_of, through the real ContainerIndex). The oracle is the kernel's own
veth counters and what the hop after the drop (b's veth) counted.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from connstats.probe.contract.errors import NotApplied, PolicyError
from connstats.probe.kernel.loader import read_map
from connstats.probe.policy import parse_policy, resolve
from connstats.probe.policy.job import ApplyJob
from connstats.probe.policy.resolve import addresses_in, endpoints_of
from connstats.probe.policy.service import PolicyService
from connstats.probe.policy.tables import ADDR_KEY, GROUPS_VALUE, PolicyTables
from connstats.probe.watch.containers import Container, ContainerIndex
from tests.fixtures.policy import udp_receiver
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

UDP4 = 14 + 20 + 8
UDP6 = 14 + 40 + 8
PING4 = 14 + 20 + 8 + 56


class Policer:
    """Applies policies to the session's classifier the way the probe's service does."""

    def __init__(self, probe, tables: PolicyTables) -> None:
        self.probe = probe
        self.tables = tables
        self.index = ContainerIndex()

    def apply(self, text: str, mode: str):
        devices = self.probe.registry.devices()
        resolved = resolve(parse_policy(text), endpoints_of(devices, self.index), addresses_in(None))
        self.tables.install(resolved, mode)
        return resolved


@pytest.fixture
def policer(probe, classifier):
    policer = Policer(probe, PolicyTables(classifier))
    yield policer
    policer.tables.off()
    policer.index.resolver.close()


def two_groups(a, b, rules: str) -> str:
    return (f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\nb = {{ ifaces = ["{b.host_if}"] }}\n'
            + rules)


def udp_rule(ports: str, source: str = "a", target: str = "b", proto: str = "udp") -> str:
    proto_value = proto if proto.isdigit() else f'"{proto}"'
    return f'\n[[allow]]\nfrom = "{source}"\nto = "{target}"\nproto = {proto_value}\n' + (
        f"ports = {ports}\n" if ports else "")


def record_totals(probe, **match):
    """(packets, bytes, {verdicts}) of the matching records over every polled interval."""
    records = [r for r in probe.records() if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in records), sum(r.bytes for r in records), {r.verdict for r in records}


@pytest.mark.parametrize("mode", ["protect", "monitor"])
def test_a_port_the_policy_does_not_allow(probe, policer, test_network, mode):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), mode)
    a_before, b_before = a.counters(), b.counters()
    a.traffic("udp", b.ipv4, 5500, 41000, 200, 100)
    a.traffic("udp", b.ipv4, 5501, 41001, 300, 100)
    probe.poll()
    a_after, b_after = a.counters(), b.counters()

    assert record_totals(probe, ifname=a.host_if, direction="egress", dst_port=5500) == (
        200, 200 * (UDP4 + 100), {"allow"})
    assert record_totals(probe, ifname=a.host_if, direction="egress", dst_port=5501) == (
        300, 300 * (UDP4 + 100), {"deny"})
    sent = a_after["tx_packets"] - a_before["tx_packets"]
    received = b_after["rx_packets"] - b_before["rx_packets"]
    assert sent == 500  # counted on a's veth: 200 allowed + 300 denied
    if mode == "protect":  # counted = delivered + dropped, exactly
        assert received == 200
        assert b_after["rx_bytes"] - b_before["rx_bytes"] == 200 * (UDP4 - 14 + 100) + 200 * 14
        assert record_totals(probe, ifname=b.host_if, dst_port=5501)[:2] == (0, 0)
    else:
        assert received == 500
        assert record_totals(probe, ifname=b.host_if, direction="ingress", dst_port=5501) == (
            300, 300 * (UDP4 + 100), {"deny"})
    assert record_totals(probe, ifname=b.host_if, direction="ingress", dst_port=5500) == (
        200, 200 * (UDP4 + 100), {"allow"})


def test_ipv6_is_judged_like_ipv4(probe, policer, test_network):
    a, b = test_network.hosts
    for host, peer in ((a, b), (b, a)):  # IPv6 on, and quiet: no solicitations, no multicast
        host.run("sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0")
        host.run("ip", "link", "set", "eth0", "multicast", "off")
        host.run("ip", "-6", "neigh", "replace", peer.ipv6, "lladdr", peer.mac, "dev", "eth0", "nud", "permanent")
    # b's device counters would also count what IPv6 sends on its own (MLD, RS): count only a's datagrams
    b.count("from_a", f"ip6 saddr {a.ipv6} udp dport 5500-5501")
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    a.traffic("udp", b.ipv6, 5500, 41000, 150, 200)
    a.traffic("udp", b.ipv6, 5501, 41001, 250, 200)
    probe.poll()
    assert b.counted("from_a") == (150, 150 * (UDP6 - 14 + 200))  # nothing denied reached b
    assert record_totals(probe, ifname=a.host_if, family=6, dst_port=5500) == (150, 150 * (UDP6 + 200), {"allow"})
    assert record_totals(probe, ifname=b.host_if, family=6, dst_port=5500) == (150, 150 * (UDP6 + 200), {"allow"})
    assert record_totals(probe, ifname=a.host_if, family=6, dst_port=5501) == (250, 250 * (UDP6 + 200), {"deny"})
    assert record_totals(probe, ifname=b.host_if, family=6, dst_port=5501)[:2] == (0, 0)


def test_tcp_replies_pass_and_a_connection_opened_the_other_way_is_dropped(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[7000]", proto="tcp")), "protect")
    server = b.popen_traffic("tcp-echo-server", b.ipv4, 7000)
    assert '"listening"' in server.stdout.readline()
    assert a.traffic("tcp-client", b.ipv4, 7000, 43000, 50, 100) == {"sent": 50}
    assert server.wait(10) == 0
    server.stdout.close()

    server = a.popen_traffic("tcp-echo-server", a.ipv4, 7000)  # a listens, b may not open to it
    assert '"listening"' in server.stdout.readline()
    b_before = b.counters()
    refused = b.run("timeout", "2", "python3", "-c", f"import socket; socket.create_connection(('{a.ipv4}', 7000), 1.5)",
                    check=False)
    b_after = b.counters()
    server.kill(), server.wait(), server.stdout.close()
    probe.poll()

    assert refused.returncode != 0
    out = record_totals(probe, ifname=a.host_if, direction="egress", dst_port=7000, src_port=43000)
    back = record_totals(probe, ifname=a.host_if, direction="ingress", src_port=7000, dst_port=43000)
    assert out[2] == back[2] == {"allow"} and out[0] >= 51 and back[0] >= 51  # 50 echoes and the handshake
    assert record_totals(probe, ifname=b.host_if, direction="ingress", dst_port=7000)[:2] == out[:2]
    syns = record_totals(probe, ifname=b.host_if, direction="egress", dst_ip=a.ipv4, dst_port=7000)
    assert syns[2] == {"deny"}
    assert syns[0] == b_after["tx_packets"] - b_before["tx_packets"]  # every SYN counted ...
    assert record_totals(probe, ifname=a.host_if, direction="ingress", dst_port=7000)[:2] == (0, 0)  # ... none passed
    assert probe.flags(ifname=b.host_if, direction="egress", dst_ip=a.ipv4, dst_port=7000) == 0x02


def ping(host, dst: str, count: int):
    return host.run("ping", "-c", str(count), "-i", "0.01", "-W", "1", "-s", "56", dst, check=False)


def test_icmp_echo_replies_pass_and_the_other_way_is_dropped(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("", proto="icmp")), "protect")
    assert ping(a, b.ipv4, 20).returncode == 0
    assert ping(b, a.ipv4, 15).returncode != 0
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, direction="egress", proto=1, dst_ip=b.ipv4) == (
        20, 20 * PING4, {"allow"})
    assert record_totals(probe, ifname=a.host_if, direction="ingress", proto=1, src_ip=b.ipv4) == (
        20, 20 * PING4, {"allow"})
    # one record of b's 20 replies (allowed) and 15 requests (denied): the strictest verdict
    assert record_totals(probe, ifname=b.host_if, direction="egress", proto=1, dst_ip=a.ipv4) == (
        35, 35 * PING4, {"deny"})
    assert record_totals(probe, ifname=a.host_if, direction="ingress", proto=1, src_ip=b.ipv4)[0] == 20


def test_a_port_range(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule('["6000-6099"]')), "protect")
    for port in (5999, 6000, 6099, 6100):
        a.traffic("udp", b.ipv4, port, 42000, 40, 10)
    probe.poll()
    for port, verdict in ((5999, "deny"), (6000, "allow"), (6099, "allow"), (6100, "deny")):
        assert record_totals(probe, ifname=a.host_if, dst_port=port) == (40, 40 * (UDP4 + 10), {verdict})
        assert record_totals(probe, ifname=b.host_if, dst_port=port)[0] == (40 if verdict == "allow" else 0)


def test_world_is_every_address_no_group_holds(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    only_a = f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\n'
    policer.apply(only_a + udp_rule("[5500]", target="world"), "protect")
    a.traffic("udp", b.ipv4, 5500, 42001, 30, 10)
    probe.poll()
    named = only_a + f'peer = {{ cidrs = ["{b.ipv4}/32"] }}\n' + udp_rule("[5500]", target="world")
    policer.apply(named, "protect")  # b's address is in a group now: not world
    a.traffic("udp", b.ipv4, 5500, 42002, 20, 10)
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, src_port=42001) == (30, 30 * (UDP4 + 10), {"allow"})
    assert record_totals(probe, ifname=b.host_if, src_port=42001) == (30, 30 * (UDP4 + 10), {""})  # ungoverned
    assert record_totals(probe, ifname=a.host_if, src_port=42002) == (20, 20 * (UDP4 + 10), {"deny"})
    assert record_totals(probe, ifname=b.host_if, src_port=42002)[:2] == (0, 0)


def test_host_is_this_hosts_own_addresses(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b])
    host_ip = a.ipv4.rsplit(".", 1)[0] + ".254"
    subprocess.run(["ip", "addr", "add", f"{host_ip}/24", "dev", test_network.bridge], check=True)
    receivers = {}
    try:
        for port in (5600, 5601):
            receivers[port] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receivers[port].bind((host_ip, port))
            receivers[port].setblocking(False)
        probe.attach(a.host_if)
        resolved = policer.apply(f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\n' + udp_rule("[5600]", target="host"),
                                 "protect")
        assert resolved.names(resolved.groups_of(host_ip)) == ["host"]
        a.traffic("udp", host_ip, 5601, 42004, 35, 10)  # first: had any passed, it would be in before the others
        a.traffic("udp", host_ip, 5600, 42003, 25, 10)
        got = {5600: 0, 5601: 0}

        def received() -> bool:
            for port, sock in receivers.items():
                got[port] += _drain(sock)
            return got[5600] >= 25

        until(received, 5, "the 25 allowed datagrams at the host")
        probe.poll()
    finally:
        for sock in receivers.values():
            sock.close()
        subprocess.run(["ip", "addr", "del", f"{host_ip}/24", "dev", test_network.bridge], check=False)
    assert got == {5600: 25, 5601: 0}
    assert record_totals(probe, ifname=a.host_if, dst_port=5600) == (25, 25 * (UDP4 + 10), {"allow"})
    assert record_totals(probe, ifname=a.host_if, dst_port=5601) == (35, 35 * (UDP4 + 10), {"deny"})


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def test_protect_monitor_off_under_steady_traffic_loses_no_count(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    b_before = b.counters()
    senders = [a.popen_traffic("udp-paced", b.ipv4, port, sport, 3000, 100, 3)
               for port, sport in ((5500, 44000), (5501, 44001))]
    time.sleep(1)
    probe.poll()
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "monitor")
    time.sleep(1)
    probe.poll()
    policer.tables.off()
    for sender in senders:
        assert sender.wait(20) == 0
        sender.stdout.close()
    probe.poll()
    b_after = b.counters()

    allowed_at_a = record_totals(probe, ifname=a.host_if, dst_port=5500)
    denied_at_a = record_totals(probe, ifname=a.host_if, dst_port=5501)
    allowed_at_b = record_totals(probe, ifname=b.host_if, direction="ingress", dst_port=5500)
    denied_at_b = record_totals(probe, ifname=b.host_if, direction="ingress", dst_port=5501)
    assert allowed_at_a[:2] == allowed_at_b[:2] == (3000, 3000 * (UDP4 + 100))  # nothing allowed dropped
    assert denied_at_a[:2] == (3000, 3000 * (UDP4 + 100))  # every packet counted once
    assert b_after["rx_packets"] - b_before["rx_packets"] == allowed_at_b[0] + denied_at_b[0]
    assert 0 < denied_at_b[0] < 3000  # dropped while protecting, delivered after
    assert {"deny", ""} <= denied_at_a[2] and allowed_at_a[2] >= {"allow", ""}


def test_a_policy_too_big_for_the_tables_is_one_error_and_the_old_one_stays(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    before = policer.tables.current()
    odd_ports = "[" + ", ".join(str(p) for p in range(1, 65536, 2)) + "]"
    huge = two_groups(a, b, "".join(udp_rule(odd_ports, proto=proto) for proto in ("tcp", "udp", "132")))
    with pytest.raises(PolicyError, match=r"^the policy does not fit the kernel's tables \(.*\); use fewer groups"):
        policer.apply(huge, "protect")
    assert policer.tables.current() == before
    a.traffic("udp", b.ipv4, 5501, 42100, 10, 10)
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, dst_port=5501) == (10, 10 * (UDP4 + 10), {"deny"})
    assert record_totals(probe, ifname=b.host_if, dst_port=5501)[:2] == (0, 0)


def test_fragments_of_an_allowed_datagram_pass(probe, policer, test_network):
    """Only the first fragment has the ports; the others pass with it (useless without it)."""
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5500, 42200, 20, 3000)  # 3 fragments each at MTU 1500
    a.traffic("udp", b.ipv4, 5501, 42201, 10, 3000)  # not allowed: first fragments dropped
    b_after = b.counters()
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, dst_port=5500) == (20, 20 * 1514, {"allow"})
    assert record_totals(probe, ifname=a.host_if, dst_port=5501) == (10, 10 * 1514, {"deny"})
    later = record_totals(probe, ifname=a.host_if, proto=17, dst_port=0, src_port=0)
    assert later[0] == 30 * 2 and later[2] == {"allow"}
    # b got the allowed datagrams whole, and of the others only fragments it cannot reassemble
    assert b_after["rx_packets"] - b_before["rx_packets"] == 20 * 3 + 10 * 2


def test_icmpv6_echo_and_neighbour_discovery_under_protect(probe, policer, test_network):
    """No static neighbours: the pings need neighbour discovery, which always passes (and
    multicast listener reports too)."""
    a, b = test_network.hosts
    a6, b6 = (ipaddress.ip_address(h.ipv6).compressed for h in (a, b))
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("", proto="icmp")), "protect")
    probe.poll()  # what the devices sent before the policy (IPv6 autoconfiguration) was judged
    probe.intervals.clear()  # without it: not what this test is about
    assert ping(a, b.ipv6, 10).returncode == 0
    assert ping(b, a.ipv6, 5).returncode != 0
    probe.poll()
    sent = record_totals(probe, ifname=a.host_if, direction="egress", proto=58, dst_ip=b6)
    assert sent[0] >= 10 and sent[2] == {"allow"}  # 10 echo requests (and a unicast NA)
    assert record_totals(probe, ifname=b.host_if, direction="ingress", proto=58, dst_ip=b6) == sent
    back = record_totals(probe, ifname=b.host_if, direction="egress", proto=58, dst_ip=a6)
    arrived = record_totals(probe, ifname=a.host_if, direction="ingress", proto=58, src_ip=b6)
    assert back[2] == {"deny"}  # one record: 10 replies allowed, 5 requests denied
    assert (back[0] - arrived[0], back[1] - arrived[1]) == (5, 5 * (14 + 40 + 8 + 56))  # the requests
    multicast = [r for r in probe.records() if r.proto == 58 and r.dst_ip.startswith("ff02::")]
    assert multicast and {r.verdict for r in multicast} == {"allow"}  # NS to solicited-node, MLD


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("bound", flush=True)
for _ in range(int(sys.argv[3])):
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[3])))
s.settimeout(2)
got = 0
for _ in range(int(sys.argv[4])):
    s.sendto(b"z" * 100, (sys.argv[1], int(sys.argv[2])))
    try:
        got += len(s.recv(2048)) == 100
    except socket.timeout:
        pass
print(got)
"""


def test_udp_replies_pass_and_the_first_packet_decides_who_opened(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, sys.executable, "-c", UDP_ECHO, b.ipv4, "5500", "30"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "bound\n"
        echoed = a.run(sys.executable, "-c", UDP_CLIENT, b.ipv4, "5500", "42300", "30").stdout
    finally:
        server.wait(10)
        server.stdout.close()
    # b may not open to a's port (no rule b -> a): a datagram from b's 5501 is its own connection
    b.traffic("udp", a.ipv4, 42300, 5501, 7, 100)
    probe.poll()
    assert echoed == "30\n"  # every request answered: the replies passed
    assert record_totals(probe, ifname=a.host_if, direction="ingress", src_port=5500) == (
        30, 30 * (UDP4 + 100), {"allow"})
    assert record_totals(probe, ifname=b.host_if, direction="egress", src_port=5501) == (
        7, 7 * (UDP4 + 100), {"deny"})
    assert record_totals(probe, ifname=a.host_if, src_port=5501)[:2] == (0, 0)


# -- an apply is done before its deadline, or not at all -----------------------------------


def far_entries(tables: PolicyTables) -> int:
    """How many entries of 100.64.0.0/10 the address trie holds, in either set (read from the kernel)."""
    addrs = tables._addrs
    keys, _ = read_map(addrs.map_fd, addrs.max_entries, ADDR_KEY, GROUPS_VALUE)
    first = np.frombuffer(keys["addr"].tobytes(), np.uint8).reshape(-1, 16)[:, :2] if len(keys) else np.zeros((0, 2))
    return int(((keys["family"] == 4) & (first[:, 0] == 100) & (first[:, 1] & 0xC0 == 64)).sum())


def far_prefixes(count: int) -> str:
    """``count`` /28 prefixes in 100.64.0.0/10, far from the test network, as a TOML list."""
    return "[" + ", ".join(f'"{ipaddress.IPv4Address(0x64400000 + 16 * i)}/28"' for i in range(count)) + "]"


def test_an_install_past_its_deadline_changes_nothing(probe, policer, test_network):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    policer.apply(two_groups(a, b, udp_rule("[5500]")), "protect")
    before = policer.tables.current()
    wider = two_groups(a, b, f"far = {{ cidrs = {far_prefixes(20_000)} }}\n" + udp_rule("[5500, 5501]"))
    resolved = resolve(parse_policy(wider), endpoints_of(probe.registry.devices(), policer.index), ())
    job = ApplyJob(deadline=time.monotonic(), seconds=0.0)  # already due: stops at the first batch
    with pytest.raises(NotApplied) as caught:
        policer.tables.install(resolved, "monitor", job)
    assert str(caught.value) == (
        "the policy was not applied: it did not compile within the 0.0 s the request gave, so the previous policy "
        "stays in force; use a longer --timeout or fewer prefixes")
    assert policer.tables.current() == before
    assert far_entries(policer.tables) == 0  # the spare set emptied again
    a.traffic("udp", b.ipv4, 5501, 42200, 30, 10)
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, dst_port=5501) == (30, 30 * (UDP4 + 10), {"deny"})
    assert record_totals(probe, ifname=b.host_if, dst_port=5501)[:2] == (0, 0)  # still protected by the old one


class HeldTables:
    """The probe's real tables; the first install waits in the worker thread, as a long
    compile would, until the test lets it go on."""

    def __init__(self, tables: PolicyTables) -> None:
        self.tables = tables
        self.entered, self.go_on = threading.Event(), threading.Event()
        self.calls = 0

    def install(self, resolved, mode, job=None) -> int:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.go_on.wait(30)
        return self.tables.install(resolved, mode, job)

    def off(self) -> int:
        return self.tables.off()


class ProbeOfTheService:
    def __init__(self, probe, tables) -> None:
        self.probe, self.tables = probe, tables

    def devices(self):
        return self.probe.registry.devices()

    def policy_tables(self):
        return self.tables


def test_a_superseded_apply_never_takes_effect_after_its_successor(probe, policer, test_network, tmp_path):
    a, b = test_network.hosts
    a.quiet([b]), b.quiet([a])
    probe.attach(a.host_if), probe.attach(b.host_if)
    held = HeldTables(policer.tables)
    service = PolicyService(violations=None, state_dir=tmp_path).bind(ProbeOfTheService(probe, held))
    older = two_groups(a, b, f"far = {{ cidrs = {far_prefixes(20_000)} }}\n" + udp_rule("[5500, 5501]"))
    newer = two_groups(a, b, udp_rule("[5500]"))

    async def both():
        first = asyncio.create_task(service.apply_verb({"text": older, "mode": "monitor", "within_ms": 30_000}))
        await asyncio.to_thread(held.entered.wait, 30)  # the older one is compiling
        second = asyncio.create_task(service.apply_verb({"text": newer, "mode": "protect", "within_ms": 30_000}))
        await asyncio.sleep(0)  # the newer one has come in
        held.go_on.set()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(both())
    assert isinstance(first, NotApplied) and str(first) == (
        "the policy was not applied: a newer apply or `policy off` came before it took effect; the newest request "
        "decides, see `connstats policy show`")
    assert (second["mode"], second["groups"], second["rules"]) == ("protect", 2, 1)
    assert service.policy.text == newer and held.calls == 2
    assert policer.tables.current()[2] == "protect"
    assert far_entries(policer.tables) == 0  # none of the older one's 20,000 prefixes in either set
    a.traffic("udp", b.ipv4, 5501, 42300, 30, 10)
    probe.poll()
    assert record_totals(probe, ifname=a.host_if, dst_port=5501) == (30, 30 * (UDP4 + 10), {"deny"})
    assert record_totals(probe, ifname=b.host_if, dst_port=5501)[:2] == (0, 0)


# -- pods: selected through the ContainerIndex, as a runtime's watcher fills it -------------

POD_POLICY = """\
[groups]
web = { pods = ["shop/web-*"] }
db  = { k8s_namespaces = ["shop"], labels = { app = "db" } }

[[allow]]
from = "web"
to = "db"
proto = "udp"
ports = [5500]
"""


def pod_sandbox(pod: str, **labels: str) -> Container:
    """A pod's sandbox as the containerd watcher would index it (the netns is the pod's)."""
    name = pod.split("/")[1]
    return Container(f"sandbox-{name}", name, "registry.k8s.io/pause:3.9", 0, runtime="containerd", pod=pod,
                     workload=name.split("-")[0], pod_labels=tuple(sorted(labels.items())))


@pytest.fixture
def pods_network(pair_network):
    """The pair, quiet, with a UDP socket on b's 5500 (no port unreachable goes back to a)."""
    a, b = pair_network.hosts
    a.quiet([b]), b.quiet([a])
    receiver = udp_receiver(["ip", "netns", "exec", b.netns], b.ipv4, 5500)
    yield a, b
    receiver.kill(), receiver.wait(), receiver.stdout.close()


def test_pod_selectors_protect_and_follow_the_pods_labels(probe, policer, pods_network, tmp_path):
    """a is the pod shop/web-..., b the pod shop/db-0 labelled app=db: a may send to b on udp
    5500 only. Then b's labels change (app=cache): b leaves the group db, its address is
    world, and the same datagrams are dropped; labelled app=db again, they pass again."""
    a, b = pods_network
    index = policer.index
    inode = {host.netns: os.stat(f"/var/run/netns/{host.netns}").st_ino for host in (a, b)}
    index.by_netns[inode[a.netns]] = pod_sandbox("shop/web-7d9f8c-x2k4q", app="web")
    index.by_netns[inode[b.netns]] = pod_sandbox("shop/db-0", app="db", tier="data")
    a_dev, b_dev = probe.attach(a.host_if), probe.attach(b.host_if)
    a_index, b_index = a_dev.ifindex, b_dev.ifindex
    service = PolicyService(violations=None, state_dir=tmp_path, containers=index).bind(
        ProbeOfTheService(probe, policer.tables))
    asyncio.run(service.apply(parse_policy(POD_POLICY), "protect"))
    resolved = service.resolved
    assert resolved.devices == {a_index: resolved.bit("web"), b_index: resolved.bit("db")}
    assert resolved.names(resolved.groups_of(b.ipv4)) == ["db"]

    a_before, b_before = a.counters(), b.counters()
    a.traffic("udp", b.ipv4, 5500, 45000, 200, 100)  # web -> db 5500: allowed
    a.traffic("udp", b.ipv4, 5501, 45001, 300, 100)  # another port: dropped
    b.traffic("udp", a.ipv4, 5500, 45002, 100, 100)  # db may not open to web: dropped
    probe.poll()
    a_after, b_after = a.counters(), b.counters()
    assert (b_after["rx_packets"] - b_before["rx_packets"], b_after["rx_bytes"] - b_before["rx_bytes"]) == (
        200, 200 * (UDP4 + 100))
    assert a_after["rx_packets"] - a_before["rx_packets"] == 0
    assert (a_after["tx_packets"] - a_before["tx_packets"], b_after["tx_packets"] - b_before["tx_packets"]) == (
        500, 100)
    for host, direction, port, verdict, packets in (
            (a, "egress", 45000, "allow", 200), (b, "ingress", 45000, "allow", 200),
            (a, "egress", 45001, "deny", 300), (b, "ingress", 45001, "", 0),
            (b, "egress", 45002, "deny", 100), (a, "ingress", 45002, "", 0)):
        expected = (packets, packets * (UDP4 + 100), {verdict} if packets else set())
        assert record_totals(probe, ifname=host.host_if, direction=direction, src_port=port) == expected

    index.by_netns[inode[b.netns]] = pod_sandbox("shop/db-0", app="cache", tier="data")
    assert asyncio.run(service.recheck()) is True
    assert service.resolved.devices == {a_index: resolved.bit("web")}
    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5500, 45003, 150, 100)
    probe.poll()
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 0
    assert record_totals(probe, ifname=a.host_if, direction="egress", src_port=45003) == (
        150, 150 * (UDP4 + 100), {"deny"})

    index.by_netns[inode[b.netns]] = pod_sandbox("shop/db-0", app="db")
    assert asyncio.run(service.recheck()) is True
    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5500, 45004, 50, 100)
    probe.poll()
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 50
    assert record_totals(probe, ifname=b.host_if, direction="ingress", src_port=45004) == (
        50, 50 * (UDP4 + 100), {"allow"})
