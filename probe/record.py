"""The connection record, and its one builder and one wire format.

``FlowRecord`` is the one record type: the probe builds it from drained map arrays
(``records_from_arrays``), publishes it as JSON (``encode_message``), and the sink and
the CLI read it back (``decode_message``). Times are integers: nanoseconds since the
Unix epoch, UTC.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

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

    @property
    def proto_name(self) -> str:
        return proto_name(self.proto)


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


class _AddressText:
    """Formats 16-byte address fields, remembering the ones seen before."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, bytes], str] = {}

    def __call__(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._seen.get(key)
        if text is None:
            if family == 4:
                text = socket.inet_ntop(socket.AF_INET, raw[:4])
            elif family == 6:
                text = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                text = ""
            self._seen[key] = text
        return text


def records_from_arrays(
    keys: np.ndarray,
    values: np.ndarray,
    *,
    interval_start: int,
    interval_end: int,
    mono_to_wall_ns: int,
    ifnames: Mapping[int, str],
) -> list[FlowRecord]:
    """Build records from drained ``FLOW_KEY``/``FLOW_COUNTERS`` arrays, column-wise."""
    address = _AddressText()
    families = keys["family"].tolist()
    ifindexes = keys["ifindex"].tolist()
    names = [ifnames.get(i, "") for i in ifindexes]
    directions = [DIRECTIONS[d] for d in keys["direction"].tolist()]
    sources = [address(f, raw) for f, raw in zip(families, keys["src"].tolist())]
    dests = [address(f, raw) for f, raw in zip(families, keys["dst"].tolist())]
    first = (values["first_seen_ns"].astype(np.int64) + mono_to_wall_ns).tolist()
    last = (values["last_seen_ns"].astype(np.int64) + mono_to_wall_ns).tolist()
    columns = zip(
        ifindexes, names, directions, families, keys["proto"].tolist(), sources, dests,
        keys["sport"].tolist(), keys["dport"].tolist(), values["packets"].tolist(),
        values["bytes"].tolist(), first, last, values["tcp_flags"].tolist(),
    )
    return [FlowRecord(interval_start, interval_end, *row) for row in columns]


# -- the wire format -------------------------------------------------------------

_RECORD_KEYS = (
    "ifname", "ifindex", "direction", "proto", "family", "src_ip", "dst_ip",
    "src_port", "dst_port", "packets", "bytes", "first_seen", "last_seen", "tcp_flags",
)
_RECORD_TYPES = (str, int, str, str, int, str, str, int, int, int, int, int, int, int)
_ENVELOPE_TYPES = {
    "schema": int, "host": str, "boot_id": str, "interval_seq": int,
    "interval_start": int, "interval_end": int, "chunk": int, "chunks": int,
    "record_offset": int, "overflow": list, "records": list,
}
_OVERFLOW_TYPES = {"ifindex": int, "ifname": str, "direction": str, "packets": int, "bytes": int}


def record_to_wire(r: FlowRecord) -> dict[str, Any]:
    return {
        "ifname": r.ifname, "ifindex": r.ifindex, "direction": r.direction,
        "proto": proto_name(r.proto), "family": r.family, "src_ip": r.src_ip,
        "dst_ip": r.dst_ip, "src_port": r.src_port, "dst_port": r.dst_port,
        "packets": r.packets, "bytes": r.bytes, "first_seen": r.first_seen,
        "last_seen": r.last_seen, "tcp_flags": r.tcp_flags,
    }


def encode_message(envelope: Envelope, records: Sequence[FlowRecord]) -> bytes:
    """Serialise one flow message: the envelope and its records, as JSON."""
    return orjson.dumps(
        {
            "schema": envelope.schema,
            "host": envelope.host,
            "boot_id": envelope.boot_id,
            "interval_seq": envelope.interval_seq,
            "interval_start": envelope.interval_start,
            "interval_end": envelope.interval_end,
            "chunk": envelope.chunk,
            "chunks": envelope.chunks,
            "record_offset": envelope.record_offset,
            "overflow": [_overflow_to_wire(o) for o in envelope.overflow],
            "records": [record_to_wire(r) for r in records],
        }
    )


def decode_message(data: bytes) -> tuple[Envelope, list[FlowRecord]]:
    """Parse and validate one flow message; raise ``MessageError`` saying what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MessageError("message is not a JSON object")
    _check_fields("envelope", doc, _ENVELOPE_TYPES)
    if doc["schema"] != SCHEMA_VERSION:
        raise MessageError(f"schema version {doc['schema']} is not {SCHEMA_VERSION}")
    envelope = Envelope(
        host=doc["host"], boot_id=doc["boot_id"], interval_seq=doc["interval_seq"],
        interval_start=doc["interval_start"], interval_end=doc["interval_end"],
        chunk=doc["chunk"], chunks=doc["chunks"], record_offset=doc["record_offset"],
        overflow=tuple(_overflow_from_wire(o) for o in doc["overflow"]),
    )
    start, end = envelope.interval_start, envelope.interval_end
    records = [_record_from_wire(r, start, end) for r in doc["records"]]
    return envelope, records


def _record_from_wire(r: Any, start: int, end: int) -> FlowRecord:
    if type(r) is not dict or len(r) != len(_RECORD_KEYS):
        raise MessageError(f"record is not an object with exactly the keys {_RECORD_KEYS}")
    try:
        values = [r[k] for k in _RECORD_KEYS]
    except KeyError as exc:
        raise MessageError(f"record lacks {exc.args[0]!r}") from None
    for key, value, kind in zip(_RECORD_KEYS, values, _RECORD_TYPES):
        if type(value) is not kind:
            raise MessageError(f"record field {key!r} is {type(value).__name__}, not {kind.__name__}")
    ifname, ifindex, direction, proto, *rest = values
    if direction not in DIRECTIONS:
        raise MessageError(f"direction {direction!r} is not ingress or egress")
    family, src, dst, sport, dport, packets, nbytes, first, last, flags = rest
    return FlowRecord(
        start, end, ifindex, ifname, direction, family, proto_number(proto), src, dst,
        sport, dport, packets, nbytes, first, last, flags,
    )


def _overflow_to_wire(o: OverflowCount) -> dict[str, Any]:
    return {"ifindex": o.ifindex, "ifname": o.ifname, "direction": o.direction,
            "packets": o.packets, "bytes": o.bytes}


def _overflow_from_wire(o: Any) -> OverflowCount:
    if type(o) is not dict:
        raise MessageError("overflow entry is not an object")
    _check_fields("overflow entry", o, _OVERFLOW_TYPES)
    return OverflowCount(o["ifindex"], o["ifname"], o["direction"], o["packets"], o["bytes"])


def _check_fields(what: str, doc: dict, types: Mapping[str, type]) -> None:
    for key, kind in types.items():
        if key not in doc:
            raise MessageError(f"{what} lacks {key!r}")
        if type(doc[key]) is not kind:
            raise MessageError(f"{what} field {key!r} is {type(doc[key]).__name__}, not {kind.__name__}")
