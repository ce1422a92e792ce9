"""FlowConsumer and consume_flows against a real nats-server: storing, back-off, dead letters,
scale-out."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import nats
import pytest

from connstats.probe.contract import NatsOptions, flows_subject
from connstats.probe.contract.errors import StoreError, StoreUnavailable, TransportError
from connstats.probe.contract.wire import FlowBatch, encode_message, encode_message_v1
from connstats.probe.publish.publisher import FlowPublisher
from connstats.sink.compose import consume_flows
from connstats.sink.consumer import ConsumerSettings, FlowConsumer
from tests.fixtures.nats import MemoryStore, read_stream, sample_envelope, sample_records
from tests.fixtures.store import consume_until
from tests.fixtures.wait import until_async

ROOT = Path(__file__).resolve().parents[2]


def options(server) -> NatsOptions:
    return NatsOptions(servers=(server.url,), reconnect_time_wait=0.1, connect_timeout=1.0)


async def publish_intervals(server, counts: list[int]) -> int:
    """Publish one interval per entry of ``counts`` (that many records); return the message count."""
    return await publish_intervals_from(server, 0, counts)


async def publish_intervals_from(server, first_seq: int, counts: list[int]) -> int:
    async with FlowPublisher(options(server)) as publisher:
        messages = 0
        for seq, count in enumerate(counts, first_seq):
            envelope = sample_envelope(seq)
            messages += await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, count)))
        assert await publisher.flush(20)
    return messages


async def connected(server):
    return await nats.connect(server.url)


async def consumer_state(server, durable: str = "connstats-sink"):
    nc = await connected(server)
    try:
        info = await nc.jetstream().consumer_info("CONNSTATS", durable)
        return info.num_pending, info.num_ack_pending
    finally:
        await nc.close()


# -- storing ------------------------------------------------------------------------------


async def test_every_record_is_stored_and_acked(nats_server):
    messages = await publish_intervals(nats_server, [1000, 1500, 0, 2500])
    store = MemoryStore()
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store) as consumer:
        await consume_until(consumer, lambda: consumer.stats.stored_messages == messages)
        stats = consumer.stats
    await nc.close()
    assert (stats.stored_messages, stats.stored_records, stats.dead_lettered, stats.store_errors) == (4, 5000, 0, 0)
    assert store.record_count() == 5000
    assert await consumer_state(nats_server) == (0, 0)


async def test_store_outage_loses_nothing_and_does_not_spin(nats_server):
    await publish_intervals(nats_server, [300] * 5)
    store = MemoryStore()
    store.fail_until = time.monotonic() + 3.0
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store) as consumer:
        await consume_until(consumer, lambda: store.record_count() == 1500)
        stats = consumer.stats
    await nc.close()
    failed = stats.store_errors
    assert failed <= 5  # 0 s, 0.5 s, 1.5 s (+1 s, +2 s): back-off, not spinning
    assert (store.writes, stats.stored_messages, stats.stored_records) == (failed + 5, 5, 1500)
    assert await consumer_state(nats_server) == (0, 0)


async def test_consumer_keeps_going_across_a_nats_restart(nats_server):
    await publish_intervals(nats_server, [100] * 3)
    store = MemoryStore()
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    async with FlowConsumer(nc, store, ConsumerSettings(fetch_timeout=0.5)) as consumer:
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.consume_forever(stop))
        await until_async(lambda: store.record_count() >= 300, 30, "300 records stored")
        nats_server.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.start)
        await publish_intervals_from(nats_server, 3, [100] * 3)
        await until_async(lambda: store.record_count() >= 600 or task.done(), 20, fail=False)  # then judged below
        stop.set()
        await asyncio.wait_for(task, 5)
    await nc.close()
    # A SIGKILLed server may forget the last acks and redeliver; the idempotent store absorbs it.
    per_interval = {seq: sum(1 for key in store.rows if key[2] == seq) for seq in range(6)}
    assert per_interval == {seq: 100 for seq in range(6)}


# -- dead letters -----------------------------------------------------------------------


def malformed_payloads(count: int, rng: random.Random) -> list[bytes]:
    """Payloads ``decode_message`` must refuse, of many kinds."""
    envelope = sample_envelope(900)
    good = msgspec.json.decode(encode_message_v1(envelope, sample_records(envelope, 3)))  # schema 1 rows
    columns = msgspec.json.decode(encode_message(FlowBatch.from_records(envelope, sample_records(envelope, 3))))

    def mutated(change, doc=good) -> bytes:
        doc = json.loads(json.dumps(doc))
        change(doc)
        return msgspec.json.encode(doc)

    def flows(change) -> bytes:
        return mutated(change, columns)

    kinds = [
        lambda: b"{not json",
        lambda: b"",
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
        lambda: msgspec.json.encode(good)[: rng.randint(1, len(msgspec.json.encode(good)) - 1)],
        lambda: msgspec.json.encode([good]),
        lambda: mutated(lambda d: d.update(schema=2)),
        lambda: mutated(lambda d: d.pop(rng.choice(sorted(d)))),
        lambda: mutated(lambda d: d.update(interval_seq="7")),
        lambda: mutated(lambda d: d.update(records={})),
        lambda: mutated(lambda d: d["records"][0].pop(rng.choice(sorted(d["records"][0])))),
        lambda: mutated(lambda d: d["records"][1].update(bytes=1.5)),
        lambda: mutated(lambda d: d["records"][2].update(direction="sideways")),
        lambda: mutated(lambda d: d["records"][0].update(proto="smtp")),
        lambda: mutated(lambda d: d["records"].append("x")),
        lambda: mutated(lambda d: d["overflow"].append({"ifindex": 1})),
        lambda: flows(lambda d: d.update(schema=3)),
        lambda: flows(lambda d: d["flows"].pop(rng.choice(sorted(d["flows"])))),
        lambda: flows(lambda d: d["flows"][rng.choice(sorted(d["flows"]))].pop()),
        lambda: flows(lambda d: d["flows"]["bytes"].__setitem__(1, 1.5)),
        lambda: flows(lambda d: d["flows"]["direction"].__setitem__(2, "sideways")),
        lambda: flows(lambda d: d["flows"]["src_port"].__setitem__(0, 65536)),
        lambda: flows(lambda d: d["flows"]["dst_ip"].__setitem__(0, "fd00::1")),
        lambda: flows(lambda d: d["devices"].pop()),
        lambda: flows(lambda d: d.update(chunk=1)),
    ]
    return [kinds[i % len(kinds)]() for i in range(count)]


async def test_malformed_messages_are_dead_lettered_and_valid_ones_stored(nats_server):
    rng = random.Random(1234)
    valid_records = {}
    payloads = [(p, None) for p in malformed_payloads(1000, rng)]
    for seq in range(200):
        envelope = sample_envelope(seq)
        valid_records[seq] = rng.randint(0, 20)
        payloads.append((encode_message(FlowBatch.from_records(envelope, sample_records(envelope, valid_records[seq]))), seq))
    rng.shuffle(payloads)

    store = MemoryStore()
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store) as consumer:  # creates the streams
        js = nc.jetstream()
        acks = [await js.publish_async(flows_subject("node-1.example"), payload) for payload, _ in payloads]
        await asyncio.gather(*acks)
        await consume_until(consumer, lambda: consumer.stats.stored_messages + consumer.stats.dead_lettered == 1200)
        stats = consumer.stats
    await nc.close()

    assert (stats.dead_lettered, stats.stored_messages, stats.stored_records) == (
        1000, 200, sum(valid_records.values()))
    assert {seq: sum(1 for key in store.rows if key[2] == seq) for seq in valid_records} == valid_records
    letters = await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")
    assert sorted(m.data or b"" for m in letters) == sorted(p for p, seq in payloads if seq is None)
    assert {m.headers["Connstats-Subject"] for m in letters} == {"connstats.v1.flows.node-1%2Eexample"}
    assert all(m.headers["Connstats-Reason"].startswith("undecodable: ") for m in letters)
    assert await consumer_state(nats_server) == (0, 0)


class RefusingStore(MemoryStore):
    async def write(self, batch):
        if batch.envelope.interval_seq == 1:
            raise StoreError("value out of range; fix the record")
        await super().write(batch)


async def test_message_the_store_refuses_for_good_is_dead_lettered(nats_server):
    await publish_intervals(nats_server, [10, 20, 30])
    store = RefusingStore()
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store) as consumer:
        await consume_until(consumer, lambda: consumer.stats.stored_messages + consumer.stats.dead_lettered == 3)
        stats = consumer.stats
    await nc.close()
    [letter] = await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")
    assert (stats.stored_records, stats.dead_lettered, stats.store_errors) == (40, 1, 1)
    assert letter.headers["Connstats-Reason"] == "store refused: value out of range; fix the record"


class BuggyOnceStore(MemoryStore):
    async def write(self, batch):
        await super().write(batch)
        if self.writes == 1:
            raise RuntimeError("a bug in the store")


async def test_unexpected_store_exception_is_retried_not_fatal(nats_server):
    await publish_intervals(nats_server, [10, 20])
    store = BuggyOnceStore()
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store, ConsumerSettings(backoff_min=0.1)) as consumer:
        await consume_until(consumer, lambda: consumer.stats.stored_messages == 2)
        stats = consumer.stats
    await nc.close()
    assert (stats.stored_records, stats.store_errors, stats.dead_lettered, store.record_count()) == (30, 1, 0, 30)


# -- scale-out and crashes --------------------------------------------------------------


async def test_two_consumers_on_one_durable_share_the_work_exactly_once(nats_server):
    messages = await publish_intervals(nats_server, [700] * 40)
    stores = [MemoryStore(), MemoryStore()]
    connections = [await connected(nats_server) for _ in stores]
    settings = ConsumerSettings(batch=4)
    consumers = [FlowConsumer(nc, store, settings) for nc, store in zip(connections, stores, strict=True)]
    for consumer in consumers:
        await consumer.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.consume_forever(stop)) for c in consumers]
    await until_async(lambda: sum(c.stats.stored_messages for c in consumers) >= messages, 20,
                      f"{messages} messages stored")
    stop.set()
    await asyncio.gather(*tasks)
    for consumer, nc in zip(consumers, connections, strict=True):
        await consumer.close()
        await nc.close()
    first, second = (set(s.rows) for s in stores)
    assert (len(first | second), len(first & second)) == (28_000, 0)
    assert sum(c.stats.stored_messages for c in consumers) == messages == 40


class HangingStore(MemoryStore):
    """Writes the ``hang_at``-th message, then never returns: the consumer dies mid-message."""

    def __init__(self, hang_at: int) -> None:
        super().__init__()
        self.hang_at = hang_at

    async def write(self, batch):
        await super().write(batch)
        if self.writes == self.hang_at:
            await asyncio.Event().wait()


async def test_consumer_killed_mid_stream_is_replaced_with_exact_totals(nats_server):
    messages = await publish_intervals(nats_server, [100 + i for i in range(30)])
    store = HangingStore(hang_at=12)
    settings = ConsumerSettings(ack_wait=1.5, batch=8)
    doomed_nc = await connected(nats_server)
    doomed = FlowConsumer(doomed_nc, store, settings)
    await doomed.start()
    task = asyncio.create_task(doomed.consume_forever(asyncio.Event()))
    await until_async(lambda: store.writes >= 12, 20, "12 writes")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await doomed_nc.close()  # no ack for message 12, nor for the rest of its batch

    nc = await connected(nats_server)
    async with FlowConsumer(nc, store, settings) as replacement:
        await consume_until(replacement, lambda: replacement.stats.stored_messages == messages - 11)
        stats = replacement.stats
    await nc.close()
    assert store.record_count() == sum(100 + i for i in range(30))
    assert (doomed.stats.stored_messages, stats.stored_messages, store.writes) == (11, 19, 31)
    assert await consumer_state(nats_server) == (0, 0)


# -- the sink process ---------------------------------------------------------------------

SINK_SCRIPT = """
import asyncio, json, sys
from connstats.probe.contract import NatsOptions
from connstats.probe.runtime.lifecycle import stop_on_signals
from connstats.sink.consumer import ConsumerSettings
from connstats.sink.compose import consume_flows
from connstats.sink.sqlite_store import SqliteStore
url, path, ack_wait = sys.argv[1], sys.argv[2], float(sys.argv[3])

