"""The embedded store: one SQLite file in WAL mode, one row per connection and interval.

``flow_rows`` is the pure encode step (a batch's columns in, row tuples out, zipped from the
columns without an object per record); ``SqliteStore`` does
only I/O: it opens the file, keeps the schema, inserts each message (``write``), or several
(``write_many``, as the consumer calls it), in one transaction off the event loop and, when a
retention is set, prunes old rows at most once a minute. The probe sends an interval's
records in the table's key order (``store_order``), so the rows go to the end of the table.

A redelivered message is a no-op: rows have a natural primary key and are inserted with
``ON CONFLICT DO NOTHING``. Two records of one message with the same key are summed
(``repeated_key_totals``), never dropped; the check costs nothing unless SQLite reports
fewer inserted rows than it was given. Overflow counts (per device, direction and
interval) go to their own table the same way, and so do drops of packets that belong to no
record (per device and kernel drop reason, table ``drops``). WAL mode lets a reader (the CLI) query
while the sink writes. The file and its ``-wal``/``-shm`` are readable by their owner only.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from connstats.probe.contract import RECORD_FIELDS, Envelope, FlowBatch, StoreError, StoreFull, StoreUnavailable
from connstats.probe.contract.record import bulk_allocation  # an allocator setting, not part of the contract
from connstats.probe.contract.wire_schema import OPTIONAL_COLUMNS
from connstats.sink.store import drop_totals, overflow_totals

SCHEMA_VERSION = 5  # PRAGMA user_version; bump and add a step to _MIGRATIONS on change
PRUNE_EVERY_NS = 60 * 1_000_000_000

# The flows table's columns: the host, then every field of a record, by name (rows are
# zipped from the batch's columns by these names, so an order here cannot swap values).
_COLUMNS = ("host", *RECORD_FIELDS)

_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS flows (
        host TEXT NOT NULL,
        ifindex INTEGER NOT NULL,
        ifname TEXT NOT NULL,
        direction TEXT NOT NULL,
        family INTEGER NOT NULL,
        proto INTEGER NOT NULL,
        src_ip TEXT NOT NULL,
        dst_ip TEXT NOT NULL,
        src_port INTEGER NOT NULL,
        dst_port INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        tcp_flags INTEGER NOT NULL,
        interval_start INTEGER NOT NULL,
        interval_end INTEGER NOT NULL,
        container_id TEXT NOT NULL DEFAULT '',
        container_name TEXT NOT NULL DEFAULT '',
        container_image TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (interval_start, host, ifindex, direction, proto, src_ip, dst_ip,
                     src_port, dst_port)
    ) WITHOUT ROWID""",
    # The key leads with interval_start, so the table itself is the time index. Every
    # further index costs 30-60% of write throughput here; interfaces, ports and
    # containers are filtered within a time range instead (see docs/storage.md).
)

_OVERFLOW_COLUMNS = (
    "host", "ifindex", "ifname", "direction", "packets", "bytes", "interval_start", "interval_end",
)

_OVERFLOW_TABLE = """CREATE TABLE IF NOT EXISTS overflow (
        host TEXT NOT NULL,
        ifindex INTEGER NOT NULL,
        ifname TEXT NOT NULL,
        direction TEXT NOT NULL,
        packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        interval_start INTEGER NOT NULL,
        interval_end INTEGER NOT NULL,
        PRIMARY KEY (interval_start, host, ifindex, direction)
    ) WITHOUT ROWID"""

_DROP_COLUMNS = ("host", "ifindex", "ifname", "reason", "packets", "bytes", "interval_start", "interval_end")

_DROPS_TABLE = """CREATE TABLE IF NOT EXISTS drops (
        host TEXT NOT NULL,
        ifindex INTEGER NOT NULL,
        ifname TEXT NOT NULL,
        reason TEXT NOT NULL,
        packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        interval_start INTEGER NOT NULL,
        interval_end INTEGER NOT NULL,
        PRIMARY KEY (interval_start, host, ifindex, reason)
    ) WITHOUT ROWID"""

