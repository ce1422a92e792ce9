"""Benchmark: line protocol by ``encode_lines`` vs influxdb-client ``Point``, and SQLite writes.

Run: ``.venv/bin/python tests/bench/bench_line_protocol.py [records] [rounds]``.
Both encoders run in the same process, alternating, on the same records; the script
checks that they produce the same lines, times the gzip that ``enable_gzip`` adds to the
request bodies, then times ``SqliteStore.write`` of one
message of the same size into a new file and into one that already holds intervals.
"""
from __future__ import annotations

import asyncio
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

from influxdb_client import Point, WritePrecision

from connstats.probe.contract.record import Envelope, FlowRecord, proto_name
from connstats.probe.contract.wire import FlowBatch
from connstats.sink.influx_store import chunked, encode_lines, service_port_tag
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
INTERVAL = 10 * SECOND
IFNAMES = ("eth0", "veth1a2b3c", "veth4d5e6f", "cni0")
PROTOS = (6, 6, 6, 17, 17, 1)


def message(count: int, start: int = T0) -> tuple[Envelope, list[FlowRecord]]:
    """``count`` distinct connections of one interval, spread over devices and protocols."""
    envelope = Envelope("node-1", "boot", start // INTERVAL, start, start + INTERVAL)
    records = []
    for i in range(count):
        proto = PROTOS[i % len(PROTOS)]
        ports = (0, 0) if proto == 1 else (1024 + i % 64000, (443, 53, 8080, 5432)[i % 4])
        records.append(flow_record(
            interval_start=start, interval_end=start + INTERVAL, ifindex=2 + i % 4, ifname=IFNAMES[i % 4],
            direction=("ingress", "egress")[i % 2], proto=proto, src_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            dst_ip=f"172.16.{i % 7}.{i % 250 + 1}", src_port=ports[0], dst_port=ports[1], packets=1 + i % 100,
            bytes=64 + 1500 * (i % 100), first_seen=start + i, last_seen=start + i + 1000,
            tcp_flags=0x18 if proto == 6 else 0,
        ))
    return envelope, records


def with_points(envelope: Envelope, records: list[FlowRecord]) -> list[str]:
    base = envelope.interval_start + envelope.record_offset
    return [
        Point("connstats_flow")
        .tag("host", envelope.host).tag("ifname", r.ifname).tag("direction", r.direction)
        .tag("proto", proto_name(r.proto)).tag("service_port", service_port_tag(r.src_port, r.dst_port))
        .field("src_ip", r.src_ip).field("dst_ip", r.dst_ip)
        .field("src_port", r.src_port).field("dst_port", r.dst_port)
        .field("packets", r.packets).field("bytes", r.bytes)
        .field("first_seen", r.first_seen).field("last_seen", r.last_seen)
        .field("tcp_flags", r.tcp_flags).field("family", r.family).field("ifindex", r.ifindex)
        .time(base + i, WritePrecision.NS)
        .to_line_protocol()
        for i, r in enumerate(records)
    ]


def timed(step, *args) -> tuple[float, object]:
    began = time.perf_counter()
    result = step(*args)
    return time.perf_counter() - began, result


def bench_encoders(count: int, rounds: int) -> None:
    envelope, records = message(count)
    batch = FlowBatch.from_records(envelope, records)
    ours, points = [], []
    for round_number in range(rounds):
        seconds, fast = timed(encode_lines, batch)
        ours.append(seconds)
        seconds, slow = timed(with_points, envelope, records)
        points.append(seconds)
        if round_number == 0 and fast != slow:
            raise SystemExit("encode_lines and Point disagree; fix encode_lines before trusting timings")
        print(f"round {round_number + 1}: encode_lines {ours[-1]:.3f} s, Point {points[-1]:.3f} s")
    best_ours, best_points = min(ours), min(points)
    print(f"line protocol, {count} records, best of {rounds}: encode_lines {best_ours:.3f} s "
          f"({count / best_ours:,.0f} records/s), Point {best_points:.3f} s "
          f"({count / best_points:,.0f} records/s), ratio {best_points / best_ours:.1f}x "
          f"(median ratio {statistics.median(points) / statistics.median(ours):.1f}x)")


def bench_gzip(count: int) -> None:
    """What ``enable_gzip=True`` adds per message: the client compresses each body at level 9."""
    envelope, records = message(count)
    bodies = chunked(encode_lines(FlowBatch.from_records(envelope, records)))
    raw = sum(len(body) for body in bodies)
    for level in (9, 1):
        seconds, packed = timed(lambda level=level: [gzip.compress(body, level) for body in bodies])
        print(f"gzip level {level} of {len(bodies)} request bodies ({raw:,} bytes): {seconds:.3f} s, "
              f"{sum(len(p) for p in packed):,} bytes")


async def bench_sqlite(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "flows.db")
        try:
            await store.ping()
            for round_number in range(rounds):
                envelope, records = message(count, start=T0 + round_number * INTERVAL)
                began = time.perf_counter()
                await store.write(FlowBatch.from_records(envelope, records))
                seconds = time.perf_counter() - began
                print(f"sqlite write {round_number + 1} ({round_number * count} rows before): "
                      f"{count} records in {seconds:.3f} s ({count / seconds:,.0f} records/s)")
            began = time.perf_counter()
            await store.write(FlowBatch.from_records(envelope, records))
            print(f"sqlite replay of the last message (all conflicts): {time.perf_counter() - began:.3f} s")
        finally:
            await store.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 131_072
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    bench_encoders(count, rounds)
    bench_gzip(count)
    asyncio.run(bench_sqlite(count, rounds))


if __name__ == "__main__":
    main()
