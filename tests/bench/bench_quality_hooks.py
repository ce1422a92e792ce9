"""What the quality tracepoints (RTT, retransmits, drops) cost, A/B in alternating rounds.

Two test namespaces routed through the host, each behind a veth of its own
(tests/fixtures/routed.py's layout; forwarding on those two host ends only), the classifier
on both host ends in every round. The quality tracepoints (probe/quality/quality.py) are
loaded once and watch what the probe would: ``QualityEnricher.attached`` for both veths
(the host's namespace, both namespaces, both ends' devices), so the filters pass for the
benchmark's own sockets and drops. A = classifier only (tracepoints detached); B = A + the
four tracepoints attached. The order flips each round; figures are medians and B/A ratios
within this run (kernel.bpf_stats_enabled=1 in both, then restored).

    1. iperf3 TCP from namespace a to b, through both watched veths
    2. the same with an nft rule in b dropping every 32nd data skb (retransmit-heavy: every
       hook fires: tcp_probe, tcp_retransmit_skb, kfree_skb with NETFILTER_DROP)
    3. in-kernel ns per hook call (bpftool's run_time_ns / run_cnt, B rounds), calls per
       GB received and the hooks' share of the host's busy CPU time in those rounds
    4. a check that the hooks counted: retransmitted segments in a's tables against a's
       TcpRetransSegs (nstat), drop bytes against the nft rule's counter

    sudo .venv/bin/python tests/bench/bench_quality_hooks.py [rounds] [seconds] [bitrate]

bitrate: iperf3's -b (e.g. 500M; 0, the default: as fast as it goes).
"""
import ctypes
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from connstats.probe.kernel.devices import DeviceRegistry
from connstats.probe.kernel.loader import libbpf, load_classifier, wait_for_grace_period
from connstats.probe.quality.enricher import QualityEnricher
from connstats.probe.quality.quality import QualityTracepoints
from tests.fixtures.netns import TestHost, sh
from tests.fixtures.routed import _add
from tests.fixtures.wait import until

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
BITRATE = sys.argv[3] if len(sys.argv) > 3 else "0"
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
HOOKS = {"tcp_probe": b"tcp:tcp_probe", "tcp_retransmit_skb": b"tcp:tcp_retransmit_skb",
         "tcp_retransmit_synack": b"tcp:tcp_retransmit_synack", "kfree_skb": b"skb:kfree_skb"}
PORT = 5201
LOSS = (f"table inet qbench {{\n counter lost {{}}\n chain input {{\n type filter hook input priority 0\n"
        f"  tcp dport {PORT} meta length > 500 numgen inc mod 32 == 31 counter name lost drop\n }}\n}}\n")


def function(hook: str) -> bytes:
    category = HOOKS[hook].split(b":")[0].decode()
    return f"tracepoint__{category}__{hook}".encode()


def prog_id(fd: int) -> int:
    info = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if libbpf().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd")
    return info[1]  # struct bpf_prog_info: type, id, ...