# Statements that take a file at user_version N to N + 1 (index N - 1 after version 1).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (_OVERFLOW_TABLE,),  # 1 -> 2: packets and bytes that found the flow map full
    # 2 -> 3: the policy's verdict (allow, deny, "" when the device is not governed)
    ("ALTER TABLE flows ADD COLUMN verdict TEXT NOT NULL DEFAULT ''",),
    # 3 -> 4: who is behind the device (pod, workload, runtime) and the program on each end
    tuple(f"ALTER TABLE flows ADD COLUMN {column}" for column in (
        "pod TEXT NOT NULL DEFAULT ''", "workload TEXT NOT NULL DEFAULT ''", "runtime TEXT NOT NULL DEFAULT ''",
        "process TEXT NOT NULL DEFAULT ''", "pid INTEGER NOT NULL DEFAULT 0",
        "peer_process TEXT NOT NULL DEFAULT ''", "peer_pid INTEGER NOT NULL DEFAULT 0")),
    # 4 -> 5: how well (RTT, retransmitted segments, kernel drops and their reason; 0 or '' when
    # unknown), and the drops that belong to no record, per device and reason
    (*(f"ALTER TABLE flows ADD COLUMN {column}" for column in (
        "rtt_min_us INTEGER NOT NULL DEFAULT 0", "rtt_avg_us INTEGER NOT NULL DEFAULT 0",
        "rtt_max_us INTEGER NOT NULL DEFAULT 0", "retransmits INTEGER NOT NULL DEFAULT 0",
        "drop_packets INTEGER NOT NULL DEFAULT 0", "drop_bytes INTEGER NOT NULL DEFAULT 0",
        "drop_reason TEXT NOT NULL DEFAULT ''")), _DROPS_TABLE),
)
_TABLES = ("flows", "overflow", "drops")

# Columns with a default ('' or 0) that most messages leave empty: who is behind a device, the
# verdict, the processes and the quality columns. A message writes only those of them that some record fills (the
# column's default fills the rest), so a host without pods or processes pays nothing for them.
_DEVICE_DEFAULTED = ("container_id", "container_name", "container_image", "pod", "workload", "runtime")
_RECORD_DEFAULTED = tuple(OPTIONAL_COLUMNS)


@functools.lru_cache(maxsize=64)
def _insert(columns: tuple[str, ...]) -> str:
    return (f"INSERT INTO flows ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING")


def written_columns(batch: FlowBatch) -> tuple[str, ...]:
    """``_COLUMNS`` without the defaulted ones that no record of ``batch`` fills."""
    empty = {name for name in (*_DEVICE_DEFAULTED, *_RECORD_DEFAULTED) if not batch.filled(name)}
    return tuple(c for c in _COLUMNS if c not in empty) if empty else _COLUMNS

_INSERT_OVERFLOW = (
    f"INSERT INTO overflow ({', '.join(_OVERFLOW_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_OVERFLOW_COLUMNS))}) ON CONFLICT DO NOTHING"
)
_INSERT_DROPS = (
    f"INSERT INTO drops ({', '.join(_DROP_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_DROP_COLUMNS))}) ON CONFLICT DO NOTHING"
)
# interval_end >= interval_start, so the first bound only lets the index narrow the scan.
_PRUNE = tuple(f"DELETE FROM {table} WHERE interval_start < ?1 AND interval_end < ?1" for table in _TABLES)

# Positions in a flow row: the natural key, and the counters summed over duplicates.
_KEY = tuple(_COLUMNS.index(c) for c in (
    "interval_start", "host", "ifindex", "direction", "proto", "src_ip", "dst_ip", "src_port", "dst_port"))
