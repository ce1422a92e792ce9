"""How ``up``, ``probe`` and ``sink`` are put together, in one place.

    up:     [embedded nats-server] ─ ProbeDaemon (kernel ─ publisher ─ control, HTTP) ──> JetStream
                                     run_sink (consumer ─ store) <───────────────────────┘
    stop:   probe drains its last interval and flushes ─ wait until the sink acked the
            last flow message ─ stop the sink ─ stop nats-server ─ remove <state>/nats.url

Everything runs in one asyncio loop; SIGINT and SIGTERM set one ``stop`` event.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import nats.errors
import nats.js.errors
from pyroute2 import IPRoute

from connstats.probe.control import control_service
from connstats.probe.daemon import DaemonSettings, ProbeDaemon, ServiceFactory
from connstats.probe.devices import check_name
from connstats.probe.embedded_nats import EmbeddedNats
from connstats.probe.nats_auth import CREDENTIALS_FILE, NatsUsers, write_credentials
from connstats.probe import private
from connstats.probe.errors import ConfigError, ConnstatsError, DeviceError
from connstats.probe.kernel import DEFAULT_CAPACITY
from connstats.probe.publisher import PublisherSettings
from connstats.probe.service import ProbeSettings
from connstats.probe.subjects import DEFAULT_DURABLE, STREAM_NAME, NatsOptions, connect, flows_subject
from connstats.sink.daemon import check_store, run_sink
from connstats.sink.store import Store

from .config import NATS_URL_FILE, parse_store

log = logging.getLogger("connstats.cli")

IFF_UP = 0x1
ARPHRD_LOOPBACK = 772
HTTP_API_MODULE = "connstats.probe.http_api"


@dataclass
class ProbePlan:
    """Everything the probe needs; built by the CLI from flags, env and the config file."""

    host: str
    ifaces: list[str]
    interval: float
    nats: NatsOptions
    state_dir: Path
    http: str | None = None  # ADDR:PORT, or None for no HTTP API
    http_explicit: bool = False  # given by the user: a missing HTTP module is an error
    auto: list[str] = field(default_factory=list)  # globs to attach as they come up
    exclude: list[str] = field(default_factory=list)
    docker_socket: str | None = None  # None: do not watch Docker
    capacity: int = DEFAULT_CAPACITY
    on_exit: str = "detach"  # keep: leave the classifier counting for the next start
    drain_timeout: float = 15.0  # up: how long to wait for the sink at shutdown
    services: list[ServiceFactory] = field(default_factory=list)


# -- the parts ---------------------------------------------------------------------------------


def default_interfaces() -> list[str]:
    """Every non-loopback interface that is up, in ifindex order."""
    with IPRoute() as ipr:
        links = ipr.get_links()
    return [link.get_attr("IFLA_IFNAME") for link in sorted(links, key=lambda l: l["index"])
            if link["flags"] & IFF_UP and link["ifi_type"] != ARPHRD_LOOPBACK]


def check_interfaces(names: list[str]) -> None:
    """Raise ``DeviceError`` for the first name that is no interface (before BPF is loaded)."""
    with IPRoute() as ipr:
        for name in names:
            if not ipr.link_lookup(ifname=check_name(name)):
                raise DeviceError(f"no network interface {name!r}; see `ip link`")


def make_store(spec: str, retention_seconds: float | None = None) -> Store:
    """The store a spec names; SQLite deletes rows older than ``retention_seconds``
    (InfluxDB keeps data as its bucket's retention says)."""
    kind, path = parse_store(spec)
    if kind == "sqlite":
        from connstats.sink.sqlite_store import SqliteStore
        return SqliteStore(path, retention_seconds)
    from connstats.sink.influx_store import InfluxConfig, InfluxStore
    return InfluxStore(InfluxConfig.from_env())


def http_services(plan: ProbePlan) -> list[ServiceFactory]:
    """The HTTP API service, if asked for and part of this build."""
    if not plan.http:
        return []
    try:
        from connstats.probe.http_api import http_service
    except ImportError as exc:
        if exc.name != HTTP_API_MODULE:
            raise
        if plan.http_explicit:
            raise ConfigError("--http: the HTTP API is not part of this build; leave --http out") from None
        log.debug("no HTTP API in this build; not serving %s", plan.http)
        return []
    return [http_service(plan.http)]


def watcher_services(plan: ProbePlan) -> list[ServiceFactory]:
    """Services that keep the attached devices true: the link watcher (always: it releases
    deleted devices, keeps ``--iface`` names attached, attaches links matching ``--auto``,
    every one but ``lo`` when no ``--iface`` was given), the filter guard (our filters
    replaced or removed by someone else), and Docker containers' veths, labelled."""
    from connstats.probe.docker_watch import docker_watcher
    from connstats.probe.guard import filter_guard
    from connstats.probe.watch import link_watcher

    services = [link_watcher(plan.auto, exclude=plan.exclude, keep=plan.ifaces), filter_guard()]
    if plan.docker_socket:
        services.append(docker_watcher(plan.docker_socket))
    return services


def probe_daemon(plan: ProbePlan) -> ProbeDaemon:
    services = [control_service(plan.nats, plan.host), *http_services(plan),
                *watcher_services(plan), *plan.services]
    settings = DaemonSettings(
        probe=ProbeSettings(ifaces=list(plan.ifaces), interval=plan.interval, host=plan.host,
                            capacity=plan.capacity, state_dir=plan.state_dir, on_exit=plan.on_exit),
        nats=plan.nats,
        publisher=PublisherSettings(host=plan.host, state_dir=plan.state_dir / "outbox"),
        services=services,
    )
    return ProbeDaemon(settings)


def prepare_state_dir(state_dir: Path) -> Path:
    """The state directory (and its outbox), created if needed, mode 0700: it holds the
    NATS URL and credentials, readable by their owner only."""
    try:
        private.private_dir(state_dir)
        private.private_dir(state_dir / "outbox")
    except OSError as exc:
        raise ConfigError(f"cannot create the state directory {state_dir} (mode 0700): {exc.strerror}; "
                          "set CONNSTATS_STATE_DIR to a directory you own") from exc
    return state_dir


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only."""
    private.write_private(path, text)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("already stopping; waiting for the last interval to be stored")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


# -- the three ways to run it -----------------------------------------------------------------


async def run_probe(plan: ProbePlan, on_ready: Callable[[ProbeDaemon], None] | None = None,
                    daemon: ProbeDaemon | None = None, stop: asyncio.Event | None = None) -> None:
    """Run the probe until SIGINT/SIGTERM (or ``stop``)."""
    daemon = daemon or probe_daemon(plan)
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        task = asyncio.create_task(daemon.run(stop))
        await _announce_when_ready(daemon, task, on_ready)
        await task


async def run_sink_only(nats_options: NatsOptions, store: Store) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await run_sink(nats_options, store, stop=stop, handle_signals=False)


async def run_up(plan: ProbePlan, store_spec: str, nats_url: str | None,
                 on_ready: Callable[[ProbeDaemon], None] | None = None,
                 daemon_hook: Callable[[ProbeDaemon], None] | None = None,
                 retention_seconds: float | None = None) -> None:
    """The whole pipeline on this host, until SIGINT/SIGTERM; see the module docstring."""
    stop = asyncio.Event()
    # the embedded server lets in only the users made here: probe, sink, admin (the CLI)
    embedded = EmbeddedNats(plan.state_dir, users=NatsUsers.generate(plan.host)) if nats_url is None else None
    url_file = plan.state_dir / NATS_URL_FILE
    creds_file = plan.state_dir / CREDENTIALS_FILE
    with stop_on_signals(stop):
        try:
            creds_file.unlink(missing_ok=True)  # left by an `up` that was killed
            url = await asyncio.to_thread(embedded.start) if embedded else nats_url
            plan.nats = sink_nats = _with_servers(plan.nats, url)
            if embedded is not None:
                write_credentials(creds_file, url, embedded.users)  # before nats.url: found together
                plan.nats = embedded.users.login(plan.nats, "probe")
                sink_nats = embedded.users.login(sink_nats, "sink")
            write_private(url_file, url + "\n")  # a URL may carry credentials
            store = make_store(store_spec, retention_seconds)
            try:
                await check_store(store)  # before loading BPF: a bad store path fails fast
            except ConnstatsError:
                await store.close()
                raise
            daemon = probe_daemon(plan)
            if daemon_hook:
                daemon_hook(daemon)
            await _run_both(replace(plan, nats=sink_nats), daemon, store, stop, on_ready)
        finally:
            if embedded is not None:
                url_file.unlink(missing_ok=True)
                creds_file.unlink(missing_ok=True)
                await asyncio.to_thread(embedded.stop)


async def _run_both(plan: ProbePlan, daemon: ProbeDaemon, store: Store, stop: asyncio.Event,
                    on_ready: Callable[[ProbeDaemon], None] | None) -> None:
    sink_stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(plan.nats, store, stop=sink_stop, handle_signals=False), name="sink")
    probe = asyncio.create_task(daemon.run(stop), name="probe")
    stopped = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({probe, sink, stopped, ready}, return_when=asyncio.FIRST_COMPLETED)
    # ready first: announce, then run until a signal or until the probe or the sink fails
    if ready in done and not probe.done():
        if on_ready:
            on_ready(daemon)
        await asyncio.wait({probe, sink, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for task in (stopped, ready):
        task.cancel()
    probe_result = (await asyncio.gather(probe, return_exceptions=True))[0]
    if not isinstance(probe_result, BaseException) and not sink.done():
        await wait_until_stored(plan.nats, plan.host, plan.drain_timeout)
    sink_stop.set()
    sink_result = (await asyncio.gather(sink, return_exceptions=True))[0]
    for result in (probe_result, sink_result):
        if isinstance(result, BaseException):
            raise result


async def _announce_when_ready(daemon: ProbeDaemon, task: asyncio.Task,
                               on_ready: Callable[[ProbeDaemon], None] | None) -> None:
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if daemon.ready.is_set() and on_ready and not task.done():
        on_ready(daemon)


async def _acked_through(js) -> int:
    """The stream sequence up to which the sink's consumer acked everything (0: no consumer yet)."""
    try:
        floor = (await js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)).ack_floor
    except nats.js.errors.NotFoundError:
        return 0
    return (floor.stream_seq or 0) if floor is not None else 0


