"""How ``up``, ``probe`` and ``sink`` run: each builds its parts with the composition roots
(``build_probe`` in connstats.probe.compose, ``build_sink`` in connstats.sink.compose)
and runs them until SIGINT/SIGTERM. ``up`` composes the two with an embedded nats-server:

    up:     [embedded nats-server] ─ build_probe(ProbeConfig) ──> JetStream
                                     build_sink(SinkConfig) <────────┤
                                     [build_alerts(AlertConfig)] <───┤  (up --rules)
                                     [build_ui(UiConfig)] <──────────┘  (up --ui, on by default)
            one Telemetry for all of them: /metrics, /healthz, /readyz on the probe's HTTP
            listener and, with --metrics, on a listener of its own
    stop:   probe drains its last interval and flushes ─ sink.wait_until_stored(host) ─
            stop the sink ─ [stop the alert engine] ─ [close the web page] ─ stop nats-server ─
            remove <state>/nats.url

Everything runs in one asyncio loop; SIGINT and SIGTERM set one ``stop`` event.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

from connstats.probe.compose import ProbeConfig, ProbeDaemon, build_probe
from connstats.probe.contract import ConfigError, NatsOptions
from connstats.probe.runtime.lifecycle import stop_on_signals
from connstats.probe.runtime.private import write_private
from connstats.probe.runtime.telemetry import MetricsServer, Telemetry
from connstats.sink.alerts.compose import AlertConfig, build_alerts
from connstats.sink.alerts.service import AlertService
from connstats.sink.compose import Sink, SinkConfig, build_sink
from connstats.sink.web.compose import UiConfig, WebUi, build_ui

from .config import NATS_URL_FILE
from .embedded_nats import EmbeddedNats
from .nats_auth import CREDENTIALS_FILE, NatsUsers, write_credentials

log = logging.getLogger("connstats.cli")

OnReady = Callable[[ProbeDaemon], None]
DRAIN_TIMEOUT = 15.0  # up: how long to wait for the sink to store the last interval


async def run_probe(daemon: ProbeDaemon, on_ready: OnReady | None = None,
                    stop: asyncio.Event | None = None) -> None:
    """Run a built probe until SIGINT/SIGTERM (or ``stop``)."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        task = asyncio.create_task(daemon.run(stop))
        await _announce_when_ready(daemon, task, on_ready)
        await task


async def run_sink(sink: Sink, metrics_address: str | None = None) -> None:
    """Run a built sink (its loop: ``Sink.run``, sink/compose.py) until SIGINT/SIGTERM;
    /metrics etc. on ``metrics_address`` if given."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        if metrics_address is None:
            await sink.run(stop)
            return
        async with MetricsServer(sink.config.telemetry, metrics_address):
            await sink.run(stop)


async def run_alerts(service: AlertService, telemetry: Telemetry, on_ready: Callable[[], None] | None = None,
                     metrics_address: str | None = None) -> None:
    """Run a built alert engine until SIGINT/SIGTERM; ``telemetry``'s /metrics etc. (the one
    ``build_alerts`` registered the engine's metrics on) on ``metrics_address`` if given."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        if metrics_address is None:
            await _run_alerts(service, stop, on_ready)
            return
        async with MetricsServer(telemetry, metrics_address):
            await _run_alerts(service, stop, on_ready)


async def _run_alerts(service: AlertService, stop: asyncio.Event, on_ready: Callable[[], None] | None) -> None:
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if service.ready.is_set() and on_ready and not task.done():
        on_ready()
    await task


async def run_up(probe: ProbeConfig, sink: SinkConfig, nats_url: str | None,
                 on_ready: OnReady | None = None, drain_timeout: float = DRAIN_TIMEOUT,
                 metrics_address: str | None = None, alerts: AlertConfig | None = None,
                 ui: UiConfig | None = None) -> None:
    """The whole pipeline on this host, until SIGINT/SIGTERM; see the module docstring.
    ``nats_url`` None: start an embedded nats-server, its users made here (probe, sink, admin,
    alert). Every part registers on one ``Telemetry`` (more services: pass it to their
    builders). ``alerts``: run the alert engine in-process too. ``ui``: also serve the web
    page (it reads NATS as admin)."""
    stop = asyncio.Event()
    probe.telemetry = sink.telemetry = Telemetry()
    if alerts is not None:
        alerts.telemetry = probe.telemetry  # the engine's metrics on up's one endpoint
    metrics = MetricsServer(probe.telemetry, metrics_address) if metrics_address else None
    state_dir = probe.state_dir
    if state_dir is None:
        raise ValueError("run_up keeps nats.url (and the embedded server's files) in the probe's state_dir: set it")
    users = NatsUsers.generate(probe.host) if nats_url is None else None  # None: nats_url's own
    embedded = EmbeddedNats(state_dir, users=users) if users is not None else None
    url_file, creds_file = state_dir / NATS_URL_FILE, state_dir / CREDENTIALS_FILE
    web: WebUi | None = None
    with stop_on_signals(stop):
        try:
            creds_file.unlink(missing_ok=True)  # left by an `up` that was killed
            if metrics is not None:
                await metrics.start()
            url = await asyncio.to_thread(embedded.start) if embedded is not None else nats_url
            assert url is not None  # nats_url None made the embedded server
            _use_nats(url, users, creds_file, probe=probe, sink=sink, alert=alerts)
            write_private(url_file, url + "\n")  # a URL may carry credentials
            built_sink = build_sink(sink)
            await built_sink.check()  # before loading BPF: a bad store path fails fast
            if ui is not None:
                web = await _start_ui(ui, url, users)
            daemon = build_probe(probe)
            engine = build_alerts(alerts) if alerts is not None else None
            await _run_both(daemon, built_sink, stop, on_ready, drain_timeout, engine)
        finally:
            if web is not None:
                await web.close()
            if metrics is not None:
                await metrics.close()
            if embedded is not None:
                url_file.unlink(missing_ok=True)
                creds_file.unlink(missing_ok=True)
                await asyncio.to_thread(embedded.stop)


