"""Runs of messages in one SQLite transaction (``SqliteStore.write_many``, the consumer's
``write_group``): all or nothing, acked only after the commit, stored once when redelivered."""
from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import nats
import pytest

from connstats.probe.contract.errors import StoreError
from connstats.probe.contract.record import Envelope
from connstats.probe.contract.wire import FlowBatch
from connstats.sink.consumer import ConsumerSettings, FlowConsumer
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.records import flow_record
from tests.fixtures.store import publish_batches
from tests.fixtures.wait import until_async

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def interval(seq: int, count: int, repeats: int = 0, packets: int = 1) -> FlowBatch:
    """``count`` connections of interval ``seq`` (record i: ``packets`` * (i + 1) packets), the
    first ``repeats`` of them twice (the store sums a message's repeated keys)."""
    start = T0 + seq * 10 * SECOND
    envelope = Envelope(host="node-1", boot_id="boot", interval_seq=seq, interval_start=start,
                        interval_end=start + 10 * SECOND)
    records = [flow_record(envelope, ifindex=3, ifname="veth0", direction="egress", proto=6,
                           src_ip=f"10.0.{i // 250}.{i % 250 + 1}", dst_ip="10.9.0.1", src_port=30000 + i,
                           dst_port=443, packets=packets * (i + 1), bytes=100 * (i + 1))
               for i in range(count)]
    return FlowBatch.from_records(envelope, records + records[:repeats])


def expected_packets(batches: list[FlowBatch]) -> int:
    return sum(sum(batch.column("packets")) for batch in batches)


def stored(path) -> tuple[int, int]:
    """(rows, packets) in the flows table."""
    with sqlite3.connect(path) as db:
        rows, packets = db.execute("SELECT COUNT(*), COALESCE(SUM(packets), 0) FROM flows").fetchone()
    return rows, packets


async def ack_state(url: str) -> tuple[int, int]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info("CONNSTATS", "connstats-sink")
        return info.num_pending, info.num_ack_pending
    finally:
        await nc.close()


# -- the store ----------------------------------------------------------------------------


async def test_a_run_is_stored_whole_or_not_at_all(tmp_path):
    store = SqliteStore(tmp_path / "flows.sqlite")
    good = [interval(0, 300, repeats=20), interval(1, 200)]
    too_big = interval(2, 1, repeats=1, packets=2**62 + 1)  # its repeats sum beyond signed 64 bits
    with pytest.raises(StoreError, match="signed 64-bit"):
        await store.write_many([*good, too_big])
    assert stored(tmp_path / "flows.sqlite") == (0, 0)  # the good ones went back with it
    await store.write_many(good)
    await store.write_many(good)  # a redelivery: nothing twice
    await store.close()
    assert stored(tmp_path / "flows.sqlite") == (500, expected_packets(good))


# -- the consumer -------------------------------------------------------------------------


class GatedStore(SqliteStore):
    """A real SqliteStore whose runs wait for ``gate`` before they are written."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.runs: list[int] = []

    async def write_many(self, batches) -> None:
        self.runs.append(len(batches))
        await self.gate.wait()
        await super().write_many(batches)


async def test_a_run_of_messages_is_one_transaction_acked_after_its_commit(nats_server, tmp_path):
    batches = [interval(seq, 100 + seq) for seq in range(5)]
    path = tmp_path / "flows.sqlite"
    store = GatedStore(path)
    await store.ping()  # as the sink does before it consumes: the file and its tables exist
    nc = await nats.connect(nats_server.url)
    stop = asyncio.Event()
    try:
        async with FlowConsumer(nc, store, ConsumerSettings(write_group=4)) as consumer:
            await publish_batches(nats_server.url, batches)
            task = asyncio.create_task(consumer.consume_forever(stop))
            await until_async(lambda: store.runs == [4], 10, "the first run handed to the store")
            assert await ack_state(nats_server.url) == (0, 5)  # fetched, none acked
            assert stored(path) == (0, 0)
            store.gate.set()
            await until_async(lambda: consumer.stats.stored_messages == 5, 10, "every message stored")
            stop.set()
            await task
        # the fifth message alone goes the one-message way (write)
        assert store.runs == [4]
        assert await ack_state(nats_server.url) == (0, 0)
        assert stored(path) == (sum(range(100, 105)), expected_packets(batches))
    finally:
        await nc.close()
        await store.close()


async def test_a_run_committed_and_not_acked_is_stored_once_when_redelivered(nats_server, tmp_path):
    batches = [interval(seq, 50, repeats=10) for seq in range(3)]
    path = tmp_path / "flows.sqlite"
    settings = ConsumerSettings(ack_wait=1.0)
    store = SqliteStore(path)
    nc = await nats.connect(nats_server.url)
    try:
        async with FlowConsumer(nc, store, settings) as crashing:  # commits, then dies before its acks
            await publish_batches(nats_server.url, batches)
            fetched = await crashing.fetch_batch()
            assert len(fetched) == 3
            await store.write_many([FlowBatch.from_records(b.envelope, b.records()) for b in batches])
        assert stored(path) == (150, expected_packets(batches))
        async with FlowConsumer(nc, store, settings) as consumer:  # the redelivery after ack_wait
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.consume_forever(stop))
            await until_async(lambda: consumer.stats.stored_messages == 3, 15, "the run redelivered and stored")
            stop.set()
            await task
        assert dataclasses.astuple(consumer.stats)[:3] == (3, 180, 0)  # messages, records (with repeats), dead
        assert await ack_state(nats_server.url) == (0, 0)
        assert stored(path) == (150, expected_packets(batches))
    finally:
        await nc.close()
        await store.close()


async def test_a_run_with_a_message_the_store_refuses_is_stored_one_by_one(nats_server, tmp_path):
    good = [interval(0, 40), interval(2, 60)]
    bad = interval(1, 1, repeats=1, packets=2**62 + 1)  # its repeats sum beyond signed 64 bits
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    nc = await nats.connect(nats_server.url)
    try:
        async with FlowConsumer(nc, store) as consumer:
            await publish_batches(nats_server.url, [good[0], bad, good[1]])
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.consume_forever(stop))
            await until_async(lambda: consumer.stats.stored_messages + consumer.stats.dead_lettered == 3, 15,
                              "every message stored or dead-lettered")
            stop.set()
            await task
        stats = consumer.stats
        assert (stats.stored_messages, stats.stored_records, stats.dead_lettered) == (2, 100, 1)
        assert consumer.dead_letters["store_refused"] == 1
        assert await ack_state(nats_server.url) == (0, 0)
        assert stored(path) == (100, expected_packets(good))
    finally:
        await nc.close()
        await store.close()
