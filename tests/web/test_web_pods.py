"""The map in the test browser against the real ``connstats ui``, a real nats-server and a
real SQLite store holding pods' records (pod, workload, process on each end): nodes named by
pod and grouped by Kubernetes namespace, each end's process on hover and in the connection
list; a container without a pod is drawn as before."""
from __future__ import annotations

import math

from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.records import SECOND, envelope, flow_batch
from tests.fixtures.web import run_async, start_ui
from tests.web_data import POD_NODE as NODE
from tests.web_data import PODS, pod_records


async def fill(path, now_ns: int) -> None:
    store = SqliteStore(path)
    of = envelope(NODE, 1, start=now_ns - 70 * SECOND, seconds=10)
    await store.write(flow_batch(of, pod_records(of)))
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
    assert page.evaluate("[...document.querySelectorAll('#map-svg text.cluster-name')].map(t => t.textContent)") == [
        "kube-system", "payments", "shop"]

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
