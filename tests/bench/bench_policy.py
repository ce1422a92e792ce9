"""The policy's cost per packet in the kernel, with BPF_PROG_TEST_RUN, side by side in one run.

Two loads of the same classifier: one without a policy, one in protect mode with 1,000
rules over 60 groups (prefixes), governing the device the test runs on (loopback: what
BPF_PROG_TEST_RUN gives a TC program). Figures are medians of alternating rounds.

- a known connection: one TCP ACK packet repeated (judged on its first run, then cached);
- a connection's first packet: a SYN of a new port each run (insert, judge, conntrack).

    sudo .venv/bin/python tests/bench/bench_policy.py [repeat]
"""
import ctypes
import statistics
import struct
import sys

from connstats.probe.kernel.loader import load_classifier, test_run
from connstats.probe.policy import parse_policy
from connstats.probe.policy.resolve import Resolved
from connstats.probe.policy.tables import PolicyTables

REPEAT = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
ROUNDS = 7
FIRST_PACKETS = 2_000  # per round and program
LOOPBACK = 1
GROUPS = 60
RULES = 1_000


def tcp_packet(sport: int, flags: int, dport: int = 443) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 1000, 0, 0) + bytes(64)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, b"\n\0\0\x01", b"\n\x01\0\x02")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def thousand_rules() -> Resolved:
    """Groups g0..g59 (10.<i>.0.0/16); 999 rules on other ports plus g0 -> g1 tcp 443."""
    groups = "".join(f'g{i} = {{ cidrs = ["10.{i}.0.0/16"] }}\n' for i in range(GROUPS))
    rules = "".join(f'[[allow]]\nfrom = "g{i % GROUPS}"\nto = "g{(7 * i + 1) % GROUPS}"\nproto = "tcp"\n'
                    f"ports = [{1000 + i}]\n" for i in range(RULES - 1))
    rules += '[[allow]]\nfrom = "g0"\nto = "g1"\nproto = "tcp"\nports = [443]\n'
    policy = parse_policy("[groups]\n" + groups + rules)
    assert len(policy.rules) == RULES
    prefixes = {g.cidrs[0]: 1 << policy.group_names.index(g.name) for g in policy.groups}
    return Resolved(policy, {LOOPBACK: 1 << policy.group_names.index("g0")}, prefixes)


def first_packet_ns(fd: int, round_: int) -> float:
    """Mean ns of a connection's first packet: a SYN of a port not seen before, one run each."""
    base = 1024 + round_ * FIRST_PACKETS
    return statistics.fmean(test_run(fd, tcp_packet(base + i, 0x02), 1)[1] for i in range(FIRST_PACKETS))


def main() -> None:
    plain = load_classifier()
    policed = load_classifier()
    PolicyTables(policed).install(thousand_rules(), "protect")
    known = tcp_packet(40000, 0x10)
    programs = {"no policy": plain.ingress_fd, f"protect, {RULES:,} rules": policed.ingress_fd}
    actions = {name: (ctypes.c_int32(test_run(fd, tcp_packet(39999, 0x02), 1)[0]).value,
                      ctypes.c_int32(test_run(fd, tcp_packet(39998, 0x02, dport=444), 1)[0]).value)
               for name, fd in programs.items()}
    samples = {(name, kind): [] for name in programs for kind in ("known", "first")}
    for round_ in range(ROUNDS):
        for name, fd in programs.items():
            samples[name, "known"].append(test_run(fd, known, REPEAT)[1])
            samples[name, "first"].append(first_packet_ns(fd, round_))
    print(f"BPF_PROG_TEST_RUN, {ROUNDS} alternating rounds (median ns/packet); "
          f"known: {REPEAT:,} repeats, first: {FIRST_PACKETS:,} new connections a round")
    for kind, label in (("known", "a known connection"), ("first", "a connection's first packet")):
        base = statistics.median(samples["no policy", kind])
        for name in programs:
            median = statistics.median(samples[name, kind])
            print(f"  {label:28s} {name:20s} {median:7.1f} ns   {median / base:5.2f}x no policy")
    print("  TC actions (SYN to 443 allowed, SYN to 444 not): "
          + ", ".join(f"{name}: {allowed}, {denied}" for name, (allowed, denied) in actions.items())
          + "  (-1 passes, 2 drops)")
    plain.close()
    policed.close()


if __name__ == "__main__":
    main()
