"""The live feed's per-page work on decoded chunks: chunked intervals in any order, top N,
bounded queues for slow pages and lost chunks."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from connstats.probe.contract import decode_message
from connstats.sink.web.live import MAX_PENDING_INTERVALS, PAGE_QUEUE, ChunkColumns, LiveFilter, LivePage
from tests.web_data import SECOND, chunked_messages, synthetic_batch


def chunks(seq: int, count: int = 3_000, per_chunk: int = 1_000) -> list[ChunkColumns]:
    batch = synthetic_batch("live-1", seq, time.time_ns(), 10 * SECOND, count, seed=seq)
    return [ChunkColumns(decode_message(m)) for m in chunked_messages(batch, per_chunk)]


def test_an_interval_is_one_event_once_every_chunk_arrived_in_any_order():
    page = LivePage(LiveFilter(limit=3))
    first, second, third = chunks(5)
    for chunk in (third, first, third, second):  # out of order, one redelivered
        assert page.events.empty()
        page.add(chunk)
    event = page.events.get_nowait()
    batch = synthetic_batch("live-1", 5, 0, 10 * SECOND, 3_000, seed=5)
    nbytes = np.asarray(batch.columns.bytes, dtype=np.int64)
    assert [r["bytes"] for r in event["rows"]] == sorted(nbytes.tolist(), reverse=True)[:3]
    assert (event["interval_seq"], event["connections"], event["bytes"]) == (5, 3_000, int(nbytes.sum()))
    assert page.events.empty()


def test_a_slow_page_loses_its_oldest_intervals_and_lost_chunks_are_forgotten():
    page = LivePage(LiveFilter(limit=1))
    for seq in range(1, PAGE_QUEUE + 3):
        page.add(chunks(seq, 10, 10)[0])
    assert page.dropped == 2
    assert [page.events.get_nowait()["interval_seq"] for _ in range(PAGE_QUEUE)] == list(range(3, PAGE_QUEUE + 3))
    for seq in range(100, 100 + 2 * MAX_PENDING_INTERVALS):
        page.add(chunks(seq, 20, 10)[0])  # the second chunk never comes
    assert len(page._pending) == MAX_PENDING_INTERVALS
    page.close()
    assert page.events.get_nowait() is None


def test_filters_pick_records_by_column():
    chunk = chunks(9, 2_000, 2_000)[0]
    mask = chunk.mask(LiveFilter(iface="veth002", proto=6))
    assert int(mask.sum()) == len([i for i in range(2_000) if i % 20 == 2 and i % 3 != 0])
    assert int(chunk.mask(LiveFilter(host="another")).sum()) == 0
    assert chunk.mask(LiveFilter()) is None
    rows, totals = chunk.top(replace(LiveFilter(), limit=5, port=53))
    assert len(rows) == 5 and totals[0] == len(range(0, 2_000, 3))
