"""Vectorised group-bys over integer key columns: the one way the alert kinds aggregate.

A group is a row of small integers (vocabulary ids, see ``table.Vocabulary``), one per
``by`` field. Per record, ``combine`` makes the row one int64 (mixed radix) and ``key_sums``
sums a metric per key with one ``np.bincount`` (a sort when the key space is large),
``split`` turning the keys back into rows. Across intervals (window totals, baselines),
``pack_rows`` packs rows of several matrices consistently (an int64, else the row's bytes)
for ``group_sum`` and ``isin_rows``. A few numpy calls per rule and interval: no Python
object per record.
"""
from __future__ import annotations

from typing import overload

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


@overload
def group_sum(matrix: np.ndarray, values: np.ndarray, extra: None = None) -> tuple[np.ndarray, np.ndarray, None]: ...
@overload
def group_sum(matrix: np.ndarray, values: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def group_sum(matrix: np.ndarray, values: np.ndarray, extra: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct rows of ``matrix``, the sum of ``values`` per row (int64, exact) and, if
    ``extra`` is given, whether each group's ``extra`` values are all equal (the single
    host that contributed, or -1 where several did)."""
    if len(matrix) == 0:
        return matrix, np.zeros(0, dtype=np.int64), None if extra is None else np.zeros(0, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if extra is not None and extra.min() == extra.max():  # one host sent it all
        rows, sums, _ = group_sum(matrix, values)
        return rows, sums, np.full(len(rows), extra[0], dtype=np.int64)
    radix = tuple(int(r) + 1 for r in matrix.max(axis=0))
    keys = combine([matrix[:, j] for j in range(matrix.shape[1])], radix, len(matrix))
    if keys is not None and extra is None:
        return (*key_sums(keys, values, radix), None)
    (keys,) = pack_rows(matrix) if keys is None else (keys,)
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


@overload
def group_max(matrix: np.ndarray, values: np.ndarray, extra: None = None) -> tuple[np.ndarray, np.ndarray, None]: ...
@overload
def group_max(matrix: np.ndarray, values: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def group_max(matrix: np.ndarray, values: np.ndarray, extra: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """As ``group_sum``, but the greatest of ``values`` per row (e.g. an RTT over a window)."""
    if len(matrix) == 0:
        return matrix, np.zeros(0, dtype=np.int64), None if extra is None else np.zeros(0, dtype=np.int64)
    (keys,) = pack_rows(matrix)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    maxima = np.maximum.reduceat(np.asarray(values, dtype=np.int64)[order], starts)
    rows = matrix[order[starts]]
    if extra is None:
        return rows, maxima, None
    ordered = np.asarray(extra, dtype=np.int64)[order]
    low, high = np.minimum.reduceat(ordered, starts), np.maximum.reduceat(ordered, starts)
    return rows, maxima, np.where(low == high, low, -1)


def combine(columns: list[np.ndarray], radix: tuple[int, ...], length: int) -> np.ndarray | None:
    """One int64 key per record from id columns with ``radix`` distinct ids each (mixed
    radix); None when the key space does not fit in 62 bits."""
    if _product(radix) >= _INT64_ROOM:
        return None
    if not columns:
        return np.zeros(length, dtype=np.int64)
    key = columns[0].astype(np.int64, copy=True)
    for column, base in zip(columns[1:], radix[1:], strict=True):
        key *= base
        key += column
    return key


def split(keys: np.ndarray, radix: tuple[int, ...]) -> np.ndarray:
    """The id rows of ``combine``d keys."""
    rows = np.empty((len(keys), len(radix)), dtype=np.int64)
    rest = keys.copy()
    for j in range(len(radix) - 1, -1, -1):
        rest, rows[:, j] = np.divmod(rest, radix[j])
    return rows


def key_sums(keys: np.ndarray, values: np.ndarray, radix: tuple[int, ...], total: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys' id rows and the sum of ``values`` per key (exact): a bincount when
    the key space is small, a sort otherwise. ``total``: a bound of ``values.sum()``."""
    if not len(keys):
        return np.zeros((0, len(radix)), dtype=np.int64), np.zeros(0, dtype=np.int64)
    exact_in_float = (int(values.sum()) if total is None else total) < 2**53
    if _product(radix) <= 4 * len(keys) + 65536 and exact_in_float:
        # one pass; every record counts at least 1 (a packet, its bytes, a connection),
        # so the groups present are those with a sum
        sums = np.bincount(keys, weights=values)
        present = np.flatnonzero(sums)
        return split(present, radix), sums[present].astype(np.int64)
    if exact_in_float:
        distinct, inverse = np.unique(keys, return_inverse=True)
        return split(distinct, radix), np.bincount(inverse.ravel(), weights=values).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return split(ordered[starts], radix), np.add.reduceat(values[order], starts)


def isin_rows(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each row of ``rows``: is it one of the rows of ``among``?"""
    if len(rows) == 0 or len(among) == 0:
        return np.zeros(len(rows), dtype=bool)
    keys, known = pack_rows(rows, among)
    return np.isin(keys, known)
