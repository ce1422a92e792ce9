"""History queries over the store: SQL for SQLite, Flux for InfluxDB.

``HistoryQuery`` holds the filters and the grouping; ``build_sql`` and ``build_flux`` are
pure (query in, text and bind parameters out), and user input only ever travels as a
bind parameter, never inside the query text. ``sqlite_history`` reads through a
read-only connection (WAL: it works while the sink writes); ``influx_history`` runs Flux
with ``params=`` and adds rows up in Python (``aggregate``), so both stores give the same rows:

    keys (by --group-by)      connection: ifname, direction, proto, src_ip, src_port, dst_ip, dst_port
                              port: proto, port (the server side: sink/store.py server_port)
                              iface: ifname, direction        proto: proto
                              pod: pod       workload: workload       process: process
                              service (for `policy learn`): ifname, container_id, container_name,
                                pod, direction, proto, src_ip, dst_ip, port, server ("src", "dst",
                                or "" when both ports are equal: sink/store.py server_side)
    attributes (not keys)     connection (and the web map's connection_owner): pod, workload,
                                runtime, process, pid, peer_process,
                                peer_pid; pod: workload, runtime. The greatest value among the
                                row's records ("" or 0 where none was known), so a connection
                                whose process became known later is still one row
    values                    packets, bytes, first_seen, last_seen (ns since the epoch, UTC);
                              service adds connections (distinct client ports)
    with --every              time (start of the bucket, ns)
    with --quality (or a      rtt_min_us (least of the known minimums), rtt_max_us (greatest of the
      --sort other than         maximums), rtt_avg_us (the records' averages weighted by their
      bytes)                    packets, of records with an RTT; floor), retransmits, drop_packets,
                                drop_bytes (summed), drop_reason (the reason with the most dropped
                                packets; ties: the first by name). 0 or "" where none is known

Filters: --pod is a glob (``shop/web-*``: ``*``, ``?``, ``[...]``, case-sensitive,
``fnmatch.fnmatchcase`` on both stores); --workload and --process are exact names.

Rows are sorted by bytes, then packets (within each bucket, buckets in time order), or with
``sort``: ``rtt`` by rtt_max_us (the worst round trip is what a slow connection shows; an
average hides it), ``retransmits``, ``drops`` by drop_packets, each then by bytes and packets;
``top`` keeps the first N (per bucket). SQLite selects intervals that overlap the range;
InfluxDB selects points (one per record, stamped with its interval's start) in the range.

Overflow (packets and bytes that found the flow map full) belongs to a device and
direction, not to a connection: ``--group-by iface`` adds it to the device's totals; the
other groupings show it as its own row whose proto (and addresses, container, pod, workload
and process) read ``(overflow)``, ports 0 and no first/last seen. A filter on port, protocol,
container, verdict, pod, workload or process leaves it out, as it cannot say which
connections overflowed.

Drops of packets that belong to no record (per device and kernel drop reason) come with
``quality`` the same way as overflow, with the same filters leaving them out (and a
direction filter too: they have none): their rows read ``(drops)`` where overflow's read
``(overflow)``, direction "", packets and bytes 0 and drop_packets, drop_bytes and
drop_reason from the drops; ``--group-by iface`` gives each device with drops a row of
direction "".

Sums are exact for any number of rows: SQLite adds the high and low 32 bits of each
counter separately (its own SUM stops at 2**63) and Python joins them.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import sqlite3
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote

from connstats.probe.contract import DIRECTIONS, TIME_MAX, VERDICTS, ConfigError, StoreError, proto_name, proto_number
from connstats.probe.runtime.durations import MAX_DURATION, is_duration, parse_duration
from connstats.sink.store import known_ports, server_port, server_side

if TYPE_CHECKING:  # imports influxdb_client: loaded only for an influxdb store
    from connstats.sink.influx_store import InfluxStore

GROUPS: dict[str, tuple[str, ...]] = {
    "connection": ("ifname", "direction", "proto", "src_ip", "src_port", "dst_ip", "dst_port"),
    "port": ("proto", "port"),
    "iface": ("ifname", "direction"),
    "proto": ("proto",),
    # for the web page: per container (history) and per connection with who counted it (map)
    "container": ("host", "container_name"),
    "connection_owner": ("host", "ifname", "container_name", "direction", "proto", "src_ip", "src_port",
                         "dst_ip", "dst_port", "verdict"),
    "service": ("ifname", "container_id", "container_name", "pod", "direction", "proto", "src_ip", "dst_ip",
                "port", "server"),
    "pod": ("pod",),
    "workload": ("workload",),
    "process": ("process",),
}
# Shown with each row of a grouping without being part of its key: the greatest value among
# the row's records (text compares by code point in SQLite and Python alike).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "connection": ("pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid"),
    "pod": ("workload", "runtime"),
}
ATTRIBUTES["connection_owner"] = ATTRIBUTES["connection"]  # the web page's map: pods and processes
NUMBERS = ("pid", "peer_pid")  # of the attributes: 0 where unknown (the others "")
VALUES = ("packets", "bytes", "first_seen", "last_seen")
QUALITY = ("rtt_min_us", "rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets", "drop_bytes", "drop_reason")
QUALITY_SUMS = ("retransmits", "drop_packets", "drop_bytes")  # counters, summed exactly
SORTS = {"bytes": (), "rtt": ("rtt_max_us",), "retransmits": ("retransmits",), "drops": ("drop_packets",)}
DERIVED = ("port", "server")  # keys computed from the ports, not columns of a record
MEASUREMENT = "connstats_flow"
OVERFLOW_MEASUREMENT = "connstats_overflow"
OVERFLOW = "(overflow)"  # proto and addresses of an overflow row
DROPS = "(drops)"  # proto and addresses of a row of drops that belong to no record
DROP_MEASUREMENT = "connstats_drop"
MAX_TOP = 1_000_000
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
    verdict: str | None = None  # "allow", "deny", or "" (devices no policy governs)
    pod: str | None = None  # a glob: "shop/*"
    workload: str | None = None
    process: str | None = None
    group_by: str = "connection"
    every: int | None = None  # bucket width, ns
    top: int | None = None
    quality: bool = False  # the rows carry RTT, retransmits and drops (``QUALITY``)
    sort: str = "bytes"  # one of SORTS; any but bytes implies quality

    def __post_init__(self) -> None:
        if self.group_by not in GROUPS:
            raise ConfigError(f"--group-by {self.group_by!r} is not one of {', '.join(GROUPS)}")
        if self.sort not in SORTS:
            raise ConfigError(f"--sort {self.sort!r} is not one of {', '.join(SORTS)}")
        if self.with_quality and self.counts_clients:
            raise ConfigError("the service grouping has no quality columns; leave out --quality and --sort")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ConfigError(f"--verdict {self.verdict!r} is not allow, deny or none")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ConfigError(f"--direction {self.direction!r} is not ingress or egress")
        if self.port is not None and not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port} is not between 0 and 65535")
        if self.every is not None and self.every <= 0:
            raise ConfigError("--every must be a positive duration, e.g. 1m")
        if self.every is not None and self.every > MAX_DURATION:
            raise ConfigError("--every is longer than 200 years; use a shorter bucket, e.g. 1d")
        if self.top is not None and not 1 <= self.top <= MAX_TOP:
            raise ConfigError(f"--top {self.top} is not between 1 and {MAX_TOP:,}; use e.g. --top 20")
        for name in ("since", "until"):
            _check_time(f"--{name}", getattr(self, name))
        if self.until <= self.since:
            raise ConfigError("--until must be later than --since")

    @property
    def keys(self) -> tuple[str, ...]:
        return GROUPS[self.group_by]

    @property
    def attributes(self) -> tuple[str, ...]:
        return ATTRIBUTES.get(self.group_by, ())

    @property
    def with_quality(self) -> bool:
        return self.quality or self.sort != "bytes"

    @property
    def with_drops(self) -> bool:
        """Drops of no record come with the quality columns, under overflow's filters and
        without a direction filter (they have no direction)."""
        return self.with_quality and self.with_overflow and self.direction is None

    @property
    def with_overflow(self) -> bool:
        """Overflow has no port, protocol, container, verdict, pod, workload, process or
        address: a filter on one, or the service grouping, leaves it out."""
        return (all(getattr(self, name) is None for name in _NOT_IN_OVERFLOW)
                and not self.counts_clients)

    @property
    def counts_clients(self) -> bool:
        """The service grouping also counts connections: distinct client ports per row."""
        return self.group_by == "service"


_NOT_IN_OVERFLOW = ("port", "proto", "container", "verdict", "pod", "workload", "process")


def pod_matches(pattern: str, pod: str) -> bool:
    """The ``--pod`` glob, the same on both stores (SQLite calls it as ``connstats_glob``)."""
    return fnmatch.fnmatchcase(pod, pattern)


def _check_time(option: str, ns: int) -> None:
    if ns < 0:
        raise ConfigError(f"{option} is before 1970-01-01; use a later time")
    if ns >= TIME_MAX:
        raise ConfigError(f"{option} is after 2200-01-01; use an earlier time")


# -- times ---------------------------------------------------------------------------------

def parse_time(text: str, now_ns: int | None = None) -> int:
    """A duration ago (``15m``) or an RFC 3339 time (``2026-11-22T01:00:00Z``) -> ns."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if text.strip() == "now":
        return now_ns
    if is_duration(text):
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
    "port": "connstats_server_port(src_port, dst_port)",  # registered by sqlite_history
    "container_id": "container_id", "container_name": "container_name", "host": "host", "verdict": "verdict",
    "server": "connstats_server_side(src_port, dst_port)",  # registered by sqlite_history
    **{name: name for name in ATTRIBUTES["connection"]},
}
# Columns that schema 4 (pods, processes) and 5 (quality) added (sink/sqlite_store.py), read as
# their default from an older file (one a sink has not opened since connstats was upgraded).
_SQL_DEFAULTS = {name: "0" if name in NUMBERS else "''" for name in ATTRIBUTES["connection"]}
_SQL_QUALITY_DEFAULTS = {name: "''" if name == "drop_reason" else "0" for name in QUALITY}
_SQL_CLIENT_PORT = "CASE connstats_server_side(src_port, dst_port) WHEN 'src' THEN dst_port ELSE src_port END"
_SQL_OVERFLOW_KEYS = {
    "ifname": "ifname", "direction": "direction", "proto": "'(overflow)'", "src_ip": "'(overflow)'",
    "src_port": "0", "dst_ip": "'(overflow)'", "dst_port": "0", "port": "0",
    "container_id": "''", "container_name": "'(overflow)'", "server": "''", "host": "host", "verdict": "''",
    **_SQL_DEFAULTS, "pod": "'(overflow)'", "workload": "'(overflow)'", "process": "'(overflow)'",
}
_SQL_OVERFLOW_ATTRIBUTES = _SQL_DEFAULTS  # an attribute of an overflow row: none known
_SQL_DROP_KEYS = {name: f"'{DROPS}'" if value == f"'{OVERFLOW}'" else value
                  for name, value in _SQL_OVERFLOW_KEYS.items()} | {"direction": "''"}
