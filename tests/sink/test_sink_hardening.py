"""Numbers you can trust end to end (issue 8): overflow reaches the store, repeated keys are
summed, the wire schema bounds every number, one bad message cannot stop the sink, the host
comes from the subject, history sums cannot overflow, a foreign store stops the sink at
start, and the files are private. Real nats-server, real SQLite, the InfluxDB v2 API test
server; exact numbers."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import stat
import time

import msgspec
import pytest
from typer.testing import CliRunner

from connstats.cli.main import app
from connstats.probe.contract import NatsOptions, flows_subject
from connstats.probe.contract.errors import StoreError, StoreUnavailable
from connstats.probe.contract.record import DropCount, Envelope, FlowRecord, OverflowCount
from connstats.probe.contract.wire import FlowBatch, encode_message
from connstats.probe.publish.publisher import FlowPublisher
from connstats.sink.compose import consume_flows
from connstats.sink.consumer import ConsumerSettings, FlowConsumer
from connstats.sink.history import HistoryQuery, aggregate, influx_history, sqlite_history
from connstats.sink.sqlite_store import SCHEMA_VERSION, SqliteStore, flow_rows, repeated_key_totals
from tests.fixtures.nats import read_stream
from tests.fixtures.records import flow_record
from tests.fixtures.store import consume_until

SECOND = 1_000_000_000
T0 = 1_790_000_000 * SECOND
HOST = "node-1.example"
TOP = 2**63 - 1
ALL = dict(since=T0 - 3600 * SECOND, until=T0 + 3600 * SECOND)
runner = CliRunner()


def envelope(seq: int = 0, host: str = HOST, overflow: tuple[OverflowCount, ...] = ()) -> Envelope:
    start = T0 + seq * 10 * SECOND
    return Envelope(host=host, boot_id="boot", interval_seq=seq, interval_start=start,
                    interval_end=start + 10 * SECOND, overflow=overflow)


def flow(env: Envelope, i: int, *, packets: int | None = None, nbytes: int | None = None,
         ifname: str = "veth0", **changes) -> FlowRecord:
    """Connection ``i`` on ``ifname`` (ifindex 7 for veth0, else 8): i + 1 packets of 100 bytes."""
    packets = i + 1 if packets is None else packets
    record = flow_record(interval_start=env.interval_start, interval_end=env.interval_end,
                         ifindex=7 if ifname == "veth0" else 8, ifname=ifname, direction="egress", family=4,
                         proto=6, src_ip=f"10.0.0.{i + 1}", dst_ip="10.9.0.1", src_port=40000 + i, dst_port=443,
                         packets=packets, bytes=packets * 100 if nbytes is None else nbytes,
                         first_seen=env.interval_start + 1, last_seen=env.interval_start + 2, tcp_flags=0x10)
    return dataclasses.replace(record, **changes) if changes else record


def options(server) -> NatsOptions:
    return NatsOptions(servers=(server.url,), reconnect_time_wait=0.1, connect_timeout=1.0)


async def publish(server, payloads: list[tuple[str, bytes]]) -> None:
    """Raw payloads on their subjects, through JetStream (the consumer made the stream)."""
    import nats
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        for subject, payload in payloads:
            await js.publish(subject, payload)
    finally:
        await nc.close()


async def consume(server, store, settings: ConsumerSettings | None = None, *, done, before=None,
                  timeout: float = 20.0):
    """Start a consumer (which makes the streams), run ``before()``, consume until ``done(stats)``."""
    import nats
    nc = await nats.connect(server.url)
    try:
        async with FlowConsumer(nc, store, settings) as consumer:
            if before is not None:
                await before()
            await consume_until(consumer, lambda: done(consumer.stats), timeout)
            return consumer.stats
    finally:
        await nc.close()


def dead_letter_reasons(letters) -> list[str]:
    return [m.headers["Connstats-Reason"] for m in letters]


def sqlite_totals(path, host: str | None = None) -> tuple[int, int, int]:
    with sqlite3.connect(path) as db:
        where, args = ("WHERE host = ?", (host,)) if host else ("", ())
        return db.execute(f"SELECT count(*), coalesce(sum(packets), 0), coalesce(sum(bytes), 0) FROM flows {where}",
                          args).fetchone()


# -- 1. overflow reaches the store ---------------------------------------------------------------

OVERFLOWED = OverflowCount(7, "veth0", "egress", 485, 485 * 1387)


def counted_and_overflowed() -> tuple[Envelope, list[FlowRecord]]:
    """15 counted connections on veth0 (1..15 packets, 100 bytes each) and 485 overflowed packets."""
    env = envelope(overflow=(OVERFLOWED,))
    return env, [flow(env, i) for i in range(15)]


DEVICE_TOTAL = {"ifname": "veth0", "direction": "egress", "packets": 120 + 485, "bytes": 12_000 + 485 * 1387,
                "first_seen": T0 + 1, "last_seen": T0 + 2}


async def test_overflow_is_in_device_totals_through_nats_in_sqlite_and_influx(nats_server, tmp_path, influx):
    env, records = counted_and_overflowed()
    sqlite = SqliteStore(tmp_path / "flows.sqlite")
    try:
        async with FlowPublisher(options(nats_server)) as publisher:
            await publisher.submit(FlowBatch.from_records(env, records))
            assert await publisher.flush(10)
        await consume(nats_server, sqlite, done=lambda s: s.stored_messages == 1)
        await sqlite.write(FlowBatch.from_records(env, records))  # a redelivery changes nothing
    finally:
        await sqlite.close()
    await influx.write(FlowBatch.from_records(env, records))
    by_iface = HistoryQuery(**ALL, group_by="iface")
    assert sqlite_history(tmp_path / "flows.sqlite", by_iface) == [DEVICE_TOTAL]
    assert await influx_history(influx, by_iface) == [DEVICE_TOTAL]
    with sqlite3.connect(tmp_path / "flows.sqlite") as db:
        assert db.execute("SELECT * FROM overflow").fetchall() == [
            (HOST, 7, "veth0", "egress", 485, 485 * 1387, T0, T0 + 10 * SECOND)]


async def test_overflow_is_its_own_row_per_connection_and_the_stores_agree(tmp_path, influx, influx_server):
    env, records = counted_and_overflowed()
    sqlite = SqliteStore(tmp_path / "flows.sqlite")
    await sqlite.write(FlowBatch.from_records(env, records))
    await sqlite.close()
    await influx.write(FlowBatch.from_records(env, records))
    overflow_line = [p for p in influx_server.points() if p.measurement == "connstats_overflow"]
    assert [(p.tags, p.fields, p.time) for p in overflow_line] == [(
        {"direction": "egress", "host": HOST, "ifname": "veth0"},
        {"bytes": 485 * 1387, "ifindex": 7, "packets": 485}, T0)]
    for query, expected_first in [
        (HistoryQuery(**ALL), {"ifname": "veth0", "direction": "egress", "proto": "(overflow)",
                               "src_ip": "(overflow)", "src_port": 0, "dst_ip": "(overflow)", "dst_port": 0,
                               "pod": "", "workload": "", "runtime": "", "process": "", "pid": 0,
                               "peer_process": "", "peer_pid": 0,
                               "packets": 485, "bytes": 485 * 1387, "first_seen": None, "last_seen": None}),
        (HistoryQuery(**ALL, group_by="proto"), {"proto": "(overflow)", "packets": 485, "bytes": 485 * 1387,
                                                 "first_seen": None, "last_seen": None}),
    ]:
        rows = sqlite_history(tmp_path / "flows.sqlite", query)
        assert rows[0] == expected_first
        assert sum(r["packets"] for r in rows) == 605 and sum(r["bytes"] for r in rows) == 12_000 + 485 * 1387
        assert await influx_history(influx, query) == rows
    by_proto = sqlite_history(tmp_path / "flows.sqlite", HistoryQuery(**ALL, group_by="proto"))
    assert [(r["proto"], r["packets"], r["bytes"]) for r in by_proto] == [
        ("(overflow)", 485, 485 * 1387), ("tcp", 120, 12_000)]
    # A filter on port, protocol or container cannot say which connections overflowed: no overflow.
    for filters in ({"port": 443}, {"proto": 6}, {"container": ""}, {"pod": "*"}, {"workload": ""}, {"process": ""}):
        query = HistoryQuery(**ALL, group_by="iface", **filters)
        assert [(r["packets"], r["bytes"]) for r in sqlite_history(tmp_path / "flows.sqlite", query)] == [(120, 12_000)]
        assert [(r["packets"], r["bytes"]) for r in await influx_history(influx, query)] == [(120, 12_000)]


async def test_overflow_in_history_through_the_cli(tmp_path):
    env, records = counted_and_overflowed()
    store = SqliteStore(tmp_path / "flows.sqlite")
    await store.write(FlowBatch.from_records(env, records))
    await store.close()
    result = await asyncio.to_thread(
        runner.invoke, app, ["history", "--store", f"sqlite:{tmp_path / 'flows.sqlite'}", "--since",
                             "2026-09-21T00:00:00Z", "--until", "2026-09-23T00:00:00Z", "--group-by", "iface",
                             "--format", "csv"])
    assert (result.exit_code, result.stdout) == (0, (
        "ifname,direction,packets,bytes,first_seen,last_seen\n"
        "veth0,egress,605,684695,2026-09-21T14:13:20.000000001Z,2026-09-21T14:13:20.000000002Z\n"))
    table = await asyncio.to_thread(
        runner.invoke, app, ["history", "--store", f"sqlite:{tmp_path / 'flows.sqlite'}", "--since",
                             "2026-09-21T00:00:00Z", "--until", "2026-09-23T00:00:00Z", "--top", "2"])
    assert table.stdout == (
        "IFACE DIR PROTO      SOURCE          DESTINATION  PKTS  BYTES LAST SEEN\n"
        "veth0 out (overflow) (overflow)      (overflow)    485 656.9K -\n"
        "veth0 out tcp        10.0.0.15:40014 10.9.0.1:443   15   1.5K 2026-09-21T14:13:20Z\n")


async def test_a_version_1_file_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(envelope(), [flow(envelope(), 0)]))
    await store.close()
    with sqlite3.connect(path) as db:  # back to what version 1 wrote
        db.execute("DROP TABLE overflow")
        db.execute("DROP TABLE drops")
        for column in ("verdict", *VERSION_4_COLUMNS, *VERSION_5_COLUMNS):
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 1")
    assert sqlite_history(path, HistoryQuery(**ALL, group_by="iface"))[0]["packets"] == 1  # readable before
    env, records = counted_and_overflowed()
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(dataclasses.replace(env, interval_seq=1, interval_start=T0 + 10 * SECOND,
                                          interval_end=T0 + 20 * SECOND), []))
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert db.execute("SELECT count(*), sum(packets) FROM flows").fetchone() == (1, 1)
        assert db.execute("SELECT packets FROM overflow").fetchall() == [(485,)]
        assert db.execute("SELECT verdict, pod, process, pid, rtt_max_us, drop_reason FROM flows").fetchall() == [
            ("", "", "", 0, 0, "")]
        assert db.execute("SELECT count(*) FROM drops").fetchone() == (0,)


async def test_a_version_2_file_gets_the_verdict_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(envelope(), [flow(envelope(), 0)]))
    await store.close()
    with sqlite3.connect(path) as db:  # back to what version 2 wrote
        db.execute("DROP TABLE drops")
        for column in ("verdict", *VERSION_4_COLUMNS, *VERSION_5_COLUMNS):
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 2")
    store = SqliteStore(path)
    later = dataclasses.replace(envelope(), interval_seq=1, interval_start=T0 + 10 * SECOND,
                                interval_end=T0 + 20 * SECOND)
    await store.write(FlowBatch.from_records(later, [dataclasses.replace(flow(later, 0), verdict="deny")]))
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("SELECT interval_start, verdict FROM flows ORDER BY interval_start").fetchall() == [
            (T0, ""), (T0 + 10 * SECOND, "deny")]


VERSION_4_COLUMNS = ("pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid")
VERSION_5_COLUMNS = ("rtt_min_us", "rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets", "drop_bytes",
                     "drop_reason")


async def test_a_version_3_file_gets_the_pod_and_process_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "flows.sqlite"
    first = envelope()
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(first, [flow_record(first, verdict="allow")]))
    await store.close()
    with sqlite3.connect(path) as db:  # back to what version 3 wrote
        db.execute("DROP TABLE drops")
        for column in (*VERSION_4_COLUMNS, *VERSION_5_COLUMNS):
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 3")
    later = dataclasses.replace(first, interval_seq=1, interval_start=T0 + 10 * SECOND, interval_end=T0 + 20 * SECOND)
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(later, [flow_record(
        later, pod="shop/web-7d9f-x2", workload="web", runtime="containerd", process="nginx", pid=4242,
        peer_process="curl", peer_pid=77)]))
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute(f"SELECT interval_start, verdict, {', '.join(VERSION_4_COLUMNS)} FROM flows "
                          "ORDER BY interval_start").fetchall() == [
            (T0, "allow", "", "", "", "", 0, "", 0),
            (T0 + 10 * SECOND, "", "shop/web-7d9f-x2", "web", "containerd", "nginx", 4242, "curl", 77)]


async def test_a_version_4_file_gets_the_quality_columns_and_the_drops_table_and_keeps_its_rows(tmp_path):
    path = tmp_path / "flows.sqlite"
    first = envelope()
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(first, [flow_record(first, verdict="allow", process="nginx", pid=42)]))
    await store.close()
    with sqlite3.connect(path) as db:  # back to what version 4 wrote
        db.execute("DROP TABLE drops")
        for column in VERSION_5_COLUMNS:
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 4")
    later = dataclasses.replace(first, interval_seq=1, interval_start=T0 + 10 * SECOND, interval_end=T0 + 20 * SECOND,
                                drops=(DropCount(3, "veth0", "NO_SOCKET", 4, 240),))
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(later, [flow_record(
        later, rtt_min_us=80, rtt_avg_us=95, rtt_max_us=130, retransmits=2, drop_packets=1, drop_bytes=1500,
        drop_reason="NETFILTER_DROP")]))
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute(f"SELECT interval_start, verdict, process, pid, {', '.join(VERSION_5_COLUMNS)} FROM flows "
                          "ORDER BY interval_start").fetchall() == [
            (T0, "allow", "nginx", 42, 0, 0, 0, 0, 0, 0, ""),
            (T0 + 10 * SECOND, "", "", 0, 80, 95, 130, 2, 1, 1500, "NETFILTER_DROP")]
        assert db.execute("SELECT host, ifname, reason, packets, bytes FROM drops").fetchall() == [
            (HOST, "veth0", "NO_SOCKET", 4, 240)]


# -- 2. repeated keys in one message are summed ----------------------------------------------------


def repeated() -> tuple[Envelope, list[FlowRecord]]:
    env = envelope()
    first = flow(env, 0, packets=3, nbytes=300, first_seen=T0 + 5, last_seen=T0 + 6, tcp_flags=0x02)
    return env, [
        first,
        flow(env, 1),
        dataclasses.replace(first, packets=4, bytes=4000, first_seen=T0 + 2, last_seen=T0 + 9, tcp_flags=0x10),
        dataclasses.replace(first, packets=TOP - 7, bytes=5, first_seen=T0 + 3, last_seen=T0 + 4, tcp_flags=0x01),
    ]


async def test_repeated_keys_in_one_message_are_summed_and_a_redelivery_changes_nothing(tmp_path):
    env, records = repeated()
    store = SqliteStore(tmp_path / "flows.sqlite")
    try:
        for _ in range(2):
            await store.write(FlowBatch.from_records(env, records))
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "flows.sqlite") as db:
        rows = db.execute("SELECT src_ip, packets, bytes, first_seen, last_seen, tcp_flags FROM flows "
                          "ORDER BY src_ip").fetchall()
    assert rows == [("10.0.0.1", TOP, 4305, T0 + 2, T0 + 9, 0x13), ("10.0.0.2", 2, 200, T0 + 1, T0 + 2, 0x10)]


async def test_repeated_keys_give_the_same_history_in_both_stores(tmp_path, influx):
    env, records = repeated()
    store = SqliteStore(tmp_path / "flows.sqlite")
    await store.write(FlowBatch.from_records(env, records))
    await store.close()
    await influx.write(FlowBatch.from_records(env, records))
    rows = sqlite_history(tmp_path / "flows.sqlite", HistoryQuery(**ALL))
    assert [(r["src_ip"], r["packets"], r["bytes"], r["first_seen"], r["last_seen"]) for r in rows] == [
        ("10.0.0.1", TOP, 4305, T0 + 2, T0 + 9), ("10.0.0.2", 2, 200, T0 + 1, T0 + 2)]
    assert await influx_history(influx, HistoryQuery(**ALL)) == rows


async def test_repeated_keys_merge_their_quality_columns(tmp_path):
    """Retransmits and drops summed, the least and greatest RTT, the average weighted by the packets
    of the records that have one, the reason of the record with the most dropped packets."""
    env = envelope()
    first = flow(env, 0, packets=1, drop_packets=2, drop_bytes=200, drop_reason="NO_SOCKET")  # no RTT
    records = [first,
               dataclasses.replace(first, packets=10, rtt_min_us=100, rtt_avg_us=300, rtt_max_us=900, retransmits=4,
                                   drop_packets=5, drop_bytes=500, drop_reason="NETFILTER_DROP"),
               dataclasses.replace(first, packets=30, rtt_min_us=50, rtt_avg_us=700, rtt_max_us=800, retransmits=1,
                                   drop_packets=1, drop_bytes=100, drop_reason="SOCKET_RCVBUFF")]
    store = SqliteStore(tmp_path / "flows.sqlite")
    for _ in range(2):  # a redelivery changes nothing
        await store.write(FlowBatch.from_records(env, records))
    await store.close()
    with sqlite3.connect(tmp_path / "flows.sqlite") as db:
        assert db.execute("SELECT packets, rtt_min_us, rtt_avg_us, rtt_max_us, retransmits, drop_packets, drop_bytes, "
                          "drop_reason FROM flows").fetchall() == [
            (41, 50, (10 * 300 + 30 * 700) // 40, 900, 5, 8, 800, "NETFILTER_DROP")]


def test_repeated_key_totals_is_empty_without_repeats():
    env = envelope()
    records = [flow(env, i, packets=1, nbytes=10, first_seen=T0 + i, last_seen=T0 + i, tcp_flags=1 << i)
               for i in range(3)]
    rows = flow_rows(FlowBatch.from_records(env, records))
    assert repeated_key_totals(rows) == []
    same_key = dataclasses.replace(records[1], packets=5, bytes=50, first_seen=T0 - 1, last_seen=T0 + 7, tcp_flags=8)
    total = dataclasses.replace(records[1], packets=6, bytes=60, first_seen=T0 - 1, last_seen=T0 + 7, tcp_flags=10)
    assert repeated_key_totals(flow_rows(FlowBatch.from_records(env, [*records, same_key]))) == flow_rows(
        FlowBatch.from_records(env, [total]))


# -- 3 and 4. bounds, and messages that only fail on their own ---------------------------------------


def payload(env: Envelope, records: list[FlowRecord], mutate=None) -> bytes:
    data = encode_message(FlowBatch.from_records(env, records))
    if mutate is None:
        return data
    doc = msgspec.json.decode(data)
    mutate(doc)
    return msgspec.json.encode(doc)


async def test_packets_of_2_pow_63_is_a_dead_letter_and_the_next_message_is_stored(nats_server, tmp_path):
    bad_env, good_env = envelope(0), envelope(1)
    bad = payload(bad_env, [flow(bad_env, 0)], lambda d: d["flows"]["packets"].__setitem__(0, 2**63))
    good_records = [flow(good_env, i) for i in range(5)]
    store = SqliteStore(tmp_path / "flows.sqlite")
    try:
        stats = await consume(nats_server, store, done=lambda s: s.stored_messages + s.dead_lettered == 2,
                              before=lambda: publish(nats_server, [(flows_subject(HOST), bad),
                                                                   (flows_subject(HOST), payload(good_env, good_records))]))
    finally:
        await store.close()
    assert (stats.stored_messages, stats.stored_records, stats.dead_lettered) == (1, 5, 1)
    assert sqlite_totals(tmp_path / "flows.sqlite") == (5, 15, 1500)
    [letter] = await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")
    assert letter.data == bad
    assert dead_letter_reasons([letter]) == [
        "undecodable: Expected `int` <= 9223372036854775807 - at `$.flows.packets[0]`"]


class FailsOnOneMessage:
    """A real SqliteStore whose ``write`` raises ``error`` for interval ``bad_seq``, every time."""

    def __init__(self, path, bad_seq: int, error: Exception) -> None:
        self.inner = SqliteStore(path)
        self.bad_seq, self.error = bad_seq, error
        self.attempts = 0

    async def ping(self) -> None:
        await self.inner.ping()

    async def write(self, batch) -> None:
        if batch.envelope.interval_seq == self.bad_seq:
            self.attempts += 1
            raise self.error
        await self.inner.write(batch)

    async def close(self) -> None:
        await self.inner.close()


def intervals(count: int, per: int = 4) -> list[tuple[str, bytes]]:
    out = []
    for seq in range(count):
        env = envelope(seq)
        out.append((flows_subject(HOST), encode_message(FlowBatch.from_records(env, [flow(env, i) for i in range(per)]))))
    return out


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("a bug\nin the store"), "RuntimeError: a bug in the store"),
    (StoreUnavailable("InfluxDB answered 500 for this body; retry later"),
     "StoreUnavailable: InfluxDB answered 500 for this body; retry later"),
])
async def test_a_message_that_fails_every_time_is_dead_lettered_after_3_attempts(nats_server, tmp_path, caplog,
                                                                               error, reason):
    store = FailsOnOneMessage(tmp_path / "flows.sqlite", bad_seq=1, error=error)
    settings = ConsumerSettings(backoff_min=0.1, max_attempts=3)
    caplog.set_level(logging.DEBUG, logger="connstats.sink.consumer")
    try:
        stats = await consume(nats_server, store, settings, done=lambda s: s.stored_messages + s.dead_lettered == 5,
                              before=lambda: publish(nats_server, intervals(5)))
    finally:
        await store.close()
    assert (stats.stored_messages, stats.stored_records, stats.dead_lettered, store.attempts) == (4, 16, 1, 3)
    assert sqlite_totals(tmp_path / "flows.sqlite") == (16, 40, 4000)
    letters = await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")
    assert dead_letter_reasons(letters) == [
        f"store failed 3 times on this message while others were stored: {reason}"]
    assert letters[0].headers["Connstats-Stream-Seq"] == "2"
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in loud)
    assert [r.getMessage() for r in loud if "attempt" in r.getMessage()] == [
        f"store.write failed on stream seq 2 (attempt 1 of 3: {reason}); retrying it in 0.1 s",
        f"store.write failed on stream seq 2 (attempt 2 of 3: {reason}); retrying it in 0.2 s"]
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)  # the traceback, at debug


class RefusesEveryWrite:
    """A store that answers ping but refuses every write: nothing may be dead-lettered."""

    def __init__(self) -> None:
        self.writes = 0

    async def ping(self) -> None:
        pass

    async def write(self, batch) -> None:
        self.writes += 1
        raise StoreUnavailable("InfluxDB answered 429; retry later")

    async def close(self) -> None:
        pass


async def test_a_store_that_refuses_every_write_dead_letters_nothing_and_does_not_spin(nats_server):
    store = RefusesEveryWrite()
    settings = ConsumerSettings(backoff_min=0.1, backoff_max=0.4, max_attempts=2)
    end = time.monotonic() + 3.0
    stats = await consume(nats_server, store, settings, done=lambda s: time.monotonic() > end,
                          before=lambda: publish(nats_server, intervals(3)))
    assert (stats.stored_messages, stats.dead_lettered) == (0, 0)
    # Each message waits 0.1, 0.2, then 0.4 s between attempts: about 9 attempts in 3 s, not hundreds.
    assert 3 <= store.writes <= 45 and stats.store_errors == store.writes
    assert await read_stream(nats_server.url, "CONNSTATS_DEADLETTER") == []


async def test_a_message_sqlite_refuses_is_dead_lettered_and_the_others_stored(nats_server, tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.ping()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON flows WHEN NEW.src_port = 40666 "
                   "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
    env = envelope(1)
    refused = encode_message(FlowBatch.from_records(env, [flow(env, 5, src_port=40666)]))
    try:
        stats = await consume(nats_server, store, done=lambda s: s.stored_messages + s.dead_lettered == 5,
                              before=lambda: publish(nats_server, [*intervals(1), (flows_subject(HOST), refused),
                                                                   *intervals(4)[2:], *intervals(2)[1:]]))
    finally:
        await store.close()
    assert (stats.stored_messages, stats.dead_lettered) == (4, 1)
    assert sqlite_totals(path) == (16, 40, 4000)
    assert dead_letter_reasons(await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")) == [
        f"store refused: SQLite {path} failed: refused by a trigger; check the path, its permissions and free space"]


async def test_repeated_keys_summing_past_64_bits_are_a_dead_letter(nats_server, tmp_path):
    env = envelope(0)
    first = flow(env, 0, packets=TOP, nbytes=1)
    too_much = encode_message(FlowBatch.from_records(env, [first, dataclasses.replace(first, packets=1)]))
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    try:
        stats = await consume(nats_server, store, done=lambda s: s.stored_messages + s.dead_lettered == 3,
                              before=lambda: publish(nats_server, [(flows_subject(HOST), too_much),
                                                                   *intervals(3)[1:]]))
    finally:
        await store.close()
    assert (stats.stored_messages, stats.dead_lettered) == (2, 1)
    assert sqlite_totals(path) == (8, 20, 2000)
    [reason] = dead_letter_reasons(await read_stream(nats_server.url, "CONNSTATS_DEADLETTER"))
    assert reason == (f"store refused: SQLite {path} cannot hold a value of this message (Python int too large "
                      "to convert to SQLite INTEGER); it holds signed 64-bit integers only")


async def test_influxdb_out_of_space_pauses_the_consumer_and_dead_letters_nothing(nats_server, influx, influx_server):
    """507 is the store's condition: the first message fails three times, the one behind it
    waits (handed back with it at each pause) instead of proving the store works."""
    first, second = envelope(0), envelope(1)
    influx_server.fail_next(507, 3)
    stats = await consume(nats_server, influx, done=lambda s: s.stored_messages == 2,
                          before=lambda: publish(nats_server, [
                              (flows_subject(HOST), payload(first, [flow(first, i) for i in range(4)])),
                              (flows_subject(HOST), payload(second, [flow(second, 0)]))]))
    assert (stats.stored_messages, stats.stored_records, stats.dead_lettered) == (2, 5, 0)
    assert (stats.store_errors, stats.store_full_pauses) == (3, 3)
    assert (influx_server.requests, len(influx_server.lines)) == (5, 5)
    assert await read_stream(nats_server.url, "CONNSTATS_DEADLETTER") == []


# -- 5. the host comes from the subject ------------------------------------------------------------


async def test_a_body_naming_another_host_than_its_subject_is_a_dead_letter(nats_server, tmp_path):
    env_b = envelope(0, host="B")
    liar = encode_message(FlowBatch.from_records(env_b, [flow(env_b, 0)]))
    env_a = envelope(1, host="A")
    honest = encode_message(FlowBatch.from_records(env_a, [flow(env_a, i) for i in range(3)]))
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    try:
        stats = await consume(nats_server, store, done=lambda s: s.stored_messages + s.dead_lettered == 2,
                              before=lambda: publish(nats_server, [(flows_subject("A"), liar),
                                                                   (flows_subject("A"), honest)]))
    finally:
        await store.close()
    assert (stats.stored_messages, stats.dead_lettered) == (1, 1)
    assert (sqlite_totals(path, "B"), sqlite_totals(path, "A")) == ((0, 0, 0), (3, 6, 600))
    [letter] = await read_stream(nats_server.url, "CONNSTATS_DEADLETTER")
    assert (letter.data, letter.headers["Connstats-Subject"]) == (liar, "connstats.v1.flows.A")
    assert dead_letter_reasons([letter]) == [
        "host mismatch: the body says host 'B' but subject connstats.v1.flows.A is host 'A'; "
        "a probe publishes only its own host's flows"]


# -- 6. history: exact sums beyond 2**63, and one-line errors ------------------------------------------


async def test_history_sums_beyond_2_pow_63_are_exact_in_both_stores_and_every_format(tmp_path, influx):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    for seq in range(3):
        env = envelope(seq, overflow=(OverflowCount(7, "veth0", "egress", TOP, TOP),))
        await store.write(FlowBatch.from_records(env, [flow(env, 0, packets=TOP, nbytes=TOP), flow(env, 1, packets=TOP, nbytes=TOP)]))
        await influx.write(FlowBatch.from_records(env, [flow(env, 0, packets=TOP, nbytes=TOP), flow(env, 1, packets=TOP, nbytes=TOP)]))
    await store.close()
    query = HistoryQuery(**ALL, group_by="iface")
    [row] = sqlite_history(path, query)
    assert (row["packets"], row["bytes"]) == (9 * TOP, 9 * TOP)
    assert await influx_history(influx, query) == [row]
    by_bucket = sqlite_history(path, HistoryQuery(**ALL, group_by="proto", every=10 * SECOND, top=1))
    assert [(r["time"], r["proto"], r["bytes"]) for r in by_bucket] == [
        (T0 + s * 10 * SECOND, "tcp", 2 * TOP) for s in range(3)]
    common = ["history", "--store", f"sqlite:{path}", "--since", "2026-09-21T00:00:00Z",
              "--until", "2026-09-23T00:00:00Z", "--group-by", "iface"]
    as_json = await asyncio.to_thread(runner.invoke, app, [*common, "--format", "json"])
    assert [(r["packets"], r["bytes"]) for r in msgspec.json.decode(as_json.stdout)] == [(9 * TOP, 9 * TOP)]
    as_csv = await asyncio.to_thread(runner.invoke, app, [*common, "--format", "csv"])
    assert as_csv.stdout.splitlines()[1].startswith(f"veth0,egress,{9 * TOP},{9 * TOP},")
    table = await asyncio.to_thread(runner.invoke, app, common)
    assert table.stdout.splitlines()[1].split()[:4] == ["veth0", "egress", str(9 * TOP), "72.0E"]


def test_aggregate_is_exact_for_large_values():
    points = [{"_measurement": "connstats_flow", "ifname": "veth0", "direction": "egress", "proto": "tcp",
               "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 1, "dst_port": 2, "packets": TOP,
               "bytes": TOP, "first_seen": T0, "last_seen": T0}] * 5
    [row] = aggregate(points, HistoryQuery(**ALL, group_by="iface"))
    assert (row["packets"], row["bytes"]) == (5 * TOP, 5 * TOP)


@pytest.fixture
def history_cli(tmp_path, monkeypatch):
    for name in ("CONNSTATS_CONFIG", "CONNSTATS_STORE", "INFLUXDB_V2_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONNSTATS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("connstats.cli.config.DEFAULT_CONFIG_FILE", tmp_path / "no-config.toml")
    path = tmp_path / "flows.sqlite"
    asyncio.run(_one_write(path))

    def run(*args: str):
        return runner.invoke(app, ["history", "--store", f"sqlite:{path}", *args])
    return run


async def _one_write(path) -> None:
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(envelope(), [flow(envelope(), 0)]))
    await store.close()


@pytest.mark.parametrize("args, message", [
    (("--since", "999999999999h"), "'999999999999h' is longer than 200 years; use a shorter duration"),
    (("--since", "9" * 400 + "h"), f"'{'9' * 40}'... is longer than 200 years; use a shorter duration"),
    (("--since", "0001-01-01T00:00:00Z"), "--since is before 1970-01-01; use a later time"),
    (("--since", "0001-01-01T00:00:00+23:59"), "--since is before 1970-01-01; use a later time"),
    (("--until", "9999-12-31T23:59:59Z"), "--until is after 2200-01-01; use an earlier time"),
    (("--since", "1960-01-01T00:00:00Z", "--until", "1969-12-31T00:00:00Z"),
     "--since is before 1970-01-01; use a later time"),
    (("--since", "1h", "--until", "1969-12-31T00:00:00Z"), "--until is before 1970-01-01; use a later time"),
    (("--since", "30000d"), "--since is before 1970-01-01; use a later time"),
    (("--since", "100000d"), "'100000d' is longer than 200 years; use a shorter duration"),
    (("--every", "0s"), "--every must be a positive duration, e.g. 1m"),
    (("--every", "99999999d"), "'99999999d' is longer than 200 years; use a shorter duration"),
    (("--top", "0"), "--top 0 is not between 1 and 1,000,000; use e.g. --top 20"),
    (("--top", "-3"), "--top -3 is not between 1 and 1,000,000; use e.g. --top 20"),
    (("--top", "99999999999999999999"),
     "--top 99999999999999999999 is not between 1 and 1,000,000; use e.g. --top 20"),
    (("--port", "65536"), "--port 65536 is not between 0 and 65535"),
    (("--port", "-1"), "--port -1 is not between 0 and 65535"),
    (("--port", "99999999999999999999"), "--port 99999999999999999999 is not between 0 and 65535"),
    (("--proto", "99999999999"), "unknown protocol '99999999999'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (("--proto", "²"), "unknown protocol '²'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
])
def test_every_bad_history_argument_is_one_line(history_cli, args, message):
    result = history_cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: {message}\n")


def test_extreme_but_valid_history_arguments_work(history_cli):
    for args in (("--since", "1970-01-01T00:00:00Z", "--until", "2199-12-31T23:59:59Z", "--top", "1000000",
                  "--every", "73000d", "--format", "json"),
                 ("--since", "20000d", "--port", "65535", "--format", "json")):
        result = history_cli(*args)
        assert result.exit_code == 0, result.stderr
    assert [r["packets"] for r in msgspec.json.decode(history_cli(
        "--since", "1970-01-01T00:00:00Z", "--until", "2199-12-31T23:59:59Z", "--format", "json").stdout)] == [1]


# -- 7. a store whose schema is not ours stops the sink at start ----------------------------------------


async def test_a_foreign_flows_table_is_refused_at_start(tmp_path, nats_server):
    path = tmp_path / "flows.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE flows (id INTEGER PRIMARY KEY, src TEXT, bytes INTEGER)")
        db.execute("PRAGMA user_version = 1")
    with pytest.raises(StoreError) as caught:
        await consume_flows(options(nats_server), SqliteStore(path), stop=asyncio.Event())
    assert str(caught.value) == (f"{path} has a flows table with other columns (id, src, bytes) than connstats "
                                 "writes; choose another file for --store")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # left as it was


async def test_an_unversioned_file_with_a_foreign_flows_table_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "flows.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE flows (ts INTEGER, bytes INTEGER)")
    store = SqliteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.ping()
    await store.close()
    assert str(caught.value) == (f"{path} has a flows table with other columns (ts, bytes) than connstats "
                                 "writes; choose another file for --store")
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["flows"]
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


async def test_a_flows_table_with_our_names_but_another_key_is_refused(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.ping()
    await store.close()
    with sqlite3.connect(path) as db:
        ddl = db.execute("SELECT sql FROM sqlite_master WHERE name = 'flows'").fetchone()[0]
        db.execute("DROP TABLE flows")
        db.execute(ddl.replace("src_port, dst_port)", "src_port)"))
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="has a flows table with other columns"):
        await store.ping()
    await store.close()


async def test_an_unversioned_file_with_foreign_tables_is_refused(tmp_path):
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("CREATE TABLE orders (id INTEGER)")
    store = SqliteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.ping()
    await store.close()
    assert str(caught.value) == (f"{path} holds tables connstats did not make (orders, users); "
                                 "choose another file for --store")
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")] == ["orders", "users"]


# -- 8. files readable by their owner only ---------------------------------------------------------------


async def test_the_database_its_wal_shm_and_lock_are_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "flows.sqlite")
        await store.write(FlowBatch.from_records(envelope(), [flow(envelope(), 0)]))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        await store.close()
    finally:
        os.umask(old)
    assert modes == {"flows.sqlite": 0o600, "flows.sqlite-wal": 0o600, "flows.sqlite-shm": 0o600,
                     "flows.sqlite.lock": 0o600}


async def test_an_existing_world_readable_database_is_closed_to_0600(tmp_path):
    """A file made by an older version (0644, with its -wal and -shm) is made private on open."""
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.write(FlowBatch.from_records(envelope(), [flow(envelope(), 0)]))
    await store.close()
    for name in ("flows.sqlite", "flows.sqlite-wal", "flows.sqlite-shm"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    store = SqliteStore(path)
    await store.ping()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if not p.name.endswith(".lock")}
    await store.close()
    assert modes == {"flows.sqlite": 0o600, "flows.sqlite-wal": 0o600, "flows.sqlite-shm": 0o600}
