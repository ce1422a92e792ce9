"""The live view's work per interval of 131,072 connections, side by side in one run:

    columns + argpartition (sink/web/live.py) vs. FlowBatch.busiest (a full lexsort, as `top`)
    vs. one Python object per record and sorted().

Run: PYTHONPATH=. .venv/bin/python tests/bench/bench_web_live.py
"""
from __future__ import annotations

import time

from connstats.probe.contract import decode_message
from connstats.sink.web.live import ChunkColumns, LiveFilter
from tests.web_data import SECOND, chunked_messages, synthetic_batch

CONNECTIONS, LIMIT, ROUNDS = 131_072, 50, 5


def best(fn) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    batch = synthetic_batch("bench", 1, time.time_ns(), 10 * SECOND, CONNECTIONS)
    decoded = [decode_message(m) for m in chunked_messages(batch, 8_192)]
    chunks = [ChunkColumns(b) for b in decoded]
    wanted = LiveFilter(limit=LIMIT)
    columns = best(lambda: [ChunkColumns(b) for b in decoded])  # once per message, for every page
    ours = best(lambda: [c.top(wanted) for c in chunks])
    lexsort = best(lambda: [b.busiest(LIMIT) for b in decoded])
    objects = best(lambda: [sorted(b.records(), key=lambda r: -r.bytes)[:LIMIT] for b in decoded])
    print(f"{CONNECTIONS:,} connections in {len(chunks)} chunks, top {LIMIT} per chunk (best of {ROUNDS}):")
    print(f"  numpy columns (shared)   {columns * 1000:8.1f} ms   once per message, for every page")
    print(f"  columns + argpartition   {ours * 1000:8.1f} ms   1.0x")
    print(f"  FlowBatch.busiest        {lexsort * 1000:8.1f} ms   {lexsort / ours:.1f}x")
    print(f"  records() + sorted()     {objects * 1000:8.1f} ms   {objects / ours:.1f}x")


if __name__ == "__main__":
    main()
