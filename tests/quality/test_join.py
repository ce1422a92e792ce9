"""The quality join on made-up arrays (the dtypes the tracepoints fill): which record gets a
socket's RTT and retransmits and a drop, both directions, IPv4 and IPv6, host and
container sockets, traffic through two watched veths, several reasons, drops that belong
to no record, and sockets carried to the next interval."""
from __future__ import annotations

import numpy as np
import pytest

from connstats.probe.contract.record import DropCount
from connstats.probe.contract.wire_schema import QUALITY_COLUMNS
from connstats.probe.quality.join import DeviceEnds, SocketCarry, join_quality
from tests.fixtures.quality import flow_keys
from tests.fixtures.quality import quality_snapshot as snapshot

HOST, A, B, ELSEWHERE = 4026531840, 4026532001, 4026532002, 4026532999
ETH, VETH_A, VETH_B = 2, 10, 11  # the veths' other ends are ifindex 2 in A and B, like eth0 here
DEVICES = [DeviceEnds(ETH, HOST), DeviceEnds(VETH_A, HOST, A, 2), DeviceEnds(VETH_B, HOST, B, 2)]
IFNAMES = {ETH: "eth0", VETH_A: "veth-a", VETH_B: "veth-b"}
TCP, UDP = 6, 17
NONE = (0, 0, 0, 0, 0, 0, "")

# per family: container A, container B, the host's end of veth-a, somewhere beyond eth0, the host there
NET = {4: ("10.0.0.2", "10.0.1.2", "10.0.0.1", "192.0.2.7", "192.0.2.1"),
       6: ("fd00::2", "fd00:1::2", "fd00::1", "2001:db8::7", "2001:db8::1")}


def rows_of(columns: dict) -> list[tuple]:
    assert set(columns) == set(QUALITY_COLUMNS)
    return list(zip(*(columns[name].tolist() for name in QUALITY_COLUMNS), strict=True))


def join(keys, snap, carried: SocketCarry | None = None):
    return join_quality(keys, snap, DEVICES, HOST, IFNAMES, carried or SocketCarry())


@pytest.mark.parametrize("fam", [4, 6], ids=["ipv4", "ipv6"])
def test_a_container_sockets_stats_go_to_what_it_sent_on_its_own_veth_not_the_next(fam):
    a, b, _, _, _ = NET[fam]
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80), (VETH_A, "ingress", TCP, b, 80, a, 40000),
                     (VETH_B, "ingress", TCP, a, 40000, b, 80), (VETH_B, "egress", TCP, b, 80, a, 40000))
    snap = snapshot(sockets=[(A, a, 40000, b, 80, (100, 300, 600, 3, 2)), (B, b, 80, a, 40000, (50, 70, 121, 2, 0))])
    joined = join(keys, snap)
    assert rows_of(joined.columns) == [(100, 200, 300, 2, 0, 0, ""), NONE, NONE, (50, 60, 70, 0, 0, 0, "")]
    assert (len(joined.carry), joined.expired, joined.drops) == (0, 0, ())


@pytest.mark.parametrize("fam", [4, 6], ids=["ipv4", "ipv6"])
def test_a_host_sockets_stats_go_to_the_hosts_device_it_used(fam):
    a, _, host_a, remote, host = NET[fam]
    keys = flow_keys((VETH_A, "ingress", TCP, host_a, 5000, a, 8080), (VETH_A, "egress", TCP, a, 8080, host_a, 5000),
                     (ETH, "egress", TCP, host, 33000, remote, 443), (ETH, "ingress", TCP, remote, 443, host, 33000),
                     (ETH, "egress", UDP, host, 33000, remote, 443))
    snap = snapshot(sockets=[(HOST, host_a, 5000, a, 8080, (10, 30, 40, 2, 1)),
                             (HOST, host, 33000, remote, 443, (7000, 9000, 16000, 2, 5)),
                             (A, a, 8080, host_a, 5000, (11, 11, 11, 1, 0))])
    assert rows_of(join(keys, snap).columns) == [(10, 20, 30, 1, 0, 0, ""), (11, 11, 11, 0, 0, 0, ""),
                                                 (7000, 8000, 9000, 5, 0, 0, ""), NONE, NONE]


def test_retransmits_without_rtt_samples_leave_the_rtt_empty_and_af_numbers_are_read_too():
    a, b, _, _, _ = NET[4]
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80))
    snap = snapshot(sockets=[(A, a, 40000, b, 80, (0, 0, 0, 0, 4))])
    snap.socket_keys["family"] = 2  # AF_INET, if the tables keep the kernel's numbers
    assert rows_of(join(keys, snap).columns) == [(0, 0, 0, 4, 0, 0, "")]


def test_an_ipv6_socket_talking_ipv4_gets_the_ipv4_records():
    a, b, _, _, _ = NET[4]
    keys = flow_keys((VETH_B, "egress", TCP, b, 80, a, 40000), (VETH_B, "egress", TCP, b, 81, a, 40000))
    snap = snapshot(sockets=[(B, f"::ffff:{b}", 80, f"::ffff:{a}", 40000, (20, 40, 60, 2, 3)),
                             (B, f"::ffff:{b}", 81, "fd00::9", 40000, (20, 40, 60, 2, 3))])  # not both mapped: no
    joined = join(keys, snap)
    assert rows_of(joined.columns) == [(20, 30, 40, 3, 0, 0, ""), NONE]
    assert len(joined.carry) == 1


