"""The SQLite store's rate as its table grows: intervals of new connections, empty to millions of rows.

Each interval is made the way the probe makes one: a FLOW_KEY/FLOW_COUNTERS array of
``--records`` distinct new connections (IPv4 UDP and TCP from random sources to four
destinations, every tenth IPv6) in the random order a hash map is read in, put into the
stores' key order where this revision's probe does that (``store_order``), then
``FlowBatch.from_arrays``, ``encode_interval`` into messages of 1 MiB, and each message
decoded as the sink decodes it. Only the stores' writes are timed (wall and CPU time of this process): ``SqliteStore.write``
per message, or ``SqliteStore.write_many`` of up to ``--batch`` messages where this
revision has it (as its consumer calls it).

It prints the records/s of every ``--every``-th interval and the rows the table held
before it. ``--prefill ROWS`` copies the first measured interval (its rows as the store
wrote them, at earlier interval starts, in key order, in SQL) until the table holds ROWS
rows after the first ``--intervals`` intervals, then measures ``--intervals`` more:
the rate on an empty table and on a table of ROWS rows side by side, without the hour
that writing ROWS rows at the old rate takes. The summary line gives both and their ratio.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_sqlite_growth.py [--intervals 3]
        [--records 130000] [--prefill 10000000] [--every 1] [--batch 8]
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.contract import Envelope, decode_message  # noqa: E402
from connstats.probe.contract.flow_batch import FlowBatch  # noqa: E402
from connstats.probe.kernel.loader import FLOW_COUNTERS, FLOW_KEY  # noqa: E402
from connstats.probe.publish.publisher import encode_interval, payload_limit  # noqa: E402
from connstats.sink.sqlite_store import SqliteStore  # noqa: E402

try:
    from connstats.probe.contract.flow_batch import store_order
except ImportError:  # a revision whose probe sends an interval in the map's read order
    store_order = None

SECOND = 1_000_000_000
INTERVAL = 2 * SECOND
START = 1_790_000_000 * SECOND


def drained(seq: int, records: int) -> tuple[np.ndarray, np.ndarray]:
    """One interval's kernel arrays: ``records`` connections never seen before, in random order."""
    rng = np.random.default_rng(seq)
    keys = np.zeros(records, FLOW_KEY)
    keys["ifindex"] = 7
    keys["direction"] = 1
    keys["family"] = 4
    keys["proto"] = np.where(rng.random(records) < 0.5, 17, 6)
    first = seq * records  # distinct sources over all intervals
    number = np.arange(first, first + records, dtype=np.uint64)
    src = np.zeros((records, 16), np.uint8)
    src[:, 0] = 10
    src[:, 1] = (number >> 16) % 200 + 1
    src[:, 2] = (number >> 8) & 255
    src[:, 3] = number & 255
    v6 = np.arange(records) % 10 == 0
    keys["family"][v6] = 6
    src[v6, 0], src[v6, 1] = 0xfd, 0x00
    src[v6, 4:12] = rng.integers(0, 256, (int(v6.sum()), 8), dtype=np.uint8)
    dst = np.zeros((records, 16), np.uint8)
    dst[:, :3] = (10, 251, 3)
    dst[:, 3] = rng.integers(2, 6, records)
    keys["src"] = src.view("V16").ravel()
    keys["dst"] = dst.view("V16").ravel()
    keys["sport"] = rng.integers(1024, 65536, records)
    keys["dport"] = rng.integers(1, 65536, records)
    values = np.zeros(records, FLOW_COUNTERS)
    values["packets"] = 1
    values["bytes"] = 74
    values["first_seen_ns"] = rng.integers(1, INTERVAL, records)
    values["last_seen_ns"] = values["first_seen_ns"]
    shuffled = rng.permutation(records)  # a hash map's read order
    return keys[shuffled], values[shuffled]


def messages(seq: int, records: int, host: str = "bench-1") -> list[FlowBatch]:
    """The interval's messages as the sink decodes them."""
    keys, values = drained(seq, records)
    if store_order is not None:
        order = store_order(keys)
        keys, values = keys[order], values[order]
    start = START + seq * INTERVAL
    envelope = Envelope(host=host, boot_id="bench", interval_seq=seq, interval_start=start,
                        interval_end=start + INTERVAL)
    batch = FlowBatch.from_arrays(envelope, keys, values, mono_to_wall_ns=start, ifnames={7: "bench0"})
    return [decode_message(payload) for _, payload in encode_interval(batch, payload_limit(1 << 20))]


