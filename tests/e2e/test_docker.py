"""Docker containers, end to end: a real dockerd, a real probe daemon, a real nats-server.

Three busybox containers start; the Docker watcher attaches each one's host-side veth
within 2 s, with no manual attach. UDP (exact datagrams) and TCP (busybox nc) between
them is counted per container, labelled with the container's id, name and image, in
the container's own directions (its sends are "egress" on its veth). Stopping one
detaches it with no error, and its last counts are still published.
"""
import asyncio
import subprocess

import pytest

from connstats.probe.watch.docker_watch import docker_watcher
from tests.fixtures.docker import (
    capture_service,
    host_ifname,
    host_side_ifindex,
    in_netns,
    published,
    running_probe,
    udp_from,
)
from tests.fixtures.netns import tcp_closing
from tests.fixtures.wait import seconds_until, until_async

pytestmark = pytest.mark.kernel

UDP_FRAME = 14 + 20 + 8
IMAGE = "connstats-test:busybox"


def eth0_counters(pid: int) -> tuple[int, int, int, int]:
    """(rx_packets, rx_bytes, tx_packets, tx_bytes) of the container's eth0."""
    for line in open(f"/proc/{pid}/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == "eth0":
            f = list(map(int, rest.split()))
            return f[1], f[0], f[9], f[8]
    raise AssertionError("no eth0")


async def wait_attached(daemon, ifindex: int, timeout: float) -> float:
    """Seconds until the probe attached ``ifindex``."""
    return await seconds_until(lambda: ifindex in {d.ifindex for d in daemon.devices()}, timeout,
                               f"attach of ifindex {ifindex}")


def totals(records, **match) -> tuple[int, int]:
    chosen = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in chosen), sum(r.bytes for r in chosen)


