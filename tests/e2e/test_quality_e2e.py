"""End to end: RTT, retransmits and drops through a real `up` into its SQLite file, two
namespaces on a bridge (the container layout), both host-side veths watched. The kernel's own
counters are the oracles: the sender namespace's TcpRetransSegs, an nft rule's counter, the
receiving UDP socket's drops, and the RTT `ss` shows."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH
from tests.fixtures.linked import DATAGRAMS, RECEIVER, SENDER, SINK, End, line, say, stop
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

CHUNKS, CHUNK = 8, 400_000


def end_of(host) -> End:
    return End(host.netns, host.ipv4, host.ipv6)


def transfer(sender: End, receiver: End, family: int, port: int) -> tuple[int, list[int]]:
    """CHUNKS times CHUNK bytes over TCP; (the sender's port, the RTT `ss` showed between
    chunks, in µs). A chunk is done once all of it is acknowledged: the RTT `ss` shows then is
    the one the next chunk's first ACK hands to tcp:tcp_probe."""
    server = receiver.start(RECEIVER, family, receiver.address(family), port)
    client = None
    samples: list[int] = []
    try:
        assert line(server) == {"ready": True}
        client = sender.start(SENDER, family, receiver.address(family), port)
        sport = line(client)["port"]
        for n in range(CHUNKS):
            if n:
                samples.append(ss_rtt_us(sender, port))
            say(client, str(CHUNK))
            assert line(client) == {"sent": CHUNK}
        assert client.stdin is not None
        client.stdin.close()
        assert line(client) == {"done": True}
        assert line(server) == {"got": CHUNKS * CHUNK}
    finally:
        for process in (client, server):
            if process is not None:
                stop(process)
    return sport, samples


def ss_rtt_us(end: End, dport: int) -> int:
    out = end.run("ss", "-tinH", "state", "established", "dport", f"= :{dport}").stdout
    rtt = out.split(" rtt:", 1)[1].split("/", 1)[0]
    return round(float(rtt) * 1000)


def datagrams(sender: End, receiver: End, family: int, port: int, count: int) -> int:
    """``count`` datagrams from one socket; its port."""
    process = sender.start(DATAGRAMS, family, receiver.address(family), port, count)
    try:
        return line(process)["port"]
    finally:
        stop(process)


def stored(db: Path, sql: str, *params) -> tuple:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(sql, params).fetchone()


@pytest.mark.parametrize("family", [4, 6])
def test_up_stores_each_connections_retransmits_drops_and_rtt(test_network, cs_env, start, family):
    host_a, host_b = test_network.hosts
    a, b = end_of(host_a), end_of(host_b)
    tcp_port, refused_port, full_port = 9700 + family, 9710 + family, 9720 + family
    for peer, other in ((a, b), (b, a)):  # the bridge has learnt both: no first packet lost
        until(lambda peer=peer, other=other: peer.run("ping", f"-{family}", "-c1", "-W1", other.address(family),
                                                      check=False).returncode == 0, what=f"IPv{family} on the bridge")
    b.nft("table inet lossy {\n counter lost {}\n counter refused {}\n chain input {\n"
          " type filter hook input priority 0\n"
          f" tcp dport {tcp_port} numgen inc mod 32 == 31 counter name lost drop\n"  # every 32nd skb
          f" udp dport {refused_port} counter name refused drop\n }}\n}}\n")
    up = start("up", "--iface", host_a.host_if, "--iface", host_b.host_if, "--interval", "1", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    db = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"

    before = a.nstat("TcpRetransSegs")
    sport, samples = transfer(a, b, family, tcp_port)
    retransmitted = a.nstat("TcpRetransSegs") - before
    refused_sport = datagrams(a, b, family, refused_port, 300)
    sink = b.start(SINK, family, b.address(family), full_port)
    try:
        assert line(sink) == {"ready": True}
        full_sport = datagrams(a, b, family, full_port, 300)
        say(sink, "read")
        queued = line(sink)["queued"]
        overflowed = b.udp_drops(family, full_port)
    finally:
        stop(sink)
    lost, refused = b.counter("lossy", "lost"), b.counter("lossy", "refused")
    assert retransmitted > 0 and overflowed == 300 - len(queued) > 0

    sent = ("SELECT SUM(retransmits), MIN(NULLIF(rtt_min_us, 0)), MAX(rtt_max_us) FROM flows "
            "WHERE ifname = ? AND proto = 6 AND src_port = ? AND dst_port = ?")
    dropped = ("SELECT SUM(drop_packets), SUM(drop_bytes), GROUP_CONCAT(DISTINCT drop_reason) FROM flows "
               "WHERE ifname = ? AND src_port = ? AND dst_port = ? AND drop_packets > 0")

    expected = (retransmitted, refused[0], overflowed, lost[1])

    def in_store() -> tuple:
        return (stored(db, sent, host_a.host_if, sport, tcp_port)[0],
                stored(db, dropped, host_b.host_if, refused_sport, refused_port)[0],
                stored(db, dropped, host_b.host_if, full_sport, full_port)[0],
                stored(db, dropped, host_b.host_if, sport, tcp_port)[1])

    try:
        until(lambda: in_store() == expected, 30, "the retransmits and drops in the store")
    except BaseException:
        print(f"(retransmits, refused, overflowed, lost bytes): stored {in_store()}, expected {expected}")
        raise
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr

    # the sender's socket: on its own veth only, the direction it sent
    retransmits, rtt_min, rtt_max = stored(db, sent, host_a.host_if, sport, tcp_port)
    assert retransmits == retransmitted
    assert stored(db, "SELECT SUM(retransmits) FROM flows WHERE ifname = ? AND src_port = ?",
                  host_b.host_if, sport) == (0,)
    assert samples and all(rtt_min <= s <= rtt_max for s in samples), (samples, rtt_min, rtt_max)
    assert rtt_max < 20_000  # an unshaped veth
    # drops: on the receiver's veth, the record of the packets dropped, with the kernel's reason
    assert stored(db, dropped, host_b.host_if, refused_sport, refused_port) == (*refused, "NETFILTER_DROP")
    assert stored(db, dropped, host_b.host_if, full_sport, full_port)[::2] == (overflowed, "SOCKET_RCVBUFF")
    assert stored(db, dropped, host_b.host_if, sport, tcp_port)[1:] == (lost[1], "NETFILTER_DROP")
    assert stored(db, "SELECT COUNT(*) FROM drops") == (0,)  # every drop had its record


def test_up_without_quality_stores_none(test_network, cs_env, start):
    host_a, host_b = test_network.hosts
    a, b = end_of(host_a), end_of(host_b)
    up = start("up", "--iface", host_a.host_if, "--no-quality", "--interval", "1", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    db = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
    b.nft("table inet lossy {\n chain input {\n type filter hook input priority 0\n udp dport 9730 drop\n }\n}\n")
    sport = datagrams(a, b, 4, 9730, 50)
    until(lambda: stored(db, "SELECT SUM(packets) FROM flows WHERE src_port = ?", sport) == (50,), 30,
          "the datagrams in the store")
    assert up.interrupt() == 0
    assert stored(db, "SELECT SUM(drop_packets), MAX(drop_reason) FROM flows") == (0, "")
