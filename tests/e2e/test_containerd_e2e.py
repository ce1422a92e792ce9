"""Kubernetes pods through containerd, end to end: a real containerd, a real probe daemon with
the real classifier, a real nats-server.

A pod's sandbox starts in a namespace a CNI would have made; the containerd watcher attaches its
veth (no manual attach). UDP from the pod to the host's end of its veth is counted exactly,
under the pod, its workload and the runtime, in the flow records the probe publishes; killing the
sandbox's task detaches the veth, and its last interval is still published under the pod.
"""
import asyncio
import json
import socket
import sys

import pytest

from connstats.probe.watch.containerd_watch import containerd_watcher
from tests.fixtures.docker import capture_service, published, running_probe
from tests.fixtures.netns import TRAFFIC, sh
from tests.fixtures.wait import until, until_async

pytestmark = pytest.mark.kernel

POD = "shop/web-7d9f8c6b5-x2x9z"
UDP_FRAME = 14 + 20 + 8
COUNT, SIZE, PORT, SPORT = 37, 240, 5355, 41011


def totals(records, **match) -> tuple[int, int]:
    chosen = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in chosen), sum(r.bytes for r in chosen)


async def test_a_pods_traffic_is_counted_under_its_pod_workload_and_runtime(nats_server, containerd):
    net = containerd.pod_network()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the host's end: no ICMP unreachable
    receiver.bind((net.host_ip, PORT))
    receiver.setblocking(False)
    watchers: list = []
    try:
        async with running_probe(nats_server.url, [capture_service(containerd_watcher(containerd.socket),
                                                                   watchers)]) as daemon:
            watcher = watchers[0]
            await asyncio.wait_for(watcher.connected.wait(), 10)
            sandbox_id, pid = await asyncio.to_thread(containerd.run_sandbox, net)
            await until_async(lambda: net.ifindex in {d.ifindex for d in daemon.devices()}, 10,
                              "the containerd watcher's attach of the pod's veth")
            sent = await asyncio.to_thread(sh, "ip", "netns", "exec", net.netns, sys.executable, str(TRAFFIC), "udp",
                                           net.host_ip, str(PORT), str(SPORT), str(COUNT), str(SIZE))
            assert json.loads(sent.stdout) == {"sent": COUNT}
            got = []

            def received() -> bool:
                while True:
                    try:
                        got.append(receiver.recv(2048))
                    except BlockingIOError:
                        return len(got) == COUNT

            until(received, 5, f"{COUNT} datagrams at the host's end")
            assert got == [b"x" * SIZE] * COUNT
            await asyncio.to_thread(containerd.kill, sandbox_id)
            await until_async(lambda: net.ifindex not in {d.ifindex for d in daemon.devices()}, 10,
                              "the detach after the sandbox's exit")
            assert watcher.errors == 0
    finally:
        receiver.close()

    records, events = await published(nats_server.url)
    udp = dict(ifindex=net.ifindex, proto=17, src_port=SPORT, dst_port=PORT)
    assert totals(records, direction="egress", **udp) == (COUNT, COUNT * (UDP_FRAME + SIZE))  # the pod's sends
    assert totals(records, direction="ingress", **udp) == (0, 0)
    named = {(r.pod, r.workload, r.runtime, r.container_id, r.container_name, r.container_image)
             for r in records if r.ifindex == net.ifindex}
    assert named == {(POD, "web", "containerd", sandbox_id, "web-7d9f8c6b5-x2x9z", "")}
    mine = [(e["event"], e.get("pod"), e.get("workload"), e.get("runtime"), e.get("source"))
            for e in events if e.get("ifindex") == net.ifindex]
    assert mine == [("attached", POD, "web", "containerd", "containerd"),
                    ("detached", POD, "web", "containerd", "containerd")]
    attached = next(e for e in events if e["event"] == "attached" and e["ifindex"] == net.ifindex)
    assert (attached["pid"], attached["container_id"], attached["ifname"]) == (pid, sandbox_id, net.host_if)
