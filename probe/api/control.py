"""The probe's control plane: NATS request/reply on ``connstats.v1.ctl.<host>.<verb>``.

    connstats attach eth0 ──request──> connstats.v1.ctl.<host>.attach ──> ControlService
                          <──reply──── {"ok": true, "device": {...}}      └─> ProbeDaemon.attach

Verbs and their request bodies (JSON objects; an empty body is ``{}``):

    attach  {"iface": NAME, "direction": "auto"|"normal"|"inverted"}  -> {"device": DEVICE}
    detach  {"iface": NAME}                                            -> {"device": DEVICE}
    list    {}                                                         -> {"devices": [DEVICE]}
    stats   {"iface": NAME?, "limit": N?}  the current, unpublished interval
            -> {"interval_start", "now", "connections", "packets", "bytes", "records": [...]}
    ping    {}                                                         -> {"host", "devices"}
    policy_apply {"text": TOML, "mode": "monitor"|"protect", "source": NAME?,
                  "within_ms": N?, "deadline_ms": UNIX_MS?}   done by then or not at all
                                     -> {"mode", "groups", "rules", "governed": [...]}
    policy_show  {}                  -> the same and "text";   policy_off {} -> {"mode": "off", ...}
                 (answered by probe/policy/service.py)

Every reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "kind": "DeviceError"}``;
a malformed request gets an error reply and never stops the service.
``ControlClient`` (``connstats.probe.contract.control``) turns the replies, "no responders",
timeouts and NATS permission violations into ``ConnstatsError``s with one-line messages.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar, overload

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..contract.bounded import check_json
from ..contract.errors import ConfigError, ConnstatsError, DeviceError, MessageError, TransportError
from ..contract.messaging import PREFIX, NatsOptions, connect, control_verb, host_token
from ..contract.wire_v1 import record_to_wire
from ..kernel.devices import AttachedDevice
from ..seams import ProbePort

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]  # a request's or a reply's body: any JSON values
Verb = Callable[[JsonObject], Awaitable[JsonObject]]  # a request's body -> the reply's

VERBS = ("attach", "detach", "list", "stats", "ping")
DEFAULT_STATS_LIMIT = 1000
MAX_REQUEST_BYTES = 1024 * 1024  # NATS' default max_payload; a policy text fits
MAX_IN_FLIGHT = 64  # requests answered at once; more get an error reply


def device_to_wire(device: AttachedDevice) -> dict[str, Any]:
    """A device in a reply: ``AttachedDevice.to_wire``, the one JSON shape of a device."""
    return device.to_wire()


class ControlService:
    """Answers control requests for one host; a probe ``Service`` (``start``/``close``)
    that sees the probe through ``ProbePort`` (``self.probe``)."""

    def __init__(self, probe: ProbePort, options: NatsOptions, host: str,
                 more: dict[str, Verb] | None = None) -> None:
        self.probe = probe
        self.options = options
        self.host = host
        self.subject = f"{PREFIX}.ctl.{host_token(host)}.*"
        self._nc: Client | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Verb] = {
            "attach": self._attach, "detach": self._detach, "list": self._list,
            "stats": self._stats, "ping": self._ping, **(more or {}),
        }

    async def start(self) -> None:
        self._nc = await connect(self.options, name="connstats-control")
        await self._nc.subscribe(self.subject, cb=self._on_request)
        await self._nc.flush()
        log.info("control plane listening on %s", self.subject)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await asyncio.gather(*self._serving, return_exceptions=True)  # answered; an apply ends by its deadline
            try:
                await self._nc.drain()
            except (nats.errors.Error, asyncio.TimeoutError, OSError):
                await self._nc.close()

    async def _on_request(self, msg: Msg) -> None:
        """Each request in a task of its own (nats-py runs one subscription's callbacks one
        after the other): `policy show` is answered, and a newer apply can supersede an
        older one, while a large policy compiles."""
        if len(self._serving) >= MAX_IN_FLIGHT:
            await self._respond(msg, _failure(TransportError(
                f"the probe is answering {MAX_IN_FLIGHT} requests already; try again in a moment")))
            return
        task = asyncio.create_task(self._serve(msg), name="control-request")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, msg: Msg) -> None:
        verb = control_verb(msg.subject, self.host)
        if verb is None:  # a verb token that control_subject does not write
            await self._respond(msg, _failure(ConfigError(
                f"subject {msg.subject} is not {self.subject[:-1]}<verb>; send requests with ControlClient")))
            return
        await self._respond(msg, await self.answer(verb, msg.data))

    async def _respond(self, msg: Msg, reply: JsonObject) -> None:
        if not msg.reply:
            return
        data = msgspec.json.encode(reply)
        max_payload = _max_payload(self._nc)
        if len(data) > max_payload:  # e.g. `policy show` of a policy near the limit
            data = msgspec.json.encode(_failure(TransportError(
                f"the reply is {len(data):,} bytes, more than the {max_payload:,} bytes the NATS server "
                "takes in one message (max_payload); raise max_payload in the server's configuration")))
        try:
            await msg.respond(data)
        except (nats.errors.Error, OSError) as exc:
            log.warning("control reply on %s not sent: %r", msg.subject, exc)

    async def answer(self, verb: str, data: bytes) -> JsonObject:
        """The reply to one request; never raises."""
        handler = self._handlers.get(verb)
        if handler is None:
            return _failure(ConfigError(f"unknown control verb {verb!r}; use one of {', '.join(self._handlers)}"))
        try:
            body = _request_body(data)
            return {"ok": True, **await handler(body)}
        except ConnstatsError as exc:
            return _failure(exc)
        except Exception as exc:  # a bug must not take the probe down with it
            log.exception("control %s failed", verb)
            return {"ok": False, "error": f"internal error in the probe: {exc!r}; see the probe's log",
                    "kind": "ConnstatsError"}

    # -- the verbs ----------------------------------------------------------------------

    async def _attach(self, body: JsonObject) -> JsonObject:
        device = await self.probe.attach(_text(body, "iface"), _text(body, "direction", "auto"))
        return {"device": device_to_wire(device)}

    async def _detach(self, body: JsonObject) -> JsonObject:
        device = await self.probe.detach(_text(body, "iface"))
        return {"device": device_to_wire(device)}

    async def _list(self, body: JsonObject) -> JsonObject:
        return {"devices": [device_to_wire(d) for d in self.probe.devices()]}

    async def _ping(self, body: JsonObject) -> JsonObject:
        return {"host": self.host, "devices": len(self.probe.devices())}

    async def _stats(self, body: JsonObject) -> JsonObject:
        iface = _text(body, "iface", None)
        limit = body.get("limit", DEFAULT_STATS_LIMIT)
        if type(limit) is not int or limit < 0:
            raise ConfigError("limit must be a non-negative integer")
        if iface is not None and iface not in {d.name for d in self.probe.devices()}:
            raise DeviceError(f"{iface!r} is not attached; see `connstats list`")
        live = (await self.probe.live_records()).on_device(iface)
        reply = {
            "interval_start": live.envelope.interval_start if len(live) else None,
            "now": live.envelope.interval_end if len(live) else None,
            "connections": len(live), "packets": sum(live.column("packets")),
            "bytes": sum(live.column("bytes")),
            "records": [record_to_wire(r) for r in live.busiest(limit).records()],
        }
        return self._fitting(reply)

    def _fitting(self, reply: JsonObject) -> JsonObject:
        """Drop the smallest records until the reply fits the server's max_payload."""
        room = _max_payload(self._nc) - 1024
        while reply["records"] and len(msgspec.json.encode(reply)) > room:
            reply["records"] = reply["records"][: len(reply["records"]) // 2]
        return reply


def control_service(options: NatsOptions, host: str,
                    more: dict[str, Verb] | None = None,
                    ) -> Callable[[ProbePort], ControlService]:
    """A ``ServiceFactory`` for ``DaemonSettings.services``; ``more`` verbs from other
    services (the policy's ``policy_apply``, ``policy_show``, ``policy_off``)."""
    return lambda probe: ControlService(probe, options, host, more)


def _max_payload(nc: Client | None) -> int:
    """The most bytes the server takes in one message; NATS' default before connecting."""
    return nc.max_payload if nc else 1 << 20


def _request_body(data: bytes) -> JsonObject:
    if not data.strip():
        return {}
    try:
        check_json(data, MAX_REQUEST_BYTES)
        body = msgspec.json.decode(data)
    except MessageError as exc:
        raise ConfigError(f"the request is {exc}") from None
    except msgspec.DecodeError:
        raise ConfigError("the request is not JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise ConfigError("the request is not a JSON object; send a JSON object")
    return body


_REQUIRED = object()


_Default = TypeVar("_Default")


@overload
def _text(body: JsonObject, key: str) -> str: ...
@overload
def _text(body: JsonObject, key: str, default: _Default) -> str | _Default: ...
def _text(body: JsonObject, key: str, default: object = _REQUIRED) -> object:
    """``body[key]``, a string; ``default`` if it is absent (required without one)."""
    value = body.get(key, default)
    if value is _REQUIRED:
        raise ConfigError(f"the request lacks {key!r}")
    if value is not default and not isinstance(value, str):
        raise ConfigError(f"{key!r} must be a string")
    return value


def _failure(exc: ConnstatsError) -> JsonObject:
    return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
