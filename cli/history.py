"""``connstats history``: totals from the store, per connection (or port, iface, proto, pod,
workload, process), with ``--quality`` their RTT, retransmits and drops too."""
from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Optional

import typer

from connstats.probe.contract import proto_number
from connstats.probe.runtime.durations import parse_duration
from connstats.sink.history import GROUPS, QUALITY, HistoryQuery, parse_time
from connstats.sink.stores import StoreReader

from .config import Config
from .live import endpoint
from .options import ConfigFile, Format, OutputFormat, Store, load_config
from .render import Column, render

app = typer.Typer()


class GroupBy(str, Enum):
    connection = "connection"
    port = "port"
    iface = "iface"
    proto = "proto"
    pod = "pod"
    workload = "workload"
    process = "process"


class Sort(str, Enum):
    bytes = "bytes"
    rtt = "rtt"  # by rtt_max_us
    retransmits = "retransmits"
    drops = "drops"  # by drop_packets


class Direction(str, Enum):
    ingress = "ingress"
    egress = "egress"


class Verdict(str, Enum):
    allow = "allow"
    deny = "deny"
    none = "none"  # stored as "": the device is not governed by a policy


_KINDS = {"src_port": "int", "dst_port": "int", "port": "int", "packets": "int", "bytes": "int",
          "first_seen": "time", "last_seen": "time", "time": "time", "pid": "int", "peer_pid": "int",
          **{name: "int" for name in QUALITY if name != "drop_reason"}}
# Table columns for the pod and the process, shown only when a row has one.
_WHO = {"pod": Column("pod", "POD", width=24), "workload": Column("workload", "WORKLOAD", width=16),
        "runtime": Column("runtime", "RUNTIME"), "process": Column("process", "PROCESS", width=15)}
_WHO_IN_TABLE = {"connection": ("pod", "process"), "pod": ("workload",)}


# The table's quality columns (--quality or a --sort by one), in place of LAST SEEN.
QUALITY_COLUMNS = [Column("rtt_avg_us", "RTT AVG", "us"), Column("rtt_max_us", "RTT MAX", "us"),
                   Column("retransmits", "RETX", "int"), Column("drop_packets", "DROPS", "int"),
                   Column("drop_reason", "REASON", width=20)]


def data_columns(keys: tuple[str, ...], every: bool, attributes: tuple[str, ...] = (),
                 quality: bool = False) -> list[Column]:
    names = ((("time",) if every else ()) + keys + attributes + ("packets", "bytes", "first_seen", "last_seen")
             + (QUALITY if quality else ()))
    return [Column(n, n, _KINDS.get(n, "text")) for n in names]


def table_columns(keys: tuple[str, ...], every: bool, shown: tuple[str, ...] = (),
                  quality: bool = False) -> list[Column]:
    """Compact for the terminal: endpoints as ip:port, human byte counts; ``shown``: the pod and
    process columns some row fills (a column empty in every row is left out); ``quality``: RTT
    (in ms), retransmits and drops in place of the last seen time."""
    columns = [Column("time", "TIME", "time")] if every else []
    if keys == GROUPS["connection"]:
        columns += [Column("ifname", "IFACE", width=12), Column("dir", "DIR"), Column("proto", "PROTO"),
                    Column("source", "SOURCE", width=21), Column("destination", "DESTINATION", width=21)]
    else:
        columns += [_WHO.get(k) or Column(k, k.upper(), _KINDS.get(k, "text")) for k in keys]
    columns += [_WHO[name] for name in shown]
    columns += [Column("packets", "PKTS", "int"), Column("bytes", "BYTES", "bytes")]
    return columns + (QUALITY_COLUMNS if quality else [Column("last_seen", "LAST SEEN", "time")])


