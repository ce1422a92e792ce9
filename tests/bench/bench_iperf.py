"""TCP throughput across a veth pair between two namespaces, probe attached vs not.

Two test namespaces sit behind host-side veths on a bridge (tests/fixtures/netns.py).
Runs alternate: no probe, probe on both host-side veths, the probe with a protect-mode
policy that governs both veths and allows the traffic (a -> b tcp 5201), ... Each run
is one iperf3 client for SECONDS; the figure is the median of the runs of each kind.

    sudo .venv/bin/python tests/bench/bench_iperf.py [runs] [seconds]
"""
import json
import statistics
import subprocess
import sys
import time

from connstats.probe.kernel.devices import DeviceRegistry
from connstats.probe.kernel.loader import load_classifier
from connstats.probe.kernel.poller import MapPoller
from connstats.probe.policy import parse_policy, resolve
from connstats.probe.policy.resolve import endpoints_of
from connstats.probe.policy.tables import PolicyTables
from connstats.probe.watch.containers import ContainerIndex
from tests.fixtures.netns import _new_network

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4


def iperf(client, server) -> float:
    out = client.run("iperf3", "-c", server.ipv4, "-t", str(SECONDS), "-J", "-O", "1").stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> None:
    network_gen = _new_network(2)
    network = next(network_gen)
    a, b = network.hosts
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "iperf3", "-s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    program = load_classifier()
    registry = DeviceRegistry(program)
    poller = MapPoller(program)
    tables, index = PolicyTables(program), ContainerIndex()
    policy = parse_policy(f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\nb = {{ ifaces = ["{b.host_if}"] }}\n'
                          '[[allow]]\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [5201]\n')
    results = {"no probe": [], "probe on both veths": [], "probe, protect policy": []}
    try:
        time.sleep(0.5)
        for _ in range(RUNS):
            results["no probe"].append(iperf(a, b))
            registry.attach(a.host_if)
            registry.attach(b.host_if)
            results["probe on both veths"].append(iperf(a, b))
            resolved = resolve(policy, endpoints_of(registry.devices(), index), [])
            assert sorted(resolved.devices) == sorted(d.ifindex for d in registry.devices())
            tables.install(resolved, "protect")
            results["probe, protect policy"].append(iperf(a, b))
            tables.off()
            interval = poller.poll()
            poller.commit()
            registry.detach_all()
        base = statistics.median(results["no probe"])
        print(f"iperf3 TCP, {RUNS} alternating runs of {SECONDS} s (median Gbit/s)")
        for name, values in results.items():
            median = statistics.median(values)
            print(f"  {name:22s} {median:7.2f} Gbit/s  {100 * median / base:6.1f}% of baseline"
                  f"   runs: {', '.join(f'{v:.2f}' for v in values)}")
        print(f"  last interval (two probed runs) counted {interval.packets:,} packets in {len(interval)} "
              f"connections; denied: {int((interval.values['verdict'] == 2).sum())}")
    finally:
        registry.detach_all()
        registry.close()
        index.resolver.close()
        program.close()
        server.kill()
        server.wait()
        try:
            next(network_gen)
        except StopIteration:
            pass


if __name__ == "__main__":
    main()
