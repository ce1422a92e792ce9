"""What ``new_peer`` and ``new_port`` share: a group sees a value of ``field`` that it did
not see before (during the learning period, or since).

For ``learn`` after the rule first sees traffic, every (group, value) pair joins the
baseline silently; after that a pair not in the baseline raises an alert and joins it (it
never alerts twice). The alert stays firing while the pair was seen within ``window`` and
then resolves. The baseline (pairs and learning start) is returned by ``baseline()``, which
the engine persists, so a restart neither forgets it nor learns again.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..groups import distinct_rows, isin_rows
from ..rules import Option, duration, field_list, field_name, where
from ..table import Table
from .base import Finding, Kind


class Novelty(Kind):
    default_field = ""
    noun = "value"
    options: dict[str, Option] = {}

    @classmethod
    def make_options(cls, field: str) -> dict[str, Option]:
        return {
            "by": Option(field_list(), ()),
            "where": Option(where, ()),
            "field": Option(field_name, field),
            "learn": Option(duration, 3600 * 10**9),
            "window": Option(duration, 60 * 10**9),
        }

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.field = rule.option("field")
        self.columns = (*rule.by, self.field)
        self.since_ns: int | None = None
        self.known = np.zeros((0, len(self.columns)), dtype=np.int64)
        self.recent: dict[tuple, tuple[int, int]] = {}  # pair -> (last seen, host id)
        self.changed = False
        self.restore(context.saved)

    def observe(self, table: Table) -> None:
        pairs = self.pairs(table)
        if self.since_ns is None:
            self.since_ns, self.changed = table.end_ns, True
        if self.recent and len(pairs):
            recent = np.array(list(self.recent), dtype=np.int64)
            host = self.host_id(table.host)
            for row in recent[isin_rows(recent, pairs)].tolist():
                self.recent[tuple(row)] = (table.end_ns, host)
        new = pairs[~isin_rows(pairs, self.known)]
        if not len(new):
            return
        self.known = np.concatenate([self.known, new])
        self.changed = True
        if table.end_ns - self.since_ns >= self.rule.option("learn"):
            host = self.host_id(table.host)
            for row in new.tolist():  # per new pair, not per record
                self.recent[tuple(row)] = (table.end_ns, host)

    def pairs(self, table: Table) -> np.ndarray:
        """The distinct (group, value) rows of the interval; empty values (non-IP) left out."""
        rows = table.group_ids(self.columns, self.vocabulary)
        codes, values = table.codes(self.field)
        keep = np.array([v != "" for v in values], dtype=bool)[codes] if len(values) else np.zeros(0, bool)
        mask = table.mask(self.rule.where)
        return distinct_rows(rows[keep if mask is None else keep & mask])

    def evaluate(self, now_ns: int) -> list[Finding]:
        window = self.rule.option("window")
        self.recent = {k: v for k, v in self.recent.items() if v[0] > now_ns - window}
        return [self.finding(np.array(key), host) for key, (_, host) in self.recent.items()]

    def finding(self, row: np.ndarray, host: int) -> Finding:
        labels = self.labels(self.columns, row)
        group = " ".join(f"{k}={labels[k]}" for k in self.rule.by) or "traffic"
        return Finding(labels, 1, self.sender(host), None,
                       f"{group}: new {self.noun} {labels[self.field]} ({self.field}) after learning")

    # -- the persisted baseline -----------------------------------------------------------------

    def baseline(self) -> Any:
        self.changed = False
        columns = [[self.vocabulary.value(f, i) for i in self.known[:, j].tolist()]
                   for j, f in enumerate(self.columns)]
        return {"since": self.since_ns, "columns": list(self.columns), "known": columns}

    def restore(self, saved: Any) -> None:
        if not isinstance(saved, dict) or saved.get("columns") != list(self.columns):
            return  # none, or made by a rule with other columns: learn again
        known = saved.get("known") or [[] for _ in self.columns]
        ids = [self.vocabulary.ids(f, values) for f, values in zip(self.columns, known)]
        self.known = np.column_stack(ids) if ids and len(ids[0]) else self.known
        self.since_ns = saved.get("since")
