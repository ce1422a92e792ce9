"""The connection record, and its one builder and one wire format.

``FlowRecord`` is the one record type: the probe builds it from drained map arrays
(``records_from_arrays``), publishes it as JSON (``encode_message``), and the sink and
the CLI read it back (``decode_message``). Times are integers: nanoseconds since the
Unix epoch, UTC.
"""
from __future__ import annotations

import gc
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import compress, repeat
from operator import attrgetter
from typing import Annotated, Iterable, Literal, Mapping, Sequence

import msgspec
import numpy as np
from msgspec.structs import astuple

from .errors import MessageError

SCHEMA_VERSION = 1
DIRECTIONS = ("ingress", "egress")
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One connection's counters on one device, direction and interval."""

    interval_start: int
    interval_end: int
    ifindex: int
    ifname: str
    direction: str  # "ingress" | "egress", as seen from the container on a veth
    family: int  # 4, 6, or 0 for non-IP frames
    proto: int  # IP protocol number
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    packets: int
    bytes: int
    first_seen: int
    last_seen: int
    tcp_flags: int
    # Who is behind the device (see probe/containers.py); "" when nobody is known.
    container_id: str = ""
    container_name: str = ""
    container_image: str = ""

    @property
    def proto_name(self) -> str:
        return proto_name(self.proto)


def _slot_constructor(cls):
    """A constructor for a frozen, slotted dataclass that sets slots directly.

    The generated ``__init__`` of a frozen dataclass calls ``object.__setattr__`` per
    field, which costs ~3 us per FlowRecord; writing through the slot descriptors
    does the same work in a third of the time. Used where records are made in bulk.
    """
    names = [f.name for f in fields(cls)]
    namespace = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    namespace["_new"] = object.__new__
    namespace["_cls"] = cls
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    self = _new(_cls)\n{body}    return self\n", namespace)
    return namespace["make"]


_make_record = _slot_constructor(FlowRecord)


@dataclass(frozen=True, slots=True)
class OverflowCount:
    """Packets and bytes that found the flow map full, per device and direction."""

    ifindex: int
    ifname: str
    direction: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a flow message says about the interval its records belong to."""

    host: str
    boot_id: str
    interval_seq: int
    interval_start: int
    interval_end: int
    chunk: int = 0
    chunks: int = 1
    record_offset: int = 0  # index of this chunk's first record within the interval
    overflow: tuple[OverflowCount, ...] = field(default=())
    schema: int = SCHEMA_VERSION


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(number, str(number))


def proto_number(name: str) -> int:
    number = PROTO_NUMBERS.get(name)
    if number is not None:
        return number
    if name.isascii() and name.isdigit() and len(name) <= 3 and int(name) < 256:
        return int(name)
    raise MessageError(f"unknown protocol {name!r}; use tcp, udp, icmp or a number 0-255")


# -- building records from the kernel's arrays ---------------------------------


def _address_column(families: np.ndarray, column: np.ndarray) -> list[str]:
    """Text for a column of 16-byte address fields; each distinct address is formatted once."""
    out = np.full(len(column), "", dtype=object)  # family 0 (non-IP) stays ""
    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    for family, width, to_text in ((4, 4, socket.inet_ntoa), (6, 16, _inet6_ntoa)):
        rows = np.flatnonzero(families == family)
        if len(rows):
            addresses = np.ascontiguousarray(raw[rows, :width]).view(f"V{width}").ravel().tolist()
            text = {address: to_text(address) for address in set(addresses)}
            out[rows] = [text[address] for address in addresses]
    return out.tolist()


def _inet6_ntoa(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, raw)


@contextmanager
def bulk_allocation():
    """Pause the cyclic GC while making many objects that hold no cycles (records, rows):
    the collections 100k new objects trigger would cost more than making them (~30%)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def records_from_arrays(
    keys: np.ndarray,
    values: np.ndarray,
    *,
    interval_start: int,
    interval_end: int,
    mono_to_wall_ns: int,
    ifnames: Mapping[int, str],
    labels: Mapping[int, tuple[str, str, str]] = {},
) -> list[FlowRecord]:
    """Build records from drained ``FLOW_KEY``/``FLOW_COUNTERS`` arrays, column-wise.

    ``labels`` maps an ifindex to its (container_id, container_name, container_image).
    """
    families = keys["family"]
    ifindexes = keys["ifindex"].tolist()
    names = [ifnames.get(i, "") for i in ifindexes]
    no_labels = ("", "", "")
    device_labels = [labels.get(i, no_labels) for i in ifindexes]
    directions = [DIRECTIONS[d] for d in keys["direction"].tolist()]
    sources = _address_column(families, keys["src"])
    dests = _address_column(families, keys["dst"])
    first = (values["first_seen_ns"].astype(np.int64) + mono_to_wall_ns).tolist()
    last = (values["last_seen_ns"].astype(np.int64) + mono_to_wall_ns).tolist()
    columns = zip(
        ifindexes, names, directions, families.tolist(), keys["proto"].tolist(), sources, dests,
        keys["sport"].tolist(), keys["dport"].tolist(), values["packets"].tolist(),
        values["bytes"].tolist(), first, last, values["tcp_flags"].tolist(),
    )
    with bulk_allocation():
        return [_make_record(interval_start, interval_end, *row, *label)
                for row, label in zip(columns, device_labels)]


