"""The control-request client: sends a request on ``connstats.v1.ctl.<host>.<verb>`` to the
probe of one host and turns its reply, "no responders", timeouts and NATS permission
violations into ``ConnstatsError``s with one-line messages. The verbs and their bodies are
described in ``connstats.probe.api.control`` (the service that answers them).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from . import errors
from .bounded import check_json
from .errors import ConnstatsError, MessageError, TransportError
from .messaging import NatsOptions, connect, control_subject, redacted

log = logging.getLogger(__name__)


_ERROR_KINDS = {cls.__name__: cls for cls in vars(errors).values()
                if isinstance(cls, type) and issubclass(cls, ConnstatsError)}


class ControlClient:
    """Sends control requests to the probe of one host; ``async with ControlClient(...) as c``."""

    def __init__(self, options: NatsOptions, host: str, timeout: float = 5.0) -> None:
        self.options = options
        self.host = host
        self.timeout = timeout
        self._nc: Client | None = None
        self._refused: asyncio.Future[str] | None = None  # NATS's permissions violation

    async def __aenter__(self) -> ControlClient:
        self._refused = asyncio.get_running_loop().create_future()
        self._nc = await connect(self.options, name="connstats-cli", error_cb=self._on_error,
                                 allow_reconnect=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._nc is not None:
            await self._nc.close()

    @property
    def _client(self) -> Client:
        if self._nc is None:
            raise RuntimeError("a ControlClient is used as `async with ControlClient(...) as client`")
        return self._nc

    @property
    def _refusal(self) -> asyncio.Future[str]:
        if self._refused is None:
            raise RuntimeError("a ControlClient is used as `async with ControlClient(...) as client`")
        return self._refused

    async def request(self, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; return the reply without ``ok``, or raise the probe's error."""
        subject = control_subject(self.host, verb)
        data = msgspec.json.encode(body or {})
        if len(data) > self._client.max_payload:
            raise self._too_large(verb, len(data))
        request = asyncio.ensure_future(self._client.request(subject, data, timeout=self.timeout))
        refused = self._refusal
        done, _ = await asyncio.wait((request, refused), return_when=asyncio.FIRST_COMPLETED)
        if request not in done:
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
            raise TransportError(f"NATS refused the request on {subject} ({refused.result()}); "
                                 "ask for permission to publish to connstats.v1.ctl.> and subscribe to _INBOX.>")
        try:
            msg = request.result()
        except nats.errors.NoRespondersError:
            raise TransportError(
                f"no probe answers for host {self.host!r} on {redacted(self.options.servers)}; "
                "start `connstats up` or `connstats probe` there, or check --host and --nats") from None
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            carries_deadline = "deadline_ms" in (body or {})
            unchanged = ", so nothing was changed (the request's deadline has passed)" if carries_deadline else ""
            raise TransportError(
                f"the probe for host {self.host!r} did not answer within {self.timeout:g} s{unchanged}; "
                "check that it runs and is not overloaded") from None
        except nats.errors.MaxPayloadError:
            raise self._too_large(verb, len(data)) from None
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(f"the request on {subject} failed: {exc!r}; check NATS") from exc
        return _reply(msg.data)

    def _too_large(self, verb: str, size: int) -> TransportError:
        return TransportError(
            f"the {verb} request is {size:,} bytes, more than the {self._client.max_payload:,} bytes the NATS server "
            "takes in one message (max_payload); send less (a policy: fewer or merged prefixes) or raise "
            "max_payload in the server's configuration")

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower() and not self._refusal.done():
            self._refusal.set_result(text.removeprefix("nats: ").strip("'"))
        log.debug("nats: %r", exc)


def _reply(data: bytes) -> dict[str, Any]:
    try:
        check_json(data)
    except MessageError as exc:
        raise TransportError(f"the probe's reply is {exc}; is something else answering on connstats.v1.ctl?") from None
    try:
        reply = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise TransportError("the probe's reply is not JSON; is something else answering on connstats.v1.ctl?") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise TransportError("the probe's reply has no 'ok'; is something else answering on connstats.v1.ctl?")
    if not reply["ok"]:
        kind = _ERROR_KINDS.get(str(reply.get("kind")), ConnstatsError)
        raise kind(str(reply.get("error") or "the probe refused the request"))
    reply.pop("ok")
    return reply
