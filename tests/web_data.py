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
from connstats.probe.contract.wire_schema import OPTIONAL_COLUMNS, QUALITY_COLUMNS
from tests.fixtures.records import flow_record

BOOT_ID = "00000000-0000-4000-8000-00000000web0"
SECOND = 1_000_000_000


def container_ip(i: int) -> str:
    return f"10.50.{i // 250}.{i % 250 + 1}"


def peer_ip(i: int) -> str:
    return f"203.0.{113 + i // 250}.{i % 250 + 1}" if i < 1000 else f"198.51.{i // 250}.{i % 250 + 1}"


def synthetic_batch(host: str, seq: int, start_ns: int, length_ns: int, connections: int, *,
                    containers: int = 20, peers: int = 400, seed: int = 0, deny_every: int = 0,
                    namespaces: tuple[str, ...] = ()) -> FlowBatch:
    """``connections`` distinct connections (egress, from a container's veth) in one interval;
    with ``deny_every`` N, under a policy: every Nth connection denied, the others allowed;
    with ``namespaces``, the containers are pods in them (in turn), each sending from a
    program of its own (``app-NN``, pid 1000 + N)."""
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
        process=[f"app-{c:02d}" if namespaces else "" for c in owner.tolist()],
        pid=[1000 + c if namespaces else 0 for c in owner.tolist()], peer_process=[""] * connections,
        peer_pid=[0] * connections,  # every column has one entry per record (decoding fills absent ones)
        **{name: [OPTIONAL_COLUMNS[name]] * connections for name in QUALITY_COLUMNS},  # no RTT, no drops
    )
    devices = tuple(Device(1000 + c, f"veth{c:03d}", f"{c:064x}", f"app-{c:02d}", "demo:1",
                           **({"pod": f"{namespaces[c % len(namespaces)]}/app-{c:02d}-7d9f8c6b5-x{c:03d}z",
                               "workload": f"app-{c:02d}", "runtime": "containerd"} if namespaces else {}))
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


POD_NODE = "k8s-node-1"  # pod_records: a Kubernetes node's pods (and one Docker container)
PODS = {  # ifindex: (ifname, pod, workload)
    11: ("vethweb", "shop/web-7d9f8c6b5-x2x9z", "web"), 12: ("vethapi", "shop/api-0", "api"),
    13: ("vethdb", "shop/db-0", "db"), 14: ("vethdns", "kube-system/coredns-abc12-zz9x8", "coredns"),
    15: ("vethled", "payments/ledger-0", "ledger"), 16: ("vethpay", "payments/gateway-5c4f-k2j9d", "gateway"),
}


def pod_records(of) -> list:
    """Six pods in three Kubernetes namespaces, the process on each end where known, and a
    Docker container without a pod, in interval ``of``."""
    def pod(ifindex, **fields):
        ifname, name, workload = PODS[ifindex]
        return flow_record(of, ifindex=ifindex, ifname=ifname, pod=name, workload=workload, runtime="containerd",
                           container_name=name.split("/")[1], container_id=f"{ifindex:064x}", **fields)

    call = dict(proto=6, src_ip="10.244.0.5", src_port=41000, dst_ip="10.244.0.6", dst_port=8080, packets=10,
                bytes=5000)
    return [
        pod(11, direction="egress", process="curl", pid=812, peer_process="api-server", peer_pid=977, **call),
        pod(12, direction="ingress", process="api-server", pid=977, peer_process="curl", peer_pid=812, **call),
        pod(12, direction="ingress", proto=6, src_ip="203.0.113.4", src_port=50000, dst_ip="10.244.0.6",
            dst_port=8080, packets=3, bytes=900, process="api-server", pid=977),
        pod(12, direction="egress", proto=6, src_ip="10.244.0.6", src_port=43000, dst_ip="10.244.0.7",
            dst_port=5432, packets=4, bytes=1200, process="api-server", pid=977, peer_process="postgres", peer_pid=70),
        pod(13, direction="ingress", proto=6, src_ip="10.244.0.6", src_port=43000, dst_ip="10.244.0.7",
            dst_port=5432, packets=4, bytes=1200, process="postgres", pid=70, peer_process="api-server", peer_pid=977),
        pod(14, direction="egress", proto=17, src_ip="10.244.1.2", src_port=999, dst_ip="198.51.100.53",
            dst_port=53, packets=2, bytes=160, process="coredns", pid=55),
        pod(15, direction="egress", proto=6, src_ip="10.244.2.3", src_port=44000, dst_ip="10.244.2.4",
            dst_port=9000, packets=5, bytes=700),
        pod(16, direction="ingress", proto=6, src_ip="10.244.2.3", src_port=44000, dst_ip="10.244.2.4",
            dst_port=9000, packets=5, bytes=700),
        flow_record(of, ifindex=17, ifname="vethleg", container_name="legacy", container_id="f" * 64,
                    runtime="docker", direction="egress", proto=17, src_ip="172.17.0.2", src_port=5000,
                    dst_ip="198.51.100.53", dst_port=53, packets=1, bytes=80),
    ]


QUALITY_NODE = "qual-1"  # quality_batches: RTT, retransmits and drops on three containers' connections
QUALITY_DEVICES = {21: ("vethA", "a"), 22: ("vethB", "b"), 23: ("vethC", "c")}  # ifindex: (ifname, container)
AB = dict(proto=6, src_ip="10.60.0.2", src_port=40000, dst_ip="10.60.0.3", dst_port=5432)  # a -> b, TCP


def quality_batches(start_ns: int) -> list[FlowBatch]:
    """Two 10 s intervals of containers a, b and c: a -> b (TCP, 100 then 300 packets; RTT and
    retransmits on a's egress, drops on b's ingress, two reasons), a -> 203.0.113.9:443 (RTT 60-120 ms), b ->
    198.51.100.53:53 (1,500 dropped), c -> 198.51.100.53:53 (no quality); device drops with
    no connection on vethA and on eth9 (which has no record)."""
    from connstats.probe.contract import DropCount

    def rec(of, ifindex, direction, **fields):
        ifname, name = QUALITY_DEVICES[ifindex]
        return flow_record(of, ifindex=ifindex, ifname=ifname, container_name=name, container_id=f"{ifindex:064x}",
                           direction=direction, **fields)

    batches = []
    for seq, (sent, rtt, retransmits, drops, reason, device_drops) in enumerate(
            ((100, (800, 1500, 2500), 7, 30, "NETFILTER_DROP", 12),
             (300, (700, 2700, 4000), 3, 10, "TCP_INVALID_SEQUENCE", 8))):
        of = Envelope(QUALITY_NODE, BOOT_ID, seq + 1, start_ns + seq * 10 * SECOND, start_ns + (seq + 1) * 10 * SECOND)
        records = [
            rec(of, 21, "egress", **AB, packets=sent, bytes=1500 * sent, rtt_min_us=rtt[0], rtt_avg_us=rtt[1],
                rtt_max_us=rtt[2], retransmits=retransmits),
            rec(of, 22, "ingress", **AB, packets=sent - drops, bytes=1500 * (sent - drops), drop_packets=drops,
                drop_bytes=150 * drops, drop_reason=reason),
            rec(of, 21, "egress", proto=6, src_ip="10.60.0.2", src_port=40001, dst_ip="203.0.113.9", dst_port=443,
                packets=50, bytes=60_000, rtt_min_us=60_000, rtt_avg_us=90_000, rtt_max_us=120_000),
            rec(of, 22, "egress", proto=17, src_ip="10.60.0.3", src_port=5353, dst_ip="198.51.100.53", dst_port=53,
                packets=2000, bytes=160_000, drop_packets=750, drop_bytes=60_000, drop_reason="QDISC_DROP"),
            rec(of, 23, "egress", proto=17, src_ip="10.60.0.4", src_port=5353, dst_ip="198.51.100.53", dst_port=53,
                packets=4, bytes=320),
        ]
        batch = FlowBatch.from_records(of, records)
        batches.append(batch.with_drops((DropCount(21, "vethA", "NETFILTER_DROP", device_drops, 70 * device_drops),
                                         DropCount(9, "eth9", "NO_SOCKET", 5, 300))))
    return batches


async def write_with_quality(path, batches: list[FlowBatch]) -> None:
    """``batches`` into a SQLite store, their quality columns and drops with them."""
    from connstats.sink import sqlite_store

    store = sqlite_store.SqliteStore(path)
    for batch in batches:
        await store.write(batch)
    await store.close()
