"""The History chart in the test browser against the real ``connstats ui``, a real
nats-server and a real SQLite store: a line never joins two points across a bucket with no
data (it would draw traffic over a time nobody measured)."""
from __future__ import annotations

import time

from connstats.probe.runtime.durations import parse_duration
from connstats.sink.history import HistoryQuery, sqlite_history
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.web import run_async, start_ui
from tests.web_data import SECOND, synthetic_batch

MS = 1_000_000
MINUTE = 60 * SECOND


async def fill_buckets(path, base: int, buckets: list[int]) -> None:
    """One interval (10 s, 3 connections of container app-00) in each listed minute after ``base``."""
    store = SqliteStore(path)
    for seq, bucket in enumerate(buckets):
        await store.write(synthetic_batch("gap-1", seq, base + bucket * MINUTE + SECOND, 10 * SECOND, 3,
                                          containers=1, peers=3, seed=seq))
    await store.close()


SEGMENTS = """() => [...document.querySelectorAll('#history-svg polyline[data-series="app-00"]')]
    .map(line => line.getAttribute('points').split(' '))"""
DOTS = """() => [...document.querySelectorAll('#history-svg circle.point[data-series="app-00"]')]
    .map(c => [Number(c.dataset.timeMs), Number(c.dataset.value), c.getAttribute('cx') + ',' + c.getAttribute('cy')])"""


def test_a_line_breaks_where_a_bucket_has_no_data(nats_server, start, tmp_path, browser_page):
    path = tmp_path / "flows.sqlite"
    base = time.time_ns() // MINUTE * MINUTE - 11 * MINUTE  # minute 0 of the data, inside the last 15 minutes
    run_async(fill_buckets(path, base, [1, 2, 3, 6, 7, 8]))  # nothing in minutes 4 and 5
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url + "#history")
    page.wait_for_function("document.getElementById('history-svg').dataset.every", timeout=30_000)
    page.select_option("#history-filters select[name=since]", "15m")
    page.fill("#history-filters input[name=every]", "1m")
    page.click("#history-filters button[type=submit]")
    page.wait_for_function("document.getElementById('history-svg').dataset.every === '60000' && "
                           "document.getElementById('history-svg').dataset.since !== undefined", timeout=30_000)
    since, until = (int(page.get_attribute("#history-svg", f"data-{k}")) * MS for k in ("since", "until"))
    rows = sqlite_history(path, HistoryQuery(since=since, until=until, group_by="container",
                                             every=parse_duration("1m")))
    assert [(r["container_name"], (r["time"] - base) // MINUTE) for r in rows] == [
        ("app-00", m) for m in (1, 2, 3, 6, 7, 8)]
    dots = page.evaluate(DOTS)
    assert [(t, v) for t, v, _ in dots] == [(r["time"] // MS, r["bytes"]) for r in rows]  # one dot per store point
    segments = page.evaluate(SEGMENTS)
    at = [xy for _, _, xy in dots]
    assert segments == [at[:3], at[3:]]  # two lines: minutes 1-3 and 6-8, none across 4-5
    assert ui.process.poll() is None


def test_the_default_range_fits_the_data(nats_server, start, tmp_path, browser_page):
    """8 s of data (eight 1 s intervals) in the last hour: by default the chart spans the
    data (30 s, the least, ending with the last point), eight dots of 1 s; the whole hour,
    chosen, is the one dot it used to be the default."""
    path = tmp_path / "flows.sqlite"
    base = time.time_ns() // MINUTE * MINUTE - MINUTE  # a whole minute, 60 to 120 s ago
    batches = [synthetic_batch("fit-1", seq, base + seq * SECOND, SECOND - 2, 3, containers=1, peers=3, seed=seq)
               for seq in range(8)]
    run_async(write(path, batches))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = browser_page
    page.goto(url + "#history")
    page.wait_for_function("document.getElementById('history-svg').dataset.fit === '1'", timeout=30_000)
    svg = {k: int(page.get_attribute("#history-svg", f"data-{k}")) for k in ("since", "until", "every")}
    assert svg == {"since": (base + 8 * SECOND - 30 * SECOND) // MS, "until": (base + 8 * SECOND) // MS, "every": 1000}
    assert page.evaluate(DOTS)[0][:2] == [base // MS, sum(batches[0].columns.bytes)]
    assert [(t, v) for t, v, _ in page.evaluate(DOTS)] == [((base + seq * SECOND) // MS, sum(b.columns.bytes))
                                                          for seq, b in enumerate(batches)]
    assert page.locator("#history-svg circle.point").count() == 8

    page.select_option("#history-filters select[name=since]", "1h")
    page.click("#history-filters button[type=submit]")
    page.wait_for_function("document.getElementById('history-svg').dataset.fit === '0'", timeout=30_000)
    assert int(page.get_attribute("#history-svg", "data-every")) == 30_000
    assert [(t, v) for t, v, _ in page.evaluate(DOTS)] == [(base // MS, sum(sum(b.columns.bytes) for b in batches))]
    assert ui.process.poll() is None


async def write(path, batches) -> None:
    store = SqliteStore(path)
    for batch in batches:
        await store.write(batch)
    await store.close()
