"""The flow message's schema 2, declared once as msgspec structs: ``FlowColumns`` names the
columns of a flow and their types, ``Device`` a device of the message, ``WireEnvelope`` the
envelope and ``MessageV2`` the whole message. Decoding into these checks every type and bound
in C; the rules that span fields are in ``wire_checks``. Schema 1 (rows) is in ``wire_v1``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Sequence, TypeVar

import msgspec
import numpy as np

from .record import (
    IFINDEX_LIMIT,
    SCHEMA_VERSION,
    TEXT_MAX,
    Address,
    Count,
    Direction,
    DropCount,
    DropReason,
    Family,
    FlowRecord,
    Ident,
    IfIndex,
    IfName,
    Micros,
    OverflowCount,
    Pid,
    Port,
    ProcessName,
    Runtime,
    Text,
    Time,
    Verdict,
)

ProtoNumber = Annotated[int, msgspec.Meta(ge=0, le=255)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_MAX)]
Chunk = Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
Chunks = Annotated[int, msgspec.Meta(ge=1, le=IFINDEX_LIMIT)]

_T = TypeVar("_T")
if TYPE_CHECKING:
    from numpy.typing import NDArray

    # A column is a list where it was decoded from a message or made from records, a numpy
    # array where the probe built it from the kernel's arrays (``FlowBatch.from_arrays``).
    Column = list[_T] | NDArray[np.generic]
else:
    Column = list  # what msgspec decodes a column into (it knows no numpy arrays)


class FlowColumns(msgspec.Struct, forbid_unknown_fields=True):
    """One list (or numpy array: ``Column``) per field of a flow; entry i of every one is record i."""

    ifindex: Column[IfIndex]
    direction: Column[Direction]
    family: Column[Family]
    proto: Column[ProtoNumber]
    src_ip: Column[Address]
    dst_ip: Column[Address]
    src_port: Column[Port]
    dst_port: Column[Port]
    packets: Column[Count]
    bytes: Column[Count]
    first_seen: Column[Time]
    last_seen: Column[Time]
    tcp_flags: Column[Count]
    # Added in schema 2 without a version bump: a message without it (a probe before
    # policies, or one where no device is governed) means "" for every record.
    verdict: Column[Verdict] = []
    # Added in schema 2 without a version bump, like verdict: absent when no record names a
    # process (a probe before identity, or one with processes off).
    process: Column[ProcessName] = []
    pid: Column[Pid] = []
    peer_process: Column[ProcessName] = []
    peer_pid: Column[Pid] = []
    # Added in schema 2 without a version bump, like verdict: absent when no record has one
    # (a probe before quality, or one with the quality hooks off).
    rtt_min_us: Column[Micros] = []
    rtt_avg_us: Column[Micros] = []
    rtt_max_us: Column[Micros] = []
    retransmits: Column[Count] = []
    drop_packets: Column[Count] = []
    drop_bytes: Column[Count] = []
    drop_reason: Column[DropReason] = []


FLOW_COLUMNS: tuple[str, ...] = FlowColumns.__struct_fields__
# May be absent from a message: each column's empty value for every record then.
OPTIONAL_COLUMNS: dict[str, str | int] = {"verdict": "", "process": "", "pid": 0, "peer_process": "",
                                           "peer_pid": 0, "rtt_min_us": 0, "rtt_avg_us": 0, "rtt_max_us": 0,
                                           "retransmits": 0, "drop_packets": 0, "drop_bytes": 0,
                                           "drop_reason": ""}
PROCESS_COLUMNS = ("process", "pid", "peer_process", "peer_pid")
QUALITY_COLUMNS = ("rtt_min_us", "rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets", "drop_bytes",
                   "drop_reason")
DEVICE_FIELDS = ("ifname", "container_id", "container_name", "container_image", "pod", "workload",
                 "runtime")
INTERVAL_FIELDS = ("interval_start", "interval_end")
RECORD_FIELDS: tuple[str, ...] = tuple(FlowRecord.__dataclass_fields__)
assert set(RECORD_FIELDS) == {*FLOW_COLUMNS, *DEVICE_FIELDS, *INTERVAL_FIELDS}


class Device(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A device that records of the message were counted on, and who is behind it (an
    ``Owner``'s fields). Empty fields are left out of the message, so a device without a pod
    encodes as before pods were added, and sinks from before read it."""

    ifindex: IfIndex
    ifname: IfName
    container_id: Ident = ""
    container_name: Text = ""
    container_image: Text = ""
    pod: Text = ""
    workload: Text = ""
    runtime: Runtime = ""


class WireOverflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: IfIndex
    ifname: IfName
    direction: Direction
    packets: Count
    bytes: Count


class WireDrop(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ifindex: IfIndex
    ifname: IfName
    reason: DropReason
    packets: Count
    bytes: Count


class WireEnvelope(msgspec.Struct, forbid_unknown_fields=True, tag_field="schema", omit_defaults=True):
    """What every schema's message carries around its records; ``schema`` is the tag.
    ``drops`` (added in schema 2 without a version bump) is left out when empty, so sinks
    from before read a message without drops."""

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
    drops: list[WireDrop] = []


class OutgoingV2(WireEnvelope, tag=SCHEMA_VERSION):
    """``MessageV2`` as the probe encodes it (same keys, same order): ``flows`` may be JSON
    already (``wire.encode_flows``), so that chunks are sized before their envelope is known."""

    devices: list[Device]
    flows: FlowColumns | msgspec.Raw
    drops: list[WireDrop] = []


def overflow_to_wire(overflow: Sequence[OverflowCount]) -> list[WireOverflow]:
    return [WireOverflow(o.ifindex, o.ifname, o.direction, o.packets, o.bytes) for o in overflow]


def drops_to_wire(drops: Sequence[DropCount]) -> list[WireDrop]:
    return [WireDrop(d.ifindex, d.ifname, d.reason, d.packets, d.bytes) for d in drops]
