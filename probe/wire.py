"""Flow messages on the wire: schema 2 (columnar, what the probe sends) and schema 1 (rows,
still read), and ``FlowBatch``, the columnar batch that probe, sink and CLI pass around.

A schema 2 message is one JSON object: the envelope, the devices of its records (each once,
with their container labels) and ``flows``, one array per field, all of the same length::

    {"schema": 2, "host": ..., ..., "overflow": [...],
     "devices": [{"ifindex": 7, "ifname": "veth0", "container_id": ..., ...}],
     "flows": {"ifindex": [7, 7], "direction": ["egress", "ingress"], ...}}

The schema is declared once, as msgspec structs (``FlowColumns`` names the columns and types
of every field); decoding checks every type and bound in C, and the rules that span fields
(equal column lengths, a device per ifindex, family and addresses, interval and chunk) after,
column-wise. The probe builds a batch straight from the kernel's arrays
(``FlowBatch.from_arrays``) and the stores write from its columns: no Python object per record
on either end. ``batch.records()`` (or iterating a batch) gives ``FlowRecord``s to whoever wants
them.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import attrgetter
from typing import Annotated, Iterable, Iterator, Mapping, Sequence, Union

import msgspec
import orjson
import numpy as np

from .errors import MessageError
from .record import (
    DIRECTIONS, IFINDEX_LIMIT, SCHEMA_VERSION, TEXT_MAX, Address, Count, Direction, Envelope,
    Family, FlowRecord, Ident, IfIndex, IfName, OverflowCount, Port, ProtoText, Text, Time,
    bulk_allocation, make_record, proto_name, proto_number, PROTO_NUMBERS, _address_column,
)

ProtoNumber = Annotated[int, msgspec.Meta(ge=0, le=255)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_MAX)]
Chunk = Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
Chunks = Annotated[int, msgspec.Meta(ge=1, le=IFINDEX_LIMIT)]


# -- the schema: declared once ------------------------------------------------------------


class FlowColumns(msgspec.Struct, forbid_unknown_fields=True):
    """One list per field of a flow; entry i of every list is record i."""

    ifindex: list[IfIndex]
    direction: list[Direction]
    family: list[Family]
    proto: list[ProtoNumber]
    src_ip: list[Address]
    dst_ip: list[Address]
    src_port: list[Port]
    dst_port: list[Port]
    packets: list[Count]
    bytes: list[Count]
    first_seen: list[Time]
    last_seen: list[Time]
    tcp_flags: list[Count]


FLOW_COLUMNS: tuple[str, ...] = FlowColumns.__struct_fields__
DEVICE_FIELDS = ("ifname", "container_id", "container_name", "container_image")
INTERVAL_FIELDS = ("interval_start", "interval_end")


class Device(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A device that records of the message were counted on, and who is behind it."""

    ifindex: IfIndex
    ifname: IfName
    container_id: Ident = ""
    container_name: Text = ""
    container_image: Text = ""


class _WireOverflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: IfIndex
    ifname: IfName
    direction: Direction
    packets: Count
    bytes: Count


class _Envelope(msgspec.Struct, forbid_unknown_fields=True, tag_field="schema"):
    host: Host
    boot_id: Ident
    interval_seq: Count
    interval_start: Time
    interval_end: Time
    chunk: Chunk
    chunks: Chunks
    record_offset: Chunk
    overflow: list[_WireOverflow]


class _MessageV2(_Envelope, tag=SCHEMA_VERSION):
    devices: list[Device]
    flows: FlowColumns


class _RecordV1(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifname: IfName
    ifindex: IfIndex
    direction: Direction
    proto: ProtoText
    family: Family
    src_ip: Address
    dst_ip: Address
    src_port: Port
    dst_port: Port
    packets: Count
    bytes: Count
    first_seen: Time
    last_seen: Time
    tcp_flags: Count
    container_id: Ident
    container_name: Text
    container_image: Text


class _MessageV1(_Envelope, tag=1):
    records: list[_RecordV1]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Union[_MessageV2, _MessageV1])


