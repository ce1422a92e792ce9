"""The API's parameters and the shapes of its answers, as pure functions.

Query strings become ``LiveFilter``s and ``HistoryQuery``s (the query code of ``connstats
history``, sink/history.py); store rows become the history chart's series, its range
fitted to the data when asked (the map's nodes and edges: graph.py). Every bad parameter
raises ``ConfigError``, which the API answers with 400.

Times leave the API as milliseconds since the epoch (JavaScript numbers are exact there);
counters are exact up to 2**53 in a browser.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

from connstats.probe.contract import ConfigError, MessageError, proto_number
from connstats.probe.runtime.durations import parse_duration
from connstats.sink.history import HistoryQuery, parse_time

from .live import MAX_LIMIT, LiveFilter

_MS = 1_000_000
_SECOND = 1_000_000_000
NICE_BUCKETS = ("1s", "5s", "10s", "30s", "1m", "5m", "15m", "1h", "6h", "1d", "7d")
MAX_POINTS = 240
HISTORY_GROUPS = ("container", "pod", "iface", "port")
MAX_SERIES = 50


# -- parameters ---------------------------------------------------------------------------------


def _only(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r}; use {', '.join(allowed)}")


def _int(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ConfigError(f"{name}={text!r} is not a whole number from {low} to {high}")
    return int(text)


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > 256 or any(ord(ch) < 32 for ch in value):
        raise ConfigError(f"{name} is longer than 256 characters or holds control characters")
    return value


def _proto(params: Mapping[str, str]) -> int | None:
    text = _text(params, "proto")
    try:
        return None if text is None else proto_number(text.lower())
    except MessageError as exc:
        raise ConfigError(f"proto: {exc}") from None


LIVE_PARAMS = ("host", "iface", "container", "proto", "port", "limit", "token")


def live_filter(params: Mapping[str, str]) -> LiveFilter:
    _only(params, LIVE_PARAMS)
    return LiveFilter(host=_text(params, "host"), iface=_text(params, "iface"),
                      container=_text(params, "container"), proto=_proto(params),
                      port=_int(params, "port", 0, 65535), limit=_int(params, "limit", 1, MAX_LIMIT) or 50)


RANGE_PARAMS = ("since", "until", "host", "iface", "container", "proto", "port", "direction", "verdict", "token")
VERDICT_WORDS = {"allow": "allow", "deny": "deny", "none": ""}  # none: devices no policy governs


def _range_query(params: Mapping[str, str], group_by: str, every: int | None = None) -> HistoryQuery:
    now = time.time_ns()
    return HistoryQuery(
        since=parse_time(params.get("since") or "1h", now), until=parse_time(params.get("until") or "now", now),
        iface=_text(params, "iface"), port=_int(params, "port", 0, 65535), proto=_proto(params),
        direction=_text(params, "direction"), host=_text(params, "host"),
        container=_text(params, "container"), verdict=_verdict(params), group_by=group_by, every=every,
    )


def _verdict(params: Mapping[str, str]) -> str | None:
    text = params.get("verdict")
    if not text:
        return None
    if text not in VERDICT_WORDS:
        raise ConfigError(f"verdict={text[:40]!r} is not allow, deny or none")
    return VERDICT_WORDS[text]


def map_query(params: Mapping[str, str]) -> HistoryQuery:
    _only(params, RANGE_PARAMS)
    return _range_query(params, "connection_owner")


@dataclass(frozen=True)
class Fit:
    """Narrow a chart's range to the span of the data in it (``fit_to_data``); ``every`` is
    the bucket asked for, or None to choose one for the fitted range."""

    every: int | None = None


FIT_MIN_NS = 30 * _SECOND  # a fitted range is never shorter
FIT_READ_POINTS = 3600  # a fitted chart reads at most this many buckets per series: 1 s over an hour


def history_query(params: Mapping[str, str]) -> tuple[HistoryQuery, int, Fit | None]:
    """The query (``every`` chosen for about ``MAX_POINTS`` points if not given), how many
    series to keep, and with ``fit=1`` the ``Fit`` to apply to its rows: the query then reads
    in fine buckets (1 s over an hour; the asked ``every`` if given), and ``fit_to_data``
    picks the range and adds them up into the chart's."""
    _only(params, (*RANGE_PARAMS, "group_by", "every", "series", "fit"))
    group_by = params.get("group_by") or "container"
    if group_by not in HISTORY_GROUPS:
        raise ConfigError(f"group_by={group_by!r} is not one of {', '.join(HISTORY_GROUPS)}")
    query = _range_query(params, group_by)
    asked = parse_duration(params["every"]) if params.get("every") else None
    span = query.until - query.since
    if asked is not None and span // asked > 10 * MAX_POINTS:
        raise ConfigError(f"every={params.get('every')} makes more than {10 * MAX_POINTS} points; use a wider bucket")
    series = _int(params, "series", 1, MAX_SERIES) or 8
    if _fit(params):
        return replace(query, every=asked or _bucket_for(span, points=FIT_READ_POINTS)), series, Fit(asked)
    return replace(query, every=asked or _bucket_for(span)), series, None