class _NatsPart(Protocol):
    """The settings of a part of ``up`` (ProbeConfig, SinkConfig, AlertConfig): its NATS connection."""

    nats: NatsOptions


def _use_nats(url: str, users: NatsUsers | None, creds_file: Path, **parts: _NatsPart | None) -> None:
    """Point every part's settings (``role=config``, None: not running) at ``url``; with the
    embedded server's ``users``, log each in as its role, its credentials written before
    nats.url so the CLI finds the two together."""
    running = {role: config for role, config in parts.items() if config is not None}
    for config in running.values():
        config.nats = _with_servers(config.nats, url)
    if users is not None:
        write_credentials(creds_file, url, users)
        for role, config in running.items():
            config.nats = users.login(config.nats, role)


async def _run_both(daemon: ProbeDaemon, sink: Sink, stop: asyncio.Event, on_ready: OnReady | None,
                    drain_timeout: float, engine: AlertService | None = None) -> None:
    sink_stop = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(sink_stop), name="sink")
    engine_stop = asyncio.Event()
    engine_task = asyncio.create_task(engine.run(engine_stop), name="alerts") if engine else None
    try:
        await _run_probe_and_sink(daemon, sink, sink_task, sink_stop, stop, on_ready, drain_timeout, engine_task)
    finally:
        engine_stop.set()
        if engine_task is not None:
            result = (await asyncio.gather(engine_task, return_exceptions=True))[0]
            if isinstance(result, BaseException):
                raise result


async def _run_probe_and_sink(daemon: ProbeDaemon, sink: Sink, sink_task: asyncio.Task, sink_stop: asyncio.Event,
                              stop: asyncio.Event, on_ready: OnReady | None, drain_timeout: float,
                              engine_task: asyncio.Task | None) -> None:
    probe = asyncio.create_task(daemon.run(stop), name="probe")
    stopped = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(daemon.ready.wait())
    watched = {probe, sink_task, stopped} | ({engine_task} if engine_task else set())
    done, _ = await asyncio.wait(watched | {ready}, return_when=asyncio.FIRST_COMPLETED)
    # ready first: announce, then run until a signal or until the probe, the sink or the engine fails
    if ready in done and not probe.done():
        if on_ready:
            on_ready(daemon)
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for task in (stopped, ready):
        task.cancel()
    probe_result = (await asyncio.gather(probe, return_exceptions=True))[0]
    if not isinstance(probe_result, BaseException) and not sink_task.done():
        await sink.wait_until_stored(daemon.host, drain_timeout)
    sink_stop.set()
    sink_result = (await asyncio.gather(sink_task, return_exceptions=True))[0]
    for result in (probe_result, sink_result):
        if isinstance(result, BaseException):
            raise result


async def _announce_when_ready(daemon: ProbeDaemon, task: asyncio.Task, on_ready: OnReady | None) -> None:
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if daemon.ready.is_set() and on_ready and not task.done():
        on_ready(daemon)


async def _start_ui(ui: UiConfig, url: str, users: NatsUsers | None) -> WebUi | None:
    nats = _with_servers(ui.nats, url)
    web = build_ui(replace(ui, nats=users.login(nats, "admin") if users is not None else nats))
    try:
        await web.start()
    except ConfigError as exc:
        if ui.required:
            raise
        log.warning("no web page: %s", exc)  # the default address is taken: up runs without it
        return None
    print(f"connstats up: web page on {web.url}", file=sys.stderr, flush=True)
    return web


def _with_servers(options: NatsOptions, url: str) -> NatsOptions:
    return replace(options, servers=tuple(u.strip() for u in url.split(",") if u.strip()))