def filled(rows: list[dict], names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` that some row has a value for."""
    return tuple(name for name in names if any(row.get(name) for row in rows))


def query_store(config: Config, store: str | None, query: HistoryQuery,
                influx: tuple[str | None, str | None, str | None] = (None, None, None)) -> list[dict]:
    """Rows of ``query`` from the store of ``--store`` (and ``influx``: url, org, bucket flags;
    with the rest from the environment or [influxdb], like up and sink)."""
    return StoreReader(*config.store(store, *influx)).read(query)


@app.command()
def history(
    since: Annotated[str, typer.Option(metavar="WHEN", help="start: a duration ago (15m, 2h, 1d) or RFC 3339")] = "24h",
    until: Annotated[str, typer.Option(metavar="WHEN", help="end: a duration ago, RFC 3339, or now")] = "now",
    iface: Annotated[Optional[str], typer.Option("--iface", "-i", metavar="NAME")] = None,
    port: Annotated[Optional[int], typer.Option(metavar="PORT", help="either side")] = None,
    proto: Annotated[Optional[str], typer.Option(metavar="PROTO", help="tcp, udp, icmp, icmpv6 or a number")] = None,
    direction: Annotated[Optional[Direction], typer.Option(help="as seen from the container on a veth")] = None,
    host: Annotated[Optional[str], typer.Option("--host", metavar="NAME", help="only this probe's host")] = None,
    container: Annotated[Optional[str], typer.Option(metavar="NAME", help="only this container")] = None,
    verdict: Annotated[Optional[Verdict], typer.Option(help="the policy's verdict; none: ungoverned devices")] = None,
    pod: Annotated[Optional[str], typer.Option(metavar="GLOB", help="only pods matching, e.g. 'shop/web-*'")] = None,
    workload: Annotated[Optional[str], typer.Option(metavar="NAME", help="only this workload")] = None,
    process: Annotated[Optional[str], typer.Option(metavar="NAME", help="only connections of this program")] = None,
    group_by: Annotated[GroupBy, typer.Option("--group-by", help="one row per ...")] = GroupBy.connection,
    every: Annotated[Optional[str], typer.Option(metavar="DURATION", help="time buckets, e.g. 1m")] = None,
    top: Annotated[Optional[int], typer.Option(metavar="N", help="only the N busiest rows (per bucket)")] = None,
    sort: Annotated[Sort, typer.Option(help="busiest by bytes, or the worst by RTT (max), retransmits or drops; "
                                            "all but bytes imply --quality")] = Sort.bytes,
    quality: Annotated[bool, typer.Option("--quality", help="add RTT, retransmits and drops (and their reason)")] = False,
    format: Format = OutputFormat.table, store: Store = None, config: ConfigFile = None,
) -> None:
    """Traffic totals from the store over a time range, busiest first."""
    cfg = load_config(config)
    now = time.time_ns()
    query = HistoryQuery(
        since=parse_time(since, now), until=parse_time(until, now), iface=iface, port=port,
        proto=proto_number(proto.lower()) if proto else None,
        direction=direction.value if direction else None, host=host, container=container,
        verdict=(verdict.value if verdict is not Verdict.none else "") if verdict else None,
        pod=pod, workload=workload, process=process, group_by=group_by.value,
        every=parse_duration(every) if every else None, top=top, quality=quality, sort=sort.value,
    )
    rows = query_store(cfg, store, query)
    every_given = query.every is not None
    if format is not OutputFormat.table:
        render(rows, data_columns(query.keys, every_given, query.attributes, query.with_quality), format)
        return
    shown = filled(rows, _WHO_IN_TABLE.get(query.group_by, ()))
    for row in rows:
        row.update({name: "-" for name in _WHO if row.get(name) == ""})  # no pod, no process known
        if "src_ip" in row:
            row["source"] = endpoint(row["src_ip"], row["src_port"])
            row["destination"] = endpoint(row["dst_ip"], row["dst_port"])
            row["dir"] = {"ingress": "in", "egress": "out"}.get(row["direction"], "-")  # drops: no direction
    render(rows, table_columns(query.keys, every_given, shown, query.with_quality), format,
           empty="no traffic in this range")
