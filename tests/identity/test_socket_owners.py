"""The process on each end of a connection, named by the socket-owner tracepoints and the
join at drain: real programs with names of their own on both ends of a veth, one in a
namespace the test made, one on the host; the probe on the host end of the veth."""
from __future__ import annotations

import pytest

from connstats.probe.identity.naming import ProcessNamer
from connstats.probe.identity.socket_owners import KIND_PREFILL, KIND_PREFILL_LISTEN
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
from tests.fixtures.processes import start_program, wait_settled

pytestmark = pytest.mark.kernel

ETHERNET = 14  # the records count frames; nft counts IP packets
PROTO = {"tcp": 6, "udp": 17}


def named_probe(veth) -> KernelProbe:
    namer = ProcessNamer.start(interval=1.0)
    assert namer is not None, "this kernel should name processes (see the log)"
    probe = KernelProbe(ProbeSettings(capacity=4096, host="proc-test"), namer)
    probe.attach(veth.host_if)
    return probe


@pytest.fixture
def named(veth_netns):
    probe = named_probe(veth_netns)
    try:
        yield probe
    finally:
        probe.close()


def oracle(veth, proto: str, port: int) -> None:
    """Counters in the namespace of the test connection's packets, each way."""
    matches = [f"meta l4proto {proto} th sport {port}", f"meta l4proto {proto} th dport {port}"]
    veth.count("sent", matches, "output")  # leaving the namespace: the records' egress
    veth.count("arrived", matches, "prerouting")


def drained(probe, proto: str, port: int) -> dict[str, object]:
    """This connection's records of one poll, by direction."""
    batch = probe.poll()
    probe.commit()
    records = [r for r in batch.records() if r.proto == PROTO[proto] and port in (r.src_port, r.dst_port)]
    by_direction = {r.direction: r for r in records}
    assert len(by_direction) == len(records) == 2, records
    return by_direction


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("server_in_netns", [False, True], ids=["server-on-host", "server-in-netns"])
def test_both_ends_of_a_connection_are_named(named, veth_netns, named_programs, proto, family, server_in_netns):
    veth = veth_netns
    port = 9400 + 10 * family + (1 if proto == "udp" else 0) + (2 if server_in_netns else 0)
    address = veth.address(server_in_netns, family)
    oracle(veth, proto, port)
    count, size = 30, 200
    server = start_program(named_programs, veth, "server", in_netns=server_in_netns, proto=proto, address=address,
                           port=port, count=count, size=size)
    try:
        assert server.line()["ready"] == port
        client = start_program(named_programs, veth, "client", in_netns=not server_in_netns, proto=proto,
                               address=address, port=port, count=count, size=size)
        try:
            client_said = client.finish()
            server_said = server.finish()
        finally:
            client.stop()
    finally:
        server.stop()
    assert server_said["got"] == (count * size if proto == "tcp" else count)
    if proto == "tcp":
        wait_settled(veth)
    records = drained(named, proto, port)

    inside, outside = (server, client) if server_in_netns else (client, server)
    inside_name, outside_name = ((named_programs.server_name, named_programs.client_name) if server_in_netns
                                 else (named_programs.client_name, named_programs.server_name))
    for record in records.values():
        assert (record.process, record.pid, record.peer_process, record.peer_pid) == (
            inside_name, inside.pid, outside_name, outside.pid), record
    client_port = server_said["peer"]
    sent, arrived = veth.counted("sent"), veth.counted("arrived")
    egress, ingress = records["egress"], records["ingress"]
    assert (egress.packets, egress.bytes) == (sent[0], sent[1] + ETHERNET * sent[0])
    assert (ingress.packets, ingress.bytes) == (arrived[0], arrived[1] + ETHERNET * arrived[0])
    if proto == "udp":  # the programs' own count: one datagram each way per message
        assert (egress.packets, ingress.packets) == (count, count)
        ip_header = 20 if family == 4 else 40
        assert egress.bytes == count * (ETHERNET + ip_header + 8 + size)
        assert client_said["port"] == client_port
    local_port = port if server_in_netns else client_port
    assert egress.src_port == local_port and ingress.dst_port == local_port


