"""podman containers, end to end: a real podman service, a real probe daemon (the
classifier in the kernel), a real nats-server.

A busybox container in a namespace the test made (its veth's host end 10.247.N.1, as
CNI would make it) is attached by the podman watcher with no manual attach; N UDP
datagrams from inside it to the host end of its veth are counted exactly under its
name, id and image with ``runtime="podman"`` in the published records. Removing it
releases the veth; its last interval is still published under its name.
"""
import asyncio

import pytest

from connstats.probe.watch.podman_watch import podman_watcher
from tests.fixtures.docker import capture_service, published, running_probe, udp_from
from tests.fixtures.podman import IMAGE
from tests.fixtures.wait import until_async

pytestmark = pytest.mark.kernel

UDP_FRAME = 14 + 20 + 8
DATAGRAMS, SIZE, PORT, SPORT = 37, 210, 5399, 41077


async def test_a_podman_containers_traffic_is_counted_exactly_under_its_name_as_podmans(nats_server, podman_host):
    ns = podman_host.netns()
    veth = ns.host_ifindex
    watchers = []
    async with running_probe(nats_server.url, [capture_service(podman_watcher(podman_host.socket), watchers)]) as daemon:
        watcher = watchers[0]
        await asyncio.wait_for(watcher.connected.wait(), 10)
        web = await asyncio.to_thread(podman_host.run, "csp-e2e-web", ns, "sleep", "600")
        await until_async(lambda: veth in {d.ifindex for d in daemon.devices()}, 5, "attach of the container's veth")

        await asyncio.to_thread(udp_from, web["State"]["Pid"], ns.host_ip, PORT, SPORT, DATAGRAMS, SIZE)

        await asyncio.to_thread(podman_host.api.remove_container, web["Id"], force=True)
        await until_async(lambda: veth not in {d.ifindex for d in daemon.devices()}, 10, "release of the veth")
        assert watcher.errors == 0

    records, events = await published(nats_server.url)
    sent = [r for r in records if r.ifindex == veth and r.proto == 17 and (r.src_port, r.dst_port) == (SPORT, PORT)]
    assert {r.direction for r in sent} == {"egress"}  # the container's sends leave it through its veth
    assert (sum(r.packets for r in sent), sum(r.bytes for r in sent)) == (DATAGRAMS, DATAGRAMS * (UDP_FRAME + SIZE))
    assert {(r.src_ip, r.dst_ip) for r in sent} == {(ns.peer_ip, ns.host_ip)}
    on_veth = [r for r in records if r.ifindex == veth]
    assert {(r.container_id, r.container_name, r.container_image, r.runtime, r.pod) for r in on_veth} == {
        (web["Id"], "csp-e2e-web", IMAGE, "podman", "")}

    mine = [(e["event"], e["source"], e.get("runtime"), e.get("container_name")) for e in events if e["ifindex"] == veth]
    assert mine == [("attached", "podman", "podman", "csp-e2e-web"), ("detached", "podman", "podman", "csp-e2e-web")]
    assert not [e for e in events if e["event"] == "failed"]
