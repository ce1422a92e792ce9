"""One interval's columns as the alert kinds see them: codes, masks and group keys, each
computed once per interval and shared by every rule.

``FlowTable`` wraps the chunks of one interval of one host (``FlowBatch``es, columns as
decoded); ``RowTable`` wraps a few rows made elsewhere (the overflow counts). Any field of
a flow record is usable by name (``RECORD_FIELDS`` plus ``host``), so a column added to the
record later is usable in ``by`` and ``where`` with no change here.

Values become the engine's ``Vocabulary`` ids column by column, so that group keys of
different intervals compare: small integers through a bincount (``factorize``), text
through one dict pass in C (``Vocabulary.map``), device fields once per device. Nothing
here makes an object per record.
"""
from __future__ import annotations

from itertools import chain, repeat
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from connstats.probe.contract import RECORD_FIELDS, FlowBatch, proto_name
from connstats.probe.contract.wire import DEVICE_FIELDS, FLOW_COLUMNS

from .groups import combine

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
        """The ids of ``values`` (few: distinct values of an interval), new ones added."""
        known = self._ids.setdefault(field, {})
        listed = self._values.setdefault(field, [])
        values = list(values)
        out = list(map(known.get, values))  # in C; the values seen before are the usual case
        for index in [i for i, found in enumerate(out) if found is None]:
            found = known.get(values[index])  # a value twice in ``values`` is added once
            if found is None:
                found = known[values[index]] = len(listed)
                listed.append(values[index])
            out[index] = found
        return np.array(out, dtype=np.int64)

    def map(self, field: str, column: Sequence) -> np.ndarray:
        """The id of every value of a (text) column: one dict lookup per value, in C."""
        known = self._ids.setdefault(field, {})
        count = len(column)
        out = np.fromiter(map(known.get, column, repeat(-1, count)), dtype=np.int64, count=count)
        missing = np.flatnonzero(out < 0)
        if len(missing):
            out[missing] = self.ids(field, [column[i] for i in missing.tolist()])
        return out

    def find(self, field: str, value: Any) -> int | None:
        return self._ids.get(field, {}).get(value)

    def value(self, field: str, ident: int) -> Any:
        return self._values[field][ident]

    def size(self, field: str) -> int:
        return len(self._values.get(field, ()))


def factorize_ints(array: np.ndarray) -> tuple[np.ndarray, list]:
    """``(codes, distinct values)`` of an integer column: ``values[codes[i]] == array[i]``."""
    if not len(array):
        return np.zeros(0, dtype=np.int64), []
    low, high = int(array.min()), int(array.max())
    if high - low < 4 * len(array) + 65536:
        present = np.bincount(array - low) > 0
        remap = np.cumsum(present) - 1
        return remap[array - low], (np.flatnonzero(present) + low).tolist()
    distinct, codes = np.unique(array, return_inverse=True)
    return codes.ravel().astype(np.int64), distinct.tolist()


def as_int64(column: Sequence) -> np.ndarray:
    if isinstance(column, np.ndarray):
        return column.astype(np.int64, copy=False)
    return np.fromiter(column, dtype=np.int64, count=len(column))


def is_text(column: Sequence) -> bool:
    if isinstance(column, np.ndarray):
        return column.dtype == object
    return bool(len(column)) and not isinstance(column[0], (int, np.integer))