_SUMMED = (_PACKETS, _BYTES, _FIRST, _LAST, _FLAGS, _RETRANSMITS, _DROP_PACKETS, _DROP_BYTES, _RTT_MIN, _RTT_AVG,
           _RTT_MAX, _DROP_REASON) = tuple(_COLUMNS.index(c) for c in (
    "packets", "bytes", "first_seen", "last_seen", "tcp_flags", "retransmits", "drop_packets", "drop_bytes",
    "rtt_min_us", "rtt_avg_us", "rtt_max_us", "drop_reason"))
# Sets a repeated key's row to the totals of its repeats: the same values on a first
# delivery (after the insert kept the first repeat) and on a redelivery, so it is idempotent.
_SET_TOTALS = (
    "UPDATE flows SET " + ", ".join(f"{_COLUMNS[i]} = ?" for i in _SUMMED) + " WHERE "
    + " AND ".join(f"{_COLUMNS[i]} = ?" for i in _KEY)
)

_RETRYABLE = {"SQLITE_BUSY", "SQLITE_LOCKED"}  # primary result codes


def flow_rows(batch: FlowBatch) -> list[tuple]:
    """One row tuple per record, in ``_COLUMNS`` order, zipped from the batch's columns."""
    return list(batch.rows(_COLUMNS))


def repeated_key_totals(rows: list[tuple]) -> list[tuple]:
    """For each natural key that more than one row has: one row with packets, bytes,
    retransmits and drops summed, the least first_seen, the greatest last_seen, the flags
    OR-ed, the least and greatest RTT (of those known), the average RTT weighted by packets
    and the drop reason of the row with the most dropped packets (the first row's other
    columns). Empty when no key repeats."""
    merged: dict[tuple, list] = {}
    rtt_packets: dict[tuple, int] = {}  # per key: the packets of the rows with an RTT (its average's weight)
    repeated: set[tuple] = set()
    for row in rows:
        key = tuple(row[i] for i in _KEY)
        total = merged.get(key)
        if total is None:
            merged[key] = list(row)
            rtt_packets[key] = row[_PACKETS] if row[_RTT_MAX] else 0
            continue
        repeated.add(key)
        total[_PACKETS] += row[_PACKETS]
        total[_BYTES] += row[_BYTES]
        total[_FIRST] = min(total[_FIRST], row[_FIRST])
        total[_LAST] = max(total[_LAST], row[_LAST])
        total[_FLAGS] |= row[_FLAGS]
        rtt_packets[key] = _merge_quality(total, row, rtt_packets[key])
    return [tuple(merged[key]) for key in merged if key in repeated]


def _merge_quality(total: list, row: tuple, weight: int) -> int:
    """``row``'s quality columns into ``total``'s, whose average RTT weighs ``weight`` packets;
    returns the weight of the merged average."""
    if row[_RTT_MAX]:
        if weight:
            total[_RTT_AVG] = (total[_RTT_AVG] * weight + row[_RTT_AVG] * row[_PACKETS]) // (weight + row[_PACKETS])
            total[_RTT_MIN] = min(total[_RTT_MIN], row[_RTT_MIN])
            total[_RTT_MAX] = max(total[_RTT_MAX], row[_RTT_MAX])
        else:
            total[_RTT_MIN], total[_RTT_AVG], total[_RTT_MAX] = row[_RTT_MIN], row[_RTT_AVG], row[_RTT_MAX]
        weight += row[_PACKETS]
    if row[_DROP_PACKETS] > total[_DROP_PACKETS]:
        total[_DROP_REASON] = row[_DROP_REASON]
    total[_RETRANSMITS] += row[_RETRANSMITS]
    total[_DROP_PACKETS] += row[_DROP_PACKETS]
    total[_DROP_BYTES] += row[_DROP_BYTES]
    return weight


def overflow_rows(envelope: Envelope) -> list[tuple]:
    """One row per device and direction, in ``_OVERFLOW_COLUMNS`` order; repeats summed."""
    return [(envelope.host, ifindex, ifname, direction, packets, nbytes, envelope.interval_start,
             envelope.interval_end)
            for ifindex, ifname, direction, packets, nbytes in overflow_totals(envelope)]


