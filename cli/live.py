"""What ``up`` and ``probe`` show while they run, and the connection table ``top`` shares.

On a terminal: a summary redrawn every interval (totals and the busiest connections).
Otherwise: the probe's log line per interval (``interval N: C connections, P packets, B bytes``).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, TextIO

import numpy as np

from connstats.probe.contract import FlowBatch, FlowRecord, proto_name

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
# Shown only when some row has one: a table of a host without pods, processes or a policy
# stays as narrow as before.
OPTIONAL_COLUMNS = (
    Column("pod", "POD", width=24),  # the pod's <namespace>/<name>
    Column("process", "PROCESS", width=15),  # the program at the device's end
    Column("verdict", "POLICY"),  # the device is governed
    Column("rtt_max_us", "RTT", "us"),  # the greatest smoothed RTT of the interval, in ms
    Column("retransmits", "RETX", "int"),  # retransmitted segments
    Column("drop_packets", "DROPS", "int"),  # packets the kernel dropped
)


def connection_columns(rows: list[dict]) -> tuple[Column, ...]:
    """The connection table's columns: the pod, the process, the policy's verdict, the RTT,
    retransmits and drops too when any row has one."""
    return CONNECTION_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(row[c.key] for row in rows))


def endpoint(ip: str, port: int) -> str:
    if not ip:
        return "-"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port else host


def connection_row(r: FlowRecord | dict[str, Any]) -> dict[str, Any]:
    """One table row for a record (or its wire dict); the container's name when known, the pod
    and process when known ("" otherwise; the wire dict leaves them out then)."""
    # a field's value: the wire dict's is JSON, as the probe's API sent it (`stats`)
    get: Callable[[str], Any] = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    proto = get("proto")
    return {
        "who": get("container_name") or get("ifname"),
        "dir": "in" if get("direction") == "ingress" else "out",
        "proto": proto if isinstance(proto, str) else proto_name(proto),
        "source": endpoint(get("src_ip"), get("src_port")),
        "destination": endpoint(get("dst_ip"), get("dst_port")),
        "packets": get("packets"), "bytes": get("bytes"), "verdict": get("verdict") or "",
        "pod": get("pod") or "", "process": get("process") or "",
        "rtt_max_us": get("rtt_max_us") or 0, "retransmits": get("retransmits") or 0,
        "drop_packets": get("drop_packets") or 0,
    }


def interval_summary(batch: FlowBatch, limit: int = 10) -> str:
    """Totals and the ``limit`` busiest connections, column-wise: only those become records."""
    envelope = batch.envelope
    packets = int(np.sum(batch.columns.packets, dtype=np.uint64)) if len(batch) else 0
    nbytes = int(np.sum(batch.columns.bytes, dtype=np.uint64)) if len(batch) else 0
    lost = sum(o.packets for o in envelope.overflow)
    dropped = sum(d.packets for d in envelope.drops)
    head = (f"{rfc3339(envelope.interval_end, digits=0)}  interval {envelope.interval_seq}: "
            f"{len(batch)} connections, {packets} packets, {human_bytes(nbytes)}B"
            + (f", {lost} packets over capacity" if lost else "")
            + (f", {dropped} dropped outside connections" if dropped else ""))
    rows = [connection_row(r) for r in batch.busiest(limit).records()]
    return head + "\n\n" + table_text(rows, connection_columns(rows), empty="(no traffic)")


class LiveSummary:
    """An interval listener that redraws the summary on a terminal."""

    def __init__(self, banner: str, out: TextIO | None = None, limit: int = 10) -> None:
        self.banner = banner
        self.out = out or sys.stdout
        self.limit = limit

    def __call__(self, batch: FlowBatch) -> None:
        self.out.write(CLEAR + self.banner + "\n" + interval_summary(batch, self.limit))
        self.out.flush()
