"""``rtt``: a group's round-trip time over the window above a threshold, in milliseconds.

    [[rule]]
    name = "slow-db"
    kind = "rtt"
    by = ["container_name", "dst_port"]
    where = { dst_port = 5432 }
    window = "1m"                 # [default: 1m]
    above = 100                   # ms
    statistic = "max"             # max | avg [default: max]

``max``: the greatest ``rtt_max_us`` of the group's records in the window (the kernel's
smoothed RTT, already an average over the ACKs of an interval, so one late ACK does not raise
it; a connection that is slow for one interval does). ``avg``: the records' ``rtt_avg_us``
weighted by their packets. Records without an RTT (UDP, a probe without the quality hooks)
are not looked at: a group none of whose records has one has no value and never fires.
"""
from __future__ import annotations

import numpy as np

from ..groups import group_max
from ..rule_keys import Option, field_list, one_of, positive_duration, positive_number, where
from ..table import Table
from ..windows import WindowSums, values_at
from .base import Finding, Kind
from .quality_sums import grouped, ms, with_condition


class Rtt(Kind):
    name = "rtt"
    options = {
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(positive_duration, 60 * 10**9),
        "above": Option(positive_number, required=True),
        "statistic": Option(one_of("max", "avg"), "max"),
    }

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.window_ns = max(1, rule.option("window"))
        self.above_us = rule.option("above") * 1000
        self.average = rule.option("statistic") == "avg"
        width = len(rule.by)
        if self.average:  # sum(rtt_avg_us * packets) and sum(packets), of records with an RTT
            self.weighted, self.weights = WindowSums(width, self.window_ns), WindowSums(width, self.window_ns)
        else:
            self.maxima = WindowSums(width, self.window_ns, reduce=group_max)

    def observe(self, table: Table) -> None:
        host = self.host_id(table.host)
        if self.average:
            avg = table.int_column("rtt_avg_us")
            mask = with_condition(table.mask(self.rule.where), avg > 0)
            packets = table.metric("packets")
            self.weighted.add(table.end_ns, host, *grouped(table, self.rule.by, mask, avg * packets))
            self.weights.add(table.end_ns, host, *grouped(table, self.rule.by, mask, packets))
        else:
            peak = table.int_column("rtt_max_us")
            mask = with_condition(table.mask(self.rule.where), peak > 0)
            self.maxima.add(table.end_ns, host, *grouped(table, self.rule.by, mask, peak, maximum=True))

    def evaluate(self, now_ns: int) -> list[Finding]:
        if self.average:
            rows, weighted, hosts = self.weighted.totals(now_ns, self.window_ns)
            weights = values_at(rows, *self.weights.totals(now_ns, self.window_ns)[:2])
            values = weighted / np.maximum(weights, 1)
        else:
            rows, values, hosts = self.maxima.totals(now_ns, self.window_ns)
        hit = np.flatnonzero(values > self.above_us)
        return [self.finding(rows[i], float(values[i]), int(hosts[i])) for i in hit]

    def finding(self, row: np.ndarray, us: float, host: int) -> Finding:
        labels = self.labels(self.rule.by, row)
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all connections"
        statistic = self.rule.option("statistic")
        return Finding(labels, round(us / 1000, 3), self.sender(host), self.rule.option("above"),
                       f"{where}: RTT {statistic} {ms(us)} in {self.window_ns / 1e9:g}s, "
                       f"above {self.rule.option('above'):g} ms")