async def test_three_containers_are_attached_counted_labelled_and_released(nats_server, dockerd):
    watchers = []
    async with running_probe(nats_server.url, [capture_service(docker_watcher(dockerd.socket), watchers)]) as daemon:
        watcher = watchers[0]
        await asyncio.wait_for(watcher.connected.wait(), 10)
        containers, latency = {}, {}
        for name in ("cs-c1", "cs-c2", "cs-c3"):
            command = ("sh", "-c", "sleep 600 | nc -l -p 7000 > /tmp/got") if name == "cs-c2" else ("sleep", "600")
            doc = await asyncio.to_thread(dockerd.run, name, *command)
            pid, ip = doc["State"]["Pid"], doc["NetworkSettings"]["IPAddress"]
            ifindex = host_side_ifindex(pid)
            latency[name] = await wait_attached(daemon, ifindex, 2.0)
            veth = open(f"/proc/sys/net/ipv6/conf/{host_ifname(ifindex)}/disable_ipv6", "w")
            veth.write("1")  # no MLD or RS from the host side: the TCP window below stays quiet
            veth.close()
            containers[name] = dict(id=doc["Id"], pid=pid, ip=ip, ifindex=ifindex,
                                    mac=doc["NetworkSettings"]["MacAddress"])
        c1, c2, c3 = containers["cs-c1"], containers["cs-c2"], containers["cs-c3"]
        for here in containers.values():  # static neighbours: no ARP in the counts
            for there in containers.values():
                if there is not here:
                    in_netns(here["pid"], "ip", "neigh", "replace", there["ip"], "lladdr", there["mac"],
                             "dev", "eth0", "nud", "permanent")

        udp_from(c1["pid"], c2["ip"], 5353, 41001, 40, 100)
        udp_from(c1["pid"], c3["ip"], 5353, 41002, 25, 300)
        udp_from(c3["pid"], c2["ip"], 5353, 41003, 10, 700)

        before = eth0_counters(c1["pid"])
        tcp = await asyncio.to_thread(
            subprocess.run, ["docker", "-H", f"unix://{dockerd.socket}", "exec", "cs-c1", "sh", "-c",
                             f"seq 1 2000 | nc -w 1 {c2['ip']} 7000"], capture_output=True, timeout=30)
        assert tcp.returncode == 0 or tcp.stderr == b"nc: timed out\n", tcp.stderr  # -w 1 ends it
        await until_async(lambda: not any(tcp_closing(["nsenter", "-t", str(c["pid"]), "-n"]) for c in (c1, c2)),
                          5, "the server's FIN and its ACK")
        after = eth0_counters(c1["pid"])
        got = dockerd.api.exec_start(dockerd.api.exec_create("cs-c2", ["cat", "/tmp/got"]))
        assert got == "".join(f"{n}\n" for n in range(1, 2001)).encode()

        await asyncio.to_thread(dockerd.stop, "cs-c3")
        await until_async(lambda: c3["ifindex"] not in {d.ifindex for d in daemon.devices()}, 5,
                          "release of the stopped container's veth")
        assert watcher.errors == 0
        assert {d.ifindex for d in daemon.devices()} == {c1["ifindex"], c2["ifindex"]}
    print("attach latency after `docker start`:", {k: f"{v * 1000:.0f} ms" for k, v in latency.items()})
    assert all(seconds < 2.0 for seconds in latency.values())

    records, events = await published(nats_server.url)
    udp = dict(proto=17, dst_port=5353)
    assert totals(records, ifindex=c1["ifindex"], direction="egress", src_port=41001, **udp) == (40, 40 * (UDP_FRAME + 100))
    assert totals(records, ifindex=c2["ifindex"], direction="ingress", src_port=41001, **udp) == (40, 40 * (UDP_FRAME + 100))
    assert totals(records, ifindex=c1["ifindex"], direction="egress", src_port=41002, **udp) == (25, 25 * (UDP_FRAME + 300))
    assert totals(records, ifindex=c3["ifindex"], direction="ingress", src_port=41002, **udp) == (25, 25 * (UDP_FRAME + 300))
    assert totals(records, ifindex=c3["ifindex"], direction="egress", src_port=41003, **udp) == (10, 10 * (UDP_FRAME + 700))
    assert totals(records, ifindex=c2["ifindex"], direction="ingress", src_port=41003, **udp) == (10, 10 * (UDP_FRAME + 700))

    # TCP through busybox nc: what c1's eth0 sent and received is what its veth counted.
    rx_packets, rx_bytes, tx_packets, tx_bytes = (a - b for a, b in zip(after, before, strict=True))
    tcp_match = dict(ifindex=c1["ifindex"], proto=6)
    assert totals(records, direction="egress", dst_port=7000, **tcp_match) == (tx_packets, tx_bytes)
    assert totals(records, direction="ingress", src_port=7000, **tcp_match) == (rx_packets, rx_bytes)
    assert rx_packets >= 3 and tx_packets >= 3  # SYN..FIN both ways: the comparison is not vacuous

    by_ifindex = {c["ifindex"]: (c["id"], name, IMAGE) for name, c in containers.items()}
    for r in records:
        if r.ifindex in by_ifindex:
            assert (r.container_id, r.container_name, r.container_image) == by_ifindex[r.ifindex]
    assert {r.ifindex for r in records if r.proto in (6, 17)} == set(by_ifindex)

    mine = [(e["event"], e["ifindex"], e.get("container_name")) for e in events if e["ifindex"] in by_ifindex]
    assert mine == [("attached", c1["ifindex"], "cs-c1"), ("attached", c2["ifindex"], "cs-c2"),
                    ("attached", c3["ifindex"], "cs-c3"), ("detached", c3["ifindex"], "cs-c3")]
    assert not [e for e in events if e["event"] == "failed"]
    attached_c1 = next(e for e in events if e["event"] == "attached" and e["ifindex"] == c1["ifindex"])
    assert (attached_c1["pid"], attached_c1["container_id"], attached_c1["container_image"], attached_c1["source"]) == (
        c1["pid"], c1["id"], IMAGE, "docker")
