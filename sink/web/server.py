"""The web page's server: static files and the JSON API, one aiohttp app.

    GET /                    the page (static/index.html)
    GET /static/NAME         its own files (app.js, style.css, ...); any other name is a 404
    GET /api/live            server-sent events: one per interval, its top N connections
    GET /api/map             nodes and edges over a time range, from the store (graph.py), with
                             their RTT, retransmits and drops where the store has them (quality.py)
    GET /api/history         bytes and packets over time per container, interface or port,
                             the range fitted to the data with fit=1
    GET /api/alerts          the alerts firing now (connstats.sink.alerts.firing_alerts)
    GET /api/policy          a probe's active policy and mode, and its recent violations
    GET /api/policy/violations  the denied connections of a time range, from the store
    GET /api/policy/learn    what `connstats policy learn` would write for a time range

Parameters and answers are in docs/http-and-web.md (``## Web page``). A bad parameter is a 400 with
``{"error": "..."}``; nothing a request sends reaches a traceback.

``build_ui`` (compose.py) makes the parts and wires them; this module serves them:
``WebUi`` starts the parts, listens and stops; ``PageApi`` answers the ``/api/`` requests
with the parts it is given; ``page_routes`` says which handler answers which path.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import msgspec
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from connstats.probe.contract import (
    ConfigError,
    ConnstatsError,
    ControlClient,
    NatsOptions,
    StoreError,
    TransportError,
    connect,
)
from connstats.probe.runtime.listener import is_loopback, json_response, listen, parse_listen_address
from connstats.sink.history import HistoryQuery
from connstats.sink.stores import StoreReader

from .access import AccessGuard
from .graph import build_map
from .live import LiveFeed, LivePage
from .quality import StoredQuality, split_drops, sqlite_quality, with_quality
from .queries import (
    build_series,
    build_violations,
    fit_to_data,
    history_query,
    learn_params,
    live_filter,
    map_query,
    policy_params,
    violations_query,
)
from .violations import ViolationLog

log = logging.getLogger("connstats.web")

STATIC = Path(__file__).with_name("static")
STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())  # the page's own, and only them
DEFAULT_UI = "127.0.0.1:9470"
KEEPALIVE_SECONDS = 15.0
MAX_LIVE_PAGES = 64  # open live streams; each costs a filter and a top N per flow message


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` of the page (``[v6]:PORT`` for IPv6); ``ConfigError`` otherwise."""
    return parse_listen_address(text, "web page", f"{DEFAULT_UI}, or none")


class NatsLink:
    """The page's one NATS connection, shared by the parts that subscribe and request:
    ``start()`` connects (before those parts start), ``close()`` closes (after them)."""

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self.client: Client | None = None

    async def start(self) -> None:
        self.client = await connect(self.options)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def _connected(self) -> Client:
        if self.client is None:
            raise RuntimeError("NatsLink is used before start()")
        return self.client

    async def subscribe(self, subject: str, **kwargs: Any) -> Subscription:  # kwargs: Client.subscribe's
        return await self._connected().subscribe(subject, **kwargs)

    async def request(self, subject: str, payload: bytes, **kwargs: Any) -> Msg:  # kwargs: Client.request's
        return await self._connected().request(subject, payload, **kwargs)

    def jetstream(self) -> JetStreamContext:
        return self._connected().jetstream()


