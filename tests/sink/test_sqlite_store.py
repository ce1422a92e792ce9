"""SqliteStore against real SQLite files in tmp_path: rows, idempotency, WAL, locks, retention."""
from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from connstats.probe.contract.errors import StoreError, StoreFull, StoreUnavailable
from connstats.probe.contract.record import DropCount, Envelope, FlowRecord
from connstats.probe.contract.wire import FLOW_COLUMNS, RECORD_FIELDS, FlowBatch
from connstats.sink.sqlite_store import (
    _COLUMNS,
    _MIGRATIONS,
    _SCHEMA_V1,
    SCHEMA_VERSION,
    SqliteStore,
    flow_rows,
    written_columns,
)
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
INTERVAL = 10 * SECOND


def message(count: int, start: int = T0, host: str = "node-1") -> tuple[Envelope, list[FlowRecord]]:
    """``count`` distinct TCP connections in the interval starting at ``start``.

    Record i has i + 1 packets and 100 * (i + 1) bytes.
    """
    envelope = Envelope(host=host, boot_id="boot", interval_seq=start // INTERVAL,
                        interval_start=start, interval_end=start + INTERVAL)
    records = [
        flow_record(interval_start=start, interval_end=start + INTERVAL, ifindex=3, ifname="veth0",
                    direction="egress", family=4, proto=6, src_ip=f"10.0.{i // 250}.{i % 250 + 1}",
                    dst_ip="10.9.0.1", src_port=30000 + i % 30000, dst_port=443, packets=i + 1,
                    bytes=100 * (i + 1), first_seen=start + 1, last_seen=start + 2, tcp_flags=0x18)
        for i in range(count)
    ]
    return envelope, records


