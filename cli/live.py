"""What ``up`` and ``probe`` show while they run, and the connection table ``top`` shares.

On a terminal: a summary redrawn every interval (totals and the busiest connections).
Otherwise: the probe's log line per interval (``interval N: C connections, P packets, B bytes``).
"""
from __future__ import annotations

import sys
from typing import Sequence, TextIO

from connstats.probe.record import Envelope, FlowRecord, proto_name

from .render import Column, human_bytes, rfc3339, table_text

CLEAR = "\x1b[H\x1b[2J"

# 12+3+5+21+21+6+6 plus 6 spaces = 80 at most, under 80 in practice (numbers are short)
CONNECTION_COLUMNS = (
    Column("who", "IFACE/CTR", width=12),
    Column("dir", "DIR", width=3),
    Column("proto", "PROTO", width=5),
    Column("source", "SOURCE", width=21),
    Column("destination", "DESTINATION", width=21),
    Column("packets", "PKTS", "int"),
    Column("bytes", "BYTES", "bytes"),
)


def endpoint(ip: str, port: int) -> str:
    if not ip:
        return "-"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port else host


def connection_row(r: FlowRecord | dict) -> dict:
    """One table row for a record (or its wire dict); the container's name when known."""
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    proto = get("proto")
    return {
        "who": get("container_name") or get("ifname"),
        "dir": "in" if get("direction") == "ingress" else "out",
        "proto": proto if isinstance(proto, str) else proto_name(proto),
        "source": endpoint(get("src_ip"), get("src_port")),
        "destination": endpoint(get("dst_ip"), get("dst_port")),
        "packets": get("packets"), "bytes": get("bytes"),
    }


def busiest(records: Sequence, limit: int) -> list:
    key = (lambda r: (-r["bytes"], -r["packets"])) if records and isinstance(records[0], dict) \
        else (lambda r: (-r.bytes, -r.packets))
    return sorted(records, key=key)[:limit]


def interval_summary(envelope: Envelope, records: Sequence[FlowRecord], limit: int = 10) -> str:
    packets = sum(r.packets for r in records)
    nbytes = sum(r.bytes for r in records)
    lost = sum(o.packets for o in envelope.overflow)
    head = (f"{rfc3339(envelope.interval_end, digits=0)}  interval {envelope.interval_seq}: "
            f"{len(records)} connections, {packets} packets, {human_bytes(nbytes)}B"
            + (f", {lost} packets over capacity" if lost else ""))
    rows = [connection_row(r) for r in busiest(records, limit)]
    return head + "\n\n" + table_text(rows, CONNECTION_COLUMNS, empty="(no traffic)")


class LiveSummary:
    """An interval listener that redraws the summary on a terminal."""

    def __init__(self, banner: str, out: TextIO | None = None, limit: int = 10) -> None:
        self.banner = banner
        self.out = out or sys.stdout
        self.limit = limit

    def __call__(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        self.out.write(CLEAR + self.banner + "\n" + interval_summary(envelope, records, self.limit))
        self.out.flush()
