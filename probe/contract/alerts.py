"""Alert messages, one type, published as JSON on ``connstats.v1.alerts.<host>`` (stream
``CONNSTATS_ALERTS``) by the alert engine (``connstats.sink.alerts``); docs/alerts.md.

    {"fingerprint", "state": "firing"|"resolved", "rule", "kind", "severity", "host",
     "labels": {...}, "value", "threshold", "summary", "description",
     "started_at", "ended_at", "sent_at", "repeat_ns", "engine"}

Every field is always there, in this order (``threshold`` may be ``null``); times are
integer nanoseconds since the epoch, UTC (``ended_at`` 0 while firing). ``value`` and
``threshold`` stay what they were made as: an integer is sent as one (``184220``), a float
as one (``7.25``). The engine's answer on ``connstats.v1.ctl._alerts.firing`` is a
``FiringAlerts``: its host and the alert messages firing now.

``encode_alert``/``decode_alert`` and ``encode_firing``/``decode_firing`` are the one
encoder and decoder of each; a decoder checks every type and bound, or raises a one-line
``MessageError``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

from .bounded import check_json
from .errors import MessageError, one_line

Nanos = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Number = Union[int, float]  # int first: a JSON integer reads back as an int
MAX_ALERT_BYTES = 1024 * 1024  # NATS' default max_payload: a bigger alert is not published there
MAX_FIRING_BYTES = 64 * 1024 * 1024  # the largest max_payload a NATS server accepts


class AlertMessage(msgspec.Struct, kw_only=True):
    """One alert of one rule's group, as sent when it fires, is re-sent, or resolves."""

    fingerprint: str  # 16 hex digits of SHA-256 over the rule name and the group labels
    state: Literal["firing", "resolved"]
    rule: str
    kind: str
    severity: str
    host: str  # whose data raised it, or the engine's host
    labels: dict[str, str]  # alertname, severity and the group's fields as text
    value: Number
    threshold: Number | None
    summary: str
    description: str
    started_at: Nanos
    ended_at: Nanos  # 0 while firing
    sent_at: Nanos
    repeat_ns: Nanos  # a firing alert not sent again within 4 x this is stale
    engine: str  # the engine's host (--host)


class FiringAlerts(msgspec.Struct, kw_only=True):
    """The engine's answer on ``connstats.v1.ctl._alerts.firing``."""

    engine: str
    alerts: list[AlertMessage]


def encode_alert(alert: AlertMessage) -> bytes:
    """The JSON of ``alert``, its fields in the order above."""
    return msgspec.json.encode(alert)


def encode_firing(firing: FiringAlerts) -> bytes:
    return msgspec.json.encode(firing)


_ALERT = msgspec.json.Decoder(AlertMessage)
_FIRING = msgspec.json.Decoder(FiringAlerts)


def decode_alert(data: bytes) -> AlertMessage:
    """One message from ``connstats.v1.alerts.<host>``; raises ``MessageError`` saying why not."""
    check_json(data, MAX_ALERT_BYTES)
    try:
        return _ALERT.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not an alert message: {one_line(exc)}") from None


def decode_firing(data: bytes) -> FiringAlerts:
    """The engine's answer of firing alerts; raises ``MessageError`` saying why not."""
    check_json(data, MAX_FIRING_BYTES)
    try:
        return _FIRING.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not the alert engine's answer: {one_line(exc)}") from None
