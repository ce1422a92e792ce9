"""What the quality kinds (``rtt``, ``retransmit_ratio``, ``drops``) share: a column's sum (or
maximum) per group over the records a rule looks at, column-wise, and the window sums of it."""
from __future__ import annotations

import numpy as np

from ..groups import group_max, group_sum
from ..table import Table


def grouped(table: Table, by: tuple[str, ...], mask: np.ndarray | None, values: np.ndarray,
            maximum: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The groups (id rows) of the records in ``mask`` (None: all) and the sum (or the
    maximum) of ``values`` per group; a group of only zeros may be left out."""
    rows = table.group_ids(by)
    if mask is not None:
        rows, values = rows[mask], values[mask]
    reduce = group_max if maximum else group_sum
    return reduce(rows, values)[:2]


def with_condition(mask: np.ndarray | None, condition: np.ndarray) -> np.ndarray:
    return condition if mask is None else mask & condition


def ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"