def drop_rows(envelope: Envelope) -> list[tuple]:
    """One row per device and reason of the envelope's drops, in ``_DROP_COLUMNS`` order; repeats summed."""
    return [(envelope.host, ifindex, ifname, reason, packets, nbytes, envelope.interval_start, envelope.interval_end)
            for ifindex, ifname, reason, packets, nbytes in drop_totals(envelope)]


class SqliteStore:
    """``Store`` on one SQLite file; safe to share between tasks (calls are serialised)."""

    def __init__(
        self,
        path: str | Path,
        retention_seconds: float | None = None,
        *,
        busy_timeout: float = 5.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = Path(path)
        self.retention_ns = None if retention_seconds is None else int(retention_seconds * 1e9)
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._turn: int | None = None  # fd of <file>.lock
        self._lock = threading.Lock()
        self._next_prune_ns = 0

    async def ping(self) -> None:
        await asyncio.to_thread(self._locked, self._check_writable)

    async def write(self, batch: FlowBatch) -> None:
        await asyncio.to_thread(self._locked, self._insert, (batch,))

    async def write_many(self, batches: Sequence[FlowBatch]) -> None:
        """Several messages in one transaction: all of them stored, or (on any error) none.
        Each one exactly as ``write`` stores it (idempotent, repeats summed per message)."""
        await asyncio.to_thread(self._locked, self._insert, batches)

    async def close(self) -> None:
        await asyncio.to_thread(self._locked, self._close)

    # -- running in a worker thread, one call at a time -------------------------

    def _locked(self, step: Callable, *args) -> None:
        with self._lock:
            try:
                step(*args)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            except OSError as exc:  # the lock file on a full disk; anything else is retried as it was
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _full(self.path, exc.strerror) from exc
                raise
            except OverflowError as exc:  # a sum of duplicate records beyond 64 bits
                raise StoreError(f"SQLite {self.path} cannot hold a value of this message ({exc}); "
                                 "it holds signed 64-bit integers only") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _open(self.path, self.busy_timeout)
        return self._db

    def _check_writable(self) -> None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    def _insert(self, batches: Sequence[FlowBatch]) -> None:
        db = self._connection()
        with bulk_allocation(), self._writer_turn(), _transaction(db):
            self._prune_if_due(db)
            for batch in batches:
                _insert_message(db, batch)

    @contextlib.contextmanager
    def _writer_turn(self):
        """Sink processes sharing the file take turns through an flock on ``<file>.lock``.

        SQLite's own busy handler polls with growing sleeps (up to 100 ms), so writers that
        queue on its lock waste most of the time; the kernel hands an flock over at once.
        """
        if self._turn is None:
            self._turn = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _prune_if_due(self, db: sqlite3.Connection) -> None:
        if self.retention_ns is None:
            return
        now = self._clock()
        if now < self._next_prune_ns:
            return
        for statement in _PRUNE:
            db.execute(statement, (now - self.retention_ns,))
        self._next_prune_ns = now + PRUNE_EVERY_NS

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None


def _insert_message(db: sqlite3.Connection, batch: FlowBatch) -> None:
    """One message's rows, overflow and drops, inside the caller's transaction."""
    envelope = batch.envelope
    columns = written_columns(batch)
    if db.executemany(_insert(columns), batch.rows(columns)).rowcount < len(batch):  # a redelivery, or repeated keys
        db.executemany(_SET_TOTALS, [(*(row[i] for i in _SUMMED), *(row[i] for i in _KEY))
                                     for row in repeated_key_totals(flow_rows(batch))])
    if envelope.overflow:
        db.executemany(_INSERT_OVERFLOW, overflow_rows(envelope))
    if envelope.drops:
        db.executemany(_INSERT_DROPS, drop_rows(envelope))


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self.db.execute("COMMIT")
        finally:
            if self.db.in_transaction:  # the body or COMMIT failed
                self.db.execute("ROLLBACK")


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    if not path.parent.is_dir():
        raise StoreError(f"SQLite directory {path.parent} does not exist; create it or choose another path")
    _create_private(path)
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        _configure(db)
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _create_private(path: Path) -> None:
    """Create the file with mode 0600, or close an existing one of ours to 0600 (with its
    ``-wal`` and ``-shm``, which SQLite creates with the database file's mode)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, os.fstat(fd).st_mode & 0o700)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{path}{suffix}")
            if companion.exists() and companion.stat().st_uid == os.geteuid():
                companion.chmod(companion.stat().st_mode & 0o700)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(path, exc.strerror) from exc
        raise StoreError(f"cannot open SQLite file {path}: {exc.strerror}; check the path and its permissions") from exc


def _configure(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"SQLite refused WAL mode (journal_mode is {mode}); use a file on a local disk")
    db.execute("PRAGMA synchronous=NORMAL")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    with _transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, newer than {SCHEMA_VERSION}; upgrade connstats"
            )
        if version == 0:
            _refuse_foreign_tables(db, path)
            for statement in _SCHEMA_V1:
                db.execute(statement)
            version = 1
        _check_tables(db, path, version)  # ours at its version, before any step changes it
        for steps in _MIGRATIONS[version - 1:]:
            for statement in steps:
                db.execute(statement)
        _check_tables(db, path, SCHEMA_VERSION)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _refuse_foreign_tables(db: sqlite3.Connection, path: Path) -> None:
    """A file without our schema version may hold our flows table (made before versions
    were kept), nothing else."""
    names = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    foreign = [name for name in names if name != "flows"]
    if foreign:
        raise StoreError(f"{path} holds tables connstats did not make ({', '.join(foreign[:5])}); "
                         "choose another file for --store")


def _check_tables(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Each of our tables has exactly the columns and key we declare (at ``version``), else
    nothing is written; a table that ``version`` does not have yet is not looked at."""
    expected = _expected_columns(version)
    for table in _TABLES:
        if table not in expected:
            continue
        found = db.execute(f"PRAGMA table_info({table})").fetchall()
        if found != expected[table]:
            names = ", ".join(row[1] for row in found)
            raise StoreError(f"{path} has a {table} table with other columns ({names}) than connstats "
                             "writes; choose another file for --store")


@functools.lru_cache(maxsize=None)
def _expected_columns(version: int) -> dict[str, list]:
    """``PRAGMA table_info`` of our tables at ``version``, made from the one declaration in memory."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in (*_SCHEMA_V1, *(s for steps in _MIGRATIONS[:version - 1] for s in steps)):
            db.execute(statement)
        return {table: info for table in _TABLES
                if (info := db.execute(f"PRAGMA table_info({table})").fetchall())}
    finally:
        db.close()


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    primary = "_".join((getattr(exc, "sqlite_errorname", None) or "").split("_")[:2])
    if primary == "SQLITE_FULL" or (primary == "SQLITE_IOERR" and _no_room(path)):
        return _full(path, reason)
    if primary in _RETRYABLE:
        return StoreUnavailable(f"SQLite {path} is busy ({reason}); the write will be retried")
    return StoreError(f"SQLite {path} failed: {reason}; check the path, its permissions and free space")


def _full(path: Path, reason: str | None) -> StoreFull:
    """``reason``: the OSError's strerror (None if it was raised without one)."""
    return StoreFull(f"SQLite {path}: the disk is full ({reason or 'no space left'}); free space or grow the filesystem")


def _no_room(path: Path) -> bool:
    """Whether the file's filesystem is out of space (an I/O error while growing the WAL or
    its index on a full disk; SQLite does not pass on the errno)."""
    try:
        return shutil.disk_usage(path.parent).free < 64 * 1024
    except OSError:
        return False
