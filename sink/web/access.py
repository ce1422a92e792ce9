"""Who may use the web page: the Host/Origin check against DNS rebinding and cross-site
requests (the probe HTTP API's rules, probe/http_api.py), and on a non-loopback address a
token.

The token is random, made at each start, printed in the start-up line and kept in
``<state>/ui-token`` (0600). A browser presents it once as ``/?token=...``; the page then
sets it as an HttpOnly, SameSite=Strict cookie and redirects to ``/`` (so it leaves the
address bar). Scripts may send ``Authorization: Bearer <token>`` instead. Tokens are
compared in constant time (``hmac.compare_digest``).
"""
from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from connstats.probe.http_api import host_allowed, origin_allowed
from connstats.probe.private import write_private

log = logging.getLogger(__name__)

TOKEN_FILE = "ui-token"
COOKIE = "connstats_ui_token"
TOKEN_BYTES = 24

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token(state_dir: Path) -> str:
    """A fresh token, written to ``<state>/ui-token`` readable by its owner only."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    write_private(state_dir / TOKEN_FILE, token + "\n")
    return token


class AccessGuard:
    """An aiohttp middleware: 403 for a foreign Host or Origin, 401 without the token
    (when one is required)."""

    def __init__(self, listen_host: str, listen_port: int, token: str | None) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.token = token

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, self.listen_host, self.listen_port):
            return _refused(request, 403, f"Host {host!r} is not this page; open it by its address")
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.listen_host, self.listen_port):
            return _refused(request, 403, f"Origin {origin!r} may not use this page")
        if self.token is None:
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and request.path == "/" and self._matches(offered):
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, offered, httponly=True, samesite="Strict", path="/")
            return response
        if not self._matches(_presented(request)):
            return _refused(request, 401, "this page needs its token; open the address printed "
                                          "at start (?token=...), or see <state>/ui-token")
        return await handler(request)

    def _matches(self, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())


def _presented(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth.removeprefix("Bearer ").strip()
    return request.cookies.get(COOKIE)


def _refused(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        return web.json_response({"error": message}, status=status)
    return web.Response(text=f"{status}: {message}\n", status=status, content_type="text/plain")
