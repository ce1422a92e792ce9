"""The web page's speed requirements, in the test browser (Debian's chromium) against the real
``connstats ui`` command, a real nats-server and a real SQLite store:

- the map of 10,000 connections over one hour renders in under 1 s;
- with 131,072 connections per interval on the live view the page stays responsive: the
  server sends only the top N (the event's size is asserted) and a click is answered fast.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from connstats.probe.contract import NatsOptions, connect, flows_subject
from tests.fixtures.web import MAP_CONNECTIONS, fill_store, run_async, start_ui
from tests.web_data import SECOND, chunked_messages, synthetic_batch

LIVE_CONNECTIONS = 131_072


def test_the_map_of_10000_connections_renders_in_under_a_second(nats_server, start, tmp_path, browser_page):
    path = tmp_path / "flows.sqlite"
    assert run_async(fill_store(path)) == 60_000
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url + "#map")
    page.wait_for_function("document.getElementById('map-svg').dataset.renderMs", timeout=60_000)
    counts = page.evaluate("""() => ({edges: document.querySelectorAll('#map-svg .edge').length,
        nodes: document.querySelectorAll('#map-svg .node').length,
        render: Number(document.getElementById('map-svg').dataset.renderMs),
        total: Number(document.getElementById('map-svg').dataset.totalMs)})""")
    summary = page.inner_text("#map-summary")
    print(f"map of {MAP_CONNECTIONS} connections: drawn in {counts['render']:.0f} ms, "
          f"{counts['total']:.0f} ms with the query; {summary}")
    assert f"{MAP_CONNECTIONS} connections" in summary
    assert (counts["nodes"], counts["edges"]) == (420, 7_163)  # 20 containers, 400 peers (tests/web_data.py)
    assert counts["render"] < 1000
    # selecting a node lists its connections at once, too
    took = page.evaluate("""async () => {
        const t0 = performance.now();
        document.querySelector("#map-svg .node.container").dispatchEvent(new MouseEvent("click", {bubbles: true}));
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        return performance.now() - t0; }""")
    assert page.inner_text("#map-node-title").startswith("app-00: 571 connections")  # 500 its own, 71 from app-19
    assert took < 1000
    assert ui.process.poll() is None


class Publisher(threading.Thread):
    """Publishes an interval of 131,072 connections (in chunks under 1 MiB) every 0.5 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.batch = synthetic_batch("speed-2", 0, time.time_ns(), 10 * SECOND, LIVE_CONNECTIONS, seed=9)
        self.published = 0

    def run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        nc = await connect(NatsOptions(servers=(self.url,)))
        try:
            seq = 1
            while not self.stop.is_set() and seq < 120:  # bounded: at most a minute
                envelope = replace(self.batch.envelope, interval_seq=seq)
                for message in chunked_messages(self.batch.with_envelope(envelope), 8_192):
                    await nc.publish(flows_subject("speed-2"), message)
                await nc.flush()
                self.published = seq
                seq += 1
                await asyncio.sleep(0.5)
        finally:
            await nc.close()


def test_the_live_view_stays_responsive_with_131072_connections_per_interval(
        nats_server, start, tmp_path, browser_page):
    path = tmp_path / "flows.sqlite"
    run_async(fill_store(path, intervals=1))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent === 'live: connected'", timeout=20_000)
    publisher = Publisher(nats_server.url)
    publisher.start()
    try:
        page.wait_for_function("document.querySelectorAll('#live-table tbody tr').length === 50", timeout=30_000)
        page.wait_for_function("Number(document.getElementById('live-table').dataset.intervals.split(':')[1]) >= 3",
                               timeout=30_000)
        size = int(page.get_attribute("#live-table", "data-last-event-bytes"))
        latencies = []
        for _ in range(6):  # pause and resume while intervals keep arriving
            latencies.append(page.evaluate("""async () => {
                const t0 = performance.now();
                document.getElementById('live-pause').click();
                await new Promise(r => requestAnimationFrame(() => r()));
                return performance.now() - t0; }"""))
            time.sleep(0.3)
        summary = page.inner_text("#live-summary")
    finally:
        publisher.stop.set()
        publisher.join(30)
    print(f"live: {LIVE_CONNECTIONS} connections per interval, event {size} bytes, "
          f"click answered in {max(latencies):.1f} ms at most; {publisher.published} intervals published")
    assert f"{LIVE_CONNECTIONS} connections" in summary
    assert size < 12 * 1024  # 50 rows, not 131,072
    assert page.inner_text("#live-pause") == "Pause"  # six clicks: paused and resumed three times
    assert max(latencies) < 250
