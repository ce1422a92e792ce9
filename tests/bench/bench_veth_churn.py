"""How fast the link watcher keeps up with veths that come and go in bursts.

A real classifier and the real LinkWatcher (netlink socket, worker, resync), on a
ProbeDaemon without NATS (events are logged only). Three rounds of 200 veth pairs:
  create 200         until all 200 host sides are attached
  delete 200         until none is attached
  create 200, delete 150 at once   until exactly the 50 left are attached
then the probe closes and no connstats filter may be left on the 50.

    sudo .venv/bin/python tests/bench/bench_veth_churn.py
"""
import asyncio
import os
import subprocess
import time

from connstats.probe.contract import NatsOptions
from connstats.probe.daemon import DaemonSettings, ProbeDaemon
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
from connstats.probe.kernel.tc import FILTER_PRIORITY
from connstats.probe.publish.publisher import PublisherSettings
from connstats.probe.watch.watcher import link_watcher

COUNT = 200
TAG = f"cwb{os.getpid() % 10000}"


def ip_batch(lines: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def create(names: list[str]) -> None:
    ip_batch([f"link add {n} up type veth peer name {TAG}p{n[len(TAG) + 1:]}" for n in names])


def delete(names: list[str]) -> None:
    ip_batch([f"link del {n}" for n in names])


def our_hooks(name: str) -> int:
    return sum(f"pref {FILTER_PRIORITY} bpf" in subprocess.run(
        ["tc", "filter", "show", "dev", name, hook], capture_output=True, text=True).stdout
        for hook in ("ingress", "egress"))


async def until_attached(daemon: ProbeDaemon, names: set[str], start: float) -> float:
    while {d.name for d in daemon.devices() if d.name.startswith(TAG)} != names:
        if time.monotonic() - start > 60:
            raise SystemExit("the watcher did not keep up within 60 s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def main() -> None:
    names = [f"{TAG}h{i}" for i in range(COUNT)]
    daemon = ProbeDaemon(DaemonSettings(ProbeSettings(), NatsOptions(), PublisherSettings()))
    daemon.kernel = await asyncio.to_thread(KernelProbe, daemon.settings.probe)
    watcher = link_watcher([f"{TAG}h*"])(daemon)
    await watcher.start()
    try:
        start = time.monotonic()
        create(names)
        made = time.monotonic() - start
        up = await until_attached(daemon, set(names), start)
        print(f"create {COUNT}: ip took {made:.2f} s; all attached after {up:.2f} s "
              f"({up / COUNT * 1000:.1f} ms per device)")

        start = time.monotonic()
        delete(names)
        gone = time.monotonic() - start
        down = await until_attached(daemon, set(), start)
        print(f"delete {COUNT}: ip took {gone:.2f} s; none attached after {down:.2f} s")

        start = time.monotonic()
        create(names)
        delete(names[:150])
        burst = time.monotonic() - start
        settled = await until_attached(daemon, set(names[150:]), start)
        await watcher.settled(10)
        print(f"create {COUNT} + delete 150: ip took {burst:.2f} s; exactly the 50 left attached "
              f"after {settled:.2f} s")
        print("watcher:", watcher.stats)
    finally:
        await watcher.close()
        await asyncio.to_thread(daemon.kernel.close)
        left = [n for n in names if os.path.exists(f"/sys/class/net/{n}")]
        hooks = sum(our_hooks(n) for n in left)
        delete(left)
    print(f"after close: {hooks} connstats filters on the {len(left)} remaining veths")
    if hooks:
        raise SystemExit("filters were left behind")


if __name__ == "__main__":
    asyncio.run(main())