@pytest.mark.parametrize("fam", [4, 6], ids=["ipv4", "ipv6"])
def test_drops_go_to_the_record_of_the_device_they_passed_with_the_most_frequent_reason(fam):
    a, b, _, remote, host = NET[fam]
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80), (VETH_A, "ingress", TCP, b, 80, a, 40000),
                     (VETH_B, "ingress", TCP, a, 40000, b, 80), (VETH_B, "ingress", UDP, a, 5353, b, 53),
                     (ETH, "egress", TCP, host, 33000, remote, 443))
    drops = [
        (B, 2, 12, TCP, a, 40000, b, 80, 3, 180),  # inside B, on its eth0: veth-b's record
        (B, 2, 71, TCP, a, 40000, b, 80, 5, 260),
        (B, 0, 5, UDP, a, 5353, b, 53, 6, 600),  # a socket's: no device, in B
        (A, 2, 12, TCP, a, 40000, b, 80, 1, 60),  # both orientations on veth-a: the same one first
        (HOST, ETH, 12, TCP, remote, 443, host, 33000, 2, 120),  # a reply: no record of its own
        (HOST, VETH_B, 12, TCP, b, 80, a, 40000, 1, 66),  # the host side of veth-b: the reverse record
    ]
    joined = join(keys, snapshot(drops=drops))
    assert rows_of(joined.columns) == [(0, 0, 0, 0, 1, 60, "NETFILTER_DROP"), NONE,
                                       (0, 0, 0, 0, 9, 506, "TCP_INVALID_SEQUENCE"),
                                       (0, 0, 0, 0, 6, 600, "SOCKET_RCVBUFF"), (0, 0, 0, 0, 2, 120, "NETFILTER_DROP")]
    assert joined.drops == ()


def test_a_tie_between_reasons_goes_to_the_lowest_code():
    a, b, _, _, _ = NET[4]
    keys = flow_keys((VETH_B, "ingress", TCP, a, 40000, b, 80))
    joined = join(keys, snapshot(drops=[(B, 2, 71, TCP, a, 40000, b, 80, 2, 100), (B, 2, 12, TCP, a, 40000, b, 80, 2, 90)]))
    assert rows_of(joined.columns) == [(0, 0, 0, 0, 4, 190, "NETFILTER_DROP")]


def test_drops_of_no_record_are_counted_per_device_and_reason_and_unwatched_devices_ignored():
    a, b, _, remote, host = NET[4]
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80))
    drops = [
        (A, 2, 2, UDP, b, 9, a, 9999, 2, 100),  # to a port nobody listens on, in A: veth-a
        (A, 2, 2, UDP, b, 9, a, 9998, 3, 150),
        (A, 2, 12, 1, b, 0, a, 0, 1, 98),  # ICMP
        (HOST, ETH, 9, 0, remote, 0, host, 0, 4, 240),  # a code the format names not
        (HOST, 99, 12, TCP, a, 40000, b, 80, 7, 700),  # a device nobody watches
        (ELSEWHERE, 2, 12, TCP, a, 40000, b, 80, 7, 700),  # a namespace none of ours leads to
        (HOST, 2, 12, TCP, a, 40000, b, 80, 1, 50),  # eth0: the record is veth-a's, not eth0's
    ]
    joined = join(keys, snapshot(drops=drops))
    assert rows_of(joined.columns) == [NONE]
    assert joined.drops == (DropCount(ETH, "eth0", "9", 4, 240), DropCount(ETH, "eth0", "NETFILTER_DROP", 1, 50),
                            DropCount(VETH_A, "veth-a", "NO_SOCKET", 5, 250),
                            DropCount(VETH_A, "veth-a", "NETFILTER_DROP", 1, 98))


def test_a_socket_without_a_record_is_carried_once_then_given_up():
    a, b, _, _, _ = NET[6]
    first = join(flow_keys(), snapshot(sockets=[(A, a, 40000, b, 80, (100, 100, 100, 1, 1)),
                                                (A, a, 40001, b, 80, (5, 5, 5, 1, 0))]))
    assert (len(first.carry), first.expired) == (2, 0)
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80))
    second = join(keys, snapshot(sockets=[(A, a, 40000, b, 80, (300, 500, 800, 2, 2)),
                                          (A, a, 40002, b, 80, (9, 9, 9, 1, 0))]), first.carry)
    assert rows_of(second.columns) == [(100, 300, 500, 3, 0, 0, "")]
    assert second.expired == 1  # 40001, twice without a record
    assert second.carry.keys["sport"].tolist() == [40002]
    third = join(flow_keys(), snapshot(), second.carry)
    assert (len(third.carry), third.expired) == (0, 1)


def test_nothing_in_nothing_out():
    joined = join(flow_keys(), snapshot())
    assert (rows_of(joined.columns), joined.drops, len(joined.carry), joined.expired) == ([], (), 0, 0)


def test_tuples_whose_mix_collides_are_still_told_apart(monkeypatch):
    monkeypatch.setattr("connstats.probe.quality.join._MIX", np.uint64(0))  # every tuple mixes to 0
    a, b, _, _, _ = NET[4]
    keys = flow_keys((VETH_A, "egress", TCP, a, 40000, b, 80), (VETH_A, "ingress", TCP, b, 80, a, 40000))
    snap = snapshot(sockets=[(A, a, 40000, b, 80, (100, 300, 600, 3, 2))],
                    drops=[(A, 2, 12, TCP, b, 80, a, 40000, 1, 60)])
    assert rows_of(join(keys, snap).columns) == [(100, 200, 300, 2, 0, 0, ""), (0, 0, 0, 0, 1, 60, "NETFILTER_DROP")]
