"""Vectorised group-bys over integer key columns: the one way the alert kinds aggregate.

A group key is a row of small integers (global value ids, see ``table.Vocabulary``), one per
``by`` field. ``pack_rows`` turns rows into one sortable key per row (a mixed-radix int64 when
the ids fit, else the row's bytes), consistently for several matrices at once, so that
``group_sum`` and ``isin_rows`` are a few numpy calls per rule and interval: no Python object
per record.
"""
from __future__ import annotations

import numpy as np

_INT64_ROOM = 2**62


def pack_rows(*matrices: np.ndarray) -> list[np.ndarray]:
    """One key per row of each ``(n, k)`` int64 matrix, equal iff the rows are equal; the
    same packing for all of them, so keys of different matrices compare."""
    width = matrices[0].shape[1]
    if width == 0:
        return [np.zeros(len(m), dtype=np.int64) for m in matrices]
    nonempty = [m for m in matrices if len(m)]
    if not nonempty:
        return [np.zeros(0, dtype=np.int64) for _ in matrices]
    radix = np.max([m.max(axis=0) for m in nonempty], axis=0).astype(object) + 1
    if _product(radix) < _INT64_ROOM:
        weights = np.array(_weights(radix), dtype=np.int64)
        return [m @ weights if len(m) else np.zeros(0, dtype=np.int64) for m in matrices]
    void = np.dtype((np.void, 8 * width))
    return [np.ascontiguousarray(m, dtype=np.int64).view(void).ravel() for m in matrices]


def _product(radix) -> int:
    product = 1
    for r in radix:
        product *= int(r)
    return product


def _weights(radix) -> list[int]:
    weights, weight = [], 1
    for r in reversed(list(radix)):
        weights.append(weight)
        weight *= int(r)
    return list(reversed(weights))


def group_sum(matrix: np.ndarray, values: np.ndarray, extra: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct rows of ``matrix``, the sum of ``values`` per row (int64, exact) and, if
    ``extra`` is given, whether each group's ``extra`` values are all equal (the single
    host that contributed, or -1 where several did)."""
    if len(matrix) == 0:
        return matrix, np.zeros(0, dtype=np.int64), None if extra is None else np.zeros(0, dtype=np.int64)
    (keys,) = pack_rows(matrix)
    values = np.asarray(values, dtype=np.int64)
    if keys.dtype == np.int64 and 0 < len(keys) and keys.max() < 4 * len(keys) + 4096 and extra is None:
        return _bincount_sum(matrix, keys, values)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sums = np.add.reduceat(values[order], starts)
    rows = matrix[order[starts]]
    if extra is None:
        return rows, sums, None
    ordered = np.asarray(extra, dtype=np.int64)[order]
    low, high = np.minimum.reduceat(ordered, starts), np.maximum.reduceat(ordered, starts)
    return rows, sums, np.where(low == high, low, -1)


def _bincount_sum(matrix: np.ndarray, keys: np.ndarray, values: np.ndarray):
    """Small key ranges: one pass, no sort (sums exact while they stay under 2**53)."""
    counts = np.bincount(keys)
    present = np.flatnonzero(counts)
    sums = np.bincount(keys, weights=values.astype(np.float64))[present].astype(np.int64)
    some = np.zeros(len(counts), dtype=np.int64)
    some[keys] = np.arange(len(keys))  # any record of a group: its rows are all equal
    return matrix[some[present]], sums, None


def distinct_rows(matrix: np.ndarray) -> np.ndarray:
    """The distinct rows of ``matrix``."""
    if len(matrix) == 0:
        return matrix
    (keys,) = pack_rows(matrix)
    _, first = np.unique(keys, return_index=True)
    return matrix[first]


def isin_rows(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each row of ``rows``: is it one of the rows of ``among``?"""
    if len(rows) == 0 or len(among) == 0:
        return np.zeros(len(rows), dtype=bool)
    keys, known = pack_rows(rows, among)
    return np.isin(keys, known)
