"""The probe's events, one type each, published as JSON on ``connstats.v1.events.<host>``.

    attached, detached, gone, replaced, lost   a device (``DeviceEvent``): who is behind it
    failed                                     an attach that will be retried (``Failed``)
    handover_lost                              counts an upgrade could not read (``HandoverLost``)
    outbox_overflow                            messages dropped during an outage (``OutboxOverflow``)

Every body is an object whose ``event`` names its type, plus ``host`` and ``time_ns``
(set by the publisher). Fields that do not apply are left out. ``event_body`` is the one
encoder; ``decode_event`` reads a body back for subscribers.
"""
from __future__ import annotations

from typing import Any, Protocol, Union

import msgspec

from .bounded import check_json
from .errors import MessageError, one_line


class WireDevice(Protocol):
    """A device that has the one JSON shape of a device (the probe's ``AttachedDevice``); the
    contract names only what it reads, so a subscriber importing the events needs no netlink."""

    def to_wire(self) -> dict[str, Any]: ...


class Event(msgspec.Struct, tag_field="event", omit_defaults=True, kw_only=True):
    host: str | None = None  # set by the publisher
    time_ns: int | None = None  # set by the publisher


class DeviceEvent(Event, kw_only=True):
    """A device came or went; ``source`` says who asked (iface, auto, docker, adopted, none:
    the control plane or the HTTP API), the owner fields who is behind a veth."""

    ifname: str
    ifindex: int
    direction_mode: str | None = None
    inverted: bool | None = None
    source: str | None = None
    netns: int | None = None
    netns_name: str | None = None
    pid: int | None = None
    container_id: str | None = None
    container_name: str | None = None
    container_image: str | None = None
    pod: str | None = None
    workload: str | None = None
    runtime: str | None = None
    hooks: dict[str, Any] | None = None  # replaced/lost: what is in our place now, per hook


class Attached(DeviceEvent, tag="attached"):
    pass


class Detached(DeviceEvent, tag="detached"):
    pass


class Gone(DeviceEvent, tag="gone"):
    """The device was deleted (or renamed, or made anew)."""


class Replaced(DeviceEvent, tag="replaced"):
    """Somebody else's filter is in our place."""


class Lost(DeviceEvent, tag="lost"):
    """Our filter was removed."""


class Failed(DeviceEvent, tag="failed", kw_only=True):
    """An attach that failed and will be tried again in ``retry_in`` seconds."""

    reason: str
    attempt: int
    retry_in: float


class HandoverLost(Event, tag="handover_lost", kw_only=True):
    layout: str
    connections: int
    packets: int | None = None
    bytes: int | None = None


class OutboxOverflow(Event, tag="outbox_overflow", kw_only=True):
    dropped_messages: int
    dropped_records: int
    dropped_since_last_report: int


DEVICE_EVENTS: dict[str, type[DeviceEvent]] = {
    str(cls.__struct_config__.tag): cls for cls in (Attached, Detached, Gone, Replaced, Lost)}

AnyEvent = Union[Attached, Detached, Gone, Replaced, Lost, Failed, HandoverLost, OutboxOverflow]


def device_event(kind: str, device: WireDevice, **context: Any) -> DeviceEvent:
    """``kind`` (attached, detached, gone, replaced, lost) of ``device``; ``context`` are the
    optional ``DeviceEvent`` fields (a misspelt one raises ``TypeError``)."""
    wire = device.to_wire()  # the one shape of a device; events name its fields as before
    return DEVICE_EVENTS[kind](ifname=wire["name"], ifindex=wire["ifindex"], direction_mode=wire["mode"],
                               inverted=wire["direction"] == "inverted", **context)


def event_body(event: Event) -> dict[str, Any]:
    """The JSON object of ``event`` (without the fields that do not apply)."""
    body: dict[str, Any] = msgspec.to_builtins(event)  # a struct: an object
    return body


_DECODER = msgspec.json.Decoder(AnyEvent)
MAX_EVENT_BYTES = 16 * 1024  # an event is a few hundred bytes


def decode_event(data: bytes) -> AnyEvent:
    """One event body from ``connstats.v1.events.<host>``; raises ``MessageError`` saying why not."""
    check_json(data, MAX_EVENT_BYTES)
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not an event: {one_line(exc)}") from None
