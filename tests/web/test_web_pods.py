"""The map in the test browser against the real ``connstats ui``, a real nats-server and a
real SQLite store holding pods' records (pod, workload, process on each end): nodes named by
pod and grouped by Kubernetes namespace, each end's process on hover and in the connection
list; a container without a pod is drawn as before."""
from __future__ import annotations

import math

from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.records import SECOND, envelope, flow_batch, flow_record
from tests.fixtures.web import run_async, start_ui

NODE = "k8s-node-1"
PODS = {  # ifindex: (ifname, pod, workload)
    11: ("vethweb", "shop/web-7d9f8c6b5-x2x9z", "web"), 12: ("vethapi", "shop/api-0", "api"),
    13: ("vethdb", "shop/db-0", "db"), 14: ("vethdns", "kube-system/coredns-abc12-zz9x8", "coredns"),
    15: ("vethled", "payments/ledger-0", "ledger"), 16: ("vethpay", "payments/gateway-5c4f-k2j9d", "gateway"),
}


def records(of):
    def pod(ifindex, **fields):
        ifname, name, workload = PODS[ifindex]
        return flow_record(of, ifindex=ifindex, ifname=ifname, pod=name, workload=workload, runtime="containerd",
                           container_name=name.split("/")[1], container_id=f"{ifindex:064x}", **fields)

    call = dict(proto=6, src_ip="10.244.0.5", src_port=41000, dst_ip="10.244.0.6", dst_port=8080, packets=10,
                bytes=5000)
    return [
        pod(11, direction="egress", process="curl", pid=812, peer_process="api-server", peer_pid=977, **call),
        pod(12, direction="ingress", process="api-server", pid=977, peer_process="curl", peer_pid=812, **call),
        pod(12, direction="ingress", proto=6, src_ip="203.0.113.4", src_port=50000, dst_ip="10.244.0.6",
            dst_port=8080, packets=3, bytes=900, process="api-server", pid=977),
        pod(12, direction="egress", proto=6, src_ip="10.244.0.6", src_port=43000, dst_ip="10.244.0.7",
            dst_port=5432, packets=4, bytes=1200, process="api-server", pid=977, peer_process="postgres", peer_pid=70),
        pod(13, direction="ingress", proto=6, src_ip="10.244.0.6", src_port=43000, dst_ip="10.244.0.7",
            dst_port=5432, packets=4, bytes=1200, process="postgres", pid=70, peer_process="api-server", peer_pid=977),
        pod(14, direction="egress", proto=17, src_ip="10.244.1.2", src_port=999, dst_ip="198.51.100.53",
            dst_port=53, packets=2, bytes=160, process="coredns", pid=55),
        pod(15, direction="egress", proto=6, src_ip="10.244.2.3", src_port=44000, dst_ip="10.244.2.4",
            dst_port=9000, packets=5, bytes=700),
        pod(16, direction="ingress", proto=6, src_ip="10.244.2.3", src_port=44000, dst_ip="10.244.2.4",
            dst_port=9000, packets=5, bytes=700),
        flow_record(of, ifindex=17, ifname="vethleg", container_name="legacy", container_id="f" * 64,
                    runtime="docker", direction="egress", proto=17, src_ip="172.17.0.2", src_port=5000,
                    dst_ip="198.51.100.53", dst_port=53, packets=1, bytes=80),
    ]


async def fill(path, now_ns: int) -> None:
    store = SqliteStore(path)
    of = envelope(NODE, 1, start=now_ns - 70 * SECOND, seconds=10)
    await store.write(flow_batch(of, records(of)))
    await store.close()


RING = """() => [...document.querySelectorAll('#map-svg .node:not(.peer)')].map(n => [n.dataset.id,
    n.dataset.namespace, Math.atan2(Number(n.getAttribute('cy')) - 500, Number(n.getAttribute('cx')) - 500)])"""


def test_pods_are_named_and_grouped_by_namespace_and_processes_shown(nats_server, start, tmp_path, browser_page):
    import time

    path = tmp_path / "flows.sqlite"
    run_async(fill(path, time.time_ns()))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url + "#map")
    page.wait_for_function("document.getElementById('map-svg').dataset.since", timeout=30_000)
    labels = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#map-svg .node')]
        .map(n => [n.dataset.id, n.classList[1]]))""")
    assert labels == {
        **{f"pod:{NODE}/{pod}": "pod" for _, pod, _ in PODS.values()},
        f"container:{NODE}/legacy": "container", "peer:198.51.100.53": "peer", "peer:203.0.113.4": "peer"}
    assert sorted(page.evaluate("[...document.querySelectorAll('#map-svg text')].map(t => t.textContent)")) == sorted(
        ["web-7d9f8c6b5-x2x9z", "api-0", "db-0", "coredns-abc12-zz9x8", "ledger-0", "gateway-5c4f-k2j9d", "legacy",
         "198.51.100.53", "203.0.113.4", "kube-system", "payments", "shop"])  # pods by name, namespaces once

    # the ring from the top, clockwise: each namespace's pods side by side, under one band
    ring = sorted(page.evaluate(RING), key=lambda n: (n[2] + math.pi / 2) % (2 * math.pi))
    assert [(node_id.split("/", 1)[1], namespace) for node_id, namespace, _ in ring] == [
        ("kube-system/coredns-abc12-zz9x8", "kube-system"),
        ("payments/gateway-5c4f-k2j9d", "payments"), ("payments/ledger-0", "payments"),
        ("shop/api-0", "shop"), ("shop/db-0", "shop"), ("shop/web-7d9f8c6b5-x2x9z", "shop"), ("legacy", "")]
    assert page.evaluate("""() => [...document.querySelectorAll('#map-svg .cluster')]
        .map(c => [c.dataset.namespace, Number(c.dataset.members)])""") == [["kube-system", 1], ["payments", 2],
                                                                            ["shop", 3]]

    # hover: the pod, its workload, bytes and the programs at its end
    api = f"pod:{NODE}/shop/api-0"
    page.hover(f".node[data-id='{api}']")
    assert page.locator(f".node[data-id='{api}'] title").text_content() == (
        "pod shop/api-0\nworkload api\n6.9 KiB\nprocesses: api-server (977)")
    assert page.locator(f".node[data-id='pod:{NODE}/payments/ledger-0'] title").text_content() == (
        "pod payments/ledger-0\nworkload ledger\n700 B")  # no process known: none shown

    # the connection list: the process on each end
    page.click(f".node[data-id='{api}']")
    assert page.inner_text("#map-node-title") == "shop/api-0: 3 connections, 6.9 KiB"
    rows = page.locator("#map-connections tbody tr")
    assert [rows.nth(i).inner_text().split("\t") for i in range(rows.count())] == [
        ["tcp", "10.244.0.5:41000", "curl (812)", "10.244.0.6:8080", "api-server (977)", "10", "5000", ""],
        ["tcp", "10.244.0.6:43000", "api-server (977)", "10.244.0.7:5432", "postgres (70)", "4", "1200", ""],
        ["tcp", "203.0.113.4:50000", "", "10.244.0.6:8080", "api-server (977)", "3", "900", ""]]
    assert ui.process.poll() is None
