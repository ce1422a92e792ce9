"""In-kernel cost per packet, with BPF_PROG_TEST_RUN, side by side in one run.

Programs: an empty classifier, a reference "plain hash map + atomic adds + timestamp"
classifier, and ours on IPv4/TCP and IPv6/TCP packets. Rounds alternate; the figures
are medians, and the ratios are what to compare across machines.

    sudo .venv/bin/python tests/bench/bench_classifier.py [repeat]
"""
import statistics
import struct
import sys

from bcc import BPF

from connstats.probe.kernel.loader import load_classifier, test_run

REPEAT = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
ROUNDS = 7
EMPTY = b"int empty(struct __sk_buff *skb) { return -1; }"
# The floor of any per-connection counter: one hash lookup with a 4-byte key, nothing else.
LOOKUP_ONLY = b"""
BPF_HASH(seen, u32, u64, 1024);
int lookup_only(struct __sk_buff *skb) {
    u32 key = 1;
    u64 *v = seen.lookup(&key);
    return v ? -1 : -1;
}
"""
REFERENCE = b"""
struct value { u64 packets; u64 bytes; u64 last_seen; };
BPF_HASH(counts, u32, struct value, 1024);
int reference(struct __sk_buff *skb) {
    u32 key = skb->hash;
    struct value zero = {};
    struct value *v = counts.lookup_or_try_init(&key, &zero);
    if (v) {
        __sync_fetch_and_add(&v->packets, 1);
        __sync_fetch_and_add(&v->bytes, skb->len);
        v->last_seen = bpf_ktime_get_ns();
    }
    return -1;
}
"""


def tcp_packet(v6: bool) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x10, 1000, 0, 0) + bytes(64)
    if v6:
        ip = struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, b"\n\0\0\x01", b"\n\0\0\x02")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def main() -> None:
    empty = BPF(text=EMPTY)
    reference = BPF(text=REFERENCE)
    lookup = BPF(text=LOOKUP_ONLY)
    ours = load_classifier()
    programs = {
        "empty": (empty.load_func(b"empty", BPF.SCHED_CLS).fd, tcp_packet(False)),
        "floor (one 4-byte-key hash lookup)": (lookup.load_func(b"lookup_only", BPF.SCHED_CLS).fd, tcp_packet(False)),
        "reference (hash + atomics + ktime)": (reference.load_func(b"reference", BPF.SCHED_CLS).fd, tcp_packet(False)),
        "connstats, IPv4/TCP": (ours.ingress_fd, tcp_packet(False)),
        "connstats, IPv6/TCP": (ours.ingress_fd, tcp_packet(True)),
    }
    samples = {name: [] for name in programs}
    for _ in range(ROUNDS):
        for name, (fd, packet) in programs.items():
            samples[name].append(test_run(fd, packet, REPEAT)[1])
    base = statistics.median(samples["empty"])
    print(f"BPF_PROG_TEST_RUN, {REPEAT:,} repeats x {ROUNDS} alternating rounds (median ns/packet)")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:38s} {median:6.1f} ns   {median / base:5.2f}x empty")
    ours.close()


if __name__ == "__main__":
    main()
