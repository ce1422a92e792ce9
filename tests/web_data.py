"""Synthetic flow data for the web page's tests, speed tests and screenshots: real
``FlowBatch``es (numpy columns), written through the real ``SqliteStore`` or published as
real flow messages.

    containers c0..c{K-1} on veths (10.50.0.x), each talking to outside peers (203.0.113.x,
    198.51.100.x) and to each other; one record per connection and interval.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from connstats.probe.contract import Envelope, FlowBatch, encode_message
from connstats.probe.contract.wire import Device, FlowColumns

BOOT_ID = "00000000-0000-4000-8000-00000000web0"
SECOND = 1_000_000_000


def container_ip(i: int) -> str:
    return f"10.50.{i // 250}.{i % 250 + 1}"


def peer_ip(i: int) -> str:
    return f"203.0.{113 + i // 250}.{i % 250 + 1}" if i < 1000 else f"198.51.{i // 250}.{i % 250 + 1}"


def synthetic_batch(host: str, seq: int, start_ns: int, length_ns: int, connections: int, *,
                    containers: int = 20, peers: int = 400, seed: int = 0, deny_every: int = 0) -> FlowBatch:
    """``connections`` distinct connections (egress, from a container's veth) in one interval;
    with ``deny_every`` N, under a policy: every Nth connection denied, the others allowed."""
    rng = np.random.default_rng(seed)
    n = np.arange(connections)
    owner = n % containers
    peer = (n // containers) % peers
    to_container = (n % 7 == 0)  # some talk to another container
    dst = np.where(to_container, [container_ip(int(c)) for c in (owner + 1) % containers],
                   [peer_ip(int(p)) for p in peer])
    packets = rng.integers(1, 5000, connections, dtype=np.uint64)
    nbytes = packets * rng.integers(60, 1500, connections, dtype=np.uint64)
    proto = np.where(n % 3 == 0, 17, 6)
    columns = FlowColumns(
        ifindex=(1000 + owner).tolist(), direction=["egress"] * connections, family=[4] * connections,
        proto=proto.tolist(), src_ip=[container_ip(int(c)) for c in owner], dst_ip=dst.tolist(),
        src_port=(20000 + n // containers).tolist(), dst_port=np.where(n % 3 == 0, 53, 443).tolist(),
        packets=packets.tolist(), bytes=nbytes.tolist(), first_seen=[start_ns + 1] * connections,
        last_seen=[start_ns + length_ns - 1] * connections, tcp_flags=[0] * connections,
        verdict=(np.where(n % deny_every == 0, "deny", "allow").tolist() if deny_every else [""] * connections),
        process=[""] * connections, pid=[0] * connections, peer_process=[""] * connections,
        peer_pid=[0] * connections,  # every column has one entry per record (decoding fills absent ones)
    )
    devices = tuple(Device(1000 + c, f"veth{c:03d}", f"{c:064x}", f"app-{c:02d}", "demo:1")
                    for c in range(min(containers, connections)))
    envelope = Envelope(host, BOOT_ID, seq, start_ns, start_ns + length_ns)
    return FlowBatch(envelope, columns, devices)


def chunked_messages(batch: FlowBatch, chunk_records: int) -> list[bytes]:
    """The batch as the probe publishes a big interval: several chunks of one interval."""
    count = (len(batch) + chunk_records - 1) // chunk_records
    messages = []
    for index in range(count):
        part = batch.slice(index * chunk_records, (index + 1) * chunk_records)
        envelope = replace(part.envelope, chunk=index, chunks=count)
        messages.append(encode_message(part.with_envelope(envelope)))
    return messages
