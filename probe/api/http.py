"""The probe's HTTP API, compatible with the earlier tool's endpoints.

    POST /traffic_count_attach_device            {"iface": "veth0", "action": "add"|"remove"}
    GET  /traffic_device_connection_stats         every attached device's connections
    GET  /traffic_device_connection_stats/<id>    one device's (id = ifindex)
    GET  /metrics, /healthz, /readyz              the process's telemetry (runtime/telemetry.py)

Answers are JSON. Connection stats are an object keyed ``connection_<id>`` (the id is
stable for as long as the connection is tracked) holding the earlier tool's fields
(``device_id``, ``src_port``, ``dst_port``, ``direction``, ``protocol``, ``timestamp``,
``total_packets``, ``total_bytes``) and added ones (``src_ip``, ``dst_ip``, ``ifname``,
``family``, ``first_seen``, ``container_name``, ``verdict``; ``pod``, ``workload``, ``runtime``,
``process``, ``pid``, ``peer_process``, ``peer_pid`` only when known). Counters are since attach: the published
intervals plus the current one. ``timestamp`` and ``first_seen`` are integer nanoseconds
since the Unix epoch, UTC. Errors are ``{"error": "..."}`` with a 4xx status (5xx only
for a failure of the probe itself), never a traceback.

It listens on loopback (127.0.0.1:9102) unless told otherwise with ``--http ADDR:PORT``.
Only root, members of the ``--http-group`` and holders of the token (``<state>/ui-token``,
sent as ``Authorization: Bearer``) get in; the caller's uid comes from the kernel
(runtime/callers.py). What keeps a web page in the operator's browser from using it (cross-site
requests, DNS rebinding) is checked first:

* ``Host`` must name the API: its listening address, or on loopback ``localhost``,
  ``127.0.0.1`` or ``[::1]``, with its port or without (403 otherwise);
* an ``Origin``, when sent, must be the API's own, ``http://`` and one of those with the
  port (403 otherwise);
* ``POST`` needs ``Content-Type: application/json`` (415 otherwise), which a cross-site
  form cannot send without a CORS preflight that this API never answers;
* interface names with control characters (or NUL) are refused with 400;
* then any other user gets 403 (401 for a caller from another host, or a wrong token).

``GET /metrics``, ``/healthz`` and ``/readyz`` are read-only and skip the ``Host`` check, so
that Prometheus and Kubernetes probes may call the listener by a DNS name.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Hashable, Sequence

import msgspec
from aiohttp import web

from ..contract.bounded import check_json
from ..contract.errors import ConfigError, ConnstatsError, DeviceError, KernelError, MessageError
from ..contract.record import proto_name
from ..kernel.devices import AttachedDevice, check_name
from ..runtime.callers import Callers, bearer
from ..runtime.listener import host_allowed, is_loopback, json_response, listen, origin_allowed, parse_listen_address
from ..runtime.telemetry import TELEMETRY_PATHS, Telemetry, add_routes
from ..seams import ProbePort
from .totals import WHO, ConnectionTotal, ConnectionTotals, OverflowTotal, current_view

log = logging.getLogger(__name__)

DEFAULT_HTTP_ADDRESS = "127.0.0.1:9102"
ACTIONS = ("add", "remove")
MAX_BODY_BYTES = 64 * 1024


class RequestError(Exception):
    """A request the API refuses: its status and one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); raise ``ConfigError``."""
    return parse_listen_address(text, "HTTP", DEFAULT_HTTP_ADDRESS)


# -- the response format: pure functions ----------------------------------------------------


def protocol_text(proto: int) -> str:
    """The name in capitals ("TCP", "UDP", "ICMP", "ICMPV6"), or the protocol number as a string."""
    return proto_name(proto).upper()


def connection_to_json(t: ConnectionTotal) -> dict[str, Any]:
    return {
        "device_id": t.ifindex, "src_port": t.src_port, "dst_port": t.dst_port,
        "direction": t.direction, "protocol": protocol_text(t.proto), "timestamp": t.last_seen,
        "total_packets": t.packets, "total_bytes": t.bytes,
        "src_ip": t.src_ip, "dst_ip": t.dst_ip, "ifname": t.ifname, "family": t.family,
        "first_seen": t.first_seen, "container_name": t.container_name, "verdict": t.verdict,
        **{name: value for name in WHO if (value := getattr(t, name))},
    }


def overflow_to_json(t: OverflowTotal) -> dict[str, Any]:
    """Packets that found the flow map full: no addresses or ports, ``"overflow": true``."""
    return {
        "device_id": t.ifindex, "src_port": 0, "dst_port": 0, "direction": t.direction,
        "protocol": "OVERFLOW", "timestamp": t.last_interval_end,
        "total_packets": t.packets, "total_bytes": t.bytes, "ifname": t.ifname, "overflow": True,
    }


def connections_to_json(totals: list[ConnectionTotal],
                        overflow: Sequence[OverflowTotal] = ()) -> dict[str, dict[str, Any]]:
    """``connection_<id>`` per connection, then ``overflow_<ifindex>_<direction>`` per device
    and direction with overflow: together a device's exact totals."""
    body = {f"connection_{t.id}": connection_to_json(t) for t in totals}
    body.update((f"overflow_{t.ifindex}_{t.direction}", overflow_to_json(t)) for t in overflow)
    return body


