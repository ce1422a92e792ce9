"""The quality enricher in a real probe: the real classifier on two veths into namespaces
the test made, the real namespace resolver, and in-memory quality tables that return a
snapshot the test builds: the tables flip at the classifier's flip (after it, before the
grace period), drops land on the right device's record, a detached device is unwatched
after its last interval, and a failing join costs only the quality columns."""
from __future__ import annotations

import ctypes
import os

import pytest

from connstats.probe.contract.record import DropCount
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
from connstats.probe.kernel.ownership import own_netns
from connstats.probe.quality.enricher import QualityEnricher
from tests.fixtures.quality import FakeTables, quality_snapshot

pytestmark = pytest.mark.kernel

UDP = 17


def inside(host) -> tuple[int, int]:
    """The netns inode of a test host and the ifindex of its eth0 there."""
    return os.stat(f"/run/netns/{host.netns}").st_ino, int(host.run("cat", "/sys/class/net/eth0/ifindex").stdout)


def ifindex(name: str) -> int:
    with open(f"/sys/class/net/{name}/ifindex") as f:
        return int(f.read())


def udp_record(batch, ifname: str, sport: int):
    (record,) = [r for r in batch.records() if r.ifname == ifname and r.proto == UDP and r.src_port == sport]
    return record


def test_the_tables_flip_with_the_classifier_and_drops_land_on_the_devices_records(test_network):
    a, b = test_network.hosts
    (netns_a, eth_a), (netns_b, eth_b) = inside(a), inside(b)
    host, veth_a, veth_b = own_netns(), ifindex(a.host_if), ifindex(b.host_if)
    tables = FakeTables()
    probe = KernelProbe(ProbeSettings(capacity=1024, host="test"), QualityEnricher(tables))
    try:
        probe.attach(a.host_if)
        probe.attach(b.host_if)
        assert tables.watching() == [
            ("watch_netns", host), ("watch_netns", netns_a), ("watch_device", host, veth_a),
            ("watch_device", netns_a, eth_a), ("watch_device", netns_a, 0),
            ("watch_netns", netns_b), ("watch_device", host, veth_b), ("watch_device", netns_b, eth_b),
            ("watch_device", netns_b, 0)]
        a.traffic("udp", b.ipv4, 9300, 44000, 70, 30)
        tables.snapshots.append(quality_snapshot(drops=[
            (netns_b, eth_b, 12, UDP, a.ipv4, 44000, b.ipv4, 9300, 5, 290),  # in b, on its eth0
            (netns_a, eth_a, 2, UDP, "10.1.2.3", 1, a.ipv4, 2, 1, 60)]))  # to no socket in a: no record
        active = int(probe.program.active_buffer[ctypes.c_int(0)].value)
        at_flip = []
        tables.on_flip = lambda: at_flip.append(int(probe.program.active_buffer[ctypes.c_int(0)].value))
        tables.calls.clear()
        batch = probe.poll()
        probe.commit()
        assert (at_flip, tables.calls) == ([1 - active], [("flip",), ("collect",)])
        sent, received = udp_record(batch, a.host_if, 44000), udp_record(batch, b.host_if, 44000)
        assert (sent.packets, sent.drop_packets, sent.drop_bytes, sent.drop_reason) == (70, 0, 0, "")
        assert (received.packets, received.drop_packets, received.drop_bytes, received.drop_reason) == (
            70, 5, 290, "NETFILTER_DROP")
        assert batch.envelope.drops == (DropCount(veth_a, a.host_if, "NO_SOCKET", 1, 60),)
        assert probe.failures == {"quality": 0}

        probe.detach(a.host_if)
        tables.calls.clear()
        probe.poll()  # the detached device's last interval, then it is forgotten
        probe.commit()
        assert tables.watching() == [("forget_device", host, veth_a), ("forget_device", netns_a, eth_a),
                                     ("forget_device", netns_a, 0), ("forget_netns", netns_a)]
    finally:
        probe.close()
    assert tables.closed


class BrokenTables(FakeTables):
    def collect(self):
        raise OSError(5, "collect failed")


def test_a_failing_join_costs_the_quality_columns_not_the_interval(test_network):
    a, b = test_network.hosts
    tables = BrokenTables()
    probe = KernelProbe(ProbeSettings(capacity=1024, host="test"), QualityEnricher(tables))
    try:
        probe.attach(a.host_if)
        a.traffic("udp", b.ipv4, 9300, 44001, 40, 30)
        batch = probe.poll()
        probe.commit()
    finally:
        probe.close()
    record = udp_record(batch, a.host_if, 44001)
    assert (record.packets, record.bytes, record.drop_packets, record.rtt_max_us) == (40, 40 * 72, 0, 0)
    assert probe.failures == {"quality": 1}