def write(store: SqliteStore, chunks: list[FlowBatch], batch: int) -> tuple[float, float]:
    """Seconds and CPU-seconds (this process, all threads) to store ``chunks`` the way this
    revision's consumer does."""
    many = getattr(store, "write_many", None)

    async def run() -> None:
        if many is None:
            for chunk in chunks:
                await store.write(chunk)
        else:
            for at in range(0, len(chunks), batch):
                await many(chunks[at:at + batch])

    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run())
    return time.perf_counter() - started, time.process_time() - cpu


def prefill(path: Path, template_start: int, rows: int, records: int) -> int:
    """Copies of the interval at ``template_start`` before it until the table holds about
    ``rows`` rows; returns the rows it holds."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(flows)")]
        key = [row[1] for row in sorted((r for r in db.execute("PRAGMA table_info(flows)") if r[5]),
                                        key=lambda r: r[5])]
        db.execute("CREATE TEMP TABLE template AS SELECT * FROM flows WHERE interval_start = ?", (template_start,))
        have = db.execute("SELECT count(*) FROM flows").fetchone()[0]
        copies = max(0, (rows - have) // records)
        shifted = ", ".join(f"{c} - ?1" if c in ("interval_start", "interval_end", "first_seen", "last_seen")
                            else c for c in columns)
        for copy in range(copies, 0, -1):  # ascending interval starts, all before the measured ones
            db.execute("BEGIN")
            db.execute(f"INSERT INTO flows ({', '.join(columns)}) SELECT {shifted} FROM template "
                       f"ORDER BY {', '.join(key)}", ((copy + 1) * 10 * 24 * 3600 * SECOND,))
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return db.execute("SELECT count(*) FROM flows").fetchone()[0]
    finally:
        db.close()


def measure(store: SqliteStore, path: Path, seqs: range, records: int, every: int, batch: int,
            rows: int) -> tuple[list[float], list[float], int]:
    """Records/s and records per CPU-second of each interval, and the rows after them."""
    rates, per_cpu = [], []
    for seq in seqs:
        chunks = messages(seq, records)
        seconds, cpu = write(store, chunks, batch)
        rates.append(records / seconds)
        per_cpu.append(records / cpu)
        if (seq - seqs.start) % every == 0 or seq == seqs.stop - 1:
            print(f"interval {seq:4d}: {rows:>12,} rows before, {records / seconds:>9,.0f} records/s, "
                  f"{records / cpu:>9,.0f} records/CPU-s ({len(chunks)} messages)", flush=True)
        rows += records
    return rates, per_cpu, rows


def summary(first: str, a: list[float], ca: list[float], second: str, b: list[float], cb: list[float]) -> None:
    ma, mb, mca, mcb = (statistics.median(v) for v in (a, b, ca, cb))
    print(f"{first} {ma:,.0f} records/s, {second} {mb:,.0f} records/s: {mb / ma:.2f}x")
    print(f"{first} {mca:,.0f} records/CPU-s, {second} {mcb:,.0f} records/CPU-s: {mcb / mca:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--records", type=int, default=130_000)
    parser.add_argument("--prefill", type=int, default=0, help="rows the table holds before the second run")
    parser.add_argument("--every", type=int, default=1, help="print every n-th interval")
    parser.add_argument("--batch", type=int, default=8, help="messages per write_many (where there is one)")
    parser.add_argument("--dir", default=None, help="where the file goes (a temporary directory by default)")
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary directory goes on kill too
    with tempfile.TemporaryDirectory(prefix="connstats-growth-", dir=opts.dir) as tmp:
        path = Path(tmp) / "flows.sqlite"
        store = SqliteStore(path)
        print(f"{opts.records:,} new connections per interval; probe sorts into key order: "
              f"{store_order is not None}; write_many: {hasattr(store, 'write_many')}", flush=True)
        empty, empty_cpu, rows = measure(store, path, range(opts.intervals), opts.records, opts.every,
                                         opts.batch, 0)
        asyncio.run(store.close())
        if not opts.prefill:
            summary("first 3 intervals", empty[:3], empty_cpu[:3], "last 3 intervals", empty[-3:], empty_cpu[-3:])
            return 0
        started = time.perf_counter()
        rows = prefill(path, START, opts.prefill, opts.records)
        print(f"prefilled to {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        store = SqliteStore(path)
        full, full_cpu, rows = measure(store, path, range(opts.intervals, 2 * opts.intervals), opts.records,
                                       opts.every, opts.batch, rows)
        asyncio.run(store.close())
        summary("empty table", empty, empty_cpu, "full table", full, full_cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
