"""``drops``: packets (or bytes) the kernel dropped, per group, over the window above a value.

    [[rule]]
    name = "firewall-drops"
    kind = "drops"
    by = ["host", "ifname", "drop_reason"]
    where = { drop_reason = ["NETFILTER_DROP", "SOCKET_RCVBUFF"] }
    window = "1m"                 # [default: 1m]
    above = 100                   # dropped packets over the window
    metric = "packets"            # packets | bytes [default: packets]

Counts the records' ``drop_packets`` (``drop_bytes``), grouped by any record fields, and the
drops that belong to no record (the envelope's ``drops``, per device and reason). Those have
only ``host``, ``ifname``, ``ifindex`` and ``drop_reason``: another ``by`` field is "" for them,
and a ``where`` on another field leaves them out (it cannot say whose they were).
"""
from __future__ import annotations

import numpy as np

from ..groups import group_sum
from ..rule_keys import Option, field_list, number, one_of, positive_duration, where
from ..table import RowTable, Table
from ..windows import WindowSums
from .base import Finding, Kind
from .quality_sums import grouped, with_condition

ENVELOPE_FIELDS = ("host", "ifname", "ifindex", "drop_reason")  # what a drop of no record has


class Drops(Kind):
    name = "drops"
    options = {
        "metric": Option(one_of("packets", "bytes"), "packets"),
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(positive_duration, 60 * 10**9),
        "above": Option(number, required=True),
    }

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.window_ns = max(1, rule.option("window"))
        self.column = "drop_" + rule.option("metric")
        self.sums = WindowSums(len(rule.by), self.window_ns)
        self.with_envelope = all(name in ENVELOPE_FIELDS for name, _ in rule.where)

    def observe(self, table: Table) -> None:
        values = table.int_column(self.column)
        mask = with_condition(table.mask(self.rule.where), values > 0)
        rows, sums = grouped(table, self.rule.by, mask, values)
        if self.with_envelope:
            drops = self.unmatched(table)
            extra_rows, extra_sums = grouped(drops, self.rule.by, drops.mask(self.rule.where),
                                             drops.int_column(self.column))
            rows, sums = group_sum(np.concatenate([rows, extra_rows]), np.concatenate([sums, extra_sums]))[:2]
        self.sums.add(table.end_ns, self.host_id(table.host), rows, sums)

    def unmatched(self, table: Table) -> RowTable:
        """The envelope's drops of no record (chunk 0's), as rows of a table."""
        counts = getattr(getattr(table, "envelope", None), "drops", ())
        return RowTable(table.host, table.end_ns, {
            "ifname": [c.ifname for c in counts], "ifindex": [c.ifindex for c in counts],
            "drop_reason": [c.reason for c in counts], "drop_packets": [c.packets for c in counts],
            "drop_bytes": [c.bytes for c in counts],
        }, len(counts), self.vocabulary)

    def evaluate(self, now_ns: int) -> list[Finding]:
        rows, sums, hosts = self.sums.totals(now_ns, self.window_ns)
        hit = np.flatnonzero(sums > self.rule.option("above"))
        return [self.finding(rows[i], int(sums[i]), int(hosts[i])) for i in hit]

    def finding(self, row: np.ndarray, value: int, host: int) -> Finding:
        labels = self.labels(self.rule.by, row)
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all devices"
        above = self.rule.option("above")
        return Finding(labels, value, self.sender(host), above,
                       f"{where}: {value} {self.rule.option('metric')} dropped in {self.window_ns / 1e9:g}s, "
                       f"above {above:g}")
