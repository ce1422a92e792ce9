"""Who may use the web page: the Host/Origin check against DNS rebinding and cross-site
requests (the probe HTTP API's rules, probe/runtime/listener.py), then the callers' rule of
probe/runtime/callers.py: root, members of the ``--http-group``, or holders of the token.

The token is random, made at each start, printed in the start-up line and kept in
``<state>/ui-token`` (0600), where the probe's HTTP API finds it too. A browser presents it
once as ``/?token=...``; the page then sets it as an HttpOnly, SameSite=Strict cookie and
redirects to ``/`` (so it leaves the address bar). Scripts may send
``Authorization: Bearer <token>`` instead. Tokens are compared in constant time.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from connstats.probe.runtime.callers import TOKEN_FILE, Callers, bearer  # noqa: F401 (TOKEN_FILE: for compose.py)
from connstats.probe.runtime.listener import host_allowed, origin_allowed

log = logging.getLogger(__name__)

COOKIE = "connstats_ui_token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessGuard:
    """An aiohttp middleware: 403 for a foreign Host or Origin, then 401/403 for a caller
    that is not root, not in the group and shows no token."""

    def __init__(self, listen_host: str, listen_port: int, callers: Callers) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.callers = callers

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, self.listen_host, self.listen_port):
            return _refused(request, 403, f"Host {host!r} is not this page; open it by its address")
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.listen_host, self.listen_port):
            return _refused(request, 403, f"Origin {origin!r} may not use this page")
        offered = request.query.get("token")
        token = self.callers.token
        if offered is not None and request.path == "/" and token is not None and token.matches(offered):
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, offered, httponly=True, samesite="Strict", path="/")
            return response
        refusal = self.callers.refusal(request, _presented(request))
        if refusal is not None:
            return _refused(request, refusal.status, refusal.message)
        return await handler(request)


def _presented(request: web.Request) -> str | None:
    return bearer(request.headers) or request.cookies.get(COOKIE)


def _refused(request: web.Request, status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request.path.startswith("/api/"):
        return web.json_response({"error": message}, status=status, headers=headers)
    return web.Response(text=f"{status}: {message}\n", status=status, content_type="text/plain", headers=headers)
