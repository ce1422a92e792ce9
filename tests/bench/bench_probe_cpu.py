"""The probe's CPU seconds for one full interval from a real veth: 131,072 connections.

Two test namespaces on a bridge; the probe (capacity 131,072) on the sender's host-side
veth; 131,072 UDP datagrams with distinct ports, each one connection. Then, timed in CPU
seconds of this process (``resource.getrusage``), side by side:

  schema 2   KernelProbe.poll() (flip, grace period, read) + encode_interval(batch)
  rows       the same batch as one FlowRecord per record and schema 1 JSON rows, the shape
             the probe sent before schema 2 (records() + encode_message_v1 in chunks)

``--quality [rounds]``: the same interval (TCP segments this time, to a MAC nobody has, so
nothing answers) polled by a probe without and with the quality enricher, alternating, a new
probe each time: the enricher runs its join (probe/quality/join.py) on a snapshot of
in-memory tables as full as they get: 32,768 sockets (a full copy of 16,384 plus as many
carried from the interval before) whose tuples are every 4th record's on that veth's
namespace, and 8,192 drops on its eth0, half of them on records' tuples (reversed: a reply
dropped), half on none (no socket: 3 reasons). Reading the real tables is not in it.

    sudo .venv/bin/python tests/bench/bench_probe_cpu.py [--quality [rounds]]
"""
import os
import resource
import socket
import statistics
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.contract.wire import encode_message_v1  # noqa: E402
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings  # noqa: E402
from connstats.probe.kernel.ownership import own_netns  # noqa: E402
from connstats.probe.publish.publisher import encode_interval, payload_limit  # noqa: E402
from connstats.probe.quality.enricher import QualityEnricher  # noqa: E402
from connstats.probe.quality.tables import QualitySnapshot  # noqa: E402
from tests.fixtures.netns import TestHost, TestNetwork  # noqa: E402
from tests.fixtures.quality import REASONS, FakeTables  # noqa: E402

CONNECTIONS = 131_072
ROWS_PER_MESSAGE = 3_500  # about 1 MiB of schema 1 rows


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sport(i):
    return 1024 + (i & 0x7FFF)


def dport(i):
    return 10000 + (i >> 15)


def frames(src, dst, tcp: bool = False) -> str:
    """One Ethernet/IPv4/UDP frame per connection, as hex lines (``traffic.py raw``); TCP
    segments (ACK, 4 bytes) to a MAC nobody has with ``tcp``: ``dst``'s kernel never sees
    them, so it sends no reset (and no records come back)."""
    mac = "02:00:00:00:be:ef" if tcp else dst.mac
    head = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex(src.mac.replace(":", "")) + b"\x08\x00"
    saddr, daddr = socket.inet_aton(src.ipv4), socket.inet_aton(dst.ipv4)
    lines = []
    for i in range(CONNECTIONS):
        if tcp:
            l4 = struct.pack("!HHIIBBHHH", sport(i), dport(i), 1, 1, 0x50, 0x10, 1000, 0, 0) + b"ping"
        else:
            l4 = struct.pack("!HHHH", sport(i), dport(i), 8 + 4, 0) + b"ping"
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), i & 0xFFFF, 0, 64, 6 if tcp else 17, 0,
                         saddr, daddr)
        lines.append((head + ip + l4).hex())
    return "\n".join(lines) + "\n"


def main() -> None:
    network = TestNetwork("cpu", subnet=241)
    try:
        a, b = network.create(2)
        a.quiet([b])
        probe = KernelProbe(ProbeSettings(capacity=CONNECTIONS, host="bench"))
        try:
            probe.attach(a.host_if)
            probe.poll()
            probe.commit()  # an empty interval: the next one holds only our datagrams
            sent = a.traffic("raw", "eth0", input=frames(a, b))["sent"]
            began = cpu()
            batch = probe.poll()
            polled = cpu()
            chunks = encode_interval(batch, payload_limit(1 << 20))
            encoded = cpu()
            records = batch.records()
            rows = [encode_message_v1(batch.envelope, records[i:i + ROWS_PER_MESSAGE])
                    for i in range(0, len(records), ROWS_PER_MESSAGE)]
            old = cpu()
            probe.commit()
        finally:
            probe.close()
    finally:
        network.destroy()
    print(f"{sent:,} datagrams sent, {len(batch):,} connections in the interval")
    print(f"  poll (flip, grace, read, columns)   {polled - began:6.3f} CPU-s")
    print(f"  schema 2, {len(chunks)} messages           {encoded - polled:6.3f} CPU-s   "
          f"poll + encode {encoded - began:.3f} CPU-s")
    print(f"  rows: FlowRecords + schema 1, {len(rows)} msgs {old - encoded:6.3f} CPU-s   "
          f"poll + rows {polled - began + old - encoded:.3f} CPU-s")


def address(text: str) -> np.ndarray:
    return np.frombuffer(socket.inet_aton(text).ljust(16, b"\0"), "V16")[0]


