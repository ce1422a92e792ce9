"""``overflow``: packets that found a host's flow map full (the envelope's overflow counts).

    [[rule]]
    name = "flow-map-full"
    kind = "overflow"
    by = ["host", "ifname"]       # host, ifname, direction [default: host]
    window = "1m"                 # [default: 1m]
    above = 0                     # packets over the window [default: 0]
"""
from __future__ import annotations

import numpy as np

from ..rule_keys import Invalid, Option, field_list, number, one_of, positive_duration, where
from ..table import RowTable, Table
from .threshold import Threshold

OVERFLOW_FIELDS = ("host", "ifname", "direction")


class Overflow(Threshold):
    name = "overflow"
    options = {
        "metric": Option(one_of("packets", "bytes"), "packets"),
        "by": Option(field_list(OVERFLOW_FIELDS), ("host",)),
        "where": Option(where, ()),
        "window": Option(positive_duration, 60 * 10**9),
        "above": Option(number, 0),
    }

    @classmethod
    def check(cls, values) -> None:
        for name, _ in values.get("where") or ():
            if name not in OVERFLOW_FIELDS:
                raise Invalid(f"where: field {name!r} is not in the overflow counts; use {', '.join(OVERFLOW_FIELDS)}")

    def grouped(self, table: Table) -> tuple[np.ndarray, np.ndarray]:
        """The overflow counts of the interval (chunk 0's envelope), as rows of a table."""
        counts = getattr(getattr(table, "envelope", None), "overflow", ())
        rows = RowTable(table.host, table.end_ns, {
            "ifname": [c.ifname for c in counts], "direction": [c.direction for c in counts],
            "packets": [c.packets for c in counts], "bytes": [c.bytes for c in counts],
        }, len(counts), self.vocabulary)
        return super().grouped(rows)
