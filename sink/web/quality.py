"""How well, for the map: the quality columns of the store's records (RTT, retransmits,
drops and their reason) per map row, and the drops that belong to no connection (the
``drops`` table) per device and reason, read alongside the map's history query.

    the map's HistoryQuery ─ sqlite_history ─ rows per connection_owner ──┐
                           └ sqlite_quality ─ quality per connection_owner ┴ with_quality ─ build_map
                                            └ device drops per host, ifname, reason ────────────┘

A SQLite file of schema 4 or older has no quality columns and no ``drops`` table: nothing is
read and the map is drawn as before (the quality columns missing one by one read as 0 and
"", as sink/history.py reads the process columns). Only records that have some quality are
read back (a store where none has reads no row). An InfluxDB store is asked the map's query
with ``quality`` (``influx_quality``): its rows carry their quality already, its ``(drops)``
rows are the device drops.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from connstats.probe.contract import StoreError, proto_name
from connstats.sink.history import DROPS, GROUPS, HistoryQuery

KEYS = GROUPS["connection_owner"]  # a map row's key: what the map's query groups by
COUNTERS = ("retransmits", "drop_packets", "drop_bytes")
QUALITY_FIELDS = ("rtt_min_us", "rtt_avg_us", "rtt_max_us", *COUNTERS, "drop_reason")
_DEFAULTS = {name: "''" if name == "drop_reason" else "0" for name in QUALITY_FIELDS}
DROP_COLUMNS = ("host", "ifname", "reason", "packets", "bytes", "interval_start", "interval_end")
# the map's filters that records and device drops can both be asked (records: all of them)
_FILTERS = {"iface": "ifname = :iface", "port": "(src_port = :port OR dst_port = :port)", "proto": "proto = :proto",
            "direction": "direction = :direction", "host": "host = :host",
            "container": "container_name = :container", "verdict": "verdict = :verdict"}
_DROP_FILTERS = ("iface", "host")


@dataclass
class StoredQuality:
    """What ``sqlite_quality`` read: per map row key its quality, per device its drops."""

    rows: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    drops: list[dict[str, Any]] = field(default_factory=list)  # host, ifname, reason, packets, bytes


def quality_sql(query: HistoryQuery, present: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Per map row key and drop reason: the least and greatest RTT, the records' average RTTs
    weighted by their packets (``rtt_weighted`` over ``rtt_weight``, as ``connstats history
    --quality`` weighs them), the sums of retransmits and drops; records without any left out."""
    column = {name: name if name in present else _DEFAULTS[name] for name in QUALITY_FIELDS}
    where, params = _where(query, _FILTERS)
    where.append(f"({column['rtt_max_us']} > 0 OR {column['retransmits']} > 0 OR {column['drop_packets']} > 0)")
    keys = ", ".join(KEYS)
    sql = (f"SELECT {keys}, {column['drop_reason']} AS drop_reason, "
           f"MIN(NULLIF({column['rtt_min_us']}, 0)) AS rtt_min_us, MAX({column['rtt_max_us']}) AS rtt_max_us, "
           f"TOTAL(CASE WHEN {column['rtt_avg_us']} > 0 THEN {column['rtt_avg_us']} * packets END) AS rtt_weighted, "
           f"TOTAL(CASE WHEN {column['rtt_avg_us']} > 0 THEN packets END) AS rtt_weight, "
           + ", ".join(f"SUM({column[c]}) AS {c}" for c in COUNTERS)
           + f" FROM flows WHERE {' AND '.join(where)} GROUP BY {keys}, drop_reason")
    return sql, params


def drops_sql(query: HistoryQuery) -> tuple[str, dict[str, Any]]:
    where, params = _where(query, {name: _FILTERS[name] for name in _DROP_FILTERS})
    return (f"SELECT host, ifname, reason, SUM(packets) AS packets, SUM(bytes) AS bytes FROM drops "
            f"WHERE {' AND '.join(where)} GROUP BY host, ifname, reason"), params