def _with_servers(options: NatsOptions, url: str) -> NatsOptions:
    return replace(options, servers=tuple(u.strip() for u in url.split(",") if u.strip()))


async def wait_until_stored(options: NatsOptions, host: str, timeout: float) -> bool:
    """Wait until the sink's consumer acked the stream's last flow message from ``host``.

    Compares the sequence of the last message on ``flows_subject(host)`` with the ack floor
    of the durable consumer; False (and a warning) after ``timeout`` seconds.
    """
    try:
        nc = await connect(options, name="connstats-up-drain")
    except ConnstatsError as exc:
        log.warning("cannot check that the sink stored everything: %s", exc)
        return False
    try:
        js = nc.jetstream()
        try:
            target = (await js.get_last_msg(STREAM_NAME, flows_subject(host))).seq
        except nats.js.errors.NotFoundError:
            return True
        deadline = time.monotonic() + timeout
        while True:
            if await _acked_through(js) >= target:
                return True
            if time.monotonic() >= deadline:
                log.warning("the sink has not stored up to stream sequence %d within %g s; the rest "
                            "stays in the stream for the next start", target, timeout)
                return False
            await asyncio.sleep(0.05)
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        log.warning("cannot check that the sink stored everything: %r", exc)
        return False
    finally:
        await nc.close()