class Part(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Closable(Protocol):
    async def close(self) -> None: ...


class WebUi:
    """The page's server as a service: ``start()`` renews the token, starts the ``parts`` in
    order and listens; ``close()`` ends the open live streams, stops listening, then closes
    the parts in reverse and the ``closables``. What it serves is ``build_ui``'s choice."""

    def __init__(self, host: str, port: int, guard: AccessGuard, routes: Sequence[web.RouteDef], api: PageApi,
                 parts: Sequence[Part] = (), closables: Sequence[Closable] = ()) -> None:
        self.host, self.port = host, port
        self.guard = guard
        if guard.callers.token is None:
            raise ValueError("the web page's callers need a token file: the page's URL carries its token")
        self.token_file = guard.callers.token  # shared with the probe's API
        self.routes = list(routes)
        self.api = api
        self.parts = list(parts)
        self.closables = list(closables)
        self.token: str | None = None
        self._started: list[Part] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        token = self.token_file.current() or self.token  # the probe's API shares the file
        return f"http://{host}:{self.port}/" + (f"?token={token}" if token else "")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_as_json, self.guard.middleware, _headers])
        app.router.add_routes(self.routes)
        return app

    async def start(self) -> None:
        self.token = self.token_file.renew()
        try:
            for part in self.parts:
                await part.start()
                self._started.append(part)
            # handler_cancellation: a closed live stream leaves the feed at once, not at its next write
            runner = await listen(self.app(), self.host, self.port, purpose="the web page", option="ADDR:PORT",
                                  handler_cancellation=True)
        except BaseException:
            await self._close_parts()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = runner.addresses[0][1]
            self.guard.listen_port = self.port  # asked for port 0: the real one
        if not is_loopback(self.host):
            log.warning("web page on %s:%d is reachable from the network; it requires the token "
                        "kept in %s", self.host, self.port, self.token_file.path)

    async def close(self) -> None:
        self.api.end_streams()  # open streams end, so the server need not wait for them
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self._close_parts()
        for closable in self.closables:
            await closable.close()

    async def _close_parts(self) -> None:
        while self._started:
            await self._started.pop().close()


def page_routes(api: PageApi) -> list[web.RouteDef]:
    """The page, its own files, and the JSON API (the module docstring)."""
    return [
        web.get("/", _index), web.get("/static/{name}", _static),
        web.get("/api/live", api.live), web.get("/api/map", api.map), web.get("/api/history", api.history),
        web.get("/api/alerts", api.alerts), web.get("/api/policy", api.policy),
        web.get("/api/policy/learn", api.learn), web.get("/api/policy/violations", api.denied),
    ]