def _fit(params: Mapping[str, str]) -> bool:
    text = params.get("fit") or "0"
    if text not in ("0", "1"):
        raise ConfigError(f"fit={text[:40]!r} is not 1 (fit the range to the data) or 0")
    return text == "1"


def _bucket_for(span_ns: int, at_least: int = 0, points: int = MAX_POINTS) -> int:
    """The first of ``NICE_BUCKETS`` (each a multiple of the one before) that cuts the span
    into at most ``points`` and is at least ``at_least`` long."""
    for text in NICE_BUCKETS:
        bucket = parse_duration(text)
        if span_ns // bucket <= points and bucket >= at_least:
            return bucket
    return parse_duration(NICE_BUCKETS[-1])


def fit_to_data(query: HistoryQuery, rows: list[dict], fit: Fit) -> tuple[HistoryQuery, list[dict]]:
    """The chart's range narrowed to its data, and the rows (in the fine buckets of the
    query ``history_query`` made) added up into the range's buckets.

    The range runs from the bucket of the first point to the end of the last one's (or the
    last packet seen, if later; never past the asked end), at least ``FIT_MIN_NS`` long (reaching back before the data when it is
    shorter, but not before the asked start); it never starts before the asked range but
    for an interval that began before it. The buckets are about ``MAX_POINTS`` over the
    range, never shorter than the ones read, nor than the step between one series'
    consecutive points (the probe's interval): a bucket shorter than the interval would
    leave every other bucket empty and break the lines. Without data the asked range stays."""
    if not rows:
        return replace(query, every=fit.every or _bucket_for(query.until - query.since)), rows
    times = [r["time"] for r in rows]
    first = min(times)
    read = query.every or _SECOND  # the buckets the rows come in
    until = min(query.until, max([max(times) + read, *(r["last_seen"] or 0 for r in rows)]))
    every = fit.every or _bucket_for(max(until - first, FIT_MIN_NS), at_least=max(read, _step(rows, query.keys)))
    since = max(min(first, until - FIT_MIN_NS), min(first, query.since)) // every * every
    fitted = replace(query, since=since, until=until, every=every)
    return fitted, _rebucket(rows, fitted)


def _step(rows: list[dict], keys: tuple[str, ...]) -> int:
    """The largest, over the series, of the shortest step between two of its points."""
    times: dict[tuple, set[int]] = {}
    for row in rows:
        times.setdefault(tuple(row[k] for k in keys), set()).add(row["time"])
    steps = [min(b - a for a, b in zip(ordered, ordered[1:], strict=False))
             for ordered in (sorted(found) for found in times.values()) if len(ordered) > 1]
    return max(steps, default=0)


