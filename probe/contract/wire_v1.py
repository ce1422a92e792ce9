"""Schema 1 of the flow message: one object per record (rows), as probes before schema 2
sent. The sink still reads it (``decode_message`` in ``wire`` hands it to ``batch_v1``); the
control plane's ``stats`` reply uses its row shape (``record_to_wire``).
"""
from __future__ import annotations

from operator import attrgetter
from typing import Sequence

import msgspec

from .errors import MessageError
from .flow_batch import FlowBatch, devices_of
from .record import (
    PROTO_NUMBERS,
    Address,
    Count,
    Direction,
    DropReason,
    Envelope,
    Family,
    FlowRecord,
    Ident,
    IfIndex,
    IfName,
    Micros,
    Pid,
    Port,
    ProcessName,
    ProtoText,
    Runtime,
    Text,
    Time,
    Verdict,
    proto_name,
    proto_number,
)
from .wire_checks import check_addresses
from .wire_schema import FLOW_COLUMNS, FlowColumns, WireEnvelope, overflow_to_wire


class RecordV1(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
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
    # The control plane's stats rows carry these, when set; v1 messages never did.
    verdict: Verdict = ""
    pod: Text = ""
    workload: Text = ""
    runtime: Runtime = ""
    process: ProcessName = ""
    pid: Pid = 0
    peer_process: ProcessName = ""
    peer_pid: Pid = 0
    rtt_min_us: Micros = 0
    rtt_avg_us: Micros = 0
    rtt_max_us: Micros = 0
    retransmits: Count = 0
    drop_packets: Count = 0
    drop_bytes: Count = 0
    drop_reason: DropReason = ""


class MessageV1(WireEnvelope, tag=1):
    records: list[RecordV1]


_encoder = msgspec.json.Encoder()


def record_to_wire(r: FlowRecord) -> RecordV1:
    """One record as a schema 1 row (the control plane's ``stats`` reply uses this shape)."""
    return RecordV1(r.ifname, r.ifindex, r.direction, proto_name(r.proto), r.family, r.src_ip,
                    r.dst_ip, r.src_port, r.dst_port, r.packets, r.bytes, r.first_seen,
                    r.last_seen, r.tcp_flags, r.container_id, r.container_name, r.container_image,
                    r.verdict, r.pod, r.workload, r.runtime, r.process, r.pid, r.peer_process, r.peer_pid,
                    r.rtt_min_us, r.rtt_avg_us, r.rtt_max_us, r.retransmits, r.drop_packets, r.drop_bytes,
                    r.drop_reason)


def encode_message_v1(envelope: Envelope, records: Sequence[FlowRecord]) -> bytes:
    """A schema 1 message, as probes before schema 2 sent (for tests of the sink)."""
    wire = [record_to_wire(r) for r in records]
    return _encoder.encode(MessageV1(
        envelope.host, envelope.boot_id, envelope.interval_seq, envelope.interval_start,
        envelope.interval_end, envelope.chunk, envelope.chunks, envelope.record_offset,
        overflow_to_wire(envelope.overflow), wire,
    ))


_V1_COLUMNS = {name: attrgetter(name) for name in FLOW_COLUMNS}


def batch_v1(envelope: Envelope, records: list[RecordV1]) -> FlowBatch:
    """The decoded rows of a schema 1 message as a batch of columns, checked like schema 2."""
    columns = FlowColumns(*(list(map(_V1_COLUMNS[name], records)) for name in FLOW_COLUMNS))
    columns.proto = list(map(_PROTOCOLS.__getitem__, map(_V1_COLUMNS["proto"], records)))  # text to number
    check_addresses(columns.family, {"src_ip": columns.src_ip, "dst_ip": columns.dst_ip}, "$.records")
    return FlowBatch(envelope, columns, devices_of(records, MessageError))


class _ProtocolNumbers(dict[str, int]):
    """Protocol text -> number; a text not seen before is checked by ``proto_number``."""

    def __missing__(self, name: str) -> int:
        number = proto_number(name)
        if len(self) < 4096:
            self[name] = number
        return number


_PROTOCOLS = _ProtocolNumbers(PROTO_NUMBERS)
