"""Auto-attach with the netlink link watcher, on a real ProbeDaemon and real veths.

Netns-only "containers" (tests/fixtures/netns.py: a namespace behind a host-side veth on
a bridge) are attached by pattern with no manual attach, labelled with their namespace
name, re-attached when their veth is deleted and made anew, and the last interval of the
deleted one is still published. A burst of 200 veths created and 150 deleted ends with
exactly the 50 that remain attached, and no filter is left after the probe stops.
"""
import os
import subprocess
import time

import pytest
from pyroute2.netlink.rtnl import RTM_DELLINK

from connstats.probe.kernel.tc import FILTER_PRIORITY
from connstats.probe.watch.link_monitor import LinkMonitor
from connstats.probe.watch.watcher import link_watcher
from tests.fixtures.docker import capture_service, published, running_probe
from tests.fixtures.netns import require_root, sh
from tests.fixtures.wait import seconds_until

pytestmark = pytest.mark.kernel

UDP_FRAME = 14 + 20 + 8


def attached(daemon) -> dict[str, int]:
    return {d.name: d.ifindex for d in daemon.devices()}


def our_hooks(ifname: str) -> list[str]:
    """The hooks of ``ifname`` that carry connstats' filter (pref 3159, see probe/kernel/tc.py)."""
    return [hook for hook in ("ingress", "egress")
            if f"pref {FILTER_PRIORITY} bpf" in sh("tc", "filter", "show", "dev", ifname, hook).stdout]


def recreate_host_veth(host, bridge: str) -> None:
    """Delete the host-side veth (its namespace end goes with it) and make both anew."""
    sh("ip", "link", "del", host.host_if)
    sh("ip", "link", "add", host.host_if, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    sh("sysctl", "-qw", f"net.ipv6.conf.{host.host_if}.disable_ipv6=1")
    sh("ip", "link", "set", host.host_if, "master", bridge, "up")
    host.run("ip", "addr", "add", f"{host.ipv4}/24", "dev", "eth0")
    host.run("ip", "link", "set", "eth0", "up")
    host.mac = host.run("cat", "/sys/class/net/eth0/address").stdout.strip()


def totals(records, **match) -> tuple[int, int]:
    chosen = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in chosen), sum(r.bytes for r in chosen)


async def test_netns_containers_are_attached_labelled_and_reattached(nats_server, test_network):
    require_root()
    a, b = test_network.hosts
    for host in (a, b):
        host.quiet([h for h in (a, b) if h is not host])
    watchers = []
    pattern = f"csh{test_network.tag}*"
    async with running_probe(nats_server.url, [capture_service(link_watcher([pattern]), watchers)]) as daemon:
        await seconds_until(lambda: {a.host_if, b.host_if} <= attached(daemon).keys(), 2.0)
        old = attached(daemon)[a.host_if]
        assert our_hooks(a.host_if) == ["ingress", "egress"]
        a.traffic("udp", b.ipv4, 5353, 40001, 20, 100)

        recreate_host_veth(a, test_network.bridge)
        new = int(open(f"/sys/class/net/{a.host_if}/ifindex").read())
        assert new != old
        seconds = await seconds_until(lambda: attached(daemon).get(a.host_if) == new, 2.0)
        a.quiet([b])
        b.run("ip", "neigh", "replace", a.ipv4, "lladdr", a.mac, "dev", "eth0", "nud", "permanent")
        a.traffic("udp", b.ipv4, 5353, 40002, 30, 200)
        assert our_hooks(a.host_if) == ["ingress", "egress"]
        assert watchers[0].stats["gone"] == 1 and watchers[0].stats["failed"] == 0
        remaining = attached(daemon)
    for ifname in remaining:
        assert our_hooks(ifname) == []
    print(f"re-attached {seconds * 1000:.0f} ms after the veth came back")

    records, events = await published(nats_server.url)
    b_index = remaining[b.host_if]
    assert totals(records, ifindex=old, direction="egress", src_port=40001) == (20, 20 * (UDP_FRAME + 100))
    assert totals(records, ifindex=new, direction="egress", src_port=40002) == (30, 30 * (UDP_FRAME + 200))
    assert totals(records, ifindex=b_index, direction="ingress", src_port=40001) == (20, 20 * (UDP_FRAME + 100))
    assert totals(records, ifindex=b_index, direction="ingress", src_port=40002) == (30, 30 * (UDP_FRAME + 200))
    mine = [e for e in events if e.get("ifname") in (a.host_if, b.host_if)]
    labels = {(r.ifindex, r.container_id, r.container_name, r.container_image)
              for r in records if r.src_port in (40001, 40002)}
    # (seen twice in full runs, never alone: the re-made veth's records unlabelled; the
    # events say what the watcher did then)
    assert labels == {(old, "", a.netns, ""), (new, "", a.netns, ""), (b_index, "", b.netns, "")}, mine

    a_inode = os.stat(f"/var/run/netns/{a.netns}").st_ino
    summary = [(e["event"], e["ifname"], e["ifindex"]) for e in mine]
    # The initial dump attaches in ifindex order; shutdown detaches without events.
    assert summary == sorted([("attached", a.host_if, old), ("attached", b.host_if, b_index)],
                             key=lambda e: e[2]) + [("gone", a.host_if, old), ("attached", a.host_if, new)]
    first = next(e for e in mine if e["ifindex"] == old and e["event"] == "attached")
    assert (first["netns"], first["netns_name"], first["pid"], first["source"]) == (a_inode, a.netns, 0, "auto")