# The quality values each part of the union gives, in QUALITY order.
_SQL_DROP_QUALITY = {**_SQL_QUALITY_DEFAULTS, "drop_packets": "packets", "drop_bytes": "bytes",
                     "drop_reason": "reason"}
_SQL_FILTERS = {
    "iface": "ifname = :iface", "port": "(src_port = :port OR dst_port = :port)",
    "proto": "proto = :proto", "direction": "direction = :direction", "host": "host = :host",
    "container": "container_name = :container", "verdict": "verdict = :verdict",
    "pod": "connstats_glob(:pod, {pod})",  # registered by sqlite_history; see _sql_filter
    "workload": "{workload} = :workload", "process": "{process} = :process",  # {column}: _SQL_KEYS
}
_SQL_OVERFLOW_FILTERS = ("iface", "direction", "host")
_LOW = 0xFFFFFFFF
# Per group (and drop reason): the RTT's least known minimum, greatest maximum and the sums
# that weight the averages by packets (TOTAL: a float, exact below 2**53, never an overflow).
_SQL_RTT = ("MIN(NULLIF(rtt_min_us, 0)) AS rtt_min_us, MAX(rtt_max_us) AS rtt_max_us, "
            "TOTAL(CASE WHEN rtt_avg_us > 0 THEN rtt_avg_us * packets END) AS rtt_weighted, "
            "TOTAL(CASE WHEN rtt_avg_us > 0 THEN packets END) AS rtt_weight")