def _where(query: HistoryQuery, filters: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    where = ["interval_end > :since", "interval_start < :until"]
    params: dict[str, Any] = {"since": query.since, "until": query.until}
    for name, clause in filters.items():
        value = getattr(query, name)
        if value is not None:
            where.append(clause)
            params[name] = value
    return where, params


def quality_by_key(rows: list[dict]) -> dict[tuple, dict[str, Any]]:
    """``quality_sql``'s rows (one per key and reason) as one quality per map row key; its
    ``drop_reason`` the reason of the most dropped packets (ties: the first by name)."""
    out: dict[tuple, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (-(r["drop_packets"] or 0), r["drop_reason"])):
        key = tuple(proto_name(row[k]) if k == "proto" and isinstance(row[k], int) else row[k] for k in KEYS)
        seen = out.setdefault(key, {"rtt_min_us": 0, "rtt_weighted": 0, "rtt_weight": 0, "rtt_max_us": 0,
                                    **dict.fromkeys(COUNTERS, 0), "drop_reason": ""})
        if row["rtt_min_us"]:
            seen["rtt_min_us"] = min(filter(None, (seen["rtt_min_us"], row["rtt_min_us"])))
        seen["rtt_max_us"] = max(seen["rtt_max_us"], row["rtt_max_us"] or 0)
        for name in ("rtt_weighted", "rtt_weight", *COUNTERS):
            seen[name] += int(row[name] or 0)
        if row["drop_packets"] and not seen["drop_reason"]:
            seen["drop_reason"] = row["drop_reason"]
    return {key: _finished(seen) for key, seen in out.items()}


def _finished(seen: dict[str, Any]) -> dict[str, Any]:
    """``rtt_avg_us`` the packet-weighted average (floor); its partials stay for graph.py."""
    return {**seen, "rtt_avg_us": seen["rtt_weighted"] // seen["rtt_weight"] if seen["rtt_weight"] else 0}


def with_quality(rows: list[dict], quality: dict[tuple, dict[str, Any]]) -> list[dict]:
    """The map's rows, those with quality carrying its fields (the others as they were)."""
    if not quality:
        return rows
    return [row | found if (found := quality.get(tuple(row[k] for k in KEYS))) else row for row in rows]


def sqlite_quality(path: str | Path, query: HistoryQuery, busy_timeout: float = 5.0) -> StoredQuality:
    """The quality of the map's rows and the device drops of ``query``'s range, from a
    read-only connection; nothing from a file that has neither (schema 4 or older), nor
    from a missing file (the map's rows, read beside, say what is wrong with it)."""
    if not Path(path).is_file():
        return StoredQuality()
    try:
        db = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}; check its permissions") from exc
    try:
        db.row_factory = sqlite3.Row
        found = StoredQuality()
        present = _columns(db, "flows") & set(QUALITY_FIELDS)
        if present:
            found.rows = quality_by_key([dict(r) for r in db.execute(*quality_sql(query, frozenset(present)))])
        if _columns(db, "drops") >= set(DROP_COLUMNS):
            found.drops = [dict(r) for r in db.execute(*drops_sql(query))]
        return found
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"reading the quality columns of {path} failed: {exc}; try again") from exc
    finally:
        db.close()


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}  # table: ours, never the caller's


def split_drops(rows: list[dict]) -> tuple[list[dict], list[dict[str, Any]]]:
    """The rows of a history query with ``quality`` as the map's rows (each with its quality)
    and its device drops (its ``(drops)`` rows: host, ifname, reason, packets, bytes)."""
    kept, drops = [], []
    for row in rows:
        if row["proto"] == DROPS:
            drops.append({"host": row["host"], "ifname": row["ifname"], "reason": row["drop_reason"],
                          "packets": row["drop_packets"], "bytes": row["drop_bytes"]})
        else:
            kept.append(row)
    return kept, drops
