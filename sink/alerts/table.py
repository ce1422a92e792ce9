"""One interval's columns as the alert kinds see them: codes, masks and group keys, each
computed once per interval and shared by every rule.

``FlowTable`` wraps the chunks of one interval of one host (``FlowBatch``es, columns as
decoded); ``RowTable`` wraps a few rows made elsewhere (the overflow counts). Any field of
a flow record is usable by name (``RECORD_FIELDS`` plus ``host``), so a column added to the
record later is usable in ``by`` and ``where`` with no change here.

Values become integer codes column by column (``factorize``: a bincount for small integers,
one dict pass in C for text), then global ids through the engine's ``Vocabulary``, so that
group keys of different intervals compare. Nothing here makes an object per record.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from connstats.probe.contract import RECORD_FIELDS, FlowBatch, proto_name
from connstats.probe.wire import DEVICE_FIELDS, FLOW_COLUMNS

FIELDS: tuple[str, ...] = (*RECORD_FIELDS, "host")
Where = tuple[tuple[str, frozenset], ...]  # (field, wanted raw values), sorted by field


def label_text(field: str, value: Any) -> str:
    """A value as an alert label shows it (``proto`` by name: 17 -> ``udp``)."""
    return proto_name(value) if field == "proto" and isinstance(value, int) else str(value)


class Vocabulary:
    """Global ids of the values of each field, stable for the engine's lifetime."""

    def __init__(self) -> None:
        self._ids: dict[str, dict[Any, int]] = {}
        self._values: dict[str, list[Any]] = {}

    def ids(self, field: str, values: Iterable[Any]) -> np.ndarray:
        known = self._ids.setdefault(field, {})
        listed = self._values.setdefault(field, [])
        out = []
        for value in values:  # once per distinct value of an interval, not per record
            found = known.get(value)
            if found is None:
                found = known[value] = len(listed)
                listed.append(value)
            out.append(found)
        return np.array(out, dtype=np.int64)

    def value(self, field: str, ident: int) -> Any:
        return self._values[field][ident]

    def size(self, field: str) -> int:
        return len(self._values.get(field, ()))


def factorize(column: Sequence) -> tuple[np.ndarray, list]:
    """``(codes, distinct values)`` with ``values[codes[i]] == column[i]``."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        array = column
    elif len(column) and isinstance(column[0], (int, np.integer)) and not isinstance(column[0], bool):
        array = np.asarray(column, dtype=np.int64)
    else:
        return _factorize_objects(column)
    return _factorize_ints(array.astype(np.int64, copy=False))


def _factorize_ints(array: np.ndarray) -> tuple[np.ndarray, list]:
    if not len(array):
        return np.zeros(0, dtype=np.int64), []
    low, high = int(array.min()), int(array.max())
    if high - low < 4 * len(array) + 65536:
        present = np.bincount(array - low) > 0
        remap = np.cumsum(present) - 1
        return remap[array - low], (np.flatnonzero(present) + low).tolist()
    distinct, codes = np.unique(array, return_inverse=True)
    return codes.ravel().astype(np.int64), distinct.tolist()


def _factorize_objects(column: Sequence) -> tuple[np.ndarray, list]:
    values = list(dict.fromkeys(column.tolist() if isinstance(column, np.ndarray) else column))
    index = {value: i for i, value in enumerate(values)}
    codes = np.fromiter(map(index.__getitem__, column), dtype=np.int64, count=len(column))
    return codes, values


class Table:
    """Columns of one interval: ``codes``, ``mask``, ``group_ids`` and ``metric``, cached."""

    host: str
    end_ns: int  # when the interval ended

    def __init__(self, length: int) -> None:
        self.length = length
        self._codes: dict[str, tuple[np.ndarray, list]] = {}
        self._masks: dict[Where, np.ndarray] = {}
        self._ids: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def column(self, field: str) -> Sequence:  # pragma: no cover - subclasses
        raise NotImplementedError

    def codes(self, field: str) -> tuple[np.ndarray, list]:
        cached = self._codes.get(field)
        if cached is None:
            cached = self._codes[field] = self._factorized(field)
        return cached

    def _factorized(self, field: str) -> tuple[np.ndarray, list]:
        return factorize(self.column(field))

    def mask(self, where: Where) -> np.ndarray | None:
        """The records matching every condition (None: all of them)."""
        if not where:
            return None
        cached = self._masks.get(where)
        if cached is None:
            cached = np.ones(self.length, dtype=bool)
            for field, wanted in where:
                codes, values = self.codes(field)
                lookup = np.array([value in wanted for value in values], dtype=bool)
                cached &= lookup[codes] if len(values) else False
            self._masks[where] = cached
        return cached

    def group_ids(self, by: tuple[str, ...], vocabulary: Vocabulary) -> np.ndarray:
        """An ``(n, len(by))`` matrix of global value ids, one row per record."""
        cached = self._ids.get(by)
        if cached is None:
            columns = []
            for field in by:
                codes, values = self.codes(field)
                columns.append(vocabulary.ids(field, values)[codes] if len(values) else codes)
            cached = np.column_stack(columns) if columns else np.zeros((self.length, 0), dtype=np.int64)
            self._ids[by] = cached
        return cached

    def metric(self, name: str) -> np.ndarray:
        """``packets`` or ``bytes`` per record, or 1 per record for ``connections``."""
        if name == "connections":
            return np.ones(self.length, dtype=np.int64)
        return np.asarray(self.column(name), dtype=np.int64)


class FlowTable(Table):
    """The records of one interval of one host: its chunks' columns, concatenated lazily."""

    def __init__(self, chunks: Sequence[FlowBatch]) -> None:
        super().__init__(sum(len(c) for c in chunks))
        self.chunks = chunks
        self.envelope = chunks[0].envelope
        self.host = self.envelope.host
        self.end_ns = self.envelope.interval_end
        self._devices = {d.ifindex: d for c in chunks for d in c.devices}

    def column(self, field: str) -> Sequence:
        parts = [getattr(c.columns, field) for c in self.chunks]
        if len(parts) == 1:
            return parts[0]
        if all(isinstance(p, np.ndarray) for p in parts):
            return np.concatenate(parts)
        return [value for part in parts for value in (part.tolist() if isinstance(part, np.ndarray) else part)]

    def _factorized(self, field: str) -> tuple[np.ndarray, list]:
        if field in FLOW_COLUMNS:
            return factorize(self.column(field))
        if field in DEVICE_FIELDS:
            return self._device_codes(field)
        constant = self.host if field == "host" else getattr(self.envelope, field)
        return np.zeros(self.length, dtype=np.int64), [constant] if self.length else []

    def _device_codes(self, field: str) -> tuple[np.ndarray, list]:
        """A device field: one lookup per device, then the ifindex codes mapped."""
        codes, ifindexes = self.codes("ifindex")
        per_device = [getattr(self._devices[i], field) if i in self._devices else "" for i in ifindexes]
        local, values = _factorize_objects(per_device)
        return (local[codes] if len(local) else codes), values


class RowTable(Table):
    """A few rows given as columns (``{field: list}``), e.g. the overflow counts; fields not
    given are the constant ``constants[field]``."""

    def __init__(self, host: str, end_ns: int, columns: Mapping[str, Sequence], length: int,
                 constants: Mapping[str, Any] = {}) -> None:
        super().__init__(length)
        self.host = host
        self.end_ns = end_ns
        self._columns = columns
        self._constants = {"host": host, **constants}

    def column(self, field: str) -> Sequence:
        if field in self._columns:
            return self._columns[field]
        return [self._constants.get(field, "")] * self.length
