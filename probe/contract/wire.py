"""Flow messages on the wire: ``encode_message`` and ``decode_message`` turn a ``FlowBatch``
into bytes and back. The probe sends schema 2 (columnar); schema 1 (rows) is still read.

A schema 2 message is one JSON object: the envelope, the devices of its records (each once,
with their container labels) and ``flows``, one array per field, all of the same length::

    {"schema": 2, "host": ..., ..., "overflow": [...],
     "devices": [{"ifindex": 7, "ifname": "veth0", "container_id": ..., ...}],
     "flows": {"ifindex": [7, 7], "direction": ["egress", "ingress"], ...}}

Where each part lives:

- ``wire_schema``: the schema, declared once as msgspec structs (``FlowColumns`` names the
  columns and types of every field); decoding checks every type and bound in C;
- ``wire_checks``: the rules that span fields (equal column lengths, a device per ifindex,
  family and addresses, interval and chunk), checked after, column-wise;
- ``flow_batch``: ``FlowBatch``, the columnar batch that probe, sink and CLI pass around;
- ``wire_v1``: schema 1, its rows and their reader and writer.

This module exports all of their public names, so ``from connstats.probe.contract.wire import ...``
is the one import a caller needs.
"""
from __future__ import annotations

from typing import Sequence, TypeVar, Union

import msgspec
import numpy as np
import orjson

from .bounded import check_json
from .errors import MessageError
from .flow_batch import FlowBatch, any_set
from .record import SCHEMA_VERSION, DropCount, Envelope, OverflowCount
from .wire_checks import check_addresses, check_columns, check_envelope, schema_reason
from .wire_schema import (
    DEVICE_FIELDS,
    FLOW_COLUMNS,
    INTERVAL_FIELDS,
    OPTIONAL_COLUMNS,
    RECORD_FIELDS,
    Chunk,
    Chunks,
    Column,
    Device,
    FlowColumns,
    Host,
    MessageV2,
    OutgoingV2,
    ProtoNumber,
    drops_to_wire,
    overflow_to_wire,
)
from .wire_v1 import MessageV1, batch_v1, encode_message_v1, record_to_wire

__all__ = [
    "DEVICE_FIELDS", "FLOW_COLUMNS", "INTERVAL_FIELDS", "RECORD_FIELDS", "Chunk", "Chunks", "Device",
    "FlowBatch", "FlowColumns", "Host", "ProtoNumber", "decode_message", "encode_chunk",
    "encode_flows", "encode_message", "encode_message_v1", "record_to_wire",
]

_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Union[MessageV2, MessageV1])


# -- encoding -----------------------------------------------------------------------------------


def encode_message(batch: FlowBatch) -> bytes:
    """Serialise one flow message (schema 2): the envelope, its devices and its columns."""
    return encode_chunk(batch.envelope, batch.devices, encode_flows(batch.columns))


def encode_flows(columns: FlowColumns) -> msgspec.Raw:
    """The ``flows`` object alone, to size chunks before their envelope is known.

    Numeric numpy columns go to orjson, which writes them in C without a Python int per
    value (5x faster than ``tolist`` + encode, same bytes); text columns are lists."""
    doc = {name: _json_ready(getattr(columns, name)) for name in FLOW_COLUMNS}
    for name in OPTIONAL_COLUMNS:  # nobody governed, no process, no RTT known: what old sinks read too
        if not any_set(getattr(columns, name)):
            del doc[name]
    return msgspec.Raw(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def _json_ready(column: Column[_T]) -> Column[_T]:
    if isinstance(column, np.ndarray):
        return np.ascontiguousarray(column) if column.dtype != object else column.tolist()
    return column


def encode_chunk(envelope: Envelope, devices: Sequence[Device], flows: FlowColumns | msgspec.Raw) -> bytes:
    """One message of ``envelope`` and ``devices`` around columns (or ``encode_flows``' bytes)."""
    return _encoder.encode(OutgoingV2(
        envelope.host, envelope.boot_id, envelope.interval_seq, envelope.interval_start,
        envelope.interval_end, envelope.chunk, envelope.chunks, envelope.record_offset,
        overflow_to_wire(envelope.overflow), list(devices), flows, drops_to_wire(envelope.drops),
    ))


# -- decoding -----------------------------------------------------------------------------------


def decode_message(data: bytes) -> FlowBatch:
    """Parse and validate one flow message of schema 1 or 2; raise ``MessageError`` saying
    what is wrong. Iterate the batch (or call ``records()``) for ``FlowRecord``s."""
    check_json(data)  # a decoder recurses per level: 1,000 levels are a RecursionError
    try:
        doc = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageError(schema_reason(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    check_envelope(doc)
    envelope = Envelope(
        host=doc.host, boot_id=doc.boot_id, interval_seq=doc.interval_seq,
        interval_start=doc.interval_start, interval_end=doc.interval_end, chunk=doc.chunk,
        chunks=doc.chunks, record_offset=doc.record_offset,
        overflow=tuple(OverflowCount(o.ifindex, o.ifname, o.direction, o.packets, o.bytes)
                       for o in doc.overflow),
        schema=SCHEMA_VERSION if isinstance(doc, MessageV2) else 1,
        drops=tuple(DropCount(d.ifindex, d.ifname, d.reason, d.packets, d.bytes)
                    for d in getattr(doc, "drops", ())),
    )
    if isinstance(doc, MessageV2):
        return _batch_v2(envelope, doc)
    return batch_v1(envelope, doc.records)


def _batch_v2(envelope: Envelope, doc: MessageV2) -> FlowBatch:
    columns = doc.flows
    if columns.ifindex:
        for name, empty in OPTIONAL_COLUMNS.items():
            if not getattr(columns, name):  # sent without the column: nobody governed, no process, ...
                setattr(columns, name, [empty] * len(columns.ifindex))
    check_columns(columns, doc.devices)
    check_addresses(columns.family, {"src_ip": columns.src_ip, "dst_ip": columns.dst_ip}, "$.flows")
    return FlowBatch(envelope, columns, tuple(doc.devices))