def _rebucket(rows: list[dict], query: HistoryQuery) -> list[dict]:
    if query.every is None:
        raise ValueError("_rebucket takes a query in buckets")
    every = query.every
    out: dict[tuple, dict] = {}
    for row in rows:
        time_ns = row["time"] // every * every
        key = (time_ns, *(row[k] for k in query.keys))
        total = out.get(key)
        if total is None:
            out[key] = {**row, "time": time_ns}
            continue
        total["packets"] += row["packets"]
        total["bytes"] += row["bytes"]
        total["first_seen"] = min(filter(None, (total["first_seen"], row["first_seen"])), default=None)
        total["last_seen"] = max(filter(None, (total["last_seen"], row["last_seen"])), default=None)
    return list(out.values())


def learn_params(params: Mapping[str, str], default_host: str):
    """The ``HistoryQuery`` of a learn preview (``connstats policy learn``'s), and its peer settings."""
    from connstats.sink.policy_learn import PeerSettings, learn_query

    _only(params, ("since", "until", "host", "peers", "token"))
    now = time.time_ns()
    query = learn_query(parse_time(params.get("since") or "24h", now), parse_time(params.get("until") or "now", now),
                        _text(params, "host") or default_host)
    return query, PeerSettings(params.get("peers") or "world")


def policy_params(params: Mapping[str, str], default_host: str) -> tuple[str, int]:
    """Whose policy (``host``, default this host) and how many recent violations (``limit``)."""
    _only(params, ("host", "limit", "token"))
    return _text(params, "host") or default_host, _int(params, "limit", 1, 500) or 100


VIOLATION_PARAMS = ("since", "until", "host", "limit", "token")
MAX_VIOLATIONS = 10_000


def violations_query(params: Mapping[str, str], default_host: str) -> tuple[HistoryQuery, int]:
    """The denied connections of a range (``connstats history --verdict deny``'s query, per
    connection, of ``host``, default this host) and how many rows to send (``limit``)."""
    _only(params, VIOLATION_PARAMS)
    now = time.time_ns()
    query = HistoryQuery(since=parse_time(params.get("since") or "1h", now),
                         until=parse_time(params.get("until") or "now", now),
                         host=_text(params, "host") or default_host, verdict="deny", group_by="connection")
    return query, _int(params, "limit", 1, MAX_VIOLATIONS) or 500


def build_violations(rows: list[dict], query: HistoryQuery, limit: int) -> dict[str, Any]:
    """The store's denied connections, busiest first; totals cover every row, ``rows`` the first ``limit``."""
    return {
        "host": query.host, "since_ms": query.since // _MS, "until_ms": query.until // _MS,
        "connections": len(rows), "packets": sum(r["packets"] for r in rows), "bytes": sum(r["bytes"] for r in rows),
        "rows": [{**{k: r[k] for k in query.keys}, "packets": r["packets"], "bytes": r["bytes"],
                  "first_seen_ms": (r["first_seen"] or 0) // _MS, "last_seen_ms": (r["last_seen"] or 0) // _MS}
                 for r in rows[:limit]],
    }


# -- history ----------------------------------------------------------------------------------


def series_label(row: dict, group_by: str) -> str:
    if group_by == "container":
        return row["container_name"] or f"(no container, {row['host']})"
    if group_by == "pod":
        return row["pod"] or "(no pod)"
    if group_by == "iface":
        return f"{row['ifname']} {row['direction']}"
    return f"{row['proto']}/{row['port']}"


def build_series(rows: list[dict], query: HistoryQuery, keep: int) -> dict[str, Any]:
    """The ``keep`` busiest series (by bytes over the range), each the store's points in time order."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(series_label(row, query.group_by), []).append(row)
    if query.every is None:
        raise ValueError("build_series takes a query in buckets: history_query's, which sets every")
    busiest = sorted(by_label, key=lambda k: (-sum(r["bytes"] for r in by_label[k]), k))[:keep]
    return {
        "group_by": query.group_by, "every_ms": query.every // _MS,
        "since_ms": query.since // _MS, "until_ms": query.until // _MS,
        "series": [{"key": label, "points": [{"time_ms": r["time"] // _MS, "bytes": r["bytes"],
                                               "packets": r["packets"]}
                                              for r in sorted(by_label[label], key=lambda r: r["time"])]}
                   for label in busiest],
    }