# -- the batch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowBatch:
    """One message's (or interval's) records as columns, with its envelope and devices."""

    envelope: Envelope
    columns: FlowColumns
    devices: tuple[Device, ...] = ()

    def __len__(self) -> int:
        return len(self.columns.ifindex)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records())

    def column(self, name: str) -> Sequence:
        """Any ``FlowRecord`` field as a sequence of ``len(self)`` Python values (envelope and
        device fields repeated without a list made per record where it can)."""
        if name in FLOW_COLUMNS:
            return _as_list(getattr(self.columns, name))
        if name in INTERVAL_FIELDS:
            return repeat(getattr(self.envelope, name), len(self))
        if name == "host":
            return repeat(self.envelope.host, len(self))
        return self.device_column(name)

    def device_column(self, name: str) -> list:
        """A device field per record: one dict lookup per record, in C."""
        by_ifindex = {d.ifindex: getattr(d, name) for d in self.devices}
        if len(set(by_ifindex.values())) == 1 and len(self):
            return list(repeat(next(iter(by_ifindex.values())), len(self)))
        return list(map(by_ifindex.__getitem__, _as_list(self.columns.ifindex)))

    def rows(self, names: Sequence[str]) -> Iterator[tuple]:
        """Tuples of the named fields, record by record (for ``executemany``)."""
        return zip(*(self.column(name) for name in names))

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
        return FlowBatch(envelope, columns, tuple(d for d in self.devices if d.ifindex in used))

    def columns_at(self, indexes: Iterable[int]) -> FlowColumns:
        """The columns of the records at ``indexes`` (a sample)."""
        indexes = list(indexes)
        return FlowColumns(*(column[indexes] if isinstance(column, np.ndarray) else [column[i] for i in indexes]
                             for column in (getattr(self.columns, f) for f in FLOW_COLUMNS)))

    def take(self, indexes: Iterable[int]) -> FlowBatch:
        """The records at ``indexes``, in that order (``record_offset`` unchanged)."""
        columns = self.columns_at(indexes)
        used = set(_as_list(columns.ifindex))
        return FlowBatch(self.envelope, columns, tuple(d for d in self.devices if d.ifindex in used))

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
        return FlowBatch(envelope, self.columns, self.devices)

    @classmethod
    def from_records(cls, envelope: Envelope, records: Iterable[FlowRecord]) -> FlowBatch:
        """A batch of ``records`` (for tests and schema 1). The device fields of a record must
        agree with those of every other record of the same ifindex (``ValueError``)."""
        records = list(records)
        columns = FlowColumns(*([getattr(r, f) for r in records] for f in FLOW_COLUMNS))
        return cls(envelope, columns, _devices_of(records, ValueError))

    @classmethod
    def empty(cls, envelope: Envelope) -> FlowBatch:
        return cls(envelope, FlowColumns(*([] for _ in FLOW_COLUMNS)))

    @classmethod
    def from_arrays(cls, envelope: Envelope, keys: np.ndarray, values: np.ndarray, *,
                    mono_to_wall_ns: int, ifnames: Mapping[int, str],
                    labels: Mapping[int, tuple[str, str, str]] = {}) -> FlowBatch:
        """A batch from drained ``FLOW_KEY``/``FLOW_COUNTERS`` arrays, column by column;
        ``labels`` maps an ifindex to its (container_id, container_name, container_image).

        Its columns stay numpy arrays (text columns: arrays of str objects) until a chunk is
        encoded or a listener asks for Python values (``column``, ``records``)."""
        families = keys["family"]
        columns = FlowColumns(
            ifindex=keys["ifindex"], direction=_DIRECTION_TEXT[keys["direction"]], family=families,
            proto=keys["proto"], src_ip=_address_column(families, keys["src"]),
            dst_ip=_address_column(families, keys["dst"]), src_port=keys["sport"],
            dst_port=keys["dport"], packets=values["packets"], bytes=values["bytes"],
            first_seen=values["first_seen_ns"].astype(np.int64) + mono_to_wall_ns,
            last_seen=values["last_seen_ns"].astype(np.int64) + mono_to_wall_ns,
            tcp_flags=values["tcp_flags"],
        )
        no_labels = ("", "", "")
        devices = tuple(Device(i, ifnames.get(i, ""), *labels.get(i, no_labels))
                        for i in np.unique(keys["ifindex"]).tolist())
        return cls(envelope, columns, devices)


RECORD_FIELDS: tuple[str, ...] = tuple(FlowRecord.__dataclass_fields__)
_DIRECTION_TEXT = np.array(DIRECTIONS, dtype=object)
assert set(RECORD_FIELDS) == {*FLOW_COLUMNS, *DEVICE_FIELDS, *INTERVAL_FIELDS}


