"""Drain and decode one full buffer of 131,072 connections, against bcc's items().

Both sides start from the same full map, filled anew before every round:
  ours: batch lookup-and-delete into numpy structured arrays (MapPoller's path),
  bcc:  items_lookup_and_delete_batch() with one Python object per entry.
From our arrays to the messages ready to publish (``FlowBatch.from_arrays`` then
``encode_interval`` at a 1 MiB ``max_payload``) is timed in the same rounds, against the
drain (read) alone: the probe's cost per interval beyond the kernel's.

    sudo .venv/bin/python tests/bench/bench_drain.py
"""
import statistics
import time

from connstats.probe.contract.record import Envelope
from connstats.probe.contract.wire import FlowBatch
from connstats.probe.kernel.loader import FLOW4_KEY, FLOW_COUNTERS, _batch, libbpf, load_classifier, read_map
from connstats.probe.kernel.poller import MapPoller
from connstats.probe.publish.publisher import encode_interval, payload_limit

CAPACITY = 131_072
ROUNDS = 5
WALL = 1_790_000_000 * 10**9
ENVELOPE = Envelope("bench", "b00t", 1, WALL, WALL + 10 * 10**9)


def _decoded(chunks):
    from connstats.probe.contract.wire import decode_message
    return [decode_message(payload) for _, payload in chunks]


def fill(table) -> None:
    keys = (table.Key * CAPACITY)()
    values = (table.Leaf * CAPACITY)()
    for i in range(CAPACITY):
        k = keys[i]
        k.ifindex, k.direction, k.family, k.proto = 7, i & 1, 4, 6
        k.src[0], k.src[1], k.src[2], k.src[3] = 10, 1, (i >> 8) & 0xFF, i & 0xFF
        k.dst[0], k.dst[1], k.dst[2], k.dst[3] = 10, 2, 0, 1
        k.sport, k.dport = 1024 + (i % 60000), 443
        v = values[i]
        v.packets, v.bytes, v.first_seen_ns, v.last_seen_ns, v.tcp_flags = i + 1, 1500 * (i + 1), 1, 2, 0x18
    table.items_update_batch(keys, values)


def one_lookup_and_delete_pass(map_fd: int):
    return _batch(libbpf().bpf_map_lookup_and_delete_batch, map_fd, CAPACITY, FLOW4_KEY, FLOW_COUNTERS)


def bcc_items(table) -> list:
    rows = []
    for k, v in table.items_lookup_and_delete_batch():
        rows.append({
            "ifindex": k.ifindex, "direction": k.direction, "proto": k.proto,
            "src": bytes(k.src), "dst": bytes(k.dst), "sport": k.sport, "dport": k.dport,
            "packets": v.packets, "bytes": v.bytes, "first_seen": v.first_seen_ns,
            "last_seen": v.last_seen_ns, "tcp_flags": v.tcp_flags,
        })
    return rows


def main() -> None:
    program = load_classifier(CAPACITY)
    poller = MapPoller(program)  # writes into buffer 1 from now on; we fill and drain buffer 0
    table = program.bpf[b"flows4_0"]
    ours, emptying, one_pass, bcc, build = [], [], [], [], []
    for _ in range(ROUNDS):
        fill(table)
        start = time.perf_counter()
        keys, values, contents = poller._read_buffer(0)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        poller._empty(0, contents)  # after the interval is durable
        emptying.append(time.perf_counter() - start)
        assert len(read_map(table.map_fd, CAPACITY, FLOW4_KEY, FLOW_COUNTERS)[0]) == 0
        fill(table)
        start = time.perf_counter()
        one_lookup_and_delete_pass(table.map_fd)  # what the probe did before it kept counts until durable
        one_pass.append(time.perf_counter() - start)
        assert len(keys) == CAPACITY and int(values["packets"].sum()) == CAPACITY * (CAPACITY + 1) // 2
        start = time.perf_counter()

        batch = FlowBatch.from_arrays(ENVELOPE, keys, values, mono_to_wall_ns=WALL, ifnames={7: "veth0"})
        chunks = encode_interval(batch, payload_limit(1 << 20))
        build.append(time.perf_counter() - start)
        assert sum(len(chunk) for chunk in _decoded(chunks)) == CAPACITY
        fill(table)
        start = time.perf_counter()
        rows = bcc_items(table)
        bcc.append(time.perf_counter() - start)
        assert len(rows) == CAPACITY
    o, e, d, b, r = (statistics.median(x) * 1000 for x in (ours, emptying, one_pass, bcc, build))
    print(f"drain + decode {CAPACITY:,} connections, median of {ROUNDS} alternating rounds")
    print(f"  ours: batch lookup -> numpy                {o:7.1f} ms")
    print(f"  ours: batch delete of those keys (commit)  {e:7.1f} ms   read + delete = "
          f"{(o + e) / d:4.2f}x one lookup-and-delete pass ({d:.1f} ms)")
    print(f"  bcc items_lookup_and_delete_batch + dicts {b:7.1f} ms   ours is {b / o:4.1f}x faster")
    print(f"  arrays -> encoded messages (1 MiB)        {r:7.1f} ms   drain + encode = "
          f"{(o + r) / o:4.2f}x the drain alone")
    program.close()


if __name__ == "__main__":
    main()
