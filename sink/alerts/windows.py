"""Per-interval partial sums kept for a time window, and summed again on demand.

A kind adds one partial per interval (the group rows and their sums, and the host that sent
the interval); ``totals(now, span)`` group-sums every partial whose interval ended within
``span`` of ``now`` (the same set of partials twice in a row: summed once). Partials older
than ``keep`` are dropped. ``WindowSums(..., reduce=group_max)`` keeps maxima instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .groups import group_sum, pack_rows


@dataclass(frozen=True)
class Partial:
    end_ns: int
    host: int  # the sender's id in the vocabulary's ``host`` field
    rows: np.ndarray
    sums: np.ndarray


Totals = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rows, sums, host) of WindowSums.totals


class WindowSums:
    def __init__(self, width: int, keep_ns: int, reduce: Callable[..., Totals] = group_sum) -> None:
        self.width = width  # columns of a group row
        self.keep_ns = keep_ns
        self.reduce = reduce  # of partials' rows, values and hosts: one row per group
        self._partials: list[Partial] = []
        self._memo: dict[int, tuple[list[Partial], Totals]] = {}  # span -> (the partials inside, totals)

    def add(self, end_ns: int, host: int, rows: np.ndarray, sums: np.ndarray) -> None:
        if len(rows):
            self._partials.append(Partial(end_ns, host, rows, sums))

    def totals(self, now_ns: int, span_ns: int) -> Totals:
        """``(rows, sums, host)`` over the partials that ended after ``now - span``; ``host``
        is the one host that sent a group's traffic, or -1 if several did."""
        self._partials = [p for p in self._partials if p.end_ns > now_ns - self.keep_ns]
        inside = [p for p in self._partials if p.end_ns > now_ns - span_ns]
        memo = self._memo.get(span_ns)
        if memo is not None and len(memo[0]) == len(inside) and all(a is b for a, b in zip(memo[0], inside, strict=True)):
            return memo[1]  # the timer's evaluations between intervals: nothing entered or left
        result = self._totals(inside)
        self._memo[span_ns] = (inside, result)
        return result

    def _totals(self, inside: list[Partial]) -> Totals:
        if not inside:
            return np.zeros((0, self.width), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if len(inside) == 1:  # already one row per group
            return inside[0].rows, inside[0].sums, np.full(len(inside[0].rows), inside[0].host, dtype=np.int64)
        rows = np.concatenate([p.rows for p in inside])
        sums = np.concatenate([p.sums for p in inside])
        hosts = np.concatenate([np.full(len(p.rows), p.host, dtype=np.int64) for p in inside])
        return self.reduce(rows, sums, hosts)


def values_at(rows: np.ndarray, among_rows: np.ndarray, among_values: np.ndarray) -> np.ndarray:
    """For each of ``rows``: its value in ``among_*`` (0 where it is not among them)."""
    out = np.zeros(len(rows), dtype=np.int64)
    if not len(rows) or not len(among_rows):
        return out
    keys, among = pack_rows(rows, among_rows)
    order = np.argsort(among)
    position = np.searchsorted(among[order], keys)
    position[position >= len(among)] = 0
    found = among[order][position] == keys
    out[found] = among_values[order][position[found]]
    return out
