"""Records per second through the NATS pipeline: encode, publish, consume+store, end to end.

Every interval holds 131,072 realistic records (the flow map's capacity). Stages, each
timed on its own against a fresh nats-server (JetStream, file storage, on loopback):

  encode       encode_interval(): chunking + schema 2 encoding, pure CPU
  bare         a bare executemany of the same rows (prebuilt tuples) into the same table,
               one transaction per message-sized slice: the bound for the sink's SQLite rate
  publish      FlowPublisher.submit() + flush(): encode, outbox, publish, wait for PubAcks
  consume      FlowConsumer into the store: fetch, decode_message, Store.write, ack
  end to end   publisher in this process, sink(s) in their own process(es), overlapping

The store is ``SqliteStore`` (``--store sqlite``, the default when it exists) or an
in-memory fake (``--store memory``) that measures NATS and decoding alone.

    .venv/bin/python tests/bench/bench_pipeline.py [--intervals 4] [--records 131072]
                                                   [--store sqlite|memory] [--sinks 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.contract import NatsOptions  # noqa: E402
from connstats.probe.contract.wire import FlowBatch  # noqa: E402
from connstats.probe.publish.publisher import FlowPublisher, PublisherSettings, encode_interval, payload_limit  # noqa: E402
from connstats.sink.consumer import ConsumerSettings, FlowConsumer  # noqa: E402
from tests.fixtures.nats import MemoryStore, NatsServerProcess, sample_envelope, sample_records  # noqa: E402

try:
    from connstats.sink.sqlite_store import SqliteStore
except ImportError:  # being written elsewhere
    SqliteStore = None

SINK_SCRIPT = """
import asyncio, json, sys, time
import nats
from connstats.sink.consumer import ConsumerSettings, FlowConsumer
url, path, expected, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "sqlite":
    from connstats.sink.sqlite_store import SqliteStore
else:
    from tests.fixtures.nats import MemoryStore
async def main():
    nc = await nats.connect(url)
    store = SqliteStore(path) if kind == "sqlite" else MemoryStore()
    await store.ping()
    consumer = FlowConsumer(nc, store, ConsumerSettings(batch=16))
    await consumer.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    async def watch():
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                stop.set()
                return
    watcher = asyncio.create_task(watch())
    async def until_done():
        while consumer.stats.stored_records < expected and not stop.is_set():
            await asyncio.sleep(0.005)
        stop.set()
    waiter = asyncio.create_task(until_done())
    await consumer.consume_forever(stop)
    print(json.dumps({"done": time.time(), "records": consumer.stats.stored_records}), flush=True)
    await consumer.close(); await store.close(); await nc.close()