def full_snapshot(src: TestHost, dst: TestHost, netns: int, ifindex: int) -> QualitySnapshot:
    """32,768 sockets on every 4th record's tuple in ``netns``; 8,192 drops on its ``ifindex``:
    every 16th record's tuple reversed (reason NETFILTER_DROP), and 4,096 of no record."""
    empty = QualitySnapshot()
    sockets = np.arange(0, CONNECTIONS, 4)
    keys = np.zeros(len(sockets), empty.socket_keys.dtype)
    keys["netns"], keys["family"], keys["sport"], keys["dport"] = netns, 4, sport(sockets), dport(sockets)
    keys["saddr"], keys["daddr"] = address(src.ipv4), address(dst.ipv4)
    stats = np.zeros(len(sockets), empty.socket_stats.dtype)
    stats["rtt_min_us"], stats["rtt_max_us"] = 100 + sockets % 50, 400 + sockets % 300
    stats["rtt_samples"] = 1 + sockets % 20
    stats["rtt_sum_us"] = stats["rtt_samples"].astype(np.uint64) * 250
    stats["retrans_segs"] = sockets % 3
    drops = np.arange(8192)
    on_record = drops < 4096
    record = drops * 16
    drop_keys = np.zeros(len(drops), empty.drop_keys.dtype)
    drop_keys["netns"], drop_keys["ifindex"], drop_keys["family"], drop_keys["proto"] = netns, ifindex, 4, 6
    drop_keys["reason"] = np.where(on_record, 12, np.array([2, 5, 71])[drops % 3])  # NETFILTER_DROP; others
    drop_keys["src"], drop_keys["dst"] = address(dst.ipv4), address(src.ipv4)
    drop_keys["sport"] = np.where(on_record, dport(record), 7)
    drop_keys["dport"] = np.where(on_record, sport(record), drops)
    values = np.zeros(len(drops), empty.drop_values.dtype)
    values["packets"], values["bytes"] = 1 + drops % 4, (1 + drops % 4) * 1500
    return QualitySnapshot(keys, stats, drop_keys, values, REASONS)


def interval_cpu(network_hosts, text: str, snapshot: QualitySnapshot | None) -> tuple[float, float, object]:
    """A new probe (with the quality enricher on ``snapshot`` if given) on a's veth: CPU-s of
    the poll of one interval of ``text``'s frames and of its schema 2 encoding, and the batch."""
    a, _ = network_hosts
    enrichers = [] if snapshot is None else [QualityEnricher(FakeTables([QualitySnapshot(), snapshot]),
                                                             host_netns=own_netns())]
    probe = KernelProbe(ProbeSettings(capacity=CONNECTIONS, host="bench"), *enrichers)
    try:
        probe.attach(a.host_if)
        probe.poll()
        probe.commit()  # an empty interval: the next one holds only our frames
        a.traffic("raw", "eth0", input=text)
        began = cpu()
        batch = probe.poll()
        polled = cpu()
        encode_interval(batch, payload_limit(1 << 20))
        encoded = cpu()
        probe.commit()
        assert not any(probe.failures.values()), probe.failures
    finally:
        probe.close()
    return polled - began, encoded - polled, batch


def quality_main(rounds: int) -> None:
    network = TestNetwork("qcpu", subnet=242)
    try:
        a, b = network.create(2)
        a.quiet([b])
        netns, ifindex = os.stat(f"/run/netns/{a.netns}").st_ino, int(a.run("cat", "/sys/class/net/eth0/ifindex").stdout)
        text, snapshot = frames(a, b, tcp=True), full_snapshot(a, b, netns, ifindex)
        poll: dict[str, list[float]] = {"A": [], "B": []}
        encode: dict[str, list[float]] = {"A": [], "B": []}
        for round_ in range(rounds):
            for side in ("AB" if round_ % 2 == 0 else "BA"):
                polled, encoded, batch = interval_cpu((a, b), text, snapshot if side == "B" else None)
                poll[side].append(polled)
                encode[side].append(encoded)
                if side == "B":
                    quality = batch
    finally:
        network.destroy()
    rtt = sum(1 for v in quality.column("rtt_min_us") if v)
    dropped = sum(1 for v in quality.column("drop_packets") if v)
    drops = quality.envelope.drops
    print(f"{len(quality):,} TCP connections in the interval; with quality: {rtt:,} records with an RTT, "
          f"{dropped:,} with drops, {len(drops)} DropCounts of {sum(d.packets for d in drops):,} packets")
    print(f"the probe's CPU per interval, {rounds} alternating rounds (A = no quality, B = + the join "
          "of 32,768 sockets and 8,192 drops), medians")
    for name, a_side, b_side in (("poll", poll["A"], poll["B"]), ("schema 2 encoding", encode["A"], encode["B"]),
                                 ("poll + encode", [p + e for p, e in zip(poll["A"], encode["A"], strict=True)],
                                  [p + e for p, e in zip(poll["B"], encode["B"], strict=True)])):
        ma, mb = statistics.median(a_side), statistics.median(b_side)
        print(f"  {name:18s} A {ma:6.3f} CPU-s  B {mb:6.3f} CPU-s  B/A {mb / ma:5.2f}x  "
              f"B - A {1000 * (mb - ma):6.1f} CPU-ms   spread A {min(a_side):.3f}-{max(a_side):.3f}, "
              f"B {min(b_side):.3f}-{max(b_side):.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--quality"]:
        quality_main(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    else:
        main()
