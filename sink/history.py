"""History queries over the store: SQL for SQLite, Flux for InfluxDB.

``HistoryQuery`` holds the filters and the grouping; ``build_sql`` and ``build_flux`` are
pure (query in, text and bind parameters out), and user input only ever travels as a
bind parameter, never inside the query text. ``sqlite_history`` reads through a
read-only connection (WAL: it works while the sink writes); ``influx_history`` runs Flux
with ``params=`` and adds rows up in Python (``aggregate``), so both stores give the same rows:

    keys (by --group-by)      connection: ifname, direction, proto, src_ip, src_port, dst_ip, dst_port
                              port: proto, port (the lower of the two ports: the server side)
                              iface: ifname, direction        proto: proto
    values                    packets, bytes, first_seen, last_seen (ns since the epoch, UTC)
    with --every              time (start of the bucket, ns)

Rows are sorted by bytes, then packets (within each bucket, buckets in time order);
``top`` keeps the first N (per bucket). SQLite selects intervals that overlap the range;
InfluxDB selects points (one per record, stamped with its interval's start) in the range.
"""
from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from connstats.probe.errors import ConfigError, StoreError
from connstats.probe.record import DIRECTIONS, proto_name, proto_number

GROUPS: dict[str, tuple[str, ...]] = {
    "connection": ("ifname", "direction", "proto", "src_ip", "src_port", "dst_ip", "dst_port"),
    "port": ("proto", "port"),
    "iface": ("ifname", "direction"),
    "proto": ("proto",),
}
VALUES = ("packets", "bytes", "first_seen", "last_seen")
MEASUREMENT = "connstats_flow"
_NS = 1_000_000_000


@dataclass(frozen=True)
class HistoryQuery:
    since: int  # ns since the epoch, UTC
    until: int
    iface: str | None = None
    port: int | None = None  # either side
    proto: int | None = None
    direction: str | None = None
    host: str | None = None
    container: str | None = None
    group_by: str = "connection"
    every: int | None = None  # bucket width, ns
    top: int | None = None

    def __post_init__(self) -> None:
        if self.group_by not in GROUPS:
            raise ConfigError(f"--group-by {self.group_by!r} is not one of {', '.join(GROUPS)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ConfigError(f"--direction {self.direction!r} is not ingress or egress")
        if self.port is not None and not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port} is not between 0 and 65535")
        if self.every is not None and self.every <= 0:
            raise ConfigError("--every must be a positive duration, e.g. 1m")
        if self.top is not None and self.top < 1:
            raise ConfigError("--top must be at least 1")
        if self.until <= self.since:
            raise ConfigError("--until must be later than --since")

    @property
    def keys(self) -> tuple[str, ...]:
        return GROUPS[self.group_by]


# -- times ---------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": _NS, "m": 60 * _NS, "h": 3600 * _NS,
            "d": 86400 * _NS, "w": 7 * 86400 * _NS}


def parse_duration(text: str) -> int:
    """``15m``, ``1h30m``, ``0.5s`` -> nanoseconds."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{text!r} is not a duration; use e.g. 30s, 15m, 2h, 1d")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def _is_duration(text: str) -> bool:
    parts = _DURATION.findall(text.strip())
    return bool(parts) and "".join(n + u for n, u in parts) == text.strip()


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A duration ago (``15m``) or an RFC 3339 time (``2026-11-22T01:00:00Z``) -> ns."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if text.strip() == "now":
        return now_ns
    if _is_duration(text):
        return now_ns - parse_duration(text)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is neither a duration (15m) nor an RFC 3339 time "
                          "(2026-11-22T01:00:00Z)") from None
    if moment.tzinfo is None:
        raise ConfigError(f"{text!r} has no time zone; add Z or an offset like +01:00")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000


# -- SQLite ------------------------------------------------------------------------------------

_SQL_KEYS = {
    "ifname": "ifname", "direction": "direction", "proto": "proto", "src_ip": "src_ip",
    "src_port": "src_port", "dst_ip": "dst_ip", "dst_port": "dst_port",
    "port": "MIN(src_port, dst_port)",
}
_SQL_FILTERS = {
    "iface": "ifname = :iface", "port": "(src_port = :port OR dst_port = :port)",
    "proto": "proto = :proto", "direction": "direction = :direction", "host": "host = :host",
    "container": "container_name = :container",
}


def build_sql(query: HistoryQuery) -> tuple[str, dict[str, Any]]:
    """The SELECT and its named parameters."""
    params: dict[str, Any] = {"since": query.since, "until": query.until}
    where = ["interval_end > :since", "interval_start < :until"]
    for name, clause in _SQL_FILTERS.items():
        value = getattr(query, name)
        if value is not None:
            where.append(clause)
            params[name] = value
    columns = [f"{_SQL_KEYS[k]} AS {k}" for k in query.keys]
    group = list(query.keys)
    order = ["bytes DESC", "packets DESC", *query.keys]
    if query.every is not None:
        columns.insert(0, "(interval_start / :every) * :every AS time")
        group.insert(0, "time")
        order.insert(0, "time")
        params["every"] = query.every
    sql = (f"SELECT {', '.join(columns)}, SUM(packets) AS packets, SUM(bytes) AS bytes, "
           f"MIN(first_seen) AS first_seen, MAX(last_seen) AS last_seen FROM flows "
           f"WHERE {' AND '.join(where)} GROUP BY {', '.join(group)} ORDER BY {', '.join(order)}")
    if query.top is not None and query.every is None:
        sql += " LIMIT :top"
        params["top"] = query.top
    return sql, params


def sqlite_history(path: str | Path, query: HistoryQuery, busy_timeout: float = 5.0) -> list[dict]:
    """Run ``build_sql`` on a read-only connection to the sink's SQLite file."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no flow database at {path}; start `connstats up` or `connstats sink`, "
                         "or check --store")
    sql, params = build_sql(query)
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}; check its permissions") from exc
    try:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise StoreError(f"{path} holds no flows table; is it a connstats database?") from exc
        raise StoreError(f"querying {path} failed: {exc}; try again") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable SQLite database: {exc}; check --store") from exc
    finally:
        db.close()
    for row in rows:
        if "proto" in row:
            row["proto"] = proto_name(row["proto"])
    return _top_per_bucket(rows, query)


