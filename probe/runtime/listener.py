"""Where connstats listens for HTTP: one parser for its ``ADDR:PORT`` settings and one way
to start an aiohttp site on one, shared by the probe's HTTP API (``--http``), the metrics
endpoints (``--metrics``) and the web page (``--ui``, ``--listen``).

    host, port = parse_listen_address(text, "metrics", "127.0.0.1:9465", bare_port=True)
    runner = await listen(app, host, port, purpose="metrics", option="--metrics ADDR:PORT")

A taken or unusable address is a ``ConfigError`` with one line saying which setting to change.
Who may call, by ``Host`` and ``Origin`` (against DNS rebinding and cross-site requests), is
``host_allowed`` and ``origin_allowed``: the probe's HTTP API and the web page check the same.
Both answer JSON through ``json_response``.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any

import msgspec
from aiohttp import web

from ..contract.errors import ConfigError


def parse_listen_address(text: str, setting: str, example: str, *, bare_port: bool = False) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6; with ``bare_port`` also ``PORT``, meaning
    loopback) -> (host, port); ``ConfigError`` naming ``setting`` and an ``example`` otherwise."""
    text = text.strip()
    if bare_port and text.isascii() and text.isdigit():
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"{setting} address {text!r} is not ADDR:PORT; use e.g. {example}")
    return host, int(port)


def json_response(body: Any, status: int = 200) -> web.Response:
    """``body`` as a JSON answer (msgspec-encoded) with ``status``."""
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``: reachable from this host only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


async def listen(app: web.Application, host: str, port: int, *, purpose: str, option: str,
                 handler_cancellation: bool = False) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; the runner to ``cleanup()`` when done. A port taken or
    an address not on this host: ``ConfigError`` saying to pick another ``option``.
    ``handler_cancellation``: aiohttp's, a handler cancelled when its client goes."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} for {purpose}: {reason}; pick another {option}") from exc
    return runner


# -- who may call: Host and Origin --------------------------------------------------------------

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` -> (name, port or None); None if malformed."""
    if value.endswith("]") or ":" not in value:
        return value.lower(), None
    name, _, port = value.rpartition(":")
    if not (port.isascii() and port.isdigit()):
        return None
    return name.lower(), int(port)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
    except ValueError:
        return False
    return name.startswith("[") or ":" not in name


def host_allowed(value: str, listen_host: str, listen_port: int, need_port: bool = False) -> bool:
    """True if a ``Host`` value (or an origin's host) names the API listening there.

    The listening address itself; on loopback also ``localhost``, ``127.0.0.1``, ``[::1]``;
    on a wildcard address any IP literal (a DNS name could be rebound to us). The port,
    when given, must be the listening one; ``need_port`` requires it.
    """
    parsed = _split_host(value.strip())
    if parsed is None:
        return False
    name, port = parsed
    if (port is None and need_port) or (port is not None and port != listen_port):
        return False
    own = f"[{listen_host}]" if ":" in listen_host else listen_host
    if name == own.lower():
        return True
    if is_loopback(listen_host) and name in LOOPBACK_NAMES:
        return True
    return listen_host in WILDCARD_ADDRESSES and _is_ip_literal(name)


def origin_allowed(origin: str, listen_host: str, listen_port: int) -> bool:
    """True if ``Origin`` is the API's own: ``http://HOST:PORT`` naming it (port 80 may be left out)."""
    scheme, sep, netloc = origin.partition("://")
    if scheme.lower() != "http" or not sep or not netloc or "/" in netloc or "@" in netloc:
        return False
    return host_allowed(netloc, listen_host, listen_port, need_port=listen_port != 80)
