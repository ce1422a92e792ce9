"""The join at drain on made-up arrays: which socket owner each end of a record gets, and
which name an owner gets."""
from __future__ import annotations

import ipaddress

import numpy as np

from connstats.probe.identity.addresses import address_map
from connstats.probe.identity.join import AddressTable, OwnerTable, name_connections
from connstats.probe.identity.naming import choose_names
from connstats.probe.identity.socket_owners import OWNER

HOST, POD = 4026531833, 4026532174
VETH, ETH = 12, 2


def raw(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def column(*texts: str) -> np.ndarray:
    return np.frombuffer(b"".join(raw(t).ljust(16, b"\0") for t in texts), dtype="V16")


OWNERS = OwnerTable.of(
    netns=np.array([POD, HOST, POD, HOST, HOST]), proto=np.array([6, 6, 17, 17, 6]),
    port=np.array([40000, 8080, 5353, 40000, 40000]), pids=np.array([11, 22, 33, 44, 55]),
    names=np.array(["curl", "nginx", "dig", "dns", "hosttcp"], dtype=object))
ADDRESSES = AddressTable.of(address_map({HOST: [raw("10.241.0.1"), raw("fd74::1"), raw("127.0.0.1")],
                                         POD: [raw("10.241.0.2"), raw("fd74::2"), raw("::1")]}))


def join(rows: list[tuple]) -> list[tuple]:
    """rows: (ifindex, egress, proto, src, sport, dst, dport) -> (process, pid, peer_process, peer_pid)."""
    ifindex, egress, proto, src, sport, dst, dport = zip(*rows, strict=True)
    family = np.array([6 if ":" in address else 4 for address in src], np.uint8)
    named = name_connections(OWNERS, ADDRESSES, ifindex=np.array(ifindex, np.uint32), egress=np.array(egress),
                             family=family, proto=np.array(proto, np.uint8), sport=np.array(sport, np.uint16),
                             dport=np.array(dport, np.uint16), src=column(*src), dst=column(*dst),
                             device_netns={VETH: POD}, default_netns=HOST)
    return list(zip(named.process.tolist(), named.pid.tolist(), named.peer_process.tolist(),
                    named.peer_pid.tolist(), strict=True))


def test_each_end_by_direction_device_netns_and_remote_address():
    assert join([
        (VETH, True, 6, "10.241.0.2", 40000, "10.241.0.1", 8080),  # the pod's curl to the host's nginx
        (VETH, False, 6, "10.241.0.1", 8080, "10.241.0.2", 40000),  # the answer
        (VETH, True, 17, "fd74::2", 5353, "fd74::1", 40000),  # v6 UDP, the host's port 40000 is UDP "dns"
        (ETH, True, 6, "10.241.0.1", 40000, "192.0.2.9", 443),  # host device: own netns; the remote is elsewhere
        (VETH, True, 1, "10.241.0.2", 0, "10.241.0.1", 0),  # ICMP: nobody
        (VETH, True, 6, "10.241.0.2", 40001, "10.241.0.1", 8081),  # ports nobody owns
        (ETH, True, 6, "192.0.2.7", 40000, "198.51.100.1", 443),  # forwarded: its source is not ours
        (VETH, True, 6, "10.241.0.1", 40000, "10.241.0.2", 8080),  # the veth's end with the host's address
        (VETH, True, 17, "fe80::2", 5353, "fe80::1", 40000),  # link-local: every netns has one, the device says
    ]) == [
        ("curl", 11, "nginx", 22),
        ("curl", 11, "nginx", 22),
        ("dig", 33, "dns", 44),
        ("hosttcp", 55, "", 0),
        ("", 0, "", 0),
        ("", 0, "", 0),
        ("", 0, "", 0),
        ("", 0, "", 0),
        ("dig", 33, "", 0),
    ]


LO = 1


def test_a_loopback_peer_is_in_the_local_end_s_own_namespace():
    """Over lo (or any device) to 127.0.0.0/8 or ::1, both ends are sockets of that one
    namespace: the sender's and the receiver's programs are both named."""
    assert join([
        (LO, True, 6, "127.0.0.1", 40000, "127.0.0.1", 8080),  # the host's hosttcp to the host's nginx
        (LO, False, 6, "127.0.0.1", 40000, "127.0.0.1", 8080),  # the same packets, arriving
        (LO, True, 6, "127.0.0.9", 40000, "127.0.0.1", 8081),  # to a loopback port nobody owns
        (VETH, True, 17, "::1", 5353, "::1", 5353),  # in the pod's namespace: the pod's dig, both ends
    ]) == [
        ("hosttcp", 55, "nginx", 22),
        ("nginx", 22, "hosttcp", 55),
        ("hosttcp", 55, "", 0),
        ("dig", 33, "dig", 33),
    ]


def test_loopback_link_local_and_shared_addresses_name_no_namespace():
    mapped = address_map({HOST: [raw("127.0.0.1"), raw("fe80::1"), raw("10.9.9.9"), raw("10.1.1.1")],
                          POD: [raw("::1"), raw("10.9.9.9"), raw("169.254.1.1"), raw("10.2.2.2")]})
    assert mapped == {raw("10.1.1.1").ljust(16, b"\0"): HOST, raw("10.2.2.2").ljust(16, b"\0"): POD}


def test_empty_tables_name_nobody():
    named = name_connections(OwnerTable.empty(), AddressTable.of({}), ifindex=np.array([VETH], np.uint32),
                             egress=np.array([True]), family=np.array([4]), proto=np.array([6], np.uint8), sport=np.array([1], np.uint16),
                             dport=np.array([2], np.uint16), src=column("10.0.0.1"), dst=column("10.0.0.2"),
                             device_netns={}, default_netns=HOST)
    assert (named.process.tolist(), named.pid.tolist(), named.peer_process.tolist(), named.peer_pid.tolist()) == (
        [""], [0], [""], [0])


def test_the_process_name_from_proc_only_when_that_process_wrote_the_entry():
    owners = np.zeros(4, OWNER)
    owners["pid"] = [10, 11, 12, 10]
    owners["seen_ns"] = [5_000, 5_000, 5_000, 9_000]
    owners["comm"] = [b"worker-thread", b"old-name", b"gone", b"worker-thread"]
    living = {10: (1_000 + 100, "nginx"),  # started before its entries were written (boot = mono + 100)
              11: (7_000 + 100, "newcomer")}  # the pid was reused after its entry: not its socket
    assert choose_names(owners, living, boot_minus_mono=100).tolist() == ["nginx", "old-name", "gone", "nginx"]