def build_sql(query: HistoryQuery, *, overflow: bool = True, drops: bool = True,
              missing: frozenset[str] = frozenset()) -> tuple[str, dict[str, Any]]:
    """The SELECT and its named parameters; ``overflow=False`` (``drops=False``) for a file
    without the table, ``missing``: columns of ``_SQL_DEFAULTS`` and ``_SQL_QUALITY_DEFAULTS``
    the file does not have yet (read as defaults).

    Each counter comes back as ``<name>_hi`` and ``<name>_lo``, the sums of its high and
    low 32 bits; ``sql_rows`` joins them. With quality, rows are grouped by drop reason too
    and ``sql_rows`` joins a group's reasons. Sorting and ``top`` happen in Python.
    """
    keys = _SQL_KEYS | {name: _SQL_DEFAULTS[name] for name in missing if name in _SQL_DEFAULTS}
    quality = {name: _SQL_QUALITY_DEFAULTS[name] if name in missing else name for name in QUALITY}
    params: dict[str, Any] = {"since": query.since, "until": query.until}
    where = ["interval_end > :since", "interval_start < :until"]
    overflow_where = list(where)
    for name, clause in _SQL_FILTERS.items():
        value = getattr(query, name)
        if value is not None:
            where.append(_sql_filter(name, value, clause).format_map(keys))
            params[name] = value
            if name in _SQL_OVERFLOW_FILTERS:
                overflow_where.append(clause)
    values = "packets, bytes, {}"
    if query.with_quality:
        values += ", {}"
    parts = [_select_part(query, keys, keys, values.format("first_seen, last_seen", _quality(quality)), "flows",
                          where)]
    if overflow and query.with_overflow:
        parts.append(_select_part(query, _SQL_OVERFLOW_KEYS, _SQL_OVERFLOW_ATTRIBUTES,
                                  values.format("NULL, NULL", _quality(_SQL_QUALITY_DEFAULTS)), "overflow",
                                  overflow_where))
    if drops and query.with_drops:
        parts.append(_select_part(query, _SQL_DROP_KEYS, _SQL_OVERFLOW_ATTRIBUTES,
                                  f"0 AS packets, 0 AS bytes, NULL, NULL, {_quality(_SQL_DROP_QUALITY)}", "drops",
                                  overflow_where))
    columns = list(query.keys) + [f"MAX({a}) AS {a}" for a in query.attributes]
    group = list(query.keys)
    if query.every is not None:
        columns.insert(0, "(interval_start / :every) * :every AS time")
        group.insert(0, "time")
        params["every"] = query.every
    counters = ("packets", "bytes", *(QUALITY_SUMS if query.with_quality else ()))
    sums = ", ".join(f"SUM({c} >> 32) AS {c}_hi, SUM({c} & {_LOW}) AS {c}_lo" for c in counters)
    if query.with_quality:
        sums += f", {_SQL_RTT}"
        columns.append("drop_reason")
        group.append("drop_reason")
    if query.counts_clients:
        sums += ", COUNT(DISTINCT client_port) AS connections"
    sql = (f"SELECT {', '.join(columns)}, {sums}, MIN(first_seen) AS first_seen, "
           f"MAX(last_seen) AS last_seen FROM ({' UNION ALL '.join(parts)}) GROUP BY {', '.join(group)}")
    return sql, params