# -- the wire format -------------------------------------------------------------
#
# The wire schema is declared once, as msgspec structs: they encode in this field order
# and decode with every type, range and key checked in C (an unknown or missing key, a
# float where an integer belongs, a port above 65535 are all errors). Every number is
# bounded by what the kernel can produce and what the stores can hold (SQLite and
# InfluxDB integers are signed 64-bit); the few rules that span fields (family and
# addresses, interval end and start, chunk and chunks) are checked after decoding.

COUNTER_LIMIT = 2**63  # packets, bytes, tcp_flags: 0 <= x < 2**63
IFINDEX_LIMIT = 2**32
TIME_MIN = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z, ns
TIME_MAX = 7_258_118_400 * 1_000_000_000  # 2200-01-01T00:00:00Z, ns
IFNAME_MAX = 15  # IFNAMSIZ - 1
TEXT_MAX = 1024  # host, container name and image
ID_MAX = 128  # boot id, container id

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Count = Annotated[int, msgspec.Meta(ge=0, le=COUNTER_LIMIT - 1)]
IfIndex = Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
Time = Annotated[int, msgspec.Meta(ge=TIME_MIN, lt=TIME_MAX)]
IfName = Annotated[str, msgspec.Meta(max_length=IFNAME_MAX)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX)]
Ident = Annotated[str, msgspec.Meta(max_length=ID_MAX)]
Address = Annotated[str, msgspec.Meta(max_length=45)]  # the longest IPv6 text
ProtoText = Annotated[str, msgspec.Meta(max_length=8)]
Family = Literal[0, 4, 6]
Direction = Literal["ingress", "egress"]


class _WireRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
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


class _WireOverflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: IfIndex
    ifname: IfName
    direction: Direction
    packets: Count
    bytes: Count


class _WireMessage(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_MAX)]
    boot_id: Ident
    interval_seq: Count
    interval_start: Time
    interval_end: Time
    chunk: Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
    chunks: Annotated[int, msgspec.Meta(ge=1, le=IFINDEX_LIMIT)]
    record_offset: Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
    overflow: list[_WireOverflow]
    records: list[_WireRecord]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_WireMessage)


def record_to_wire(r: FlowRecord) -> _WireRecord:
    return _WireRecord(
        r.ifname, r.ifindex, r.direction, proto_name(r.proto), r.family, r.src_ip, r.dst_ip,
        r.src_port, r.dst_port, r.packets, r.bytes, r.first_seen, r.last_seen, r.tcp_flags,
        r.container_id, r.container_name, r.container_image,
    )


