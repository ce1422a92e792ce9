"""The contract of connstats: what ``sink/``, ``cli/`` and any subscriber import. The
package imports nothing else of connstats (tests/test_layers.py checks it).

    from connstats.probe.contract import decode_message, flows_subject, connect, NatsOptions

- **Flow messages** (``record.py``, ``flow_batch.py``, ``wire.py``; the schema in
  ``wire_schema.py``): ``FlowBatch`` (one interval's columns; ``records()`` for per-record
  access), ``FlowRecord``, ``Envelope``, ``OverflowCount``, ``DropCount``, ``RECORD_FIELDS``,
  ``encode_message``, ``decode_message`` (schema 2, and schema 1 from older probes), the
  bounds (``TIME_MIN``, ``COUNTER_LIMIT``, ...), ``proto_name``/``proto_number``.
- **Flow intervals** (``intervals.py``, ``subscription.py``): ``IntervalAssembler`` puts the
  chunks of one interval back together (complete, expired after ``CHUNK_TIMEOUT``, at most
  ``MAX_PENDING_INTERVALS`` waiting, each chunk once) into an ``Interval``;
  ``FlowSubscription`` takes flow messages (its own core NATS subscription, or messages the
  caller fetched), decodes them, checks their host against their subject's and hands
  whole intervals to a callback: what every flow subscriber uses.
- **Events** (``events.py``) on ``connstats.v1.events.<host>``: ``Attached``, ``Detached``,
  ``Gone``, ``Replaced``, ``Lost`` (``DeviceEvent``), ``Failed``, ``HandoverLost``,
  ``OutboxOverflow``; ``event_body`` encodes one, ``decode_event`` reads one.
- **Policy violations** (``violations.py``) on ``connstats.v1.policy.<host>``:
  ``ViolationMessage``; ``encode_violation``, ``decode_violation``.
- **Alerts** (``alerts.py``) on ``connstats.v1.alerts.<host>``: ``AlertMessage``;
  ``encode_alert``, ``decode_alert``; the engine's answer of firing alerts ``FiringAlerts``
  (``encode_firing``, ``decode_firing``).
- **Bounds** (``bounded.py``): ``check_json`` (size and nesting, before any JSON decoder)
  and ``loads_toml`` (the same, then ``tomllib``), for whatever comes from outside.
- **Errors** (``errors.py``): ``ConnstatsError`` and its tree.
- **NATS** (``messaging.py``): subjects (``flows_subject``, ``events_subject``,
  ``alerts_subject``, ``control_subject``, ``host_token``/``host_from_token``; read back by
  ``host_of_subject``, ``host_mismatch`` and ``control_verb``, strictly), the flow stream
  (``STREAM_NAME``, ``StreamSettings``, ``flow_stream_config``, ``ensure_stream``), the
  message id rule (``message_id``) and the connection (``NatsOptions``, ``connect``,
  ``redacted``).
- **Control** (``control.py``): ``ControlClient``, the requests on
  ``connstats.v1.ctl.<host>.<verb>`` (the service answering them is the probe's).
- **The policy file** (``policy_file.py``): ``parse_policy`` -> ``Policy`` (its ``Group``s and
  ``PolicyRule``s) -> ``format_policy``.

A new probe service implements ``start``/``close`` against ``connstats.probe.seams.ProbePort``;
what only the sink uses (its durable consumer, the dead-letter stream) is
``connstats.sink.jetstream``. Nothing here loads BPF or opens a socket on import.
"""
from __future__ import annotations

from .alerts import AlertMessage, FiringAlerts, decode_alert, decode_firing, encode_alert, encode_firing
from .bounded import MAX_DEPTH, MAX_TOML_BYTES, check_json, loads_toml
from .control import ControlClient
from .errors import (
    ConfigError,
    ConnstatsError,
    DeviceError,
    KernelError,
    MessageError,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TransportError,
)
from .events import (
    AnyEvent,
    Attached,
    Detached,
    DeviceEvent,
    Event,
    Failed,
    Gone,
    HandoverLost,
    Lost,
    OutboxOverflow,
    Replaced,
    decode_event,
    event_body,
)
from .intervals import CHUNK_TIMEOUT, MAX_PENDING_INTERVALS, Interval, IntervalAssembler
from .messaging import (
    ALERTS_WILDCARD,
    EVENTS_WILDCARD,
    FLOWS_WILDCARD,
    HOST_KINDS,
    PREFIX,
    STREAM_NAME,
    NatsOptions,
    StreamSettings,
    alerts_subject,
    connect,
    control_subject,
    control_verb,
    ensure_stream,
    events_subject,
    flow_stream_config,
    flows_subject,
    host_from_token,
    host_mismatch,
    host_of_subject,
    host_token,
    message_id,
    policy_subject,
    redacted,
)
from .policy_file import Policy, PolicyRule, format_policy, parse_policy
from .record import (
    COUNTER_LIMIT,
    DIRECTIONS,
    IFINDEX_LIMIT,
    IFNAME_MAX,
    SCHEMA_VERSION,
    TEXT_MAX,
    TIME_MAX,
    TIME_MIN,
    VERDICTS,
    DropCount,
    Envelope,
    FlowRecord,
    OverflowCount,
    proto_name,
    proto_number,
)
from .subscription import FlowSubscription
from .violations import ViolationMessage, decode_violation, encode_violation
from .wire import RECORD_FIELDS, FlowBatch, decode_message, encode_message

__all__ = [
    # flow messages
    "COUNTER_LIMIT", "DIRECTIONS", "IFINDEX_LIMIT", "IFNAME_MAX", "RECORD_FIELDS", "SCHEMA_VERSION", "TEXT_MAX",
    "TIME_MAX", "TIME_MIN", "VERDICTS", "DropCount", "Envelope", "FlowBatch", "FlowRecord", "OverflowCount", "decode_message",
    "encode_message", "proto_name", "proto_number",
    # flow intervals
    "CHUNK_TIMEOUT", "MAX_PENDING_INTERVALS", "FlowSubscription", "Interval", "IntervalAssembler",
    # events
    "AnyEvent", "Attached", "DeviceEvent", "Detached", "Event", "Failed", "Gone", "HandoverLost", "Lost",
    "OutboxOverflow", "Replaced", "decode_event", "event_body",
    # policy violations, alerts
    "ViolationMessage", "decode_violation", "encode_violation",
    "AlertMessage", "FiringAlerts", "decode_alert", "decode_firing", "encode_alert", "encode_firing",
    # bounds
    "MAX_DEPTH", "MAX_TOML_BYTES", "check_json", "loads_toml",
    # errors
    "ConfigError", "ConnstatsError", "DeviceError", "KernelError", "MessageError",
    "StoreError", "StoreFull", "StoreUnavailable", "TransportError",
    # NATS
    "ALERTS_WILDCARD", "EVENTS_WILDCARD", "FLOWS_WILDCARD", "HOST_KINDS", "PREFIX", "STREAM_NAME", "NatsOptions",
    "StreamSettings", "alerts_subject", "connect", "control_subject", "control_verb", "ensure_stream", "events_subject",
    "flow_stream_config", "flows_subject", "host_from_token", "host_mismatch", "host_of_subject", "host_token",
    "message_id", "policy_subject", "redacted",
    # control, policy file
    "ControlClient", "Policy", "PolicyRule", "format_policy", "parse_policy",
]
