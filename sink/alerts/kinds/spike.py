"""``spike``: a group's sum over the window exceeds ``factor`` times its own moving baseline.

    [[rule]]
    name = "egress-spike"
    kind = "spike"
    metric = "bytes"
    by = ["container_name"]
    where = { direction = "egress" }
    window = "10s"                # the value: the sum over this window
    factor = 5                    # fires when value > factor x baseline
    baseline = "10m"              # the baseline: an exponential moving average with this time constant
    learn = "1m"                  # a group fires only once its baseline is this old [default: baseline]
    min = 1000                    # and only when the value is at least this [default: 1]

The baseline of a group moves with every evaluation (after the comparison); a group that
goes quiet decays towards 0 and is forgotten once below 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..rules import METRICS, Option, duration, field_list, number, one_of, positive_number, where
from ..windows import values_at
from .base import Finding
from .threshold import Threshold


@dataclass
class Baseline:
    average: float
    since_ns: int
    updated_ns: int


class Spike(Threshold):
    name = "spike"
    options = {
        "metric": Option(one_of(*METRICS), required=True),
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(duration, required=True),
        "factor": Option(positive_number, required=True),
        "baseline": Option(duration, 600 * 10**9),
        "learn": Option(duration),
        "min": Option(number, 1),
    }

    @classmethod
    def check(cls, values) -> None:
        pass

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.tau_ns = max(1, rule.option("baseline"))
        learn = rule.option("learn")
        self.learn_ns = self.tau_ns if learn is None else learn
        self.groups: dict[tuple, Baseline] = {}

    def evaluate(self, now_ns: int) -> list[Finding]:
        rows, sums, hosts = self.sums.totals(now_ns, self.window_ns)
        known = np.array(list(self.groups), dtype=np.int64).reshape(-1, len(self.rule.by))
        quiet = known[values_at(known, rows, np.ones(len(rows), dtype=np.int64)) == 0]
        findings = []
        for row, value, host in zip(rows, sums.tolist(), hosts.tolist()):  # per group, not per record
            if self.spiking(tuple(row.tolist()), value, now_ns):
                findings.append(self.spike(row, value, host))
        for row in quiet:
            self.spiking(tuple(row.tolist()), 0, now_ns)
        return findings

    def spiking(self, key: tuple, value: int, now_ns: int) -> bool:
        """Compare with the group's baseline, then move the baseline towards ``value``."""
        base = self.groups.get(key)
        if base is None:
            self.groups[key] = Baseline(float(value), now_ns, now_ns)
            return False
        factor, least = self.rule.option("factor"), self.rule.option("min")
        hot = (now_ns - base.since_ns >= self.learn_ns and value >= least
               and value > factor * base.average)
        weight = 1.0 - math.exp(-max(0, now_ns - base.updated_ns) / self.tau_ns)
        base.average += weight * (value - base.average)
        base.updated_ns = now_ns
        if value == 0 and base.average < 1.0:
            del self.groups[key]
        return hot

    def spike(self, row: np.ndarray, value: int, host: int) -> Finding:
        labels = self.labels(self.rule.by, row)
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all traffic"
        return Finding(labels, int(value), self.sender(int(host)), self.rule.option("factor"),
                       f"{where}: {int(value)} {self.rule.option('metric')} in {self.window_ns / 1e9:g}s, "
                       f"{self.rule.option('factor'):g}x over its baseline")