class Table:
    """Columns of one interval as vocabulary ids: ``ids``, ``mask``, ``group_keys``,
    ``group_ids`` and ``metric``, each computed once and shared by every rule."""

    host: str
    end_ns: int  # when the interval ended

    def __init__(self, length: int, vocabulary: Vocabulary) -> None:
        self.length = length
        self.vocabulary = vocabulary
        self._ids: dict[str, np.ndarray] = {}
        self._masks: dict[Where, np.ndarray] = {}
        self._rows: dict[tuple, np.ndarray] = {}
        self._keys: dict[tuple, tuple[np.ndarray | None, tuple[int, ...]]] = {}
        self._metrics: dict[str, np.ndarray] = {}
        self._totals: dict[str, int] = {}

    def __len__(self) -> int:
        return self.length

    def column(self, field: str) -> Sequence:  # pragma: no cover - subclasses
        raise NotImplementedError

    def ids(self, field: str) -> np.ndarray:
        """The vocabulary id of ``field``, per record."""
        cached = self._ids.get(field)
        if cached is None:
            cached = self._ids[field] = self._column_ids(field)
        return cached

    def _column_ids(self, field: str) -> np.ndarray:
        return self.column_ids(field, self.column(field))

    def column_ids(self, field: str, column: Sequence) -> np.ndarray:
        if not len(column):
            return np.zeros(0, dtype=np.int64)
        if is_text(column):
            return self.vocabulary.map(field, column)
        return self.int_ids(field)

    def int_ids(self, field: str) -> np.ndarray:
        codes, values = self.int_codes(field)
        return self.vocabulary.ids(field, values)[codes]

    def int_codes(self, field: str) -> tuple[np.ndarray, list]:
        return factorize_ints(self.int_column(field))

    def mask(self, where: Where) -> np.ndarray | None:
        """The records matching every condition (None: all of them)."""
        if not where:
            return None
        cached = self._masks.get(where)
        if cached is None:
            cached = np.ones(self.length, dtype=bool)
            for field, wanted in where:
                ids = self.ids(field)
                lookup = np.zeros(self.vocabulary.size(field) + 1, dtype=bool)
                found = [self.vocabulary.find(field, value) for value in wanted]
                lookup[[i for i in found if i is not None]] = True
                cached &= lookup[ids]
            self._masks[where] = cached
        return cached

    def group_ids(self, by: tuple[str, ...]) -> np.ndarray:
        """An ``(n, len(by))`` matrix of vocabulary ids, one row per record."""
        cached = self._rows.get(by)
        if cached is None:
            columns = [self.ids(field) for field in by]
            cached = np.column_stack(columns) if columns else np.zeros((self.length, 0), dtype=np.int64)
            self._rows[by] = cached
        return cached

    def group_keys(self, by: tuple[str, ...]) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """One int64 key per record for the ``by`` fields, and the radix to ``split`` it by
        (key None: too many distinct values together; use ``group_ids``)."""
        cached = self._keys.get(by)
        if cached is None:
            columns = [self.ids(field) for field in by]
            radix = tuple(max(1, self.vocabulary.size(field)) for field in by)
            cached = self._keys[by] = (combine(columns, radix, self.length), radix)
        return cached

    def metric(self, name: str) -> np.ndarray:
        """``packets`` or ``bytes`` per record, or 1 per record for ``connections``."""
        cached = self._metrics.get(name)
        if cached is None:
            cached = self._metrics[name] = (np.ones(self.length, dtype=np.int64) if name == "connections"
                                            else self.int_column(name))
        return cached

    def total(self, name: str) -> int:
        """The metric's sum over the interval (a bound for any subset's)."""
        cached = self._totals.get(name)
        if cached is None:
            cached = self._totals[name] = int(self.metric(name).sum())
        return cached

    def int_column(self, field: str) -> np.ndarray:
        return as_int64(self.column(field))


class FlowTable(Table):
    """The records of one interval of one host: its chunks' columns, joined once each."""

    def __init__(self, chunks: Sequence[FlowBatch], vocabulary: Vocabulary) -> None:
        super().__init__(sum(len(c) for c in chunks), vocabulary)
        self.chunks = chunks
        self.envelope = chunks[0].envelope
        self.host = self.envelope.host
        self.end_ns = self.envelope.interval_end
        self._devices = {d.ifindex: d for c in chunks for d in c.devices}
        self._ifindex_codes: tuple[np.ndarray, list] | None = None

    def column(self, field: str) -> Sequence:
        """A column of the whole interval (the hot paths convert chunk by chunk instead)."""
        parts = self._parts(field)
        if len(parts) == 1:
            return parts[0]
        return list(chain.from_iterable(p.tolist() if isinstance(p, np.ndarray) else p for p in parts))

    def _parts(self, field: str) -> list[Sequence]:
        return [getattr(c.columns, field) for c in self.chunks]

    def int_column(self, field: str) -> np.ndarray:
        parts = [as_int64(p) for p in self._parts(field)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def int_codes(self, field: str) -> tuple[np.ndarray, list]:
        """Codes of an integer column, kept for ``ifindex`` (its ids and the device fields)."""
        if field != "ifindex":
            return super().int_codes(field)
        if self._ifindex_codes is None:
            self._ifindex_codes = super().int_codes(field)
        return self._ifindex_codes

    def _column_ids(self, field: str) -> np.ndarray:
        if field in FLOW_COLUMNS:
            parts = self._parts(field)
            if not self.length or not is_text(next(p for p in parts if len(p))):
                return self.int_ids(field)
            ids = [self.vocabulary.map(field, p) for p in parts]
            return ids[0] if len(ids) == 1 else np.concatenate(ids)
        if field in DEVICE_FIELDS:
            return self._device_ids(field)
        constant = self.host if field == "host" else getattr(self.envelope, field)
        return np.full(self.length, self.vocabulary.ids(field, [constant])[0], dtype=np.int64)

    def _device_ids(self, field: str) -> np.ndarray:
        """A device field: one lookup per device, then mapped through the ifindex codes."""
        if not self.length:
            return np.zeros(0, dtype=np.int64)
        codes, ifindexes = self.int_codes("ifindex")
        per_device = [getattr(self._devices[i], field) if i in self._devices else "" for i in ifindexes]
        return self.vocabulary.ids(field, per_device)[codes]


class RowTable(Table):
    """A few rows given as columns (``{field: list}``), e.g. the overflow counts; fields not
    given are the constant ``constants[field]``."""

    def __init__(self, host: str, end_ns: int, columns: Mapping[str, Sequence], length: int,
                 vocabulary: Vocabulary, constants: Mapping[str, Any] = {}) -> None:
        super().__init__(length, vocabulary)
        self.host = host
        self.end_ns = end_ns
        self._columns = columns
        self._constants = {"host": host, **constants}

    def column(self, field: str) -> Sequence:
        if field in self._columns:
            return self._columns[field]
        return [self._constants.get(field, "")] * self.length
