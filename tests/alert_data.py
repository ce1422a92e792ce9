"""Synthetic intervals for the alert tests: compact rows in, decoded-like FlowBatches out."""
from __future__ import annotations

from dataclasses import replace

from connstats.probe.contract import (
    DropCount,
    Envelope,
    FlowBatch,
    FlowRecord,
    OverflowCount,
    decode_message,
    encode_message,
)
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 1_790_000_000 * SECOND
IFINDEX = {"veth-a": 11, "veth-b": 12, "veth-c": 13}


def envelope(host: str, seq: int, *, seconds: float = 1.0, overflow=(), boot: str = "boot-1", drops=()) -> Envelope:
    start = T0 + int(seq * seconds * SECOND)
    return Envelope(host=host, boot_id=boot, interval_seq=seq, interval_start=start,
                    interval_end=start + int(seconds * SECOND), overflow=tuple(overflow), drops=tuple(drops))


def record(env: Envelope, ifname: str = "veth-a", *, direction: str = "egress", proto: int = 17,
           src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 40000, dport: int = 5353,
           packets: int = 1, size: int = 100, container: str = "", **who) -> FlowRecord:
    """``who``: pod, workload, runtime (the same for every record of a device), process, pid,
    peer_process, peer_pid."""
    return flow_record(interval_start=env.interval_start, interval_end=env.interval_end,
                       ifindex=IFINDEX[ifname], ifname=ifname, direction=direction, family=4, proto=proto,
                       src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, packets=packets,
                       bytes=packets * size, first_seen=env.interval_start, last_seen=env.interval_end - 1,
                       tcp_flags=0, container_id="", container_name=container, container_image="", **who)


def interval(host: str, seq: int, rows: list[dict], **kwargs) -> list[FlowBatch]:
    """One interval as the engine gets it: one chunk, through the wire format."""
    env = envelope(host, seq, **kwargs)
    batch = FlowBatch.from_records(env, [record(env, **row) for row in rows])
    return [decode_message(encode_message(batch))]


def chunked(host: str, seq: int, rows: list[dict], chunks: int, **kwargs) -> list[FlowBatch]:
    """The same interval split into ``chunks`` messages (overflow and drops in chunk 0 only)."""
    env = envelope(host, seq, **kwargs)
    batch = FlowBatch.from_records(env, [record(env, **row) for row in rows])
    step = -(-len(batch) // chunks)
    out = []
    for index in range(chunks):
        part = batch.slice(index * step, (index + 1) * step)
        part = part.with_envelope(replace(part.envelope, chunk=index, chunks=chunks,
                                          overflow=env.overflow if index == 0 else (),
                                          drops=env.drops if index == 0 else ()))
        out.append(decode_message(encode_message(part)))
    return out


def overflow(ifname: str, packets: int, direction: str = "egress") -> OverflowCount:
    return OverflowCount(IFINDEX[ifname], ifname, direction, packets, packets * 100)


def dropped(ifname: str, packets: int, reason: str = "NO_SOCKET") -> DropCount:
    """Drops of no record on ``ifname`` (the envelope's), 60 bytes each."""
    return DropCount(IFINDEX[ifname], ifname, reason, packets, packets * 60)
