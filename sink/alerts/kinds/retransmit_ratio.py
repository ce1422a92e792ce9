"""``retransmit_ratio``: a group's retransmitted segments per packet over the window above a ratio.

    [[rule]]
    name = "lossy-egress"
    kind = "retransmit_ratio"
    by = ["container_name"]
    where = { proto = "tcp", direction = "egress" }
    window = "1m"                 # [default: 1m]
    above = 0.02                  # retransmits / packets
    min_packets = 1000            # a group with fewer packets in the window never fires [default: 100]

The ratio is the sum of ``retransmits`` over the sum of ``packets`` of the group's records in
the window. Retransmits are counted on the sending socket's side, so ``where = { direction =
"egress" }`` (the packets that side sent) gives the share of sent segments that were sent
again; without it the packets include the ACKs coming back.
"""
from __future__ import annotations

import numpy as np

from ..rule_keys import Option, field_list, positive_duration, positive_int, positive_number, where
from ..table import Table
from ..windows import WindowSums, values_at
from .base import Finding, Kind
from .quality_sums import grouped


class RetransmitRatio(Kind):
    name = "retransmit_ratio"
    options = {
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(positive_duration, 60 * 10**9),
        "above": Option(positive_number, required=True),
        "min_packets": Option(positive_int, 100),
    }

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.window_ns = max(1, rule.option("window"))
        self.retransmits = WindowSums(len(rule.by), self.window_ns)
        self.packets = WindowSums(len(rule.by), self.window_ns)

    def observe(self, table: Table) -> None:
        host = self.host_id(table.host)
        mask = table.mask(self.rule.where)
        self.retransmits.add(table.end_ns, host, *grouped(table, self.rule.by, mask, table.int_column("retransmits")))
        self.packets.add(table.end_ns, host, *grouped(table, self.rule.by, mask, table.metric("packets")))

    def evaluate(self, now_ns: int) -> list[Finding]:
        rows, retransmits, hosts = self.retransmits.totals(now_ns, self.window_ns)
        packets = values_at(rows, *self.packets.totals(now_ns, self.window_ns)[:2])
        ratio = retransmits / np.maximum(packets, 1)
        hit = np.flatnonzero((ratio > self.rule.option("above")) & (packets >= self.rule.option("min_packets")))
        return [self.finding(rows[i], int(retransmits[i]), int(packets[i]), int(hosts[i])) for i in hit]

    def finding(self, row: np.ndarray, retransmits: int, packets: int, host: int) -> Finding:
        labels = self.labels(self.rule.by, row)
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all connections"
        above = self.rule.option("above")
        return Finding(labels, round(retransmits / packets, 6), self.sender(host), above,
                       f"{where}: {retransmits} retransmits in {packets} packets ({retransmits / packets:.2%}) "
                       f"in {self.window_ns / 1e9:g}s, above {above:g}")
