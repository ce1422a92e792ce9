"""How well, on the page, in the test browser against the real ``connstats ui``, a real
nats-server and a real SQLite store: the live view's RTT, retransmits and drops columns
(shown only when a row has them), the map's edges coloured by verdict, RTT or drops with a
legend, an edge's quality on hover, a node's connections with their quality and its device's
drops; with no quality anywhere, nothing of it shows and the console stays clean."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from connstats.probe.contract import FlowBatch, NatsOptions, connect, encode_message, flows_subject
from tests.fixtures.web import run_async, start_ui
from tests.web_data import QUALITY_NODE as NODE
from tests.web_data import SECOND, quality_batches, synthetic_batch, write_with_quality

A, B = f"container:{NODE}/a", f"container:{NODE}/b"
EDGE = "#map-svg .edge[data-source='{}'][data-target='{}']"
STROKE = "([s, t]) => getComputedStyle(document.querySelector(`#map-svg .edge[data-source='${s}'][data-target='${t}']`)).stroke"
GREY, NONE, ORANGE, LIME, RED, DARK_RED = ("rgb(125, 141, 168)", "rgb(184, 194, 211)", "rgb(224, 122, 30)",
                                           "rgb(139, 191, 63)", "rgb(211, 60, 60)", "rgb(139, 26, 26)")


class Publisher(threading.Thread):
    """Publishes each batch as a new interval of its host every 0.3 s until stopped."""

    def __init__(self, url: str, batches: list[FlowBatch]) -> None:
        super().__init__(daemon=True)
        self.url, self.batches, self.stop = url, batches, threading.Event()

    def run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        nc = await connect(NatsOptions(servers=(self.url,)))
        try:
            for seq in range(1, 200):  # bounded: at most a minute
                if self.stop.is_set():
                    break
                for batch in self.batches:
                    envelope = replace(batch.envelope, interval_seq=seq, interval_end=time.time_ns())
                    await nc.publish(flows_subject(envelope.host), encode_message(batch.with_envelope(envelope)))
                await nc.flush()
                await asyncio.sleep(0.3)
        finally:
            await nc.close()


def publishing(url: str, batches: list[FlowBatch]) -> Publisher:
    publisher = Publisher(url, batches)
    publisher.start()
    return publisher


def test_the_map_colours_edges_by_rtt_or_drops_and_shows_each_one_s_quality(nats_server, start, tmp_path,
                                                                             browser_page):
    path, begin = tmp_path / "flows.sqlite", time.time_ns() - 120 * SECOND
    run_async(write_with_quality(path, quality_batches(begin)))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url + "#map")
    page.wait_for_function("document.getElementById('map-svg').dataset.since", timeout=30_000)
    ab = page.locator(EDGE.format(A, B))
    assert [ab.get_attribute(f"data-{k}") for k in ("rtt-max-us", "retransmits", "drop-packets", "drop-reason")] == [
        "4000", "10", "40", "NETFILTER_DROP"]
    ab.hover()  # the tooltip is made on the first hover
    assert ab.locator("title").text_content() == (
        "a → b\n1 connections, 400 packets, 585.9 KiB\nRTT max 4.0 ms\n10 retransmits\n"
        "40 dropped (5.9 KiB), mostly NETFILTER_DROP")
    pairs = [(A, B), (A, "peer:203.0.113.9"), (B, "peer:198.51.100.53"), (f"container:{NODE}/c", "peer:198.51.100.53")]
    strokes = {}
    for mode in ("bytes", "rtt", "drops", "bytes"):
        page.select_option("#map-colour", mode)
        assert page.get_attribute("#map-legend", "data-mode") == mode
        assert page.locator(f"#map-legend .for-{mode}").is_visible()
        strokes[mode] = [page.evaluate(STROKE, list(pair)) for pair in pairs]
    assert strokes == {
        "bytes": [GREY] * 4,  # no policy: the verdict's colour, as before
        "rtt": [LIME, RED, GREY, GREY],  # 4 ms; 120 ms; no RTT measured (UDP)
        "drops": [ORANGE, NONE, DARK_RED, NONE],  # 40 packets; none; 1,500; none
    }

    page.click(f".node[data-id='{A}']")
    rows = page.locator("#map-connections tbody tr")
    assert [rows.nth(i).inner_text().split("\t") for i in range(rows.count())] == [
        ["tcp", "10.60.0.2:40000", "", "10.60.0.3:5432", "", "400", "600000", "", "2.4 ms", "4.0 ms", "10",
         "40 (NETFILTER_DROP)"],
        ["tcp", "10.60.0.2:40001", "", "203.0.113.9:443", "", "100", "120000", "", "90.0 ms", "120.0 ms", "", ""]]
    assert page.inner_text("#map-node-drops") == (
        "dropped on the device with no connection: vethA NETFILTER_DROP: 20 packets (1.4 KiB)")
    page.click(f".node[data-id='device:{NODE}/eth9']")
    assert page.inner_text("#map-node-drops") == (
        "dropped on the device with no connection: eth9 NO_SOCKET: 10 packets (600 B)")
    assert ui.process.poll() is None


def test_the_live_view_shows_quality_columns_only_when_a_row_has_them(nats_server, start, tmp_path, browser_page):
    ui, url = start_ui(start, nats_server.url, f"sqlite:{tmp_path / 'none.sqlite'}")
    page = browser_page
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent === 'live: connected'", timeout=20_000)
    plain = synthetic_batch("plain-1", 1, time.time_ns(), 10 * SECOND, 3, containers=1, peers=3, seed=1)
    publisher = publishing(nats_server.url, [plain])
    try:
        page.wait_for_function("document.querySelectorAll('#live-table tbody tr').length === 3", timeout=20_000)
        assert not page.locator("#live-table th.quality").first.is_visible()
        assert not page.locator("#live-table td.quality").first.is_visible()
    finally:
        publisher.stop.set()
        publisher.join(30)
    quality = quality_batches(time.time_ns() - 10 * SECOND)[0]
    publisher = publishing(nats_server.url, [quality])
    try:
        page.wait_for_function("document.getElementById('live-table').classList.contains('with-quality')",
                               timeout=20_000)
        page.wait_for_function("document.getElementById('live-summary').textContent.includes('qual-1')",
                               timeout=20_000)
    finally:
        publisher.stop.set()
        publisher.join(30)
    assert page.locator("#live-table th.quality").count() == 4
    assert all(page.locator("#live-table th.quality").nth(i).is_visible() for i in range(4))
    cells = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#live-table tbody tr')]
        .filter(r => r.children[0].textContent === 'qual-1')
        .map(r => [r.children[5].textContent + ' ' + r.children[4].textContent + ' ' + r.children[3].textContent,
                   [...r.querySelectorAll('td.quality')].map(c => c.textContent)]))""")
    assert cells == {
        "10.60.0.2:40000 tcp out": ["1.5 ms", "2.5 ms", "7", ""],
        "10.60.0.2:40000 tcp in": ["", "", "", "30 (NETFILTER_DROP)"],
        "10.60.0.2:40001 tcp out": ["90.0 ms", "120.0 ms", "", ""],
        "10.60.0.3:5353 udp out": ["", "", "", "750 (QDISC_DROP)"],
        "10.60.0.4:5353 udp out": ["", "", "", ""]}
    assert "dropped with no connection: vethA NETFILTER_DROP 12, eth9 NO_SOCKET 5" in page.inner_text("#live-summary")
    assert ui.process.poll() is None