def _quality(columns: dict[str, str]) -> str:
    return ", ".join(f"{columns[name]} AS {name}" for name in QUALITY)


def _sql_filter(name: str, value: Any, clause: str) -> str:
    """``clause``, but a pod glob without a ``[`` class as SQLite's own GLOB (in C: 2.3 times as
    fast over 655,360 rows here): for ``*``, ``?`` and plain characters it matches as ``fnmatchcase`` does; their
    classes differ (``[!a]`` against ``[^a]``), so those go through ``pod_matches``."""
    return "{pod} GLOB :pod" if name == "pod" and "[" not in value else clause


def _select_part(query: HistoryQuery, keys: dict[str, str], attributes: dict[str, str], values: str, table: str,
                 where: list[str]) -> str:
    columns = ["interval_start"] if query.every is not None else []
    columns += [f"{keys[k]} AS {k}" for k in query.keys]
    columns += [f"{attributes[a]} AS {a}" for a in query.attributes]
    if query.counts_clients:
        columns.append(f"{_SQL_CLIENT_PORT} AS client_port")
    return (f"SELECT {', '.join(columns)}, {values} FROM {table} "
            f"WHERE {' AND '.join(where)}")


def sql_rows(rows: Iterable[dict], query: HistoryQuery) -> list[dict]:
    """Rows from ``build_sql``: counters joined from their halves, protocols named, a group's
    drop reasons joined (with quality), sorted, top N."""
    out = []
    for row in rows:
        result = {"time": row["time"]} if query.every is not None else {}
        result |= {k: row[k] for k in (*query.keys, *query.attributes)}
        if isinstance(result.get("proto"), int):
            result["proto"] = proto_name(result["proto"])
        for name in ("packets", "bytes", *(QUALITY_SUMS if query.with_quality else ())):
            result[name] = (row[f"{name}_hi"] << 32) + row[f"{name}_lo"]
        result["first_seen"], result["last_seen"] = row["first_seen"], row["last_seen"]
        if query.counts_clients:
            result["connections"] = row["connections"]
        if query.with_quality:
            result |= {"rtt_min_us": row["rtt_min_us"] or 0, "rtt_max_us": row["rtt_max_us"] or 0,
                       "rtt_weighted": int(row["rtt_weighted"]), "rtt_weight": int(row["rtt_weight"]),
                       "reasons": {row["drop_reason"]: result["drop_packets"]} if row["drop_reason"] else {}}
        out.append(result)
    if query.with_quality:
        out = _joined_reasons(out, query)
    return _sorted_top(out, query)


