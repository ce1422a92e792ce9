"""The API's parameters and the shapes of its answers, as pure functions.

Query strings become ``LiveFilter``s and ``HistoryQuery``s (the query code of ``connstats
history``, sink/history.py); store rows become the map's nodes and edges and the history
chart's series. Every bad parameter raises ``ConfigError``, which the API answers with 400.

Times leave the API as milliseconds since the epoch (JavaScript numbers are exact there);
counters are exact up to 2**53 in a browser.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from connstats.probe.contract import ConfigError, MessageError, proto_number
from connstats.probe.runtime.durations import parse_duration
from connstats.sink.history import OVERFLOW, HistoryQuery, parse_time

from .live import MAX_LIMIT, LiveFilter

_MS = 1_000_000
NICE_BUCKETS = ("1s", "5s", "10s", "30s", "1m", "5m", "15m", "1h", "6h", "1d", "7d")
MAX_POINTS = 240
HISTORY_GROUPS = ("container", "iface", "port")
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


def history_query(params: Mapping[str, str]) -> tuple[HistoryQuery, int]:
    """The query (``every`` chosen for about ``MAX_POINTS`` points if not given) and how
    many series to keep."""
    _only(params, (*RANGE_PARAMS, "group_by", "every", "series"))
    group_by = params.get("group_by") or "container"
    if group_by not in HISTORY_GROUPS:
        raise ConfigError(f"group_by={group_by!r} is not one of {', '.join(HISTORY_GROUPS)}")
    query = _range_query(params, group_by)
    every = parse_duration(params["every"]) if params.get("every") else _bucket_for(query.until - query.since)
    if (query.until - query.since) // every > 10 * MAX_POINTS:
        raise ConfigError(f"every={params.get('every')} makes more than {10 * MAX_POINTS} points; use a wider bucket")
    series = _int(params, "series", 1, MAX_SERIES) or 8
    return HistoryQuery(**{**query.__dict__, "every": every}), series


def _bucket_for(span_ns: int) -> int:
    for text in NICE_BUCKETS:
        if span_ns // parse_duration(text) <= MAX_POINTS:
            return parse_duration(text)
    return parse_duration(NICE_BUCKETS[-1])


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


# -- the map ----------------------------------------------------------------------------------


def _local_node(row: dict) -> tuple[str, str, str]:
    """(id, kind, label) of the container or device that counted ``row``."""
    if row["container_name"] and row["container_name"] != OVERFLOW:
        return f"container:{row['host']}/{row['container_name']}", "container", row["container_name"]
    return f"device:{row['host']}/{row['ifname']}", "device", f"{row['ifname']} ({row['host']})"


def _ends(row: dict) -> tuple[str, str]:
    """(local address, remote address): directions are as seen from the device's owner."""
    if row["direction"] == "egress":
        return row["src_ip"], row["dst_ip"]
    return row["dst_ip"], row["src_ip"]


def build_map(rows: list[dict]) -> dict[str, Any]:
    """Nodes (containers, devices, outside peers) and edges (sender -> receiver) from rows
    grouped by ``connection_owner``.

    An address is a node's if that node sent from it (egress source), else if it received
    at it (ingress destination) from somebody else; any other address is an outside peer.
    (A bridge in hairpin mode floods a frame back to its sender, whose ingress then shows
    the receiver's address as its own end: that must not make the address the sender's.) A connection seen on both ends' devices is counted once,
    on the sender's egress: an ingress row whose sender is a known node is left out.
    An edge's ``verdict`` is ``deny`` if any of its connections was denied (by the policy,
    in monitor or protect mode), else ``allow`` if any was allowed, else empty."""
    rows = [r for r in rows if r["src_ip"] != OVERFLOW]
    nodes: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["direction"] != "egress"):  # egress first: see below
        node_id, kind, label = _local_node(row)
        nodes.setdefault(node_id, {"id": node_id, "kind": kind, "label": label, "bytes": 0, "packets": 0})
        if row["direction"] == "egress" or owner.get(row["src_ip"]) != node_id:  # not its own frame back
            owner.setdefault(_ends(row)[0], node_id)
    edges: dict[tuple[str, str], dict] = {}
    connections = []
    for row in rows:
        remote = _ends(row)[1]
        if row["direction"] == "ingress" and remote in owner:
            continue  # the sender's device counted it as egress
        here, there = _local_node(row)[0], owner.get(remote) or _peer(nodes, remote)
        sender, receiver = (here, there) if row["direction"] == "egress" else (there, here)
        edge = edges.setdefault((sender, receiver), {"source": sender, "target": receiver, "bytes": 0,
                                                     "packets": 0, "connections": 0, "verdict": ""})
        edge["verdict"] = _worse(edge["verdict"], row.get("verdict") or "")
        edge["bytes"] += row["bytes"]
        edge["packets"] += row["packets"]
        edge["connections"] += 1
        for node_id in {sender, receiver}:
            nodes[node_id]["bytes"] += row["bytes"]
            nodes[node_id]["packets"] += row["packets"]
        connections.append([sender, receiver, row["proto"], row["src_ip"], row["src_port"], row["dst_ip"],
                            row["dst_port"], row["packets"], row["bytes"], row.get("verdict") or ""])
    return {"nodes": sorted(nodes.values(), key=lambda n: (n["kind"], n["id"])),
            "edges": sorted(edges.values(), key=lambda e: (-e["bytes"], e["source"], e["target"])),
            "connection_fields": ["source", "target", "proto", "src_ip", "src_port", "dst_ip", "dst_port",
                                  "packets", "bytes", "verdict"],
            "connections": connections}


_VERDICT_RANK = {"": 0, "allow": 1, "deny": 2}


def _worse(a: str, b: str) -> str:
    """An edge's verdict: deny if any of its connections was denied, else allow if any was
    allowed, else "" (no policy governs it)."""
    return max(a, b, key=lambda v: _VERDICT_RANK.get(v, 0))


def _peer(nodes: dict[str, dict], address: str) -> str:
    node_id = f"peer:{address}"
    nodes.setdefault(node_id, {"id": node_id, "kind": "peer", "label": address, "bytes": 0, "packets": 0})
    return node_id


# -- history ----------------------------------------------------------------------------------


def series_label(row: dict, group_by: str) -> str:
    if group_by == "container":
        return row["container_name"] or f"(no container, {row['host']})"
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