def listener_closed(namer) -> bool:
    keys, values = namer.owners.snapshot()
    [closed] = [int(v["closed_ns"]) for k, v in zip(keys, values, strict=True)
                if (int(k["port"]), int(k["proto"])) == (9500, 6)]
    return closed != 0


def test_a_server_started_before_the_probe_is_named(veth_netns, named_programs):
    veth = veth_netns
    tcp = start_program(named_programs, veth, "server", in_netns=True, proto="tcp", address=veth.peer4, port=9500,
                        count=5, size=100)
    udp = start_program(named_programs, veth, "server", in_netns=True, proto="udp", address=veth.peer6, port=9501,
                        count=5, size=100)
    try:
        assert (tcp.line()["ready"], udp.line()["ready"]) == (9500, 9501)
        probe = named_probe(veth)  # both sockets exist already: only /proc knows their owner
        try:
            namer = probe.enricher("processes")
            assert isinstance(namer, ProcessNamer)
            keys, values = namer.owners.snapshot()
            found = {(int(k["port"]), int(k["proto"])): (int(v["pid"]), int(v["kind"]))
                     for k, v in zip(keys, values, strict=True) if int(k["port"]) in (9500, 9501)}
            assert found == {(9500, 6): (tcp.pid, KIND_PREFILL_LISTEN), (9501, 17): (udp.pid, KIND_PREFILL)}

            oracle(veth, "tcp", 9500)
            client = start_program(named_programs, veth, "client", in_netns=False, proto="tcp", address=veth.peer4,
                                   port=9500, count=5, size=100)
            client.finish()
            assert tcp.line()["got"] == 500  # served; its listener is still open
            wait_settled(veth)
            records = drained(probe, "tcp", 9500)
            # the entry /proc gave has no socket address: the accepted socket's close must
            # leave it, the listener's close tombstone it
            assert listener_closed(namer) is False
            tcp.let_go()
            tcp.process.wait(10)
            assert listener_closed(namer) is True
        finally:
            probe.close()
    finally:
        tcp.stop()
        udp.stop()
    for record in records.values():
        assert (record.process, record.pid, record.peer_process, record.peer_pid) == (
            named_programs.server_name, tcp.pid, named_programs.client_name, client.pid)
    sent = veth.counted("sent")
    assert (records["egress"].packets, records["egress"].bytes) == (sent[0], sent[1] + ETHERNET * sent[0])


class FailingNamer:
    """A namer whose every step fails: the probe must count and publish all the same."""

    kind = "processes"
    closed = False

    def attached(self, device) -> None:
        raise OSError(5, "attached failed")

    def forget(self, ifindex: int) -> None:
        pass

    def flip(self) -> None:
        pass

    def enrich(self, batch, keys):
        raise RuntimeError("enrich failed")

    def sweep(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_a_failing_namer_costs_the_names_not_the_interval(veth_netns, named_programs):
    veth = veth_netns
    namer = FailingNamer()
    probe = KernelProbe(ProbeSettings(capacity=1024, host="proc-test"), namer)
    try:
        probe.attach(veth.host_if)
        server = start_program(named_programs, veth, "server", in_netns=False, proto="udp", address=veth.host4,
                               port=9700, count=3, size=50)
        try:
            assert server.line()["ready"] == 9700
            start_program(named_programs, veth, "client", in_netns=True, proto="udp", address=veth.host4, port=9700,
                          count=3, size=50).finish()
            server.finish()
        finally:
            server.stop()
        records = drained(probe, "udp", 9700)
        assert probe.naming_failures == 2  # attached() and enrich()
    finally:
        probe.close()
    assert namer.closed
    assert {(r.direction, r.packets, r.bytes, r.process, r.pid) for r in records.values()} == {
        ("egress", 3, 3 * (ETHERNET + 20 + 8 + 50), "", 0), ("ingress", 3, 3 * (ETHERNET + 20 + 8 + 50), "", 0)}
