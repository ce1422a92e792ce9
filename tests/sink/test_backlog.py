"""The sink's backlog against a real nats-server: pending messages and the lag in seconds in
/metrics, the warning when the sink is more than N intervals behind, and both back to 0
once it caught up."""
from __future__ import annotations

import logging
import time

import nats
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connstats.probe.contract import STREAM_NAME, Envelope, FlowBatch
from connstats.sink.backlog import Backlog, LagWarning, read_backlog
from connstats.sink.consumer import ConsumerSettings, FlowConsumer
from connstats.sink.metrics import SinkMetrics
from tests.fixtures.nats import BOOT_ID, SECOND, MemoryStore, sample_records
from tests.fixtures.store import consume_until, publish_batches
from tests.fixtures.wait import until_async

HOST = "node-1.example"
GAUGES = ("connstats_sink_consumer_pending", "connstats_sink_consumer_ack_pending",
          "connstats_sink_consumer_lag_seconds")


def intervals(count: int, records: int, seconds: float) -> list[FlowBatch]:
    """``count`` intervals of ``seconds`` each, ``records`` records apiece: one message each."""
    batches = []
    for seq in range(count):
        start = 1_790_000_000 * SECOND + seq * int(seconds * SECOND)
        envelope = Envelope(host=HOST, boot_id=BOOT_ID, interval_seq=seq, interval_start=start,
                            interval_end=start + int(seconds * SECOND))
        batches.append(FlowBatch.from_records(envelope, sample_records(envelope, records)))
    return batches


def gauges(metrics: SinkMetrics) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    return {s.name: s.value for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if s.name in GAUGES and s.labels == {"consumer": "connstats-sink"}}


async def oldest_time(nc) -> float:
    return (await nc.jetstream().get_msg(STREAM_NAME, seq=1)).time.timestamp()


async def refresh_until(metrics: SinkMetrics, nc, store, pending: int, ack_pending: int) -> tuple[float, float]:
    """Refresh until the consumer shows ``pending`` and ``ack_pending`` (an ack reaches the
    server a moment after it was sent); the wall-clock times just before and after the last
    refresh (the lag lies between the oldest message's ages then)."""
    times = [0.0, 0.0]

    async def shows() -> bool:
        times[0] = time.time()
        await metrics.refresh(nc, store)
        times[1] = time.time()
        return (metrics.pending, metrics.ack_pending) == (pending, ack_pending)

    await until_async(shows, 5, f"{pending} pending and {ack_pending} ack pending",
                      detail=lambda: (metrics.pending, metrics.ack_pending))
    return times[0], times[1]


async def test_a_stopped_sink_shows_every_waiting_message_and_its_age_then_zero(nats_server):
    nc = await nats.connect(nats_server.url)
    store = MemoryStore()
    metrics = SinkMetrics("connstats-sink")
    try:
        consumer = FlowConsumer(nc, store)
        await consumer.start()  # the durable consumer exists, and fetches nothing: a stopped sink
        await publish_batches(nats_server.url, intervals(5, 200, 10.0))
        published = await oldest_time(nc)
        await until_async(lambda: time.time() - published >= 0.3, 5, "the oldest message 0.3 s old")

        before, after = await refresh_until(metrics, nc, store, 5, 0)
        assert before - published <= metrics.lag_seconds <= after - published
        assert metrics.lag_seconds >= 0.3
        assert gauges(metrics) == {"connstats_sink_consumer_pending": 5.0, "connstats_sink_consumer_ack_pending": 0.0,
                                   "connstats_sink_consumer_lag_seconds": metrics.lag_seconds}

        fetched = await consumer.fetch_batch()  # delivered, not yet stored: still behind
        assert len(fetched) == 5
        before, after = await refresh_until(metrics, nc, store, 0, 5)
        assert before - published <= metrics.lag_seconds <= after - published

        await consumer.handle_batch(fetched[:2])  # stored and acked: the oldest waiting is the third
        third = (await nc.jetstream().get_msg(STREAM_NAME, seq=3)).time.timestamp()
        before, after = await refresh_until(metrics, nc, store, 0, 3)
        assert before - third <= metrics.lag_seconds <= after - third

        await consumer.handle_batch(fetched[2:])
        await refresh_until(metrics, nc, store, 0, 0)
        assert metrics.lag_seconds == 0.0
        assert gauges(metrics) == dict.fromkeys(GAUGES, 0.0)
        assert store.record_count() == 1000
        await consumer.close()
    finally:
        await nc.close()