class PageApi:
    """The ``/api/`` handlers, on the parts ``build_ui`` gives them: the store ``reader``
    (map, history, denied connections, learn preview), the live ``feed``, the recent
    ``violations``, NATS (``nats``: the firing alerts; ``control``: a probe's policy), and
    this host's name and addresses (the map's node of this host, the learn preview's
    defaults)."""

    def __init__(self, reader: StoreReader, feed: LiveFeed, violations: ViolationLog, nats: NatsLink,
                 control: NatsOptions, host: str = "", host_addresses: Callable[[], list[str]] = list) -> None:
        self.reader = reader
        self.feed = feed
        self.violations = violations
        self.nc = nats
        self.control = control
        self.host = host
        self.host_addresses = host_addresses
        self.max_live_pages = MAX_LIVE_PAGES

    def end_streams(self) -> None:
        for page in list(self.feed.pages):
            page.close()

    # -- handlers ------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        page = LivePage(live_filter(request.query))
        if len(self.feed.pages) >= self.max_live_pages:
            return json_response({"error": f"{self.max_live_pages} live views are open already; close one and retry"},
                                 503)
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        self.feed.pages.add(page)
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(page.events.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                await response.write(b"event: interval\ndata: " + msgspec.json.encode(event) + b"\n\n")
        except ConnectionResetError:
            pass  # the page went away while we wrote (a cancellation propagates)
        finally:
            self.feed.pages.discard(page)
        return response

    async def map(self, request: web.Request) -> web.Response:
        query = map_query(request.query)
        if self.reader.kind == "sqlite":
            rows, quality = await asyncio.gather(self.reader.rows(query), self.quality(query))  # two threads
            rows, drops = with_quality(rows, quality.rows), quality.drops
        else:  # InfluxDB: one query, its rows with their quality
            rows, drops = split_drops(await self.reader.rows(replace(query, quality=True)))
        body = build_map(rows, await self.own_addresses(), drops)
        return json_response(body | {"since_ms": query.since // 1_000_000, "until_ms": query.until // 1_000_000})

    async def quality(self, query: HistoryQuery) -> StoredQuality:
        """The RTT, retransmits and drops of the map's rows and its device drops from a SQLite
        store (quality.py); none from a file without them."""
        return await asyncio.to_thread(sqlite_quality, self.reader.path, query)

    async def own_addresses(self) -> dict[str, list[str]]:
        """This host's addresses, by its name: the map's node of this host (the page knows
        no other host's addresses; their records keep theirs as outside peers)."""
        return {self.host: await asyncio.to_thread(self.host_addresses)} if self.host else {}

    async def history(self, request: web.Request) -> web.Response:
        query, series, fit = history_query(request.query)
        rows = await self.reader.rows(query)
        fitted = fit is not None and bool(rows)  # no data: the asked range stays
        if fit is not None:
            query, rows = fit_to_data(query, rows, fit)
        return json_response(build_series(rows, query, series) | {"fit": fitted})

    async def alerts(self, request: web.Request) -> web.Response:
        from connstats.sink.alerts import firing_alerts

        firing = await firing_alerts(self.nc)
        # started_ms: ns do not fit a JavaScript number exactly; ms do
        alerts = [msgspec.to_builtins(alert) | {"started_ms": alert.started_at // 1_000_000} for alert in firing]
        return json_response({"available": True, "alerts": alerts})

    async def policy(self, request: web.Request) -> web.Response:
        """The probe's active policy (``connstats policy show``) and its recent violations."""
        host, limit = policy_params(request.query, self.host)
        violations = self.violations.recent(host, limit)
        try:
            async with ControlClient(self.control, host, timeout=5.0) as client:
                reply = await client.request("policy_show")
        except TransportError as exc:  # no probe answers: the page says so, with what was seen
            return json_response({"available": False, "host": host, "reason": str(exc), "violations": violations})
        return json_response({"available": True, "host": host, **reply, "violations": violations})

    async def denied(self, request: web.Request) -> web.Response:
        """The connections the policy denied over a range, from the store (the ``verdict``
        column), through ``connstats history --verdict deny``'s query."""
        query, limit = violations_query(request.query, self.host)
        return json_response(build_violations(await self.reader.rows(query), query, limit))

    async def learn(self, request: web.Request) -> web.Response:
        """What ``connstats policy learn`` would write for the range (sink/policy_learn.py)."""
        from connstats.sink.policy_learn import learn_policy, learned_policy_text

        query, peers = learn_params(request.query, self.host)
        own = await asyncio.to_thread(self.host_addresses) if query.host == self.host else []
        learned = learn_policy(await self.reader.rows(query), host_addresses=own, peers=peers)
        text = learned_policy_text(learned, [f"connstats policy learn (preview): host {query.host}"])
        return json_response({"host": query.host, "since_ms": query.since // 1_000_000,
                              "until_ms": query.until // 1_000_000, "groups": len(learned.policy.groups),
                              "rules": len(learned.policy.rules), "connections": learned.connections,
                              "bytes": learned.bytes, "toml": text})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _static(request: web.Request) -> web.FileResponse:
    """One of the page's own files, by name; any other name (a 5,000-character one, whose
    ``stat`` fails with ENAMETOOLONG) is a 404 without touching the file system."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name)


SECURITY_HEADERS = {
    # the page's own scripts and styles only (style attributes for the legend's colours)
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the first address may carry the token
    "Cache-Control": "no-store",
}


@web.middleware
async def _headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


_STATUS = {ConfigError: 400, StoreError: 503, TransportError: 503}


@web.middleware
async def _errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    """Every failure answers ``{"error": "..."}``: 400 for a bad parameter, 5xx for ours."""
    try:
        return await handler(request)
    except ConnstatsError as exc:
        status = next((s for kind, s in _STATUS.items() if isinstance(exc, kind)), 500)
        return json_response({"error": str(exc)}, status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": f"{exc.reason.lower()}: {request.method} {request.path}"}, exc.status)
    except Exception:
        log.exception("web %s %s failed", request.method, request.path)
        return json_response({"error": "internal error; see the log of connstats ui"}, 500)