def device_to_json(device: AttachedDevice, action: str) -> dict[str, Any]:
    """The earlier tool's shape (fixed by compatibility), from ``AttachedDevice.to_wire``."""
    wire = device.to_wire()
    return {"iface": wire["name"], "device_id": wire["ifindex"], "action": action,
            "attached": action == "add", "direction_mode": wire["mode"],
            "inverted": wire["direction"] == "inverted"}


async def _encoded(totals: list[ConnectionTotal], overflow: list[OverflowTotal]) -> bytes:
    """Encoded in a worker thread: ~1 s for 100k connections that the event loop need not wait on."""
    return await asyncio.to_thread(lambda: msgspec.json.encode(connections_to_json(totals, overflow)))


class SharedAnswers:
    """Concurrent requests for the same answer share one computation, and one computation
    runs at a time: the probe's loop (polls, publishes) waits for at most one view of the
    totals, however many callers ask. A request joins the next computation to start, never
    one already running, so every answer is read after its request arrived."""

    def __init__(self) -> None:
        self._next: dict[Hashable, asyncio.Future[bytes]] = {}
        self._one_at_a_time = asyncio.Lock()
        self.computed = 0  # how many computations ran (for tests and the README's figures)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        shared = self._next.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        shared = self._next[key] = asyncio.get_running_loop().create_future()
        try:
            async with self._one_at_a_time:
                del self._next[key]  # who comes now waits for the next computation
                self.computed += 1
                shared.set_result(await compute())
        except Exception as exc:
            shared.set_exception(exc)  # the requests that joined get it too
            shared.exception()  # retrieved: raised below
            raise
        except BaseException:
            shared.cancel()
            raise
        finally:
            if self._next.get(key) is shared:
                del self._next[key]
        return shared.result()


MAX_WRITERS = 8  # answers being written at once; each may hold its body in the socket's buffer


# -- the service ----------------------------------------------------------------------------