def _joined_reasons(rows: list[dict], query: HistoryQuery) -> list[dict]:
    """Rows of one group (and bucket) that differ in drop reason only, added up into one."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("time"), *(row[k] for k in query.keys))
        total = groups.get(key)
        if total is None:
            groups[key] = row
            continue
        _add_counts(total, row, query.attributes)
        add_quality(total, row)
    return [finish_quality(row) for row in groups.values()]


def add_quality(total: dict, row: dict) -> None:
    """``row``'s quality partials into ``total``'s: rtt_min_us (0: none), rtt_max_us,
    rtt_weighted and rtt_weight (the sums of rtt_avg_us * packets and of packets over records
    with an RTT), the ``QUALITY_SUMS`` and ``reasons`` (drop packets per reason)."""
    if row["rtt_min_us"]:
        total["rtt_min_us"] = min(total["rtt_min_us"] or row["rtt_min_us"], row["rtt_min_us"])
    total["rtt_max_us"] = max(total["rtt_max_us"], row["rtt_max_us"])
    for name in ("rtt_weighted", "rtt_weight", *QUALITY_SUMS):
        total[name] += row[name]
    for reason, packets in row["reasons"].items():
        total["reasons"][reason] = total["reasons"].get(reason, 0) + packets


def finish_quality(row: dict) -> dict:
    """The partials of ``add_quality`` made into the ``QUALITY`` values of a row."""
    weighted, weight, reasons = row.pop("rtt_weighted"), row.pop("rtt_weight"), row.pop("reasons")
    row["rtt_avg_us"] = weighted // weight if weight else 0
    row["drop_reason"] = min(reasons, key=lambda r: (-reasons[r], r)) if reasons else ""
    return row


def sqlite_history(path: str | Path, query: HistoryQuery, busy_timeout: float = 5.0) -> list[dict]:
    """Run ``build_sql`` on a read-only connection to the sink's SQLite file."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no flow database at {path}; start `connstats up` or `connstats sink`, "
                         "or check --store")
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}; check its permissions") from exc
    try:
        db.row_factory = sqlite3.Row
        db.create_function("connstats_server_port", 2, _sql_server_port, deterministic=True)
        db.create_function("connstats_server_side", 2, _sql_server_side, deterministic=True)
        db.create_function("connstats_glob", 2, pod_matches, deterministic=True)
        sql, params = build_sql(query, overflow=_has_table(db, "overflow"), drops=_has_table(db, "drops"),
                                missing=_missing_columns(db))
        rows = [dict(row) for row in db.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise StoreError(f"{path} holds no flows table; is it a connstats database?") from exc
        raise StoreError(f"querying {path} failed: {exc}; try again") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable SQLite database: {exc}; check --store") from exc
    finally:
        db.close()
    return sql_rows(rows, query)


def _sql_server_port(src_port: int, dst_port: int) -> int:
    return server_port(src_port, dst_port, _KNOWN)[0]


def _sql_server_side(src_port: int, dst_port: int) -> str:
    return server_side(src_port, dst_port, _KNOWN)


_KNOWN = known_ports()


def _missing_columns(db: sqlite3.Connection) -> frozenset[str]:
    """The columns of ``_SQL_DEFAULTS`` and ``_SQL_QUALITY_DEFAULTS`` that the flows table
    lacks (a file of schema 4 or older)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(flows)")}
    return frozenset(name for name in (*_SQL_DEFAULTS, *QUALITY) if present and name not in present)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    """The overflow table comes with schema version 2, drops with 5; older files have none yet."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# -- InfluxDB -----------------------------------------------------------------------------------

# protocols whose points were tagged with their number before they had a name (58, icmpv6)
_TAGGED_BY_NUMBER_BEFORE = frozenset({58})
_FLUX_TAG_FILTERS = {"iface": "ifname", "direction": "direction", "proto": "proto", "host": "host",
                     "workload": "workload", "process": "process"}
_FLUX_MAYBE_ABSENT = ("workload", "process")  # tags left out when empty: "" is a tag that does not exist
_FLUX_COLUMNS = ("_time", "_measurement", "host", "ifname", "direction", "proto", "src_ip", "src_port", "dst_ip",
                 "dst_port", "packets", "bytes", "first_seen", "last_seen")
_FLUX_CONTAINER_COLUMNS = ("container_id", "container_name")  # kept only when a grouping needs them
_FLUX_OPTIONAL_COLUMNS = (*_FLUX_CONTAINER_COLUMNS, "verdict", *ATTRIBUTES["connection"])  # kept when needed


def build_flux(query: HistoryQuery, bucket: str) -> tuple[str, dict[str, Any]]:
    """Flux that selects, filters and pivots points (one row per record or overflow count),
    and its ``params``.

    influxdb-client sends each ``params`` key as a top-level option of the query, so the
    Flux names them directly; the ``p_`` prefix keeps them clear of Flux's own names.
    Overflow points have no proto tag and no port or container field, so a filter on one
    of those leaves them out, as in SQL. The ``--pod`` glob is matched by ``aggregate`` (a
    bind parameter cannot be a regular expression), on the kept ``pod`` column.
    """
    params: dict[str, Any] = {
        "p_bucket": bucket, "p_measurement": MEASUREMENT,
        "p_start": _datetime(query.since), "p_stop": _datetime(query.until),
    }
    measurements = "r._measurement == p_measurement"
    if query.with_overflow:
        measurements += " or r._measurement == p_overflow"
        params["p_overflow"] = OVERFLOW_MEASUREMENT
    if query.with_drops:
        measurements += " or r._measurement == p_drops"
        params["p_drops"] = DROP_MEASUREMENT
    lines = ["from(bucket: p_bucket)",
             "  |> range(start: p_start, stop: p_stop)",
             f"  |> filter(fn: (r) => {measurements})"]
    for name, tag in _FLUX_TAG_FILTERS.items():
        value = getattr(query, name)
        if value == "" and name in _FLUX_MAYBE_ABSENT:
            lines.append(f"  |> filter(fn: (r) => not exists r.{tag})")
        elif value is not None:
            lines.append(f"  |> filter(fn: (r) => r.{tag} == p_{name})")
            params[f"p_{name}"] = proto_name(value) if name == "proto" else value
            if name == "proto" and value in _TAGGED_BY_NUMBER_BEFORE:
                lines[-1] = f"  |> filter(fn: (r) => r.{tag} == p_{name} or r.{tag} == p_{name}_number)"
                params[f"p_{name}_number"] = str(value)
    lines.append('  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    if query.port is not None:
        lines.append("  |> filter(fn: (r) => r.src_port == p_port or r.dst_port == p_port)")
        params["p_port"] = query.port
    if query.container is not None:
        lines.append("  |> filter(fn: (r) => r.container_name == p_container)")
        params["p_container"] = query.container
    if query.verdict:  # a tag; an empty verdict is no tag at all
        lines.insert(3, "  |> filter(fn: (r) => r.verdict == p_verdict)")
        params["p_verdict"] = query.verdict
    elif query.verdict == "":
        lines.insert(3, "  |> filter(fn: (r) => not exists r.verdict)")
    wanted = {*query.keys, *query.attributes, *(("pod",) if query.pod is not None else ())}
    keep = (*_FLUX_COLUMNS, *(c for c in _FLUX_OPTIONAL_COLUMNS if c in wanted),
            *(QUALITY if query.with_quality else ()))
    lines.append("  |> keep(columns: [" + ", ".join(f'"{c}"' for c in keep) + "])")
    return "\n".join(lines), params


async def influx_history(store: InfluxStore, query: HistoryQuery) -> list[dict]:
    """Run ``build_flux`` on an ``InfluxStore`` and add the rows up like the SQL does."""
    flux, params = build_flux(query, store.config.bucket)
    return aggregate(await store.query(flux, params), query)


def aggregate(points: Iterable[dict], query: HistoryQuery) -> list[dict]:
    """Group per-record rows (from Flux) by the query's keys (and bucket); sorted, top N.
    Python ints: the sums are exact however large."""
    groups: dict[tuple, dict] = {}
    clients: dict[tuple, set[int]] = {}  # the service grouping's client ports per row
    for point in points:
        measurement = point.get("_measurement")
        if measurement == OVERFLOW_MEASUREMENT:
            if not query.with_overflow:
                continue
            row = _overflow_row(point, query.attributes)
        elif measurement == DROP_MEASUREMENT:
            if not query.with_drops:
                continue
            row = _drop_row(point, query.attributes)
        else:
            row = _point_row(point)
        if query.with_quality:
            _quality_partials(row, point, measurement == MEASUREMENT)
        if query.pod is not None and not pod_matches(query.pod, row["pod"]):
            continue
        key = tuple(row[k] for k in query.keys)
        if query.every is not None:
            key = (_time_ns(point.get("_time")) // query.every * query.every, *key)
        if query.counts_clients:
            clients.setdefault(key, set()).add(row["dst_port"] if row["server"] == "src" else row["src_port"])
        total = groups.get(key)
        if total is None:
            groups[key] = row | ({"time": key[0]} if query.every is not None else {})
            continue
        _add_counts(total, row, query.attributes)
        if query.with_quality:
            add_quality(total, row)
    values = (*VALUES, *(_PARTIALS if query.with_quality else ()))
    rows = [{**({"time": r["time"]} if "time" in r else {}), **{k: r[k] for k in (*query.keys, *query.attributes)},
             **{v: r[v] for v in values}} for r in groups.values()]
    if query.with_quality:
        rows = [finish_quality(row) for row in rows]
    if query.counts_clients:
        for key, row in zip(groups, rows, strict=True):
            row["connections"] = len(clients[key])
    return _sorted_top(rows, query)


def _point_row(point: dict) -> dict:
    row = {k: point.get(k) for k in ("ifname", "direction", "src_ip", "dst_ip")}
    row["host"] = point.get("host") or ""
    numbers = {name: int(point.get(name) or 0)
               for name in ("src_port", "dst_port", "packets", "bytes", "first_seen", "last_seen")}
    row.update(numbers)
    proto = point.get("proto")
    row["proto"] = proto_name(proto_number(str(proto))) if proto is not None else ""
    row["port"] = server_port(numbers["src_port"], numbers["dst_port"], _KNOWN)[0]
    row["server"] = server_side(numbers["src_port"], numbers["dst_port"], _KNOWN)
    row["container_id"], row["container_name"] = (point.get(k) or "" for k in _FLUX_CONTAINER_COLUMNS)
    row["verdict"] = point.get("verdict") or ""
    for name in ATTRIBUTES["connection"]:  # tags and fields left out when empty
        row[name] = int(point.get(name) or 0) if name in NUMBERS else point.get(name) or ""
    return row


_PARTIALS = ("rtt_min_us", "rtt_max_us", "rtt_weighted", "rtt_weight", *QUALITY_SUMS, "reasons")


def _quality_partials(row: dict, point: dict, flow: bool) -> None:
    """What ``add_quality`` adds up, from a point (fields left out when 0, the reason a tag);
    a drop point's packets and bytes are its drop_packets and drop_bytes."""
    numbers = {name: int(point.get(name) or 0) for name in QUALITY if name != "drop_reason"}
    if not flow:
        numbers = dict.fromkeys(numbers, 0)
        if point.get("_measurement") == DROP_MEASUREMENT:
            numbers["drop_packets"], numbers["drop_bytes"] = int(point.get("packets") or 0), int(point.get("bytes") or 0)
    with_rtt = numbers["rtt_avg_us"] > 0
    row |= {"rtt_min_us": numbers["rtt_min_us"], "rtt_max_us": numbers["rtt_max_us"],
            "rtt_weighted": numbers["rtt_avg_us"] * row["packets"] if with_rtt else 0,
            "rtt_weight": row["packets"] if with_rtt else 0, **{name: numbers[name] for name in QUALITY_SUMS}}
    reason = point.get("drop_reason") or ""
    row["reasons"] = {reason: numbers["drop_packets"]} if reason else {}


def _drop_row(point: dict, attributes: tuple[str, ...]) -> dict:
    """Keys of a row of drops of no record read ``(drops)``, its direction ""; no packets or
    bytes counted (the drops are in its quality values)."""
    row = _overflow_row(point, attributes)
    return row | {name: DROPS for name, value in row.items() if value == OVERFLOW} | {
        "direction": "", "packets": 0, "bytes": 0}


def _overflow_row(point: dict, attributes: tuple[str, ...]) -> dict:
    """Keys of an overflow row read ``(overflow)``; its ``attributes``, none known, "" or 0."""
    return {"ifname": point.get("ifname") or "", "direction": point.get("direction"), "proto": OVERFLOW,
            "host": point.get("host") or "", "container_name": OVERFLOW, "verdict": "",
            **{name: 0 if name in NUMBERS else "" for name in ATTRIBUTES["connection"]},
            **{name: OVERFLOW for name in ("pod", "workload", "process") if name not in attributes},
            "src_ip": OVERFLOW, "dst_ip": OVERFLOW, "src_port": 0, "dst_port": 0, "port": 0,
            "packets": int(point.get("packets") or 0), "bytes": int(point.get("bytes") or 0),
            "first_seen": None, "last_seen": None}


def _add_counts(total: dict, row: dict, attributes: tuple[str, ...]) -> None:
    """``row``'s packets, bytes, seen times and attributes into ``total``'s (same group)."""
    total["packets"] += row["packets"]
    total["bytes"] += row["bytes"]
    total["first_seen"] = _least(total["first_seen"], row["first_seen"])
    total["last_seen"] = _greatest(total["last_seen"], row["last_seen"])
    for name in attributes:
        total[name] = max(total[name], row[name])


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _sorted_top(rows: list[dict], query: HistoryQuery) -> list[dict]:
    """Buckets in time order; within each, by the sort's value (``SORTS``), then bytes, then
    packets (most first), then keys."""
    first = SORTS[query.sort]
    rows.sort(key=lambda r: (r.get("time", 0), *(-r[name] for name in first), -r["bytes"], -r["packets"],
                             *map(str, (r[k] for k in query.keys))))
    return _top_per_bucket(rows, query)


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
