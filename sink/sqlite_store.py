"""The embedded store: one SQLite file in WAL mode, one row per connection and interval.

``flow_rows`` is the pure encode step (records in, row tuples out); ``SqliteStore`` does
only I/O: it opens the file, keeps the schema, inserts each message in one transaction
off the event loop and, when a retention is set, prunes old rows at most once a minute.

A redelivered message is a no-op: rows have a natural primary key and are inserted with
``ON CONFLICT DO NOTHING``. WAL mode lets a reader (the CLI) query while the sink writes.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from connstats.probe.errors import StoreError, StoreUnavailable
from connstats.probe.record import Envelope, FlowRecord, bulk_allocation

SCHEMA_VERSION = 1  # PRAGMA user_version; bump and add a step to _MIGRATIONS on change
PRUNE_EVERY_NS = 60 * 1_000_000_000

_COLUMNS = (
    "host", "ifindex", "ifname", "direction", "family", "proto", "src_ip", "dst_ip",
    "src_port", "dst_port", "packets", "bytes", "first_seen", "last_seen", "tcp_flags",
    "interval_start", "interval_end", "container_id", "container_name", "container_image",
)

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
    # containers are filtered within a time range instead (see the README).
)

# Statements that take a file at user_version N to N + 1 (index N - 1 after version 1).
_MIGRATIONS: tuple[tuple[str, ...], ...] = ()

_INSERT = (
    f"INSERT INTO flows ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT DO NOTHING"
)
# interval_end >= interval_start, so the first bound only lets the index narrow the scan.
_PRUNE = "DELETE FROM flows WHERE interval_start < ?1 AND interval_end < ?1"

_RETRYABLE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL"}  # primary result codes


def flow_rows(envelope: Envelope, records: Sequence[FlowRecord]) -> list[tuple]:
    """One row tuple per record, in ``_COLUMNS`` order."""
    host = envelope.host
    return [
        (host, r.ifindex, r.ifname, r.direction, r.family, r.proto, r.src_ip, r.dst_ip,
         r.src_port, r.dst_port, r.packets, r.bytes, r.first_seen, r.last_seen,
         r.tcp_flags, r.interval_start, r.interval_end, r.container_id, r.container_name,
         r.container_image)
        for r in records
    ]


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

    async def write(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        await asyncio.to_thread(self._locked, self._insert, envelope, records)

    async def close(self) -> None:
        await asyncio.to_thread(self._locked, self._close)

    # -- running in a worker thread, one call at a time -------------------------

    def _locked(self, step: Callable, *args) -> None:
        with self._lock:
            try:
                step(*args)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _open(self.path, self.busy_timeout)
        return self._db

    def _check_writable(self) -> None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    def _insert(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        db = self._connection()
        rows = flow_rows(envelope, records)
        with bulk_allocation(), self._writer_turn(), _transaction(db):
            self._prune_if_due(db)
            db.executemany(_INSERT, rows)

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
        db.execute(_PRUNE, (now - self.retention_ns,))
        self._next_prune_ns = now + PRUNE_EVERY_NS

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None


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
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        _configure(db)
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


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
            for statement in _SCHEMA_V1:
                db.execute(statement)
            version = 1
        for steps in _MIGRATIONS[version - 1:]:
            for statement in steps:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    primary = "_".join((getattr(exc, "sqlite_errorname", None) or "").split("_")[:2])
    if primary in _RETRYABLE:
        return StoreUnavailable(f"SQLite {path} is busy ({reason}); the write will be retried")
    return StoreError(f"SQLite {path} failed: {reason}; check the path, its permissions and free space")
