"""What the socket-owner tracepoints (process naming) cost, A/B in alternating rounds.

Two test namespaces behind host-side veths on a bridge (tests/fixtures/netns.py), the
classifier on both veths in every round. A = classifier only; B = A + the socket-owner
tracepoints attached (sock:inet_sock_set_state, sock:sock_send_length/recv_length). The
order flips each round; figures are medians and B/A ratios within this run.

    1. in-kernel ns per hook call (kernel.bpf_stats_enabled=1 for the run, then restored),
       calls per TCP connection and per UDP datagram
    2. connections/s of a connect()+close() loop (netns a) against accept()+close() (netns b)
    3. iperf3 TCP (per send()/recv() call only) and UDP with 64-byte datagrams (the hooks'
       worst case: one call per datagram each side)
    4. the join alone: 131,072 synthetic records against 65,536 owners; the /proc scan that
       names sockets older than the probe, with 2,000 sockets held in a namespace

    sudo .venv/bin/python tests/bench/bench_socket_hooks.py [rounds] [seconds] [connections]
"""
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from connstats.probe.identity.join import AddressTable, OwnerTable, name_connections
from connstats.probe.identity.naming import ProcessNamer
from connstats.probe.identity.prefill import prefill_rows
from connstats.probe.kernel.devices import DeviceRegistry
from connstats.probe.kernel.loader import libbpf, load_classifier
from tests.fixtures.netns import _new_network

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
CONNECTIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
HOOKS = {"inet_sock_set_state": b"sock:inet_sock_set_state", "sock_send_length": b"sock:sock_send_length",
         "sock_recv_length": b"sock:sock_recv_length"}

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7000)); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = r"""
import socket, sys, time
n = int(sys.argv[2]); t = time.perf_counter()
for _ in range(n):
    c = socket.create_connection((sys.argv[1], 7000)); c.close()
print(n / (time.perf_counter() - t))
"""


def prog_id(fd: int) -> int:
    info = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if libbpf().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd")
    return info[1]  # struct bpf_prog_info: type, id, ...


def run_stats(ids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """name -> (run_cnt, run_time_ns) as bpftool reports them."""
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    by_id = {p["id"]: p for p in progs}
    return {name: (by_id[i].get("run_cnt", 0), by_id[i].get("run_time_ns", 0)) for name, i in ids.items()}


class Hooks:
    """The namer's tracepoints, detached and attached again between rounds (loaded once)."""

    def __init__(self, namer: ProcessNamer) -> None:
        self.bpf = namer.owners.bpf
        self.attached = True
        self.ids = {name: prog_id(self.bpf.funcs[f"tracepoint__sock__{name}".encode()].fd) for name in HOOKS}

    def set(self, on: bool) -> None:
        if on == self.attached:
            return
        for name, tp in HOOKS.items():
            if on:
                self.bpf.attach_tracepoint(tp=tp, fn_name=f"tracepoint__sock__{name}".encode())
            else:
                self.bpf.detach_tracepoint(tp)
        self.attached = on


def connections_per_second(a, b) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, sys.executable, "-c", SERVER, b.ipv4],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return float(a.run(sys.executable, "-c", CLIENT, b.ipv4, str(CONNECTIONS)).stdout)
    finally:
        server.kill()
        server.wait()


def iperf(a, b, *udp: str) -> tuple[float, float]:
    """(received bits/s, packets/s): UDP packets are datagrams; TCP's 0."""
    out = json.loads(a.run("iperf3", "-c", b.ipv4, "-t", str(SECONDS), "-J", *udp).stdout)["end"]
    if udp:
        summary = out["sum"]
        return summary["bits_per_second"], (summary["packets"] - summary["lost_packets"]) / summary["seconds"]
    return out["sum_received"]["bits_per_second"], 0.0