async def test_a_sink_more_than_n_intervals_behind_is_warned_about_once_until_it_caught_up(nats_server, caplog):
    caplog.set_level(logging.INFO, logger="connstats.sink.backlog")
    nc = await nats.connect(nats_server.url)
    store = MemoryStore()
    metrics = SinkMetrics("connstats-sink", lag_warning_intervals=2)
    try:
        consumer = FlowConsumer(nc, store)
        await consumer.start()
        await publish_batches(nats_server.url, intervals(4, 10, 0.1))  # 0.1 s intervals
        published = await oldest_time(nc)

        backlog = await read_backlog(nc.jetstream())
        assert backlog is not None and (backlog.messages, backlog.interval_seconds) == (4, 0.1)
        patient = LagWarning(intervals=1000)  # 100 s: not reached
        patient.observe(backlog)
        assert (caplog.records, patient.behind_since) == ([], None)

        await until_async(lambda: time.time() - published >= 0.25, 5, "the oldest message 0.25 s old")
        caplog.clear()
        await metrics.refresh(nc, store)
        await metrics.refresh(nc, store)  # still behind: no second warning within a minute
        lag = metrics.lag_seconds
        assert lag is not None and lag > 0.25
        [warning] = caplog.records
        assert warning.levelno == logging.WARNING
        assert warning.getMessage().startswith("the sink is ")
        assert " intervals behind (" in warning.getMessage() and ", 4 messages): it stores slower than the " \
               "probes publish and the stream's backlog grows; add sinks, a faster store, or a longer --interval " \
               "(warning above 2 intervals: [sink] lag_warning_intervals)" in warning.getMessage()

        caplog.clear()
        await consume_until(consumer, lambda: consumer.stats.stored_messages == 4)
        await refresh_until(metrics, nc, store, 0, 0)
        assert [(r.levelno, r.getMessage().split(" after ")[0]) for r in caplog.records] == [
            (logging.WARNING, "the sink caught up")]
        assert metrics.lag_seconds == 0.0
        await consumer.close()
    finally:
        await nc.close()


async def test_without_a_sink_consumer_there_is_no_backlog(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        consumer = FlowConsumer(nc, MemoryStore())
        await consumer.start()
        await consumer.close()
        assert await read_backlog(nc.jetstream(), "no-such-sink") is None
        assert await read_backlog(nc.jetstream()) == Backlog("connstats-sink", 0, 0, 0.0)
    finally:
        await nc.close()


async def test_a_fetch_asks_for_as_many_messages_as_fit_the_byte_budget(nats_server):
    """Large messages come fewer per fetch: the first fetch takes as many of the largest the
    server admits (max_payload) as fit ``batch_bytes``, the next as many of the largest just
    fetched; small ones come ``batch`` at a time."""
    nc = await nats.connect(nats_server.url)
    try:
        streams = FlowConsumer(nc, MemoryStore())
        await streams.start()  # the streams exist
        await streams.close()
        await publish_batches(nats_server.url, intervals(9, 200, 10.0))
        sizes = [len((await nc.jetstream().get_msg(STREAM_NAME, seq=seq)).data) for seq in range(1, 10)]
        budget = 3 * max(sizes)
        assert 4 * min(sizes) > budget  # 3 of any of them fit, never 4
        consumer = FlowConsumer(nc, MemoryStore(), ConsumerSettings(durable="budget", batch=64, batch_bytes=budget))
        await consumer.start()
        assert consumer.fetch_size == 1  # max_payload (1 MiB) > the budget
        fetched = [len(await consumer.fetch_batch()) for _ in range(4)]
        assert fetched == [1, 3, 3, 2]
        assert consumer.fetch_size == 3
        await consumer.close()

        small = FlowConsumer(nc, MemoryStore(), ConsumerSettings(durable="small", batch=4))
        await small.start()
        assert small.fetch_size == 4
        assert len(await small.fetch_batch()) == 4
        await small.close()
    finally:
        await nc.close()
