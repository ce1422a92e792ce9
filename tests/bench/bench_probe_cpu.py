"""The probe's CPU seconds for one full interval from a real veth: 131,072 connections.

Two test namespaces on a bridge; the probe (capacity 131,072) on the sender's host-side
veth; 131,072 UDP datagrams with distinct ports, each one connection. Then, timed in CPU
seconds of this process (``resource.getrusage``), side by side:

  schema 2   KernelProbe.poll() (flip, grace period, read) + encode_interval(batch)
  rows       the same batch as one FlowRecord per record and schema 1 JSON rows, the shape
             the probe sent before schema 2 (records() + encode_message_v1 in chunks)

    sudo .venv/bin/python tests/bench/bench_probe_cpu.py
"""
import resource
import socket
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.contract.wire import encode_message_v1  # noqa: E402
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings  # noqa: E402
from connstats.probe.publish.publisher import encode_interval, payload_limit  # noqa: E402
from tests.fixtures.netns import TestNetwork  # noqa: E402

CONNECTIONS = 131_072
ROWS_PER_MESSAGE = 3_500  # about 1 MiB of schema 1 rows


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frames(src, dst) -> str:
    """One Ethernet/IPv4/UDP frame per connection, as hex lines (``traffic.py raw``)."""
    head = bytes.fromhex(dst.mac.replace(":", "")) + bytes.fromhex(src.mac.replace(":", "")) + b"\x08\x00"
    saddr, daddr = socket.inet_aton(src.ipv4), socket.inet_aton(dst.ipv4)
    lines = []
    for i in range(CONNECTIONS):
        udp = struct.pack("!HHHH", 1024 + (i & 0x7FFF), 10000 + (i >> 15), 8 + 4, 0) + b"ping"
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, saddr, daddr)
        lines.append((head + ip + udp).hex())
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


if __name__ == "__main__":
    main()