def test_without_quality_nothing_of_it_shows_and_the_console_stays_clean(nats_server, start, tmp_path,
                                                                       strict_browser_page):
    path = tmp_path / "flows.sqlite"
    run_async(write_plain(path))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = strict_browser_page
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url + "#map")
    page.wait_for_selector("#map-svg[data-render-ms]", state="attached", timeout=30_000)
    assert page.locator("#map-svg .edge").count() == 38  # 40 connections: 34 to peers, 6 over 4 container pairs
    assert page.locator("#map-svg .edge[data-rtt-max-us]").count() == 0
    assert page.locator("#map-svg .edge[class*='rtt-'], #map-svg .edge[class*='drop-']").count() == 0
    for mode in ("rtt", "drops", "bytes"):
        page.select_option("#map-colour", mode)
    page.locator("#map-svg .node.container").first.dispatch_event("click")
    assert page.locator("#map-connections tbody tr").count() > 0
    assert not page.locator("#map-connections th.quality").first.is_visible()
    assert not page.locator("#map-connections td.quality").count()
    assert not page.locator("#map-node-drops").is_visible()
    page.click("#tabs button[data-view=live]")
    assert not page.locator("#live-table th.quality").first.is_visible()
    assert problems == []
    assert ui.process.poll() is None


async def write_plain(path) -> None:
    from connstats.sink.sqlite_store import SqliteStore

    store = SqliteStore(path)
    await store.write(synthetic_batch("plain-1", 1, time.time_ns() - 60 * SECOND, 10 * SECOND, 40, containers=4,
                                      peers=10, seed=2))
    await store.close()