async def until_signalled():
    stop = asyncio.Event()
    with stop_on_signals(stop):
        return await consume_flows(NatsOptions(servers=(url,)), SqliteStore(path),
                                   ConsumerSettings(batch=4, ack_wait=ack_wait), stop=stop)

stats = asyncio.run(until_signalled())
print(json.dumps(stats.__dict__), flush=True)
"""


def start_sink_process(server, path: Path, ack_wait: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SINK_SCRIPT, server.url, str(path), str(ack_wait)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_process(process: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[str, str]:
    if process.poll() is None:
        os.kill(process.pid, signum)
    return process.communicate(timeout=15)


def sqlite_keys(path: Path) -> set:
    if not path.exists():
        return set()
    db = sqlite3.connect(path)
    try:
        return set(db.execute("SELECT host, interval_start, src_ip, dst_ip, src_port, dst_port, ifindex,"
                              " direction, packets FROM flows"))
    except sqlite3.OperationalError:  # the sink has not created its table yet
        return set()
    finally:
        db.close()


async def wait_for_rows(paths: list[Path], expected: int, timeout: float = 30.0) -> None:
    """Until the stores hold ``expected`` rows, or ``timeout`` passed: the test judges them."""
    await until_async(lambda: sum(len(sqlite_keys(p)) for p in paths) >= expected, timeout, fail=False)


requires_sqlite_store = pytest.mark.skipif(
    importlib.util.find_spec("connstats.sink.sqlite_store") is None, reason="sink/sqlite_store.py is not there yet")


@requires_sqlite_store
async def test_two_sink_processes_share_the_durable_exactly_once(nats_server, tmp_path):
    await publish_intervals(nats_server, [500] * 30)
    paths = [tmp_path / "a.sqlite", tmp_path / "b.sqlite"]
    processes = [start_sink_process(nats_server, path) for path in paths]
    try:
        await wait_for_rows(paths, 15_000)
    finally:
        outputs = [stop_process(p) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    first, second = (sqlite_keys(p) for p in paths)
    assert (len(first | second), len(first & second)) == (15_000, 0)
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(s["stored_messages"] for s in stats) == 30
    assert await consumer_state(nats_server) == (0, 0)


@requires_sqlite_store
async def test_sink_process_sigkilled_mid_stream_and_restarted_stores_exact_totals(nats_server, tmp_path):
    counts = [2000 + i for i in range(60)]
    await publish_intervals(nats_server, counts)
    path = tmp_path / "flows.sqlite"
    first = start_sink_process(nats_server, path, ack_wait=1.0)
    try:
        await wait_for_rows([path], 5000)
    finally:
        stop_process(first, signal.SIGKILL)
    assert len(sqlite_keys(path)) < sum(counts)  # it died mid-stream
    second = start_sink_process(nats_server, path, ack_wait=1.0)
    try:
        await wait_for_rows([path], sum(counts))
    finally:
        out, err = stop_process(second)
    assert second.returncode == 0, err
    assert len(sqlite_keys(path)) == sum(counts)
    assert await consumer_state(nats_server) == (0, 0)


# -- consume_flows start-up checks --------------------------------------------------------------


async def test_consume_flows_refuses_to_start_without_nats(nats_server):
    nats_server.kill()
    store = MemoryStore()
    with pytest.raises(TransportError) as caught:
        await consume_flows(NatsOptions(servers=(nats_server.url,), connect_timeout=0.5,
                                        reconnect_time_wait=0.1), store, stop=asyncio.Event())
    assert str(caught.value).startswith("cannot connect to NATS at nats://127.0.0.1:")
    assert store.closed


async def test_consume_flows_refuses_to_start_without_the_store(nats_server):
    store = MemoryStore()
    store.fail_until = time.monotonic() + 60
    with pytest.raises(StoreUnavailable):
        await consume_flows(options(nats_server), store, stop=asyncio.Event())
    assert store.closed


async def test_consume_flows_consumes_until_stopped_and_closes(nats_server):
    await publish_intervals(nats_server, [250, 250])
    store = MemoryStore()
    stop = asyncio.Event()
    sink = asyncio.create_task(consume_flows(options(nats_server), store, stop=stop))
    await until_async(lambda: store.record_count() >= 500 or sink.done(), 10, "500 records stored")
    stop.set()
    stats = await asyncio.wait_for(sink, 5)
    assert (stats.stored_messages, stats.stored_records, store.closed) == (2, 500, True)


async def test_schema_1_messages_an_older_probe_left_in_the_stream_are_stored_like_schema_2(nats_server, tmp_path):
    from connstats.sink.sqlite_store import SqliteStore

    old, new = sample_envelope(1), sample_envelope(2)
    payloads = [encode_message_v1(old, sample_records(old, 50, ipv6_every=7)),
                encode_message(FlowBatch.from_records(new, sample_records(new, 50, ipv6_every=7)))]
    store = SqliteStore(tmp_path / "flows.sqlite")
    nc = await connected(nats_server)
    async with FlowConsumer(nc, store) as consumer:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(flows_subject("node-1.example"), payload)
        await consume_until(consumer, lambda: consumer.stats.stored_messages == 2)
    await nc.close()
    await store.close()
    db = sqlite3.connect(tmp_path / "flows.sqlite")
    per_interval = db.execute("SELECT interval_start, count(*), sum(bytes), sum(src_port), sum(family) "
                              "FROM flows GROUP BY interval_start ORDER BY interval_start").fetchall()
    assert [row[1:] for row in per_interval] == [row[1:] for row in per_interval[:1]] * 2
    assert [row[0] for row in per_interval] == [old.interval_start, new.interval_start]
