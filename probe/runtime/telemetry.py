"""What a process says about itself: Prometheus metrics, ``/healthz`` and ``/readyz``.

    Telemetry()                        one per composition root (build_probe, build_sink, run_up)
      .registry                        a CollectorRegistry of its own: several probes in one
                                       process never collide; process_* and python_* included
      .add_check(name, check)          ``check()`` -> None when ready, else why not (one line)
    add_routes(app, telemetry)         GET /metrics, /healthz, /readyz on an aiohttp app
    MetricsServer(telemetry, address)  a listener with only those three (probe, sink and up --metrics)

A part of the process registers its collectors on ``telemetry.registry`` and its
readiness on ``telemetry.add_check``; whoever serves the endpoint reads them at request
time. Collectors read counters the parts keep anyway, so nothing is counted per record.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from ..contract.errors import ConfigError
from .listener import listen, parse_listen_address

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], "str | None"]  # None: ready; else the reason it is not
DEFAULT_METRICS_PORT = 9465  # conventional for the sink's --metrics
PROBE_METRICS_PORT = 9464  # conventional for the probe's --metrics (deploy/)


class Telemetry:
    """One process's metrics registry and readiness checks."""

    def __init__(self, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.checks: dict[str, ReadinessCheck] = {}
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """``check`` answers for the part ``name``; a second part of that name is an error."""
        if name in self.checks:
            raise ConfigError(f"two parts called {name!r} answer /readyz; name them apart")
        self.checks[name] = check

    def not_ready(self) -> list[str]:
        """``name: reason`` for every part that is not ready (an empty list: all are)."""
        reasons = []
        for name, check in self.checks.items():
            try:
                reason = check()
            except Exception as exc:  # noqa: BLE001 - a broken check means "not ready", not a 500
                reason = f"its readiness check failed: {exc!r}"
            if reason:
                reasons.append(f"{name}: {reason}")
        if not self.checks:
            reasons.append("nothing has started yet")
        return reasons

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def add_routes(app: web.Application, telemetry: Telemetry) -> None:
    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=telemetry.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reasons = telemetry.not_ready()
        if reasons:
            return web.Response(text="".join(f"{r}\n" for r in reasons), status=503)
        return web.Response(text="ready\n")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


TELEMETRY_PATHS = ("/metrics", "/healthz", "/readyz")


@contextlib.asynccontextmanager
async def refreshing(refresh: Callable[[], Awaitable[None]], every: Callable[[], float],
                     name: str) -> AsyncIterator[None]:
    """Await ``refresh()`` now and then every ``every()`` s while inside the block.

    The loop also ends when it sees the block left, because nats.py may turn the cancel
    of a request in flight into a timeout that ``refresh`` catches."""
    inside = True

    async def refresh_forever() -> None:
        while True:
            await refresh()
            if not inside:
                return
            await asyncio.sleep(every())

    task = asyncio.create_task(refresh_forever(), name=name)
    try:
        yield
    finally:
        inside = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[v6]:PORT`` or a bare ``PORT`` (loopback) -> (host, port)."""
    return parse_listen_address(text, "metrics", f"127.0.0.1:{DEFAULT_METRICS_PORT}", bare_port=True)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` alone on ``address``; ``start()``, ``close()``."""

    def __init__(self, telemetry: Telemetry, address: str) -> None:
        self.telemetry = telemetry
        self.host, self.port = parse_metrics_address(address)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        add_routes(app, self.telemetry)
        runner = await listen(app, self.host, self.port, purpose="metrics", option="--metrics ADDR:PORT")
        self._runner = runner
        self.port = runner.addresses[0][1]  # the real one when asked for port 0
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