class HttpApi:
    """The aiohttp app as a daemon service: ``start()`` listens, ``close()`` stops."""

    def __init__(self, probe: ProbePort, host: str, port: int, totals: ConnectionTotals,
                 telemetry: Telemetry | None = None, callers: Callers | None = None) -> None:
        self.probe = probe
        self.callers = callers if callers is not None else Callers(None)  # root only
        self.telemetry = telemetry
        self.host = host
        self.port = port
        self.totals = totals
        self._runner: web.AppRunner | None = None
        self.answers = SharedAnswers()
        self._writers = asyncio.Semaphore(MAX_WRITERS)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_as_json, self._callers_checked],
                              client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/traffic_count_attach_device", self.attach_device)
        app.router.add_get("/traffic_device_connection_stats", self.all_devices)
        app.router.add_get("/traffic_device_connection_stats/{device_id}", self.one_device)
        if self.telemetry is not None:
            add_routes(app, self.telemetry)
        return app

    async def start(self) -> None:
        if self.callers.token is not None:
            self.callers.token.ensure()  # before the first caller could need it
        runner = await listen(self.app(), self.host, self.port, purpose="HTTP", option="--http ADDR:PORT")
        self._runner = runner
        self.port = runner.addresses[0][1]  # the real one when asked for port 0
        if not is_loopback(self.host):
            log.warning("HTTP API on %s:%d is reachable from the network; callers from other hosts need "
                        "the token in %s", self.host, self.port, self.callers.token.path if self.callers.token
                        else "<state>/ui-token (none: the probe has no state directory)")
        log.info("HTTP API on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @web.middleware
    async def _callers_checked(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                               ) -> web.StreamResponse:
        """403 unless ``Host`` names this API and ``Origin`` (if any) is its own; then 401/403
        unless the caller is root, in the ``--http-group``, or sends the token (runtime/callers.py)."""
        if request.method == "GET" and request.path in TELEMETRY_PATHS and self.telemetry is not None:
            return await handler(request)
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, self.host, self.port):
            raise RequestError(403, f"Host {host!r} is not this API; use http://{self._own_netloc()}")
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.host, self.port):
            raise RequestError(403, f"Origin {origin!r} may not use this API; call it from "
                                    f"http://{self._own_netloc()} or without a browser")
        refusal = self.callers.refusal(request, bearer(request.headers))
        if refusal is not None:
            raise RequestError(refusal.status, refusal.message)
        return await handler(request)

    def _own_netloc(self) -> str:
        return self.url.removeprefix("http://")

    # -- handlers ------------------------------------------------------------------------------

    async def attach_device(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise RequestError(415, f"Content-Type is {request.content_type!r}; "
                                    "send the body as application/json")
        iface, action, mode = _attach_request(await _json_body(request))
        if action == "add":
            device = await self.probe.attach(iface, mode)
        else:
            device = await self.probe.detach(iface)  # its totals are forgotten on detach
        return json_response(device_to_json(device, action))

    async def all_devices(self, request: web.Request) -> web.StreamResponse:
        async def compute() -> bytes:
            devices = self.probe.devices()
            # ifindex 0: what not even the overflow map could hold, of any device
            return await _encoded(await self._view(devices), self.totals.overflow_view(
                {d.ifindex for d in devices} | {0}))

        return await self._send(request, await self.answers.get("all", compute))

    async def one_device(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["device_id"]
        if not (text.isascii() and text.isdigit()):
            raise RequestError(400, f"device id {text!r} is not an ifindex; use a number")
        ifindex = int(text)

        async def compute() -> bytes:
            devices = [d for d in self.probe.devices() if d.ifindex == ifindex]
            if not devices:
                raise RequestError(404, f"device {text} is not attached; attach it first")
            return await _encoded(await self._view(devices), self.totals.overflow_view({ifindex}))

        return await self._send(request, await self.answers.get(ifindex, compute))

    async def _send(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Write ``body`` with at most ``MAX_WRITERS`` answers in flight: a crowd of callers
        cannot make the loop buffer a copy of a large answer for each of them."""
        async with self._writers:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response

    async def _view(self, devices: list[AttachedDevice]) -> list[ConnectionTotal]:
        since = {d.ifindex: d.since_ns for d in devices}
        return await current_view(self.totals, self.probe.live_records, set(since), since)


def http_service(address: str, totals: ConnectionTotals, telemetry: Telemetry | None = None,
                 callers: Callers | None = None) -> Callable[[ProbePort], HttpApi]:
    """A ``DaemonSettings.services`` factory for the HTTP API on ``address``, serving
    ``totals`` (the probe's: ``build_probe`` makes them and subscribes them to the probe,
    every interval added and a detached device forgotten). ``telemetry``: also serve
    /metrics, /healthz, /readyz. ``callers``: who is admitted (default: root only)."""
    host, port = parse_address(address)

    def factory(probe: ProbePort) -> HttpApi:
        return HttpApi(probe, host, port, totals, telemetry, callers)

    return factory


# -- request parsing and errors -----------------------------------------------------------------


async def _json_body(request: web.Request) -> object:
    data = await request.read()
    try:
        check_json(data, MAX_BODY_BYTES)
    except MessageError as exc:
        raise RequestError(400, f"request body is {exc}") from None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"request body is not JSON ({exc}); send "
                                '{"iface": "<name>", "action": "add"|"remove"}') from exc


def _attach_request(body: object) -> tuple[str, str, str | None]:
    if not isinstance(body, dict):
        raise RequestError(400, 'request body is not a JSON object; send {"iface": ..., "action": ...}')
    iface, action, mode = body.get("iface"), body.get("action"), body.get("mode")
    if not isinstance(iface, str) or not iface:
        raise RequestError(400, '"iface" is missing or not a string; name a network interface')
    try:
        check_name(iface)  # control characters, NUL, '/', too long
    except DeviceError as exc:
        raise RequestError(400, str(exc)) from None
    if action not in ACTIONS:
        raise RequestError(400, f'"action" is {action!r}; use "add" or "remove"')
    if mode is not None and not isinstance(mode, str):
        raise RequestError(400, '"mode" is not a string; use auto, normal or inverted')
    return iface, action, mode


_STATUS = {DeviceError: 400, ConfigError: 400, KernelError: 500}


@web.middleware
async def _errors_as_json(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
    """Every failure answers ``{"error": "..."}``: 4xx for the client's, 5xx for ours."""
    try:
        return await handler(request)
    except RequestError as exc:
        response = json_response({"error": str(exc)}, exc.status)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except ConnstatsError as exc:
        status = next((s for kind, s in _STATUS.items() if isinstance(exc, kind)), 500)
        return json_response({"error": str(exc)}, status)
    except web.HTTPException as exc:  # unknown path, wrong method, body too large
        if exc.status < 400:
            raise
        response = json_response({"error": f"{exc.reason.lower()}: {request.method} {request.path}"}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return json_response({"error": "internal error; see the probe's log"}, 500)