def join_alone() -> float:
    """ms for the join of 131,072 synthetic records against 65,536 owners (median of 5)."""
    rng = np.random.default_rng(1)
    n, m = 131_072, 65_536
    netns = np.array([4026531833, 4026532174, 4026532200], dtype=np.uint64)
    owners = OwnerTable.of(netns[rng.integers(0, 3, m)], np.where(rng.random(m) < 0.5, 6, 17),
                           rng.integers(1, 65536, m), rng.integers(1, 4_000_000, m),
                           np.array([f"prog{i % 500}" for i in range(m)], dtype=object))
    remote = [bytes([10, 241, i // 256, i % 256]) for i in range(200)]
    addresses = AddressTable.of({a: int(netns[i % 3]) for i, a in enumerate(remote)})
    raw = np.zeros((n, 16), np.uint8)
    raw[:, :4] = np.frombuffer(b"".join(remote), np.uint8).reshape(-1, 4)[rng.integers(0, 200, n)]
    column = raw.view("V16").ravel()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        name_connections(owners, addresses, ifindex=rng.integers(1, 200, n).astype(np.uint32),
                         egress=rng.random(n) < 0.5, family=np.full(n, 4, np.uint8), proto=np.where(rng.random(n) < 0.5, 6, 17).astype(np.uint8),
                         sport=rng.integers(1, 65536, n).astype(np.uint16),
                         dport=rng.integers(1, 65536, n).astype(np.uint16), src=column, dst=column,
                         device_netns={i: int(netns[i % 3]) for i in range(1, 200)}, default_netns=int(netns[0]))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


HOLDER = r"""
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


def prefill_scan(b, namer: ProcessNamer, processes: int = 20, sockets: int = 100) -> tuple[float, int]:
    """(ms, rows) for the /proc scan of netns ``b`` and ours with ``processes`` x ``sockets``
    UDP sockets held in ``b`` (median of 5)."""
    holders = [subprocess.Popen(["ip", "netns", "exec", b.netns, sys.executable, "-c", HOLDER, str(sockets)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        inode = os.stat(f"/var/run/netns/{b.netns}").st_ino
        times, rows = [], 0
        for _ in range(5):
            started = time.perf_counter()
            rows = len(prefill_rows([inode, namer.host_netns]))
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times), rows
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def line(name: str, a: list[float], b: list[float], unit: str, scale: float = 1.0) -> None:
    ma, mb = statistics.median(a) / scale, statistics.median(b) / scale
    print(f"  {name:26s} A {ma:10,.1f}  B {mb:10,.1f} {unit:8s} B/A {mb / ma:5.3f}   "
          f"spread A {min(a) / scale:,.1f}-{max(a) / scale:,.1f}, B {min(b) / scale:,.1f}-{max(b) / scale:,.1f}")


def main() -> None:
    network_gen = _new_network(2)
    a, b = next(network_gen).hosts
    stats_before = STATS.read_text().strip()
    program = load_classifier()
    registry = DeviceRegistry(program)
    namer = ProcessNamer.start(interval=10.0)
    assert namer is not None, "this kernel cannot name processes"
    iperf_server = subprocess.Popen(["ip", "netns", "exec", b.netns, "iperf3", "-s"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, dict[str, list[float]]] = {k: {"A": [], "B": []} for k in
                                                  ("conn/s", "tcp bit/s", "udp bit/s", "udp datagram/s")}
    calls: dict[str, list[tuple[int, int]]] = {name: [] for name in HOOKS}
    hooks = Hooks(namer)
    try:
        for device in (a.host_if, b.host_if):
            namer.attached(registry.attach(device, "auto"))
        STATS.write_text("1")
        time.sleep(0.5)
        for round_ in range(ROUNDS):
            for side in ("AB" if round_ % 2 == 0 else "BA"):
                hooks.set(side == "B")
                before = run_stats(hooks.ids)
                results["conn/s"][side].append(connections_per_second(a, b))
                after_conn = run_stats(hooks.ids)
                results["tcp bit/s"][side].append(iperf(a, b)[0])
                udp_before = run_stats(hooks.ids)
                bits, datagrams = iperf(a, b, "-u", "-b", "0", "-l", "64")
                udp_after = run_stats(hooks.ids)
                results["udp bit/s"][side].append(bits)
                results["udp datagram/s"][side].append(datagrams)
                if side == "B":
                    name = "inet_sock_set_state"
                    calls[name].append((after_conn[name][0] - before[name][0], after_conn[name][1] - before[name][1]))
                    for name in ("sock_send_length", "sock_recv_length"):
                        calls[name].append((udp_after[name][0] - udp_before[name][0],
                                            udp_after[name][1] - udp_before[name][1]))
        print(f"socket-owner hooks, {ROUNDS} alternating rounds (A = classifier only, B = + hooks), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        for name, (count, ns) in ((n, tuple(map(sum, zip(*c, strict=True)))) for n, c in calls.items()):
            print(f"  {name:26s} {count:>10,} calls {ns / max(count, 1):8.1f} ns/call (bpf_stats, B rounds)")
        set_state = sum(c for c, _ in calls["inet_sock_set_state"])
        print(f"  {'per TCP connection':26s} {set_state / (CONNECTIONS * ROUNDS):10.1f} set_state calls "
              f"{sum(ns for _, ns in calls['inet_sock_set_state']) / (CONNECTIONS * ROUNDS):8.1f} ns")
        line("connect+accept loop", results["conn/s"]["A"], results["conn/s"]["B"], "conn/s")
        line("iperf3 TCP", results["tcp bit/s"]["A"], results["tcp bit/s"]["B"], "Gbit/s", 1e9)
        line("iperf3 UDP 64 B", results["udp bit/s"]["A"], results["udp bit/s"]["B"], "Mbit/s", 1e6)
        line("iperf3 UDP 64 B", results["udp datagram/s"]["A"], results["udp datagram/s"]["B"], "kdgram/s", 1e3)
        print(f"  {'join alone, 131,072 records':26s} {join_alone():10.1f} ms (65,536 owners, 200 addresses)")
        ms, rows = prefill_scan(b, namer)
        print(f"  {'prefill scan of /proc':26s} {ms:10.1f} ms for {rows:,} owned sockets (20 processes x 100 in a netns)")
    finally:
        STATS.write_text(stats_before)
        iperf_server.kill()
        iperf_server.wait()
        registry.detach_all()
        registry.close()
        namer.close()
        program.close()
        try:
            next(network_gen)
        except StopIteration:
            pass


if __name__ == "__main__":
    main()
