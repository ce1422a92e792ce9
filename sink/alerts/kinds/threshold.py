"""``threshold``: the sum of a metric over a window, per group, above (or below) a value.

    [[rule]]
    name = "udp-burst"
    kind = "threshold"
    metric = "packets"            # packets | bytes | connections
    by = ["ifname", "dst_port"]
    where = { proto = "udp", direction = "egress" }
    window = "30s"
    above = 100000                # or below = ...

``below`` looks at groups seen within two windows, so a group that went quiet has 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..groups import group_sum, key_sums
from ..rule_keys import METRICS, Option, field_list, number, one_of, positive_duration, where
from ..table import Table
from ..windows import WindowSums, values_at
from .base import Finding, Kind, above_or_below


class Threshold(Kind):
    name = "threshold"
    options = {
        "metric": Option(one_of(*METRICS), required=True),
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(positive_duration, required=True),
        "above": Option(number),
        "below": Option(number),
    }

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        above_or_below(values)

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.window_ns = max(1, rule.option("window"))
        self.sums = WindowSums(len(rule.by), 2 * self.window_ns)

    def observe(self, table: Table) -> None:
        self.sums.add(table.end_ns, self.host_id(table.host), *self.grouped(table))

    def grouped(self, table: Table) -> tuple[np.ndarray, np.ndarray]:
        """The interval's groups (id rows) and the metric's sum per group, over the records
        the rule looks at."""
        keys, radix = table.group_keys(self.rule.by)
        metric = self.rule.option("metric")
        values = table.metric(metric)
        mask = table.mask(self.rule.where)
        if keys is None:  # too many distinct values for one int64 key: rows instead
            rows = table.group_ids(self.rule.by)
            return group_sum(rows, values)[:2] if mask is None else group_sum(rows[mask], values[mask])[:2]
        if mask is None:
            return key_sums(keys, values, radix, table.total(metric))
        return key_sums(keys[mask], values[mask], radix, table.total(metric))

    def evaluate(self, now_ns: int) -> list[Finding]:
        rows, sums, hosts = self.sums.totals(now_ns, self.window_ns)
        above, below = self.rule.options.get("above"), self.rule.options.get("below")
        if above is not None:
            hit = np.flatnonzero(sums > above)
            return [self.finding(rows[i], sums[i], hosts[i], above, "above") for i in hit]
        assert below is not None  # check(): a rule has exactly one of above and below
        known, _, known_hosts = self.sums.totals(now_ns, 2 * self.window_ns)
        values = values_at(known, rows, sums)
        hit = np.flatnonzero(values < below)
        return [self.finding(known[i], values[i], known_hosts[i], below, "below") for i in hit]

    def finding(self, row: np.ndarray, value, host: int, limit: float, side: str) -> Finding:
        labels = self.labels(self.rule.by, row)
        metric = self.rule.option("metric")
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all traffic"
        return Finding(labels, int(value), self.sender(int(host)), limit,
                       f"{where}: {int(value)} {metric} in {self.window_ns / 1e9:g}s, {side} {limit:g}")
