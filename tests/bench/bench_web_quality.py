"""What the map's quality read (sink/web/quality.py) adds to the map's rows, side by side in
one run over an hour of 10,000 connections per interval (60,000 records, tests/fixtures/web.py):

    the map's rows (sqlite_history, connection_owner) vs. the quality read from a schema 4
    file (no columns: nothing read), from a schema 5 file where no record has quality, and
    where every record has.

The schema 5 columns are added here as the store's migration adds them (defaulted).
Run: PYTHONPATH=. .venv/bin/python tests/bench/bench_web_quality.py
"""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from connstats.probe.contract.wire_schema import QUALITY_COLUMNS
from connstats.sink.history import HistoryQuery, sqlite_history
from connstats.sink.web.quality import sqlite_quality
from tests.fixtures.web import fill_store

ROUNDS = 5


def median_ms(fn) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def add_quality_columns(path: Path, every_record: bool) -> None:
    db = sqlite3.connect(path)
    try:
        present = {row[1] for row in db.execute("PRAGMA table_info(flows)")}
        for name in QUALITY_COLUMNS:
            if name not in present:
                kind = "TEXT NOT NULL DEFAULT ''" if name == "drop_reason" else "INTEGER NOT NULL DEFAULT 0"
                db.execute(f"ALTER TABLE flows ADD COLUMN {name} {kind}")
        if every_record:
            db.execute("UPDATE flows SET rtt_min_us = 100, rtt_avg_us = 200, rtt_max_us = 300, retransmits = 1")
        db.commit()
    finally:
        db.close()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="connstats-bench-"))
    try:
        path = root / "flows.sqlite"
        records = asyncio.run(fill_store(path))
        now = time.time_ns()
        query = HistoryQuery(since=now - 3700 * 10**9, until=now, group_by="connection_owner")
        rows = median_ms(lambda: sqlite_history(path, query))
        schema4 = median_ms(lambda: sqlite_quality(path, query))
        add_quality_columns(path, every_record=False)
        none_set = median_ms(lambda: sqlite_quality(path, query))
        add_quality_columns(path, every_record=True)
        all_set = median_ms(lambda: sqlite_quality(path, query))
    finally:
        shutil.rmtree(root)
    print(f"{records:,} records: the map's rows {rows:.0f} ms; quality from schema 4 {schema4:.1f} ms, "
          f"schema 5 with none set {none_set:.0f} ms ({none_set / rows:.2f}x the rows), "
          f"with all set {all_set:.0f} ms ({all_set / rows:.2f}x)")


if __name__ == "__main__":
    main()
