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
from typing import Annotated, Literal, Mapping, Sequence

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
    if name.isdigit() and int(name) < 256:
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
# float where an integer belongs, a port above 65535 are all errors).

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Direction = Literal["ingress", "egress"]


class _WireRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifname: str
    ifindex: int
    direction: Direction
    proto: str
    family: int
    src_ip: str
    dst_ip: str
    src_port: Port
    dst_port: Port
    packets: Count
    bytes: Count
    first_seen: int
    last_seen: int
    tcp_flags: Count
    container_id: str
    container_name: str
    container_image: str


class _WireOverflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: int
    ifname: str
    direction: Direction
    packets: Count
    bytes: Count


class _WireMessage(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    host: str
    boot_id: str
    interval_seq: int
    interval_start: int
    interval_end: int
    chunk: int
    chunks: int
    record_offset: int
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
    if doc.schema != SCHEMA_VERSION:
        raise MessageError(f"schema version {doc.schema} is not {SCHEMA_VERSION}")
    envelope = Envelope(
        host=doc.host, boot_id=doc.boot_id, interval_seq=doc.interval_seq,
        interval_start=doc.interval_start, interval_end=doc.interval_end, chunk=doc.chunk,
        chunks=doc.chunks, record_offset=doc.record_offset,
        overflow=tuple(OverflowCount(*astuple(o)) for o in doc.overflow),
    )
    start, end = envelope.interval_start, envelope.interval_end
    with bulk_allocation():
        records = [_record_from_wire(astuple(r), start, end) for r in doc.records]
    return envelope, records


def _record_from_wire(v: tuple, start: int, end: int) -> FlowRecord:
    """A FlowRecord from a validated ``_WireRecord`` tuple (wire order, see above)."""
    proto = PROTO_NUMBERS.get(v[3])
    if proto is None:
        proto = proto_number(v[3])
    return _make_record(start, end, v[1], v[0], v[2], v[4], proto, *v[5:])