def encode_message(envelope: Envelope, records: Sequence[FlowRecord]) -> bytes:
    """Serialise one flow message: the envelope and its records, as JSON."""
    with bulk_allocation():
        wire_records = [record_to_wire(r) for r in records]
    return _encoder.encode(_WireMessage(
        envelope.schema, envelope.host, envelope.boot_id, envelope.interval_seq,
        envelope.interval_start, envelope.interval_end, envelope.chunk, envelope.chunks,
        envelope.record_offset,
        [_WireOverflow(o.ifindex, o.ifname, o.direction, o.packets, o.bytes) for o in envelope.overflow],
        wire_records,
    ))


def decode_message(data: bytes) -> tuple[Envelope, list[FlowRecord]]:
    """Parse and validate one flow message; raise ``MessageError`` saying what is wrong."""
    try:
        doc = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    _check_envelope(doc)
    envelope = Envelope(
        host=doc.host, boot_id=doc.boot_id, interval_seq=doc.interval_seq,
        interval_start=doc.interval_start, interval_end=doc.interval_end, chunk=doc.chunk,
        chunks=doc.chunks, record_offset=doc.record_offset,
        overflow=tuple(OverflowCount(*astuple(o)) for o in doc.overflow),
    )
    start, end = envelope.interval_start, envelope.interval_end
    with bulk_allocation():
        records = [_make_record(start, end, v[1], v[0], v[2], v[4], _PROTOCOLS[v[3]], *v[5:])
                   for v in map(astuple, doc.records)]
        _check_addresses(records)
    return envelope, records


def _check_envelope(doc: _WireMessage) -> None:
    if doc.schema != SCHEMA_VERSION:
        raise MessageError(f"schema version {doc.schema} is not {SCHEMA_VERSION}")
    if doc.interval_end < doc.interval_start:
        raise MessageError(f"interval_end {doc.interval_end} is before interval_start "
                           f"{doc.interval_start} - at `$.interval_end`")
    if doc.chunk >= doc.chunks:
        raise MessageError(f"chunk {doc.chunk} is not below chunks {doc.chunks} - at `$.chunk`")
    if doc.overflow and doc.chunk != 0:
        raise MessageError(f"chunk {doc.chunk} carries overflow; only chunk 0 does - at `$.overflow`")


class _ProtocolNumbers(dict):
    """Protocol text -> number; a text not seen before is checked by ``proto_number``."""

    def __missing__(self, name: str) -> int:
        number = proto_number(name)
        if len(self) < 4096:
            self[name] = number
        return number


_PROTOCOLS = _ProtocolNumbers(PROTO_NUMBERS)


_ADDRESS_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY, _SRC, _DST = attrgetter("family"), attrgetter("src_ip"), attrgetter("dst_ip")


def _check_addresses(records: list[FlowRecord]) -> None:
    """Family 4 records carry IPv4 text, family 6 IPv6 text, family 0 empty addresses.

    Column-wise, in C, with no object made per record and no hashing: each column's texts
    of one family go through ``inet_pton`` in one ``map``; family 0 texts must all be empty.
    """
    families = list(map(_FAMILY, records))
    present = set(families)
    for column in (_SRC, _DST):
        texts = list(map(column, records))
        for family in present:
            chosen = texts if len(present) == 1 else compress(texts, map(family.__eq__, families))
            if not _all_of_family(family, chosen):
                i = next(i for i, r in enumerate(records)
                         if r.family == family and not _all_of_family(family, [column(r)]))
                raise MessageError(f"address {column(records[i])!r} is not family {family} - at `$.records[{i}]`")


def _all_of_family(family: int, texts: Iterable[str]) -> bool:
    if family == 0:
        return not any(texts)
    try:
        return all(map(socket.inet_pton, repeat(_ADDRESS_FAMILIES[family]), texts))
    except (OSError, ValueError, UnicodeError):  # not an address; NUL or a lone surrogate in it
        return False
