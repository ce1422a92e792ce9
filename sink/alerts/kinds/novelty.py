"""What ``new_peer`` and ``new_port`` share: a group sees a value of ``field`` that it did
not see before (during the learning period, or since).

For ``learn`` after the rule first sees traffic, every (group, value) pair joins the
baseline silently; after that a pair not in the baseline raises an alert and joins it (it
never alerts twice). The alert stays firing while the pair was seen within ``window`` and
then resolves. The baseline (pairs and learning start) is returned by ``baseline()``, which
the engine persists, so a restart neither forgets it nor learns again.

A pair is one int64: the vocabulary ids of its columns, ``62 // columns`` bits each (31
bits for a group of one field and the value, 20 for two fields, 15 for three), so the
baseline is a sorted array searched with ``searchsorted``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..groups import split
from ..rule_keys import Invalid, Option, duration, field_list, field_name, positive_duration, where
from ..table import Table
from .base import Finding, Kind


class Novelty(Kind):
    noun = "value"
    options: ClassVar[dict[str, Option]] = {}

    @classmethod
    def make_options(cls, field: str) -> dict[str, Option]:
        return {
            "by": Option(field_list(), ()),
            "where": Option(where, ()),
            "field": Option(field_name, field),
            "learn": Option(duration, 3600 * 10**9),
            "window": Option(positive_duration, 60 * 10**9),
        }

    @classmethod
    def check(cls, values) -> None:
        if len(values.get("by") or ()) > 3:
            raise Invalid("by: at most 3 fields for a new_* rule; group by fewer")

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.field = rule.option("field")
        self.columns = (*rule.by, self.field)
        self.bits = 62 // len(self.columns)
        self.since_ns: int | None = None
        self.known = np.zeros(0, dtype=np.int64)  # sorted pair keys
        self.recent: dict[int, tuple[int, int]] = {}  # pair key -> (last seen, host id)
        self.restore(context.saved)

    def observe(self, table: Table) -> None:
        keys = self.pair_keys(table)
        if self.since_ns is None:
            self.since_ns, self.changed = table.end_ns, True
        if self.recent and len(keys):
            recent = np.fromiter(self.recent, dtype=np.int64, count=len(self.recent))
            host = self.host_id(table.host)
            for key in recent[np.isin(recent, keys)].tolist():
                self.recent[key] = (table.end_ns, host)
        position = np.searchsorted(self.known, keys)
        inside = position < len(self.known)
        found = np.zeros(len(keys), dtype=bool)
        found[inside] = self.known[position[inside]] == keys[inside]
        new = np.unique(keys[~found])
        if not len(new):
            return
        self.known = np.union1d(self.known, new)
        self.changed = True
        if table.end_ns - self.since_ns >= self.rule.option("learn"):
            host = self.host_id(table.host)
            for key in new.tolist():  # per new pair, not per record
                self.recent[key] = (table.end_ns, host)

    def pair_keys(self, table: Table) -> np.ndarray:
        """One key per record the rule looks at; empty values (non-IP frames) left out."""
        columns = [table.ids(f) for f in self.columns]
        key = np.zeros(len(table), dtype=np.int64)
        for field, column in zip(self.columns, columns, strict=True):
            if self.vocabulary.size(field) >> self.bits:  # ids are below the size
                raise RuntimeError(f"more than 2**{self.bits} distinct values of a field; group by fewer fields")
            key <<= self.bits
            key |= column
        keep = table.mask(self.rule.where)
        empty = self.vocabulary.find(self.field, "")
        if empty is not None:
            not_empty = columns[-1] != empty
            keep = not_empty if keep is None else keep & not_empty
        return key if keep is None else key[keep]

    def rows(self, keys: np.ndarray) -> np.ndarray:
        return split(keys, (1 << self.bits,) * len(self.columns))

    def evaluate(self, now_ns: int) -> list[Finding]:
        window = self.rule.option("window")
        self.recent = {k: v for k, v in self.recent.items() if v[0] > now_ns - window}
        if not self.recent:
            return []
        rows = self.rows(np.fromiter(self.recent, dtype=np.int64, count=len(self.recent)))
        return [self.finding(row, host) for row, (_, host) in zip(rows, self.recent.values(), strict=True)]

    def finding(self, row: np.ndarray, host: int) -> Finding:
        labels = self.labels(self.columns, row)
        group = " ".join(f"{k}={labels[k]}" for k in self.rule.by) or "traffic"
        return Finding(labels, 1, self.sender(host), None,
                       f"{group}: new {self.noun} {labels[self.field]} ({self.field}) after learning")

    # -- the persisted baseline -----------------------------------------------------------------

    def baseline(self) -> Any:
        self.changed = False
        rows = self.rows(self.known)
        columns = [[self.vocabulary.value(f, i) for i in rows[:, j].tolist()] for j, f in enumerate(self.columns)]
        return {"since": self.since_ns, "columns": list(self.columns), "known": columns}

    def restore(self, saved: Any) -> None:
        if not isinstance(saved, dict) or saved.get("columns") != list(self.columns):
            return  # none, or made by a rule with other columns: learn again
        known = saved.get("known") or [[] for _ in self.columns]
        key = np.zeros(len(known[0]), dtype=np.int64)
        for field, values in zip(self.columns, known, strict=True):
            key <<= self.bits
            key |= self.vocabulary.ids(field, values)
        self.known = np.unique(key)
        self.since_ns = saved.get("since")