asyncio.run(main())
"""


def build_intervals(count: int, records: int) -> list[FlowBatch]:
    intervals = []
    for seq in range(count):
        envelope = sample_envelope(seq)
        intervals.append(FlowBatch.from_records(envelope, sample_records(envelope, records, ipv6_every=10)))
    return intervals


def bench_bare_executemany(intervals, tmp: Path, per_message: int) -> float:
    """The same rows, prebuilt, into the same table (made by SqliteStore), same pragmas."""
    import sqlite3

    from connstats.sink.sqlite_store import _COLUMNS, _insert, flow_rows
    path = tmp / "bare.sqlite"
    asyncio.run(_touch(path))
    rows = [flow_rows(batch) for batch in intervals]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for interval in rows:
        for i in range(0, len(interval), per_message):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_insert(_COLUMNS), interval[i:i + per_message])
            db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


async def _touch(path: Path) -> None:
    store = SqliteStore(path)
    await store.ping()
    await store.close()


def make_store(kind: str, tmp: Path, name: str):
    return SqliteStore(tmp / name) if kind == "sqlite" else MemoryStore()


def rate(records: int, seconds: float) -> str:
    return f"{records / seconds:>10,.0f} records/s  ({records:,} records in {seconds:.2f} s)"


def bench_encode(intervals, max_payload: int) -> tuple[int, float]:
    start = time.perf_counter()
    messages = sum(len(encode_interval(batch, payload_limit(max_payload))) for batch in intervals)
    return messages, time.perf_counter() - start


# All intervals are submitted at once, faster than a probe would: room for all of them.
BURST = PublisherSettings(memory_cap=1 << 30)


async def bench_publish(server, intervals) -> float:
    start = time.perf_counter()
    async with FlowPublisher(NatsOptions(servers=(server.url,)), BURST) as publisher:
        for batch in intervals:
            await publisher.submit(batch)
        assert await publisher.flush(120), "publisher did not drain"
        elapsed = time.perf_counter() - start
    return elapsed


async def bench_consume(server, store, total: int) -> float:
    import nats
    nc = await nats.connect(server.url)
    consumer = FlowConsumer(nc, store, ConsumerSettings(batch=16))
    await consumer.start()
    await store.ping()
    stop = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.create_task(consumer.consume_forever(stop))
    while consumer.stats.stored_records < total:
        assert not task.done(), task
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    await consumer.close()
    await store.close()
    await nc.close()
    return elapsed


async def bench_end_to_end(server, intervals, tmp: Path, sinks: int, kind: str) -> float:
    total = sum(len(batch) for batch in intervals)
    command = [sys.executable, "-c", SINK_SCRIPT, server.url, str(tmp / "e2e.sqlite"), str(total), kind]
    processes = [subprocess.Popen(command,
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(sinks)]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        start = time.time()
        async with FlowPublisher(NatsOptions(servers=(server.url,)), BURST) as publisher:
            for batch in intervals:
                await publisher.submit(batch)
            assert await publisher.flush(120)
        if sinks == 1 or kind != "sqlite":
            result = json.loads(await asyncio.to_thread(processes[0].stdout.readline))
            return result["done"] - start
        return await _wait_rows(tmp / "e2e.sqlite", total, start)
    finally:
        for process in processes:
            process.stdin.close()
            process.wait(30)


async def _wait_rows(path: Path, total: int, start: float) -> float:
    import sqlite3
    while True:
        db = sqlite3.connect(path)
        count = db.execute("SELECT count(*) FROM flows").fetchone()[0]
        db.close()
        if count >= total:
            return time.time() - start
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--records", type=int, default=131_072)
    parser.add_argument("--sinks", type=int, default=1, help="sink processes in the end-to-end run (sqlite only)")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite" if SqliteStore else "memory")
    args = parser.parse_args()
    if args.store == "memory":
        args.sinks = 1
    intervals = build_intervals(args.intervals, args.records)
    total = args.intervals * args.records
    store_name = "SqliteStore (WAL, one file)" if args.store == "sqlite" else "in-memory fake store"
    print(f"{args.intervals} intervals x {args.records:,} records; store: {store_name}")
    with tempfile.TemporaryDirectory(prefix="connstats-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "nats").mkdir()
        server = NatsServerProcess(tmp / "nats")
        server.start()
        try:
            messages, seconds = bench_encode(intervals, 1 << 20)
            print(f"encode      {rate(total, seconds)}  -> {messages} messages")
            bare = await asyncio.to_thread(bench_bare_executemany, intervals, tmp, -(-total // messages))
            print(f"bare        {rate(total, bare)}  (executemany of prebuilt rows, {messages} transactions)")
            print(f"publish     {rate(total, await bench_publish(server, intervals))}")
            consume = await bench_consume(server, make_store(args.store, tmp, 'c.sqlite'), total)
            print(f"consume     {rate(total, consume)}  = {bare / consume:.2f}x the bare executemany rate")
        finally:
            server.stop()
        (tmp / "nats2").mkdir()
        server = NatsServerProcess(tmp / "nats2")
        server.start()
        try:
            seconds = await bench_end_to_end(server, intervals, tmp, args.sinks, args.store)
            print(f"end to end  {rate(total, seconds)}  ({args.sinks} sink process(es)) "
                  f"= {bare / seconds:.2f}x the bare executemany rate")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
