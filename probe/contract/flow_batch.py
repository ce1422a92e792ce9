"""``FlowBatch``: one message's (or interval's) flow records as columns, with its envelope and
its devices (each once, with their container labels). The probe builds one straight from the
kernel's arrays (``FlowBatch.from_arrays``), the stores write from its columns: no Python
object per record on either end. ``batch.records()`` (or iterating a batch) gives
``FlowRecord``s to whoever wants them. Its wire format is in ``wire``.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar

import numpy as np
from numpy.typing import NDArray

from .record import (
    DIRECTIONS,
    NO_OWNER,
    OWNER_FIELDS,
    VERDICTS,
    DropCount,
    Envelope,
    FlowRecord,
    Owner,
    Runtime,
    bulk_allocation,
    make_record,
)
from .wire_schema import FLOW_COLUMNS, INTERVAL_FIELDS, OPTIONAL_COLUMNS, RECORD_FIELDS, Column, Device, FlowColumns

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class FlowBatch:
    """One message's (or interval's) records as columns, with its envelope and devices."""

    envelope: Envelope
    columns: FlowColumns
    devices: tuple[Device, ...] = ()
    # The kernel's judgement of each record (JUDGED: its verdict's index in VERDICTS and the
    # mode, 0 off, 1 monitor, 2 protect, of the policy word it was judged under at its last
    # packet), for the self-metrics. Not on the wire: None for batches decoded from messages
    # or built from records.
    judged: NDArray[np.void] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.columns.ifindex)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records())

    def column(self, name: str) -> Iterable[Any]:
        """Any ``FlowRecord`` field as ``len(self)`` Python values: a list, but envelope fields
        and ``host`` an iterator that repeats the value (no list made per record). The values
        are of the type of the field ``name`` names, known at run time only: Any."""
        if name in FLOW_COLUMNS:
            return as_list(getattr(self.columns, name))
        if name in INTERVAL_FIELDS:
            return repeat(getattr(self.envelope, name), len(self))
        if name == "host":
            return repeat(self.envelope.host, len(self))
        return self.device_column(name)

    def filled(self, name: str) -> bool:
        """Whether some record has field ``name`` set (not "" or 0): a column in any record,
        a device field on any of the batch's devices. One pass, in C for numpy columns."""
        if name in FLOW_COLUMNS:
            return any_set(getattr(self.columns, name))
        return any(getattr(d, name) for d in self.devices)

    def device_column(self, name: str) -> list[Any]:
        """A device field per record: one dict lookup per record, in C."""
        by_ifindex = {d.ifindex: getattr(d, name) for d in self.devices}
        if len(set(by_ifindex.values())) == 1 and len(self):
            return list(repeat(next(iter(by_ifindex.values())), len(self)))
        return list(map(by_ifindex.__getitem__, as_list(self.columns.ifindex)))

    def rows(self, names: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """Tuples of the named fields, record by record (for ``executemany``)."""
        return zip(*(self.column(name) for name in names), strict=True)

    def records(self) -> list[FlowRecord]:
        """One ``FlowRecord`` per record, for subscribers who want objects."""
        with bulk_allocation():
            return list(map(make_record, *(self.column(f) for f in RECORD_FIELDS)))

    def slice(self, start: int, stop: int) -> FlowBatch:
        """Records ``start:stop`` with the devices they use; ``record_offset`` moves by ``start``."""
        columns = FlowColumns(*(getattr(self.columns, f)[start:stop] for f in FLOW_COLUMNS))
        ifindexes = columns.ifindex
        used = set(np.unique(ifindexes).tolist() if isinstance(ifindexes, np.ndarray) else ifindexes)
        envelope = replace(self.envelope, record_offset=self.envelope.record_offset + max(0, start))
        judged = self.judged[start:stop] if self.judged is not None else None
        return FlowBatch(envelope, columns, tuple(d for d in self.devices if d.ifindex in used), judged)

    def columns_at(self, indexes: Iterable[int]) -> FlowColumns:
        """The columns of the records at ``indexes`` (a sample)."""
        indexes = list(indexes)
        return FlowColumns(*(column[indexes] if isinstance(column, np.ndarray) else [column[i] for i in indexes]
                             for column in (getattr(self.columns, f) for f in FLOW_COLUMNS)))

    def take(self, indexes: Iterable[int]) -> FlowBatch:
        """The records at ``indexes``, in that order (``record_offset`` unchanged)."""
        indexes = list(indexes)
        columns = self.columns_at(indexes)
        used = set(as_list(columns.ifindex))
        judged = self.judged[indexes] if self.judged is not None else None
        return FlowBatch(self.envelope, columns, tuple(d for d in self.devices if d.ifindex in used), judged)

    def on_device(self, ifname: str | None) -> FlowBatch:
        """The records counted on the device named ``ifname`` (all if None)."""
        if ifname is None:
            return self
        wanted = {d.ifindex for d in self.devices if d.ifname == ifname}
        return self.take(i for i, ifindex in enumerate(self.column("ifindex")) if ifindex in wanted)

    def busiest(self, limit: int) -> FlowBatch:
        """The ``limit`` records with the most bytes (then packets), in that order; stable."""
        top = np.iinfo(np.uint64).max
        nbytes = np.asarray(self.columns.bytes, dtype=np.uint64)
        packets = np.asarray(self.columns.packets, dtype=np.uint64)
        return self.take(np.lexsort((top - packets, top - nbytes))[:limit].tolist())

    @classmethod
    def concat(cls, envelope: Envelope, batches: Sequence[FlowBatch]) -> FlowBatch:
        """One batch of ``batches``' records in order (the chunks of one interval)."""
        columns = FlowColumns(*([value for b in batches for value in b.column(f)] for f in FLOW_COLUMNS))
        devices = {d.ifindex: d for b in batches for d in b.devices}
        return cls(envelope, columns, tuple(devices.values()))

    def with_envelope(self, envelope: Envelope) -> FlowBatch:
        return FlowBatch(envelope, self.columns, self.devices, self.judged)

    @classmethod
    def from_records(cls, envelope: Envelope, records: Iterable[FlowRecord]) -> FlowBatch:
        """A batch of ``records`` (for tests and schema 1). The device fields of a record must
        agree with those of every other record of the same ifindex (``ValueError``)."""
        records = list(records)
        columns = FlowColumns(*([getattr(r, f) for r in records] for f in FLOW_COLUMNS))
        return cls(envelope, columns, devices_of(records, ValueError))

    @classmethod
    def empty(cls, envelope: Envelope) -> FlowBatch:
        return cls(envelope, FlowColumns(*([] for _ in FLOW_COLUMNS)))

    @classmethod
    def from_arrays(cls, envelope: Envelope, keys: NDArray[np.void], values: NDArray[np.void], *,
                    mono_to_wall_ns: int, ifnames: Mapping[int, str],
                    owners: Mapping[int, Owner] = {}) -> FlowBatch:
        """A batch from drained ``FLOW_KEY``/``FLOW_COUNTERS`` arrays, column by column;
        ``owners`` maps an ifindex to who is behind it. The process and quality columns are
        empty (``with_columns`` fills them).

        Its columns stay numpy arrays (text columns: arrays of str objects) until a chunk is
        encoded or a listener asks for Python values (``column``, ``records``)."""
        families = keys["family"]
        columns = FlowColumns(
            ifindex=keys["ifindex"], direction=_DIRECTION_TEXT[keys["direction"]], family=families,
            proto=keys["proto"], src_ip=address_column(families, keys["src"]),
            dst_ip=address_column(families, keys["dst"]), src_port=keys["sport"],
            dst_port=keys["dport"], packets=values["packets"], bytes=values["bytes"],
            first_seen=values["first_seen_ns"].astype(np.int64) + mono_to_wall_ns,
            last_seen=values["last_seen_ns"].astype(np.int64) + mono_to_wall_ns,
            tcp_flags=values["tcp_flags"],
            verdict=_VERDICT_TEXT[np.minimum(values["verdict"], len(VERDICTS) - 1)],
            **_empty_optional(len(keys)),
        )
        devices = tuple(device_of(i, ifnames.get(i, ""), owners.get(i, NO_OWNER))
                        for i in np.unique(keys["ifindex"]).tolist())
        judged = np.empty(len(values), JUDGED)
        judged["verdict"] = np.minimum(values["verdict"], len(VERDICTS) - 1)
        judged["mode"] = values["policy"] & _MODE_MASK
        return cls(envelope, columns, devices, judged)


    def with_processes(self, process: Column[str], pid: Column[int], peer_process: Column[str],
                       peer_pid: Column[int]) -> FlowBatch:
        """The batch with its process columns replaced (one entry per record each)."""
        return self.with_columns(process=process, pid=pid, peer_process=peer_process, peer_pid=peer_pid)

    def with_columns(self, **replaced: Column[Any]) -> FlowBatch:
        """The batch with the named optional columns replaced (one entry per record each):
        the process columns (identity), the quality columns (quality)."""
        unknown = set(replaced) - set(OPTIONAL_COLUMNS)
        if unknown:
            raise ValueError(f"only optional columns are replaced, not {sorted(unknown)}")
        columns = FlowColumns(**{f: replaced.get(f, getattr(self.columns, f)) for f in FLOW_COLUMNS})
        return FlowBatch(self.envelope, columns, self.devices, self.judged)

    def with_drops(self, drops: Sequence[DropCount]) -> FlowBatch:
        """The batch with its envelope's unmatched drops replaced."""
        return self.with_envelope(replace(self.envelope, drops=tuple(drops)))


def _empty_optional(count: int) -> dict[str, Column[Any]]:
    """The process and quality columns of ``count`` records that have none (verdict is the
    kernel's)."""
    return {name: np.full(count, empty, dtype=object if isinstance(empty, str) else np.uint64)
            for name, empty in OPTIONAL_COLUMNS.items() if name != "verdict"}


def device_of(ifindex: int, ifname: str, owner: Owner) -> Device:
    """The wire's ``Device`` for an attached device and its owner."""
    return Device(ifindex, ifname, *(getattr(owner, f) for f in OWNER_FIELDS))


_DIRECTION_TEXT = np.array(DIRECTIONS, dtype=object)
_VERDICT_TEXT = np.array(VERDICTS, dtype=object)
_MODE_MASK = 3  # of the policy word (probe/policy/tables.py)
JUDGED = np.dtype([("verdict", "u1"), ("mode", "u1")])  # FlowBatch.judged


class DeviceFields(Protocol):
    """The device fields of a record: a ``FlowRecord``, a schema 1 row (``RecordV1``)."""

    @property
    def ifindex(self) -> int: ...
    @property
    def ifname(self) -> str: ...
    @property
    def container_id(self) -> str: ...
    @property
    def container_name(self) -> str: ...
    @property
    def container_image(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def runtime(self) -> Runtime: ...


def devices_of(records: Iterable[DeviceFields], error: type[Exception]) -> tuple[Device, ...]:
    """Each ifindex's device once; ``error`` if two records of one ifindex disagree on it."""
    devices: dict[int, Device] = {}
    for r in records:
        device = devices.get(r.ifindex)
        wanted = Device(r.ifindex, r.ifname, r.container_id, r.container_name, r.container_image,
                        r.pod, r.workload, r.runtime)
        if device is None:
            devices[r.ifindex] = wanted
        elif device != wanted:
            raise error(f"ifindex {r.ifindex} has two names or owners ({device.ifname!r}, "
                        f"{r.ifname!r}) in one message")
    return tuple(devices.values())


def any_set(column: Column[Any]) -> bool:
    """Whether some entry of ``column`` is set (not "" or 0)."""
    return bool(column.any() if isinstance(column, np.ndarray) else any(column))


def as_list(column: Column[_T]) -> list[_T]:
    """A column as Python values (numpy arrays converted, lists as they are)."""
    if isinstance(column, np.ndarray):
        values: list[_T] = column.tolist()
        return values
    return column


# -- addresses from the kernel's arrays ---------------------------------------------------


def address_column(families: NDArray[np.generic], column: NDArray[np.void]) -> NDArray[np.object_]:
    """Text for a column of 16-byte address fields, as an array of str objects.

    Each distinct address is formatted once: IPv4 with numpy string operations on the
    distinct values (``np.unique``), IPv6 with ``inet_ntop`` through a dict."""
    out = np.full(len(column), "", dtype=object)  # family 0 (non-IP) stays ""
    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    rows = np.flatnonzero(families == 4)
    if len(rows):
        distinct, inverse = np.unique(np.ascontiguousarray(raw[rows, :4]).view(np.uint32).ravel(),
                                      return_inverse=True)
        text = _octets_text(distinct.view(np.uint8).reshape(-1, 4))
        out[rows] = np.array(text.tolist(), dtype=object)[inverse.ravel()]
    rows = np.flatnonzero(families == 6)
    if len(rows):
        addresses = np.ascontiguousarray(raw[rows]).view("V16").ravel().tolist()
        text6 = {address: _inet6_ntoa(address) for address in set(addresses)}
        out[rows] = [text6[address] for address in addresses]
    return out


_OCTET = np.array([str(i) for i in range(256)])
_OCTET_DOT = np.array([f"{i}." for i in range(256)])


def _inet6_ntoa(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, raw)


# -- the stores' key order ----------------------------------------------------------------


def store_order(keys: NDArray[np.void]) -> NDArray[np.intp]:
    """The order of ``keys`` (FLOW_KEY) in the stores' key: ifindex, direction, proto, source
    and destination address as text (SQLite's BINARY collation: byte by byte, a prefix
    first), source and destination port (interval and host are the same for a whole batch).

    A pure function of the keys: the same interval read again comes out in the same order.
    An interval sent in this order is one ascending run of a ``WITHOUT ROWID`` table's key,
    so each message's rows go to the end of the table's B-tree instead of pages all over the
    interval's range (docs/performance.md)."""
    families = keys["family"]
    device = ((keys["ifindex"].astype(np.int64) << 9) | (keys["proto"].astype(np.int64))
              | (_DIRECTION_RANK[np.minimum(keys["direction"], len(DIRECTIONS) - 1)] << 8))
    ports = (keys["sport"].astype(np.int64) << 16) | keys["dport"]
    return np.lexsort((ports, _text_rank(families, keys["dst"]), _text_rank(families, keys["src"]),
                       device))  # the last key first


def _text_rank(families: NDArray[np.generic], column: NDArray[np.void]) -> NDArray[np.int64]:
    """Per row, a number that orders the rows as ``address_column``'s text does ("" first).

    IPv4 without text: compared byte by byte, "a.b.c.d" orders as its octets' texts do, one
    after the other (the dot sorts before any digit, like the end of the text after the last
    octet), so the octets' places among the texts "0".."255" make an integer key. IPv6 texts
    (and the IPv4 ones, only when a batch has both) are compared as text, once per distinct address."""
    rank = np.full(len(column), -1, dtype=np.int64)  # family 0 (non-IP): ""
    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    rows4, rows6 = np.flatnonzero(families == 4), np.flatnonzero(families == 6)
    octets = _OCTET_RANK[raw[rows4, :4]].astype(np.int64)
    key4 = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
    if not len(rows6):
        rank[rows4] = key4
        return rank
    distinct4, inverse4 = np.unique(key4, return_inverse=True)
    text4 = _octets_text(_OCTET_BY_RANK[(distinct4[:, None] >> np.array([24, 16, 8, 0])) & 255])
    distinct6, inverse6 = np.unique(np.ascontiguousarray(raw[rows6]).view("V16").ravel(), return_inverse=True)
    text6 = np.array([_inet6_ntoa(address) for address in distinct6.tolist()], dtype=str)
    order6 = np.argsort(text6, kind="stable")
    # each IPv6 text's place among the IPv4 ones; an address's rank is its place among both
    among4 = np.searchsorted(text4, text6[order6])
    rank6 = np.empty(len(text6), dtype=np.int64)
    rank6[order6] = np.arange(len(text6)) + among4
    rank4 = np.arange(len(text4)) + np.searchsorted(among4, np.arange(len(text4)), side="right")
    rank[rows4] = rank4[inverse4.ravel()]
    rank[rows6] = rank6[inverse6.ravel()]
    return rank


def _octets_text(octets: NDArray[np.integer]) -> NDArray[np.str_]:
    """"a.b.c.d" per row of four octets."""
    return np.strings.add(np.strings.add(_OCTET_DOT[octets[:, 0]], _OCTET_DOT[octets[:, 1]]),
                          np.strings.add(_OCTET_DOT[octets[:, 2]], _OCTET[octets[:, 3]]))


_OCTET_BY_RANK = np.argsort(_OCTET)  # the octets in the order of their texts ("0" < "1" < "10" < "100" ...)
_OCTET_RANK = np.argsort(_OCTET_BY_RANK).astype(np.int64)  # an octet's place in that order
_DIRECTION_RANK = np.argsort(np.argsort(np.array(DIRECTIONS))).astype(np.int64)  # "egress" before "ingress"