def run_stats(ids: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """hook -> (run_cnt, run_time_ns, recursion_misses) as bpftool reports them: a miss is a
    call the kernel skipped because a BPF tracing program was already running on that CPU
    (a softirq's kfree_skb while tcp_probe's program runs): its event is not counted."""
    progs = json.loads(sh("bpftool", "prog", "show", "--json").stdout)
    by_id = {p["id"]: p for p in progs}
    return {name: (by_id[i].get("run_cnt", 0), by_id[i].get("run_time_ns", 0), by_id[i].get("recursion_misses", 0))
            for name, i in ids.items()}


def busy_seconds() -> float:
    """CPU-seconds the whole host spent busy (all cores; /proc/stat, not idle or iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Hooks:
    """The quality tracepoints, detached and attached again between rounds (loaded once)."""

    def __init__(self, tables: QualityTracepoints) -> None:
        self.bpf = tables.bpf
        self.names = [name for name in HOOKS if function(name) in self.bpf.funcs]  # synack: where the kernel has it
        self.ids = {name: prog_id(self.bpf.funcs[function(name)].fd) for name in self.names}
        self.attached = True

    def set(self, on: bool) -> None:
        if on == self.attached:
            return
        for name in self.names:
            if on:
                self.bpf.attach_tracepoint(tp=HOOKS[name], fn_name=function(name))
            else:
                self.bpf.detach_tracepoint(HOOKS[name])
        self.attached = on


def nstat(host: TestHost, name: str) -> int:
    out = host.run("nstat", "-az", name).stdout
    match = re.search(rf"^{name}\s+(\d+)", out, re.MULTILINE)
    assert match, out
    return int(match.group(1))


def lost_counter(host: TestHost) -> tuple[int, int]:
    out = json.loads(host.run("nft", "-j", "list", "counter", "inet", "qbench", "lost").stdout)
    [counter] = [item["counter"] for item in out["nftables"] if "counter" in item]
    return counter["packets"], counter["bytes"]


def iperf(a: TestHost, b: TestHost) -> float:
    """Received bits/s of one TCP transfer from a to b."""
    out = json.loads(a.run("iperf3", "-c", b.ipv4, "-p", str(PORT), "-t", str(SECONDS), "-b", BITRATE,
                            "-J").stdout)
    return out["end"]["sum_received"]["bits_per_second"]


def settled(host: TestHost) -> bool:
    """No TCP connection left in the namespace but in TIME-WAIT: all data acknowledged (iperf3
    exits before its kernel has delivered the tail, which may still be retransmitted)."""
    return all(row.split()[0] == "TIME-WAIT" for row in host.run("ss", "-tnH").stdout.splitlines())


def drain(tables: QualityTracepoints, a_inode: int) -> tuple[int, int, int, int]:
    """Flip, wait, collect: (sockets of a, RTT samples, a's retransmitted segments, bytes
    dropped by netfilter)."""
    tables.flip()
    wait_for_grace_period()
    snap = tables.collect()
    of_a = snap.socket_keys["netns"] == a_inode
    [netfilter] = [code for code, name in tables.reasons.items() if name == "NETFILTER_DROP"]
    return (int(of_a.sum()), int(snap.socket_stats["rtt_samples"].sum()),
            int(snap.socket_stats["retrans_segs"][of_a].sum()),
            int(snap.drop_values["bytes"][snap.drop_keys["reason"] == netfilter].sum()))


def line(name: str, a: list[float], b: list[float], unit: str, scale: float = 1.0) -> None:
    ma, mb = statistics.median(a) / scale, statistics.median(b) / scale
    pairs = [y / x for x, y in zip(a, b, strict=True) if x]
    print(f"  {name:30s} A {ma:8,.2f}  B {mb:8,.2f} {unit:7s} B/A {mb / ma:5.3f} (rounds {min(pairs):.2f}-"
          f"{max(pairs):.2f})   spread A {min(a) / scale:,.2f}-{max(a) / scale:,.2f}, "
          f"B {min(b) / scale:,.2f}-{max(b) / scale:,.2f}")


class Network:
    """Namespaces a and b routed through the host; removed by ``close`` (also half-made)."""

    def __init__(self) -> None:
        self.tag, subnet = secrets.token_hex(2), secrets.randbelow(256)
        self.hosts: list[TestHost] = []
        for n, letter in enumerate("ab"):
            host, host_end = _add(self.tag, letter, n, subnet)
            self.hosts.append(host)
            sh("sysctl", "-qw", f"net.ipv4.conf.{host.host_if}.forwarding=1")
            host.run("ip", "route", "add", "default", "via", host_end)

    def close(self) -> None:
        for letter in "ab":
            sh("ip", "link", "del", f"c24wh{self.tag}{letter}", check=False)
            sh("ip", "netns", "del", f"c24wn{self.tag}{letter}", check=False)


def main() -> None:
    stats_before = STATS.read_text().strip()
    network = Network()
    program = registry = enricher = server = None
    try:
        a, b = network.hosts
        a_inode = os.stat(f"/run/netns/{a.netns}").st_ino
        program = load_classifier()
        registry = DeviceRegistry(program)
        tables = QualityTracepoints.start()
        enricher = QualityEnricher(tables)
        for host in (a, b):
            enricher.attached(registry.attach(host.host_if, "auto"))
        watched = (len(tables.bpf[b"watched_netns"]), len(tables.bpf[b"watched_devices"]))
        hooks = Hooks(tables)
        server = subprocess.Popen(["ip", "netns", "exec", b.netns, "iperf3", "-s", "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: f":{PORT} " in b.run("ss", "-ltnH").stdout, what="iperf3 listening in b")
        STATS.write_text("1")
        results = {k: {"A": [], "B": []} for k in ("clean", "lossy")}
        busy = {k: [] for k in ("clean", "lossy")}  # B rounds: busy CPU-s
        calls = {k: {name: [0, 0, 0] for name in hooks.names} for k in ("clean", "lossy")}
        received = {k: 0.0 for k in ("clean", "lossy")}  # B rounds: bytes
        checks = {"sockets": 0, "samples": 0, "counted": 0, "nstat": 0, "drop bytes": 0, "nft bytes": 0,
                  "nft skbs": 0}
        for round_ in range(ROUNDS):
            for side in ("AB" if round_ % 2 == 0 else "BA"):
                hooks.set(side == "B")
                for kind in ("clean", "lossy"):
                    if kind == "lossy":
                        b.run("nft", "-f", "-", input=LOSS)
                    retrans, before, cpu = nstat(a, "TcpRetransSegs"), run_stats(hooks.ids), busy_seconds()
                    try:
                        bits = iperf(a, b)
                        cpu = busy_seconds() - cpu
                        until(lambda: settled(a), timeout=60, what="a's connections closed")
                        after = run_stats(hooks.ids)
                        skbs, nft_bytes = lost_counter(b) if kind == "lossy" else (0, 0)
                    finally:
                        if kind == "lossy":
                            b.run("nft", "delete", "table", "inet", "qbench", check=False)
                    sockets, samples, counted, drop_bytes = drain(tables, a_inode)
                    results[kind][side].append(bits)
                    if side == "A":
                        continue
                    busy[kind].append(cpu)
                    received[kind] += bits / 8 * SECONDS
                    for name in hooks.names:
                        for field in range(3):
                            calls[kind][name][field] += after[name][field] - before[name][field]
                    if kind == "lossy":
                        retrans = nstat(a, "TcpRetransSegs") - retrans
                        for key, value in (("sockets", sockets), ("samples", samples), ("counted", counted),
                                           ("nstat", retrans), ("drop bytes", drop_bytes), ("nft bytes", nft_bytes),
                                           ("nft skbs", skbs)):
                            checks[key] += value
        report(watched, results, busy, calls, received, checks)
    finally:
        STATS.write_text(stats_before)
        if server is not None:
            server.kill()
            server.wait()
        if registry is not None:
            registry.detach_all()
            registry.close()
        if enricher is not None:
            enricher.close()
        if program is not None:
            program.close()
        network.close()


def report(watched, results, busy, calls, received, checks) -> None:
    print(f"quality tracepoints, {ROUNDS} alternating rounds x {SECONDS} s at -b {BITRATE} (A = classifier on both veths, "
          f"B = + the tracepoints; {watched[0]} namespaces, {watched[1]} devices watched), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    line("iperf3 TCP a -> host -> b", results["clean"]["A"], results["clean"]["B"], "Gbit/s", 1e9)
    line("the same, every 32nd skb lost", results["lossy"]["A"], results["lossy"]["B"], "Gbit/s", 1e9)
    for kind, title in (("clean", "iperf3 TCP"), ("lossy", "every 32nd skb lost")):
        total = sum(ns for _, ns, _ in calls[kind].values())
        gigabytes = received[kind] / 1e9
        print(f"  {title} (B rounds, bpf_stats): hooks {total / 1e6:,.1f} ms in the kernel for "
              f"{gigabytes:,.1f} GB = {total / 1e6 / gigabytes:.2f} ms per GB received, "
              f"{100 * total / 1e9 / sum(busy[kind]):.3f} % of the host's busy CPU time")
        for name, (count, ns, missed) in calls[kind].items():
            print(f"    {name:22s} {count:>11,} calls {ns / max(count, 1):7.1f} ns/call {count / gigabytes:>10,.0f} calls/GB"
                  f" {missed:>8,} missed (recursion)")
    print(f"  the hooks counted (B rounds, lossy): {checks['counted']:,} retransmitted segments of a's sockets; "
          f"a's TcpRetransSegs (nstat) {checks['nstat']:,}")
    print(f"    drops (NETFILTER_DROP): {checks['drop bytes']:,} bytes; the nft rule's counter {checks['nft bytes']:,} bytes "
          f"({checks['nft skbs']:,} skbs); {checks['sockets']} socket entries of a, {checks['samples']:,} RTT samples")


if __name__ == "__main__":
    main()