def veth_batch(lines: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                   capture_output=True)


async def test_a_burst_of_200_veths_ends_attached_to_exactly_those_present(nats_server):
    require_root()
    tag = f"cwc{os.getpid() % 10000}"
    names = [f"{tag}h{i}" for i in range(200)]
    deleted, kept = names[:150], names[150:]
    watchers = []
    try:
        async with running_probe(nats_server.url, [capture_service(link_watcher([f"{tag}h*"]), watchers)],
                                 interval=1.0) as daemon:
            start = time.monotonic()
            veth_batch([f"link add {n} up type veth peer name {tag}p{i}" for i, n in enumerate(names)])
            created = time.monotonic()
            veth_batch([f"link del {n}" for n in deleted])
            burst = time.monotonic() - start
            await seconds_until(lambda: set(attached(daemon)) == set(kept), 30.0)
            await watchers[0].settled(10)
            settled = time.monotonic() - start
            assert set(attached(daemon)) == set(kept)
            assert all(our_hooks(n) == ["ingress", "egress"] for n in kept)
            stats = dict(watchers[0].stats)
        assert all(our_hooks(n) == [] for n in kept)
    finally:
        existing = set(os.listdir("/sys/class/net"))
        leftovers = [n for n in names if n in existing]
        if leftovers:
            veth_batch([f"link del {n}" for n in leftovers])
    assert stats["failed"] == 0
    assert stats["attached"] - stats["gone"] == 50
    print(f"200 veths made in {created - start:.2f} s, 150 deleted, burst {burst:.2f} s; "
          f"watcher settled {settled:.2f} s after the first: {stats}")


def test_the_monitor_reports_events_the_kernel_dropped():
    """A reader that falls behind learns it (ENOBUFS), so the watcher knows to resync."""
    require_root()
    tag = f"cwo{os.getpid() % 10000}"
    names = [f"{tag}h{i}" for i in range(100)]
    monitor = LinkMonitor(receive_buffer=4096)
    try:
        veth_batch([f"link add {n} type veth peer name {tag}p{i}" for i, n in enumerate(names)])
        messages, overflowed = monitor.read()
        assert overflowed
        assert len(messages) < 200  # two RTM_NEWLINK per pair were sent; many were lost
        roomy = LinkMonitor()
        veth_batch([f"link del {n}" for n in names])
        messages, overflowed = roomy.read()
        assert not overflowed
        gone = {m.get_attr("IFLA_IFNAME") for m in messages if m["header"]["type"] == RTM_DELLINK}
        assert set(names) <= gone
        roomy.close()
    finally:
        monitor.close()
        existing = set(os.listdir("/sys/class/net"))
        leftovers = [n for n in names if n in existing]
        if leftovers:
            veth_batch([f"link del {n}" for n in leftovers])