def _devices_of(records: Sequence[FlowRecord], error: type[Exception]) -> tuple[Device, ...]:
    devices: dict[int, Device] = {}
    for r in records:
        device = devices.get(r.ifindex)
        if device is None:
            devices[r.ifindex] = Device(r.ifindex, r.ifname, r.container_id, r.container_name,
                                        r.container_image)
        elif (device.ifname, device.container_id, device.container_name, device.container_image) != (
                r.ifname, r.container_id, r.container_name, r.container_image):
            raise error(f"ifindex {r.ifindex} has two names or owners ({device.ifname!r}, "
                        f"{r.ifname!r}) in one message")
    return tuple(devices.values())


# -- encoding -----------------------------------------------------------------------------------


def encode_message(batch: FlowBatch) -> bytes:
    """Serialise one flow message (schema 2): the envelope, its devices and its columns."""
    return encode_chunk(batch.envelope, batch.devices, encode_flows(batch.columns))


def encode_flows(columns: FlowColumns) -> msgspec.Raw:
    """The ``flows`` object alone, to size chunks before their envelope is known.

    Numeric numpy columns go to orjson, which writes them in C without a Python int per
    value (5x faster than ``tolist`` + encode, same bytes); text columns are lists."""
    doc = {name: _json_ready(getattr(columns, name)) for name in FLOW_COLUMNS}
    return msgspec.Raw(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def _json_ready(column: Sequence):
    if isinstance(column, np.ndarray):
        return np.ascontiguousarray(column) if column.dtype != object else column.tolist()
    return column


def _as_list(column: Sequence) -> list:
    return column.tolist() if isinstance(column, np.ndarray) else column


def encode_chunk(envelope: Envelope, devices: Sequence[Device], flows: FlowColumns | msgspec.Raw) -> bytes:
    """One message of ``envelope`` and ``devices`` around columns (or ``encode_flows``' bytes)."""
    return _encoder.encode(_MessageV2(
        envelope.host, envelope.boot_id, envelope.interval_seq, envelope.interval_start,
        envelope.interval_end, envelope.chunk, envelope.chunks, envelope.record_offset,
        [_WireOverflow(o.ifindex, o.ifname, o.direction, o.packets, o.bytes) for o in envelope.overflow],
        list(devices), flows,
    ))


def record_to_wire(r: FlowRecord) -> _RecordV1:
    """One record as a schema 1 row (the control plane's ``stats`` reply uses this shape)."""
    return _RecordV1(r.ifname, r.ifindex, r.direction, proto_name(r.proto), r.family, r.src_ip,
                     r.dst_ip, r.src_port, r.dst_port, r.packets, r.bytes, r.first_seen,
                     r.last_seen, r.tcp_flags, r.container_id, r.container_name, r.container_image)


def encode_message_v1(envelope: Envelope, records: Sequence[FlowRecord]) -> bytes:
    """A schema 1 message, as probes before schema 2 sent (for tests of the sink)."""
    wire = [record_to_wire(r) for r in records]
    return _encoder.encode(_MessageV1(
        envelope.host, envelope.boot_id, envelope.interval_seq, envelope.interval_start,
        envelope.interval_end, envelope.chunk, envelope.chunks, envelope.record_offset,
        [_WireOverflow(o.ifindex, o.ifname, o.direction, o.packets, o.bytes) for o in envelope.overflow],
        wire,
    ))


# -- decoding -----------------------------------------------------------------------------------


def decode_message(data: bytes) -> FlowBatch:
    """Parse and validate one flow message of schema 1 or 2; raise ``MessageError`` saying
    what is wrong. Iterate the batch (or call ``records()``) for ``FlowRecord``s."""
    try:
        doc = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageError(_schema_reason(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    _check_envelope(doc)
    envelope = Envelope(
        host=doc.host, boot_id=doc.boot_id, interval_seq=doc.interval_seq,
        interval_start=doc.interval_start, interval_end=doc.interval_end, chunk=doc.chunk,
        chunks=doc.chunks, record_offset=doc.record_offset,
        overflow=tuple(OverflowCount(o.ifindex, o.ifname, o.direction, o.packets, o.bytes)
                       for o in doc.overflow),
        schema=SCHEMA_VERSION if isinstance(doc, _MessageV2) else 1,
    )
    if isinstance(doc, _MessageV2):
        return _batch_v2(envelope, doc)
    return _batch_v1(envelope, doc.records)


def _schema_reason(reason: str) -> str:
    if reason.endswith("- at `$.schema`"):
        return f"schema version {reason.split()[2]} is not 1 or 2 - at `$.schema`"
    return reason


def _check_envelope(doc: _Envelope) -> None:
    if doc.interval_end < doc.interval_start:
        raise MessageError(f"interval_end {doc.interval_end} is before interval_start "
                           f"{doc.interval_start} - at `$.interval_end`")
    if doc.chunk >= doc.chunks:
        raise MessageError(f"chunk {doc.chunk} is not below chunks {doc.chunks} - at `$.chunk`")
    if doc.overflow and doc.chunk != 0:
        raise MessageError(f"chunk {doc.chunk} carries overflow; only chunk 0 does - at `$.overflow`")


def _batch_v2(envelope: Envelope, doc: _MessageV2) -> FlowBatch:
    columns = doc.flows
    count = len(columns.ifindex)
    for name in FLOW_COLUMNS:
        if len(getattr(columns, name)) != count:
            raise MessageError(f"flows.{name} has {len(getattr(columns, name))} entries, flows.ifindex "
                               f"{count}; every column has one per record - at `$.flows.{name}`")
    known = {d.ifindex for d in doc.devices}
    if len(known) != len(doc.devices):
        raise MessageError("a device is listed twice - at `$.devices`")
    unknown = set(columns.ifindex) - known
    if unknown:
        raise MessageError(f"ifindex {min(unknown)} has no entry in devices - at `$.flows.ifindex`")
    _check_addresses(columns.family, {"src_ip": columns.src_ip, "dst_ip": columns.dst_ip}, "$.flows")
    return FlowBatch(envelope, columns, tuple(doc.devices))


_V1_COLUMNS = {name: attrgetter(name) for name in FLOW_COLUMNS}


def _batch_v1(envelope: Envelope, records: list[_RecordV1]) -> FlowBatch:
    columns = FlowColumns(*(list(map(_V1_COLUMNS[name], records)) for name in FLOW_COLUMNS))
    columns.proto = list(map(_PROTOCOLS.__getitem__, columns.proto))
    _check_addresses(columns.family, {"src_ip": columns.src_ip, "dst_ip": columns.dst_ip}, "$.records")
    return FlowBatch(envelope, columns, _devices_of(records, MessageError))


class _ProtocolNumbers(dict):
    """Protocol text -> number; a text not seen before is checked by ``proto_number``."""

    def __missing__(self, name: str) -> int:
        number = proto_number(name)
        if len(self) < 4096:
            self[name] = number
        return number


_PROTOCOLS = _ProtocolNumbers(PROTO_NUMBERS)
_ADDRESS_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _check_addresses(families: list[int], columns: dict[str, list[str]], where: str) -> None:
    """Family 4 records carry IPv4 text, family 6 IPv6 text, family 0 empty addresses.

    Column-wise, in C: each column's texts of one family go through ``inet_pton`` in one
    ``map``. (Checking only distinct texts costs more than it saves: hashing 131,072 fresh
    strings takes longer than ``inet_pton`` on them, measured.)"""
    present = set(families)
    masks = {family: list(map(family.__eq__, families)) for family in present} if len(present) > 1 else {}
    for name, texts in columns.items():
        for family in present:
            chosen = compress(texts, masks[family]) if masks else texts
            if not _all_of_family(family, chosen):
                i = next(i for i, (f, t) in enumerate(zip(families, texts))
                         if f == family and not _all_of_family(family, [t]))
                at = f"{where}[{i}]" if where == "$.records" else f"{where}.{name}[{i}]"
                raise MessageError(f"address {texts[i]!r} is not family {family} - at `{at}`")


def _all_of_family(family: int, texts: Iterable[str]) -> bool:
    if family == 0:
        return not any(texts)
    try:
        return all(map(socket.inet_pton, repeat(_ADDRESS_FAMILIES[family]), texts))
    except (OSError, ValueError, UnicodeError):  # not an address; NUL or a lone surrogate in it
        return False

