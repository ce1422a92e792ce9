"""Exact counting on real veths, in test-made namespaces, with the real classifier.

Topology (tests/fixtures/netns.py): host-side veths ``a.host_if`` and ``b.host_if``
on a bridge; traffic goes from namespace a to namespace b. On a veth the default
direction is inverted, so a's packets are "egress" on a's veth (a's own view) and
"ingress" on b's veth.
"""
import json
import subprocess
import sys

import pytest

from tests import frames
from tests.fixtures.netns import TRAFFIC, run_tag

pytestmark = pytest.mark.kernel

UDP_V4_OVERHEAD = 14 + 20 + 8
UDP_V6_OVERHEAD = 14 + 40 + 8


def run_traffic_in_root_netns(*args: str, input: str) -> dict:
    out = subprocess.run([sys.executable, str(TRAFFIC), *args], input=input, text=True,
                         capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_counts_exact_packets_and_bytes_per_connection(probe, test_network, family):
    a, b = test_network.hosts
    probe.attach(a.host_if)
    probe.attach(b.host_if)
    dst = b.ipv4 if family == 4 else b.ipv6
    overhead = UDP_V4_OVERHEAD if family == 4 else UDP_V6_OVERHEAD
    a.traffic("udp", dst, 5353, 40001, 3000, 100)
    a.traffic("udp", dst, 5353, 40002, 1000, 1200)
    probe.poll()

    for ifname, direction in ((a.host_if, "egress"), (b.host_if, "ingress")):
        assert probe.totals(ifname=ifname, direction=direction, proto=17, src_port=40001,
                            dst_port=5353, family=family) == (3000, 3000 * (overhead + 100))
        assert probe.totals(ifname=ifname, direction=direction, proto=17, src_port=40002,
                            dst_port=5353, family=family) == (1000, 1000 * (overhead + 1200))
    source = a.ipv4 if family == 4 else a.ipv6
    [record] = [r for r in probe.records() if r.src_port == 40001 and r.ifname == a.host_if]
    assert (record.src_ip, record.dst_ip, record.family) == (source, dst, family)
    assert record.interval_start <= record.first_seen <= record.last_seen <= record.interval_end


def test_tcp_frames_with_ip_options_ext_headers_and_vlan(probe, test_network):
    a, b = test_network.hosts
    probe.attach(a.host_if)
    v4 = frames.eth(a.mac, frames.ETH_P_IP) + frames.ipv4(
        a.ipv4, b.ipv4, 6, frames.tcp(33000, 443, 0x02, b"p" * 20), options=b"\x01" * 8)
    v4_ack = frames.eth(a.mac, frames.ETH_P_IP) + frames.ipv4(
        a.ipv4, b.ipv4, 6, frames.tcp(33000, 443, 0x18, b"q" * 300), options=b"\x01" * 8)
    v6 = frames.eth(a.mac, frames.ETH_P_IPV6) + frames.ipv6(
        a.ipv6, b.ipv6, 6, frames.tcp(33001, 80, 0x10, b"r" * 50),
        ext=[(0, b"\x01\x04" + bytes(4)), (60, b"\x01\x0c" + bytes(12)),
             (44, b"\x00\x01" + bytes(4))])
    tagged = frames.eth(a.mac, frames.ETH_P_IP, vlan=42) + frames.ipv4(
        a.ipv4, b.ipv4, 6, frames.tcp(33002, 22, 0x01))
    batch = [v4] * 7 + [v4_ack] * 5 + [v6] * 11 + [tagged] * 3
    a.traffic("raw", "eth0", input="\n".join(f.hex() for f in batch))
    probe.poll()

    mine = dict(ifname=a.host_if, direction="egress", proto=6)
    assert probe.totals(src_port=33000, dst_port=443, family=4, **mine) == (12, 7 * len(v4) + 5 * len(v4_ack))
    assert probe.flags(src_port=33000, **mine) == 0x02 | 0x18
    assert probe.totals(src_port=33001, dst_port=80, family=6, **mine) == (11, 11 * len(v6))
    # The receiving veth moved the 802.1Q tag into skb metadata: skb->len lacks its 4 bytes.
    assert probe.totals(src_port=33002, dst_port=22, family=4, **mine) == (3, 3 * (len(tagged) - 4))
    assert probe.flags(src_port=33002, **mine) == 0x01


def test_in_band_vlan_tags_are_parsed(probe, test_network):
    """Frames sent on the host-side veth keep their tag in the packet at the egress hook."""
    a, b = test_network.hosts
    probe.attach(a.host_if)
    tagged = frames.eth(b.mac, frames.ETH_P_IP, vlan=42) + frames.ipv4(
        b.ipv4, a.ipv4, 17, frames.udp(5000, 6000, b"v" * 40))
    double = frames.eth(b.mac, 0x8100, vlan=7) + tagged[14:]
    sent = run_traffic_in_root_netns("raw", a.host_if, input="\n".join([tagged.hex()] * 4 + [double.hex()] * 2))
    assert sent == {"sent": 6}
    probe.poll()
    assert probe.totals(ifname=a.host_if, direction="ingress", proto=17, src_port=5000,
                        dst_port=6000, src_ip=b.ipv4) == (6, 4 * len(tagged) + 2 * len(double))


def test_fragments_other_protocols_and_non_ip_are_counted_not_dropped(probe, test_network):
    a, b = test_network.hosts
    probe.attach(a.host_if)
    later_fragment = frames.eth(a.mac, frames.ETH_P_IP) + frames.ipv4(
        a.ipv4, b.ipv4, 17, b"z" * 64, frag_offset=1480)
    v6_later_fragment = frames.eth(a.mac, frames.ETH_P_IPV6) + frames.ipv6(
        a.ipv6, b.ipv6, 17, b"z" * 64, ext=[(44, b"\x05\xc8" + bytes(4))])
    gre = frames.eth(a.mac, frames.ETH_P_IP) + frames.ipv4(a.ipv4, b.ipv4, 47, b"g" * 30)
    arp = frames.arp(a.mac)
    batch = [later_fragment] * 4 + [v6_later_fragment] * 2 + [gre] * 6 + [arp] * 9
    a.traffic("raw", "eth0", input="\n".join(f.hex() for f in batch))
    probe.poll()

    mine = dict(ifname=a.host_if, direction="egress")
    assert probe.totals(family=4, proto=17, src_ip=a.ipv4, src_port=0, dst_port=0, **mine) == (4, 4 * len(later_fragment))
    assert probe.totals(family=6, proto=17, src_ip=a.ipv6, src_port=0, **mine) == (2, 2 * len(v6_later_fragment))
    assert probe.totals(family=4, proto=47, **mine) == (6, 6 * len(gre))
    arp_packets, arp_bytes = probe.totals(family=0, **mine)
    assert (arp_packets, arp_bytes) == (9, 9 * len(arp))


def test_icmp_is_counted_with_proto_1(probe, test_network):
    a, b = test_network.hosts
    probe.attach(a.host_if)
    a.run("ping", "-c", "5", "-i", "0.05", "-s", "56", "-W", "2", b.ipv4)
    probe.poll()
    icmp_size = 14 + 20 + 8 + 56
    assert probe.totals(ifname=a.host_if, proto=1, direction="egress", src_ip=a.ipv4) == (5, 5 * icmp_size)
    assert probe.totals(ifname=a.host_if, proto=1, direction="ingress", src_ip=b.ipv4) == (5, 5 * icmp_size)
    [request] = [r for r in probe.records() if r.proto == 1 and r.src_ip == a.ipv4]
    assert (request.src_port, request.dst_port, request.proto_name) == (0, 0, "icmp")


def test_veth_direction_can_be_overridden(probe, test_network):
    a, b = test_network.hosts
    probe.attach(a.host_if, mode="normal")
    probe.attach(b.host_if, mode="inverted")
    a.traffic("udp", b.ipv4, 7000, 41000, 10, 10)
    probe.poll()
    assert probe.totals(ifname=a.host_if, direction="ingress", src_port=41000) == (10, 10 * 52)
    assert probe.totals(ifname=a.host_if, direction="egress", src_port=41000) == (0, 0)
    assert probe.totals(ifname=b.host_if, direction="ingress", src_port=41000) == (10, 10 * 52)
    # Re-attaching with another mode takes effect at once.
    probe.attach(a.host_if, mode="auto")
    a.traffic("udp", b.ipv4, 7000, 41000, 4, 10)
    probe.poll()
    assert probe.totals(ifname=a.host_if, direction="egress", src_port=41000) == (4, 4 * 52)


def test_overflow_counts_what_found_no_entry(tiny_probe, test_network):
    a, b = test_network.hosts
    for host in (a, b):
        host.quiet([h for h in test_network.hosts if h is not host])
    tiny_probe.attach(a.host_if)
    for port in range(42000, 42010):
        a.traffic("udp", b.ipv4, 9000, port, 50, 20)
    tiny_probe.poll()

    counted = tiny_probe.totals(ifname=a.host_if, direction="egress")
    [overflow] = [o for o in tiny_probe.overflow() if o.ifname == a.host_if and o.direction == "egress"]
    ours = tiny_probe.connections(ifname=a.host_if, direction="egress", proto=17)
    assert len(tiny_probe.connections()) == 4  # the map is full
    assert counted == (50 * len(ours), 50 * len(ours) * (UDP_V4_OVERHEAD + 20))
    assert counted[0] + overflow.packets == 500
    assert counted[1] + overflow.bytes == 500 * (UDP_V4_OVERHEAD + 20)


@pytest.mark.parametrize("tiny_probe", [1], indirect=True)
def test_overflow_beyond_the_overflow_map_is_still_counted(tiny_probe, test_network):
    """Overflow counters for one (device, direction) only: the second overflowing pair lands
    in the unattributed last-resort counter (ifindex 0), and the sum still holds."""
    a, b = test_network.hosts
    for host in (a, b):
        host.quiet([h for h in test_network.hosts if h is not host])
    nobody = b.ipv4.rsplit(".", 1)[0] + ".99"  # b's MAC, not b's address: b drops it silently
    a.run("ip", "neigh", "replace", nobody, "lladdr", b.mac, "dev", "eth0", "nud", "permanent")
    tiny_probe.attach(a.host_if)
    tiny_probe.attach(b.host_if)
    for port in range(42100, 42110):
        a.traffic("udp", nobody, 9000, port, 50, 20)
    tiny_probe.poll()

    counted = tiny_probe.totals()
    overflow = tiny_probe.overflow()
    assert {o.ifindex == 0 for o in overflow} == {True, False}  # both kinds were needed
    sent_twice = 2 * 500  # each datagram crosses both host-side veths
    assert counted[0] + sum(o.packets for o in overflow) == sent_twice
    assert counted[1] + sum(o.bytes for o in overflow) == sent_twice * (UDP_V4_OVERHEAD + 20)


def test_attach_twice_keeps_foreign_filters_working_and_installed(probe, test_network):
    from tests.fixtures.foreign import ForeignFilter

    a, b = test_network.hosts
    with ForeignFilter(a.host_if) as foreign:
        probe.attach(a.host_if)
        probe.attach(a.host_if)
        assert probe.registry._tc.our_filters(probe.registry.find(a.host_if).ifindex) == ["ingress", "egress"]
        a.traffic("udp", b.ipv4, 7100, 41100, 25, 10)
        probe.poll()
        assert probe.totals(ifname=a.host_if, src_port=41100) == (25, 25 * 52)
        assert foreign.udp_packets() == 25  # it ran after ours: we return TC_ACT_UNSPEC
        probe.registry.detach(a.host_if)
        assert foreign.installed()
        a.traffic("udp", b.ipv4, 7100, 41100, 5, 10)
        assert foreign.udp_packets() == 30
        probe.poll()
        assert probe.totals(ifname=a.host_if, src_port=41100) == (25, 25 * 52)


TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


@pytest.fixture
def tun_device():
    """A tun device (no L2 header) whose packets the test writes itself; nothing leaves it:
    the packets are addressed to nobody and the host does not forward."""
    import fcntl
    import os
    import struct

    name = f"cs{run_tag()}tun"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name, fd
    finally:
        os.close(fd)  # a non-persistent tun device disappears with its last fd
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_devices_without_l2_header_are_parsed_from_the_ip_header(probe, tun_device):
    import os

    name, fd = tun_device
    device = probe.attach(name)
    assert (device.link.kind, device.link.has_l2_header, device.inverted) == ("tun", False, False)
    udp4 = frames.ipv4("10.199.250.1", "10.199.250.2", 17, frames.udp(7001, 7002, b"t" * 100))
    tcp6 = frames.ipv6("fd00:199:250::1", "fd00:199:250::2", 6, frames.tcp(7003, 7004, 0x02))
    for packet in [udp4] * 12 + [tcp6] * 5:
        os.write(fd, packet)
    probe.poll()
    assert probe.totals(ifname=name, direction="ingress", family=4, proto=17, src_port=7001,
                        dst_port=7002) == (12, 12 * len(udp4))
    assert probe.totals(ifname=name, direction="ingress", family=6, proto=6, src_port=7003,
                        dst_port=7004) == (5, 5 * len(tcp6))
    assert probe.flags(ifname=name, src_port=7003) == 0x02