def totals(path) -> tuple[int, int, int]:
    """(rows, packets, bytes) as a separate reader sees them."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*), total(packets), total(bytes) FROM flows").fetchone()


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "flows.db", busy_timeout=0.2)
    await store.ping()
    try:
        yield store
    finally:
        await store.close()


async def test_write_stores_every_record_with_exact_totals(store):
    await store.write(FlowBatch.from_records(*message(1000)))
    assert totals(store.path) == (1000, 500_500, 50_050_000)


async def test_columns_hold_the_record_and_empty_container_fields(store):
    envelope, records = message(1)
    await store.write(FlowBatch.from_records(envelope, records))
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM flows").fetchone())
    assert row == {
        "host": "node-1", "ifindex": 3, "ifname": "veth0", "direction": "egress", "family": 4,
        "proto": 6, "src_ip": "10.0.0.1", "dst_ip": "10.9.0.1", "src_port": 30000,
        "dst_port": 443, "packets": 1, "bytes": 100, "first_seen": T0 + 1, "last_seen": T0 + 2,
        "tcp_flags": 0x18, "interval_start": T0, "interval_end": T0 + INTERVAL,
        "container_id": "", "container_name": "", "container_image": "", "verdict": "",
        "pod": "", "workload": "", "runtime": "", "process": "", "pid": 0, "peer_process": "", "peer_pid": 0,
        "rtt_min_us": 0, "rtt_avg_us": 0, "rtt_max_us": 0, "retransmits": 0, "drop_packets": 0, "drop_bytes": 0,
        "drop_reason": "",
    }


async def test_pod_workload_runtime_and_both_processes_are_stored_column_by_column(store):
    envelope, _ = message(0)
    records = [
        flow_record(envelope, ifindex=3, ifname="veth0", src_port=40001, pod="shop/web-7d9f-x2", workload="web",
                    runtime="containerd", process="nginx", pid=4242, peer_process="curl", peer_pid=77),
        flow_record(envelope, ifindex=3, ifname="veth0", src_port=40002, pod="shop/web-7d9f-x2", workload="web",
                    runtime="containerd", process="nginx", pid=4243),
        flow_record(envelope, ifindex=9, ifname="eth0", src_port=40003, process="sshd", pid=1 << 31),
    ]
    await store.write(FlowBatch.from_records(envelope, records))
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT ifname, src_port, pod, workload, runtime, process, pid, peer_process, peer_pid "
                          "FROM flows ORDER BY src_port").fetchall()
    assert rows == [
        ("veth0", 40001, "shop/web-7d9f-x2", "web", "containerd", "nginx", 4242, "curl", 77),
        ("veth0", 40002, "shop/web-7d9f-x2", "web", "containerd", "nginx", 4243, "", 0),
        ("eth0", 40003, "", "", "", "sshd", 2_147_483_648, "", 0),
    ]


async def test_the_quality_columns_and_the_drops_of_no_record_are_stored(store):
    envelope, _ = message(0)
    envelope = dataclasses.replace(envelope, drops=(
        DropCount(3, "veth0", "NETFILTER_DROP", 7, 700), DropCount(3, "veth0", "NO_SOCKET", 2, 120),
        DropCount(3, "veth0", "NETFILTER_DROP", 1, 100), DropCount(9, "eth0", "NETFILTER_DROP", 5, 1 << 40)))
    records = [
        flow_record(envelope, src_port=40001, rtt_min_us=110, rtt_avg_us=250, rtt_max_us=4_000_000_000,
                    retransmits=31, drop_packets=3, drop_bytes=4500, drop_reason="TCP_INVALID_SEQUENCE"),
        flow_record(envelope, src_port=40002, proto=17, drop_packets=12, drop_bytes=1 << 33,
                    drop_reason="SOCKET_RCVBUFF"),
        flow_record(envelope, src_port=40003),
    ]
    await store.write(FlowBatch.from_records(envelope, records))
    await store.write(FlowBatch.from_records(envelope, records))  # a redelivery changes nothing
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT src_port, rtt_min_us, rtt_avg_us, rtt_max_us, retransmits, drop_packets, "
                          "drop_bytes, drop_reason FROM flows ORDER BY src_port").fetchall()
        drops = db.execute("SELECT * FROM drops ORDER BY ifindex, reason").fetchall()
    assert rows == [
        (40001, 110, 250, 4_000_000_000, 31, 3, 4500, "TCP_INVALID_SEQUENCE"),
        (40002, 0, 0, 0, 0, 12, 1 << 33, "SOCKET_RCVBUFF"),
        (40003, 0, 0, 0, 0, 0, 0, ""),
    ]
    end = envelope.interval_end
    assert drops == [("node-1", 3, "veth0", "NETFILTER_DROP", 8, 800, T0, end),
                     ("node-1", 3, "veth0", "NO_SOCKET", 2, 120, T0, end),
                     ("node-1", 9, "eth0", "NETFILTER_DROP", 5, 1 << 40, T0, end)]


def test_a_message_writes_only_the_defaulted_columns_some_record_fills():
    envelope, records = message(2)
    defaulted = ("container_id", "container_name", "container_image", "pod", "workload", "runtime", "verdict",
                 "process", "pid", "peer_process", "peer_pid", "rtt_min_us", "rtt_avg_us", "rtt_max_us",
                 "retransmits", "drop_packets", "drop_bytes", "drop_reason")
    assert written_columns(FlowBatch.from_records(envelope, records)) == tuple(
        c for c in _COLUMNS if c not in defaulted)
    records[1] = flow_record(envelope, src_port=1, pod="shop/web-1", peer_pid=9, rtt_max_us=900,
                             drop_reason="NETFILTER_DROP")
    assert set(_COLUMNS) - set(written_columns(FlowBatch.from_records(envelope, records))) == set(defaulted) - {
        "pod", "peer_pid", "rtt_max_us", "drop_reason"}


def test_flow_rows_is_one_tuple_per_record_in_column_order():
    envelope, records = message(2)
    rows = flow_rows(FlowBatch.from_records(envelope, records))
    names = ("host", "ifindex", "ifname", "direction", "family", "proto", "src_ip", "dst_ip", "src_port",
             "dst_port", "packets", "bytes", "first_seen", "last_seen", "tcp_flags", "interval_start",
             "interval_end", "container_id", "container_name", "container_image")
    assert [{name: row[_COLUMNS.index(name)] for name in names} for row in rows] == [
        dict(zip(names, ("node-1", 3, "veth0", "egress", 4, 6, "10.0.0.1", "10.9.0.1", 30000, 443, 1, 100,
                         T0 + 1, T0 + 2, 0x18, T0, T0 + INTERVAL, "", "", ""), strict=True)),
        dict(zip(names, ("node-1", 3, "veth0", "egress", 4, 6, "10.0.0.2", "10.9.0.1", 30001, 443, 2, 200,
                         T0 + 1, T0 + 2, 0x18, T0, T0 + INTERVAL, "", "", ""), strict=True)),
    ]


def test_the_columns_are_the_host_and_the_fields_of_a_record_declared_once():
    assert _COLUMNS == ("host", *RECORD_FIELDS)
    assert set(RECORD_FIELDS) == {*FLOW_COLUMNS, "ifname", "container_id", "container_name",
                                  "container_image", "pod", "workload", "runtime", "interval_start",
                                  "interval_end"}
    db = sqlite3.connect(":memory:")
    for statement in (*_SCHEMA_V1, *(s for steps in _MIGRATIONS for s in steps)):
        db.execute(statement)
    assert {row[1] for row in db.execute("PRAGMA table_info(flows)")} == set(_COLUMNS)


async def test_a_swapped_pair_of_ports_is_stored_where_it_belongs(store):
    envelope, records = message(1)
    await store.write(FlowBatch.from_records(envelope, records))
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT src_port, dst_port FROM flows").fetchall() == [(30000, 443)]


async def test_writing_the_same_message_twice_leaves_no_duplicates(store):
    envelope, records = message(500)
    await store.write(FlowBatch.from_records(envelope, records))
    await store.write(FlowBatch.from_records(envelope, records))
    assert totals(store.path) == (500, 125_250, 12_525_000)


async def test_same_connection_in_two_intervals_and_two_hosts_are_four_rows(store):
    for start in (T0, T0 + INTERVAL):
        for host in ("node-1", "node-2"):
            await store.write(FlowBatch.from_records(*message(1, start=start, host=host)))
    assert totals(store.path) == (4, 4, 400)


async def test_concurrent_writes_all_land(store):
    await asyncio.gather(*(store.write(FlowBatch.from_records(*message(100, start=T0 + k * INTERVAL))) for k in range(8)))
    assert totals(store.path) == (800, 8 * 5050, 8 * 505_000)


async def test_file_is_in_wal_mode_with_schema_version(store):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert indexes == set()  # the table itself is keyed (WITHOUT ROWID) by time first


async def test_reader_reads_while_a_write_transaction_is_open(store):
    await store.write(FlowBatch.from_records(*message(10)))
    writer = sqlite3.connect(store.path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM flows")
        assert totals(store.path) == (10, 55, 5500)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_write_succeeds_while_a_reader_holds_a_snapshot(store):
    await store.write(FlowBatch.from_records(*message(10)))
    reader = sqlite3.connect(store.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM flows").fetchone() == (10,)
        await store.write(FlowBatch.from_records(*message(10, start=T0 + INTERVAL)))
        assert reader.execute("SELECT count(*) FROM flows").fetchone() == (10,)
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert totals(store.path) == (20, 110, 11000)


async def test_locked_database_is_unavailable_then_write_succeeds(store):
    envelope, records = message(300)
    locker = sqlite3.connect(store.path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable) as caught:
            await store.write(FlowBatch.from_records(envelope, records))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "\n" not in str(caught.value)
    assert "busy" in str(caught.value)
    assert totals(store.path) == (0, 0, 0)
    await store.write(FlowBatch.from_records(envelope, records))
    assert totals(store.path) == (300, 45_150, 4_515_000)


async def test_a_full_disk_is_store_full_and_the_write_succeeds_once_it_grows(small_tmpfs):
    store = SqliteStore(small_tmpfs.path / "flows.db")
    try:
        await store.ping()  # the file, its WAL and index exist
        small_tmpfs.fill(leave=16 * 1024)
        envelope, records = message(3000)
        with pytest.raises(StoreFull) as caught:
            await store.write(FlowBatch.from_records(envelope, records))
        assert str(caught.value) == (f"SQLite {store.path}: the disk is full (database or disk is full); free "
                                     "space or grow the filesystem")
        assert totals(store.path) == (0, 0, 0)
        small_tmpfs.grow("64m")
        await store.write(FlowBatch.from_records(envelope, records))
        assert totals(store.path) == (3000, 4_501_500, 450_150_000)
    finally:
        await store.close()


async def test_ping_on_a_locked_database_is_unavailable(tmp_path):
    path = tmp_path / "flows.db"
    locker = sqlite3.connect(path, isolation_level=None)
    store = SqliteStore(path, busy_timeout=0.1)
    try:
        locker.execute("PRAGMA journal_mode=WAL")
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        locker.execute("ROLLBACK")
        await store.ping()
    finally:
        locker.close()
        await store.close()


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_retention_deletes_old_rows_at_most_once_a_minute(tmp_path):
    clock = Clock(T0 + 3 * 3600 * SECOND)
    store = SqliteStore(tmp_path / "flows.db", retention_seconds=3600, clock=clock)
    try:
        await store.write(FlowBatch.from_records(*message(5, start=T0)))  # prunes first (nothing), then inserts old rows
        await store.write(FlowBatch.from_records(*message(7, start=clock.now - INTERVAL)))
        assert totals(store.path) == (12, 15 + 28, 1500 + 2800)
        clock.now += 59 * SECOND
        await store.write(FlowBatch.from_records(*message(1, start=clock.now - INTERVAL)))
        assert totals(store.path) == (13, 44, 4400)
        clock.now += 2 * SECOND
        await store.write(FlowBatch.from_records(*message(1, start=clock.now - INTERVAL)))
        assert totals(store.path) == (9, 30, 3000)
    finally:
        await store.close()


async def test_retention_keeps_rows_ending_inside_the_window(tmp_path):
    clock = Clock(T0 + 3600 * SECOND + INTERVAL)
    store = SqliteStore(tmp_path / "flows.db", retention_seconds=3600, clock=clock)
    try:
        await store.write(FlowBatch.from_records(*message(2, start=T0)))  # ends exactly at the cut-off
        await store.write(FlowBatch.from_records(*message(3, start=T0 - INTERVAL)))
        clock.now += 61 * SECOND
        await store.write(FlowBatch.from_records(*message(1, start=clock.now)))
        assert totals(store.path) == (1, 1, 100)
    finally:
        await store.close()


@pytest.mark.parametrize("where", ["missing/dir/flows.db", "a-file/flows.db"])
async def test_unusable_path_is_a_one_line_store_error(tmp_path, where):
    (tmp_path / "a-file").write_text("not a directory")
    store = SqliteStore(tmp_path / where)
    with pytest.raises(StoreError) as caught:
        await store.ping()
    await store.close()
    assert type(caught.value) is StoreError
    assert str(caught.value) == (
        f"SQLite directory {(tmp_path / where).parent} does not exist; create it or choose another path"
    )


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "flows.db"
    path.write_bytes(b"x" * 4096)
    store = SqliteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.ping()
    await store.close()
    assert type(caught.value) is StoreError
    assert str(caught.value) == (
        f"SQLite {path} failed: file is not a database; check the path, its permissions and free space"
    )


async def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "flows.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.ping()
    await store.close()
    assert str(caught.value) == (
        f"{path} has schema version {SCHEMA_VERSION + 1}, newer than {SCHEMA_VERSION}; upgrade connstats"
    )


async def test_reopening_keeps_rows_and_schema(tmp_path):
    path = tmp_path / "flows.db"
    for _ in range(2):
        store = SqliteStore(path)
        await store.write(FlowBatch.from_records(*message(4)))
        await store.close()
    assert totals(path) == (4, 10, 1000)


async def test_records_differing_only_in_counters_are_one_row(store):
    envelope, records = message(1)
    await store.write(FlowBatch.from_records(envelope, records))
    await store.write(FlowBatch.from_records(envelope, [dataclasses.replace(records[0], packets=99, bytes=9900)]))
    assert totals(store.path) == (1, 1, 100)


async def test_empty_message_writes_nothing(store):
    envelope, _ = message(0)
    await store.write(FlowBatch.from_records(envelope, []))
    assert totals(store.path) == (0, 0, 0)
