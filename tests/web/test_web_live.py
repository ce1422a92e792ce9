"""The live feed's per-page work on decoded chunks: chunked intervals in any order, top N,
bounded queues for slow pages, incomplete intervals not shown."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from connstats.probe.contract import MAX_PENDING_INTERVALS, IntervalAssembler, decode_message
from connstats.sink.web.live import PAGE_QUEUE, ChunkColumns, LiveFeed, LiveFilter, LivePage
from tests.web_data import SECOND, chunked_messages, synthetic_batch


def chunks(seq: int, count: int = 3_000, per_chunk: int = 1_000) -> list[ChunkColumns]:
    batch = synthetic_batch("live-1", seq, time.time_ns(), 10 * SECOND, count, seed=seq)
    return [ChunkColumns(decode_message(m)) for m in chunked_messages(batch, per_chunk)]


def feed_with(*pages: LivePage) -> LiveFeed:
    """A feed fed by hand (``feed.flows.add``): no NATS."""
    feed = LiveFeed(None)
    feed.pages.update(pages)
    return feed


def test_an_interval_is_one_event_per_page_once_every_chunk_arrived_in_any_order():
    page, other = LivePage(LiveFilter(limit=3)), LivePage(LiveFilter(limit=1, port=53))
    feed = feed_with(page, other)
    first, second, third = chunks(5)
    for chunk in (third, first, third, second):  # out of order, one redelivered
        assert page.events.empty() and other.events.empty()
        feed.flows.add(chunk)
    event = page.events.get_nowait()
    batch = synthetic_batch("live-1", 5, 0, 10 * SECOND, 3_000, seed=5)
    nbytes = np.asarray(batch.columns.bytes, dtype=np.int64)
    assert [r["bytes"] for r in event["rows"]] == sorted(nbytes.tolist(), reverse=True)[:3]
    assert (event["interval_seq"], event["connections"], event["bytes"]) == (5, 3_000, int(nbytes.sum()))
    dns = [i for i in range(3_000) if batch.columns.dst_port[i] == 53]
    assert other.events.get_nowait()["connections"] == len(dns) == 1_000
    feed.flows.add(second)  # redelivered after the interval was shown: not shown again
    assert page.events.empty() and other.events.empty()


def test_a_slow_page_loses_its_oldest_intervals():
    page = LivePage(LiveFilter(limit=1))
    assembler = IntervalAssembler()
    for seq in range(1, PAGE_QUEUE + 3):
        [interval] = assembler.add(chunks(seq, 10, 10)[0])
        page.add(interval)
    assert page.dropped == 2
    assert [page.events.get_nowait()["interval_seq"] for _ in range(PAGE_QUEUE)] == list(range(3, PAGE_QUEUE + 3))
    page.close()
    assert page.events.get_nowait() is None


def test_an_interval_missing_chunks_is_never_shown_expired_or_pushed_out():
    page = LivePage(LiveFilter(limit=1))
    feed = feed_with(page)
    for seq in range(100, 100 + 2 * MAX_PENDING_INTERVALS):
        feed.flows.add(chunks(seq, 20, 10)[0])  # the second chunk never comes
    assert len(feed.flows.assembler) == MAX_PENDING_INTERVALS and page.events.empty()  # the oldest pushed out
    feed.flows.assembler.timeout = 0.0
    feed.flows.expire()
    assert len(feed.flows.assembler) == 0 and page.events.empty()
    feed.flows.add(chunks(100, 20, 10)[1])  # its late chunk: the interval was handed out, not shown
    assert len(feed.flows.assembler) == 0 and page.events.empty()


def test_filters_pick_records_by_column():
    chunk = chunks(9, 2_000, 2_000)[0]
    mask = chunk.mask(LiveFilter(iface="veth002", proto=6))
    assert int(mask.sum()) == len([i for i in range(2_000) if i % 20 == 2 and i % 3 != 0])
    assert int(chunk.mask(LiveFilter(host="another")).sum()) == 0
    assert chunk.mask(LiveFilter()) is None
    rows, totals = chunk.top(replace(LiveFilter(), limit=5, port=53))
    assert len(rows) == 5 and totals[0] == len(range(0, 2_000, 3))