# -- InfluxDB -----------------------------------------------------------------------------------

_FLUX_TAG_FILTERS = {"iface": "ifname", "direction": "direction", "proto": "proto", "host": "host"}
_FLUX_COLUMNS = ("_time", "ifname", "direction", "proto", "src_ip", "src_port", "dst_ip",
                 "dst_port", "packets", "bytes", "first_seen", "last_seen")
_FLUX_KEEP = ", ".join(f'"{c}"' for c in _FLUX_COLUMNS)


def build_flux(query: HistoryQuery, bucket: str) -> tuple[str, dict[str, Any]]:
    """Flux that selects, filters and pivots points (one row per record), and its ``params``.

    influxdb-client sends each ``params`` key as a top-level option of the query, so the
    Flux names them directly; the ``p_`` prefix keeps them clear of Flux's own names.
    """
    params: dict[str, Any] = {
        "p_bucket": bucket, "p_measurement": MEASUREMENT,
        "p_start": _datetime(query.since), "p_stop": _datetime(query.until),
    }
    lines = ["from(bucket: p_bucket)",
             "  |> range(start: p_start, stop: p_stop)",
             "  |> filter(fn: (r) => r._measurement == p_measurement)"]
    for name, tag in _FLUX_TAG_FILTERS.items():
        value = getattr(query, name)
        if value is not None:
            lines.append(f"  |> filter(fn: (r) => r.{tag} == p_{name})")
            params[f"p_{name}"] = proto_name(value) if name == "proto" else value
    lines.append('  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    if query.port is not None:
        lines.append("  |> filter(fn: (r) => r.src_port == p_port or r.dst_port == p_port)")
        params["p_port"] = query.port
    if query.container is not None:
        lines.append("  |> filter(fn: (r) => r.container_name == p_container)")
        params["p_container"] = query.container
    lines.append(f"  |> keep(columns: [{_FLUX_KEEP}])")
    return "\n".join(lines), params


async def influx_history(store: Any, query: HistoryQuery) -> list[dict]:
    """Run ``build_flux`` on an ``InfluxStore`` and add the rows up like the SQL does."""
    flux, params = build_flux(query, store.config.bucket)
    return aggregate(await store.query(flux, params), query)


def aggregate(points: Iterable[dict], query: HistoryQuery) -> list[dict]:
    """Group per-record rows (from Flux) by the query's keys (and bucket); sorted, top N."""
    groups: dict[tuple, dict] = {}
    for point in points:
        row = _point_row(point)
        key = tuple(row[k] for k in query.keys)
        if query.every is not None:
            key = (_time_ns(point.get("_time")) // query.every * query.every, *key)
        total = groups.get(key)
        if total is None:
            groups[key] = row | ({"time": key[0]} if query.every is not None else {})
            continue
        total["packets"] += row["packets"]
        total["bytes"] += row["bytes"]
        total["first_seen"] = min(total["first_seen"], row["first_seen"])
        total["last_seen"] = max(total["last_seen"], row["last_seen"])
    rows = [{**({"time": r["time"]} if "time" in r else {}), **{k: r[k] for k in query.keys},
             **{v: r[v] for v in VALUES}} for r in groups.values()]
    rows.sort(key=lambda r: (r.get("time", 0), -r["bytes"], -r["packets"], *map(str, (r[k] for k in query.keys))))
    return _top_per_bucket(rows, query)


def _point_row(point: dict) -> dict:
    row = {k: point.get(k) for k in ("ifname", "direction", "src_ip", "dst_ip")}
    for name in ("src_port", "dst_port", "packets", "bytes", "first_seen", "last_seen"):
        row[name] = int(point.get(name) or 0)
    proto = point.get("proto")
    row["proto"] = proto_name(proto_number(str(proto))) if proto is not None else ""
    row["port"] = min(row["src_port"], row["dst_port"])
    return row


def _top_per_bucket(rows: list[dict], query: HistoryQuery) -> list[dict]:
    if query.top is None:
        return rows
    if query.every is None:
        return rows[: query.top]
    return [row for _, bucket in groupby(rows, key=lambda r: r["time"]) for row in list(bucket)[: query.top]]


def _datetime(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // _NS, dt.timezone.utc) + dt.timedelta(microseconds=ns % _NS // 1000)


def _time_ns(value: Any) -> int:
    if isinstance(value, dt.datetime):
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
    return int(value or 0)
