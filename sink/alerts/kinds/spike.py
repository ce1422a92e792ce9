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

Every evaluation compares each group's value with its baseline, then moves the baseline
towards the value; a group that goes quiet decays towards 0 and is forgotten below 1. The
baselines are arrays (one row per group), updated column-wise.
"""
from __future__ import annotations

import numpy as np

from ..groups import isin_rows
from ..rule_keys import METRICS, Option, duration, field_list, number, one_of, positive_duration, positive_number, where
from ..windows import values_at
from .base import Finding
from .threshold import Threshold


class Spike(Threshold):
    name = "spike"
    options = {
        "metric": Option(one_of(*METRICS), required=True),
        "by": Option(field_list(), ()),
        "where": Option(where, ()),
        "window": Option(positive_duration, required=True),
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
        self.groups = np.zeros((0, len(rule.by)), dtype=np.int64)
        self.average = np.zeros(0)
        self.since = np.zeros(0, dtype=np.int64)
        self.updated = np.zeros(0, dtype=np.int64)

    def evaluate(self, now_ns: int) -> list[Finding]:
        rows, sums, hosts = self.sums.totals(now_ns, self.window_ns)
        values = values_at(self.groups, rows, sums)
        senders = values_at(self.groups, rows, hosts + 1) - 1
        hot = np.flatnonzero((now_ns - self.since >= self.learn_ns) & (values >= self.rule.option("min"))
                             & (values > self.rule.option("factor") * self.average))
        findings = [self.spike(self.groups[i], int(values[i]), int(senders[i])) for i in hot]
        self.average += (1.0 - np.exp(-(now_ns - self.updated) / self.tau_ns)) * (values - self.average)
        self.updated[:] = now_ns
        keep = (values > 0) | (self.average >= 1.0)
        new = ~isin_rows(rows, self.groups)
        self.groups = np.concatenate([self.groups[keep], rows[new]])
        self.average = np.concatenate([self.average[keep], sums[new].astype(float)])
        self.since = np.concatenate([self.since[keep], np.full(int(new.sum()), now_ns, dtype=np.int64)])
        self.updated = np.concatenate([self.updated[keep], np.full(int(new.sum()), now_ns, dtype=np.int64)])
        return findings

    def spike(self, row: np.ndarray, value: int, host: int) -> Finding:
        labels = self.labels(self.rule.by, row)
        where = " ".join(f"{k}={v}" for k, v in labels.items()) or "all traffic"
        factor = self.rule.option("factor")
        return Finding(labels, value, self.sender(host), factor,
                       f"{where}: {value} {self.rule.option('metric')} in {self.window_ns / 1e9:g}s, "
                       f"{factor:g}x over its baseline")
