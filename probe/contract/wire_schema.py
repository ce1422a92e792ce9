"""The flow message's schema 2, declared once as msgspec structs: ``FlowColumns`` names the
columns of a flow and their types, ``Device`` a device of the message, ``WireEnvelope`` the
envelope and ``MessageV2`` the whole message. Decoding into these checks every type and bound
in C; the rules that span fields are in ``wire_checks``. Schema 1 (rows) is in ``wire_v1``.
"""
from __future__ import annotations

from typing import Annotated, Sequence

import msgspec

from .record import (
    IFINDEX_LIMIT,
    SCHEMA_VERSION,
    TEXT_MAX,
    Address,
    Count,
    Direction,
    Family,
    FlowRecord,
    Ident,
    IfIndex,
    IfName,
    OverflowCount,
    Port,
    Text,
    Time,
    Verdict,
)

ProtoNumber = Annotated[int, msgspec.Meta(ge=0, le=255)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_MAX)]
Chunk = Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
Chunks = Annotated[int, msgspec.Meta(ge=1, le=IFINDEX_LIMIT)]


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
    # Added in schema 2 without a version bump: a message without it (a probe before
    # policies, or one where no device is governed) means "" for every record.
    verdict: list[Verdict] = []


FLOW_COLUMNS: tuple[str, ...] = FlowColumns.__struct_fields__
OPTIONAL_COLUMNS = ("verdict",)  # may be absent from a message: all "" then
DEVICE_FIELDS = ("ifname", "container_id", "container_name", "container_image")
INTERVAL_FIELDS = ("interval_start", "interval_end")
RECORD_FIELDS: tuple[str, ...] = tuple(FlowRecord.__dataclass_fields__)
assert set(RECORD_FIELDS) == {*FLOW_COLUMNS, *DEVICE_FIELDS, *INTERVAL_FIELDS}


class Device(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A device that records of the message were counted on, and who is behind it."""

    ifindex: IfIndex
    ifname: IfName
    container_id: Ident = ""
    container_name: Text = ""
    container_image: Text = ""


class WireOverflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: IfIndex
    ifname: IfName
    direction: Direction
    packets: Count
    bytes: Count


class WireEnvelope(msgspec.Struct, forbid_unknown_fields=True, tag_field="schema"):
    """What every schema's message carries around its records; ``schema`` is the tag."""

    host: Host
    boot_id: Ident
    interval_seq: Count
    interval_start: Time
    interval_end: Time
    chunk: Chunk
    chunks: Chunks
    record_offset: Chunk
    overflow: list[WireOverflow]


class MessageV2(WireEnvelope, tag=SCHEMA_VERSION):
    devices: list[Device]
    flows: FlowColumns


def overflow_to_wire(overflow: Sequence[OverflowCount]) -> list[WireOverflow]:
    return [WireOverflow(o.ifindex, o.ifname, o.direction, o.packets, o.bytes) for o in overflow]
