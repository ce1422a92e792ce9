"""``connstats up``, ``connstats probe`` and ``connstats sink``: the long-running commands."""
from __future__ import annotations

import asyncio
import logging
import sys

import typer

from dataclasses import dataclass

from connstats.probe.containers import DEFAULT_DOCKER_SOCKET
from connstats.probe.daemon import ProbeDaemon
from connstats.probe.kernel import DEFAULT_CAPACITY
from connstats.probe.errors import ConfigError
from connstats.probe.subjects import redacted
from connstats.sink.history import parse_duration

from . import pipeline
from .config import DEFAULT_HTTP, Config
from .live import LiveSummary
from .options import (
    Auto, Capacity, ConfigFile, OnExit, DockerSocket, Exclude, Retention, Host, Http, Ifaces, Interval, Nats, NatsCreds, NatsFlags, Store, TlsCa, TlsCert,
    TlsKey, load_config,
)

app = typer.Typer()
DEFAULT_INTERVAL = 10.0


def setup_logging(live: bool) -> None:
    """INFO lines to stderr; on a terminal the live summary replaces the per-interval lines."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if live:
        logging.getLogger("connstats.probe").setLevel(logging.WARNING)


@dataclass(frozen=True)
class ProbeFlags:
    """Probe flags beyond NATS: which devices to attach as they appear, and map capacity."""

    auto: list[str] | None = None
    exclude: list[str] | None = None
    docker_socket: str | None = None
    capacity: int | None = None
    on_exit: str | None = None


def probe_plan(config: Config, flags: NatsFlags, iface: list[str] | None, interval: float | None,
               host: str | None, http: str | None, probe_flags: ProbeFlags = ProbeFlags(),
               on_exit_default: str = "detach") -> pipeline.ProbePlan:
    ifaces = config.get("iface", iface) or []
    auto = config.get("auto", probe_flags.auto) or ([] if ifaces else ["*"])
    if ifaces:
        pipeline.check_interfaces(ifaces)
    elif not config.get("auto", probe_flags.auto):
        ifaces = pipeline.default_interfaces()
    if not ifaces and not auto:
        raise ConfigError("no network interface other than loopback is up; name one with --iface")
    docker_socket = config.get("docker_socket", probe_flags.docker_socket, DEFAULT_DOCKER_SOCKET)
    seconds = config.get("interval", interval, DEFAULT_INTERVAL)
    if seconds < 0.05:
        raise ConfigError(f"interval {seconds:g} s is too short; use at least 0.05")
    state_dir = pipeline.prepare_state_dir(config.state_dir())
    address = config.get("http", http)
    return pipeline.ProbePlan(
        host=config.host(host), ifaces=ifaces, interval=seconds,
        nats=flags.options(config, name="connstats-probe", role="probe"), state_dir=state_dir,
        http=address or DEFAULT_HTTP, http_explicit=address is not None, auto=auto,
        exclude=config.get("exclude", probe_flags.exclude, []),
        docker_socket=None if docker_socket == "none" else docker_socket,
        capacity=config.get("capacity", probe_flags.capacity, DEFAULT_CAPACITY),
        on_exit=config.get("on_exit", probe_flags.on_exit, on_exit_default),
    )


def _banner(command: str, plan: pipeline.ProbePlan, daemon: ProbeDaemon, extra: str) -> str:
    names = ", ".join(d.name for d in daemon.devices()) or "no interface"
    return (f"connstats {command}: watching {names} every {plan.interval:g} s as host {plan.host}\n"
            f"  {extra}Ctrl-C to stop")


@app.command()
def up(
    iface: Ifaces = None, interval: Interval = None, store: Store = None, nats: Nats = None,
    host: Host = None, http: Http = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    auto: Auto = None, exclude: Exclude = None, docker_socket: DockerSocket = None,
    capacity: Capacity = None, retention: Retention = None, on_exit: OnExit = None,
) -> None:
    """Run the whole pipeline on this host in the foreground: probe, sink, and NATS if needed.

    Without --nats it starts an embedded nats-server (loopback, JetStream, port 4222 if
    free) and writes its URL to <state>/nats.url, where every other command finds it.
    """
    cfg = load_config(config)
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    plan = probe_plan(cfg, flags, iface, interval, host, http,
                      ProbeFlags(auto, exclude, docker_socket, capacity, on_exit), "detach")
    nats_url = cfg.get("nats", nats)  # not <state>/nats.url: that is what up itself writes
    store_spec = cfg.store_spec(store)
    live = sys.stdout.isatty()
    setup_logging(live)
    summary: list[LiveSummary] = []

    def on_ready(daemon: ProbeDaemon) -> None:
        where = "embedded " if nats_url is None else ""
        banner = _banner("up", plan, daemon, f"NATS {where}{redacted(plan.nats.servers)}; store {store_spec}; ")
        print(banner, file=sys.stderr, flush=True)
        if live:
            summary[0].banner = banner

    def hook(daemon: ProbeDaemon) -> None:
        if live:
            summary.append(LiveSummary(""))
            daemon.interval_listeners.append(summary[0])

    asyncio.run(pipeline.run_up(plan, store_spec, nats_url, on_ready, hook,
                                cfg.get("retention", _retention_flag(retention))))


@app.command()
def probe(
    iface: Ifaces = None, interval: Interval = None, nats: Nats = None, host: Host = None,
    http: Http = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    auto: Auto = None, exclude: Exclude = None, docker_socket: DockerSocket = None,
    capacity: Capacity = None, on_exit: OnExit = None,
) -> None:
    """Run only the probe: count connections on interfaces and publish them to NATS.

    On SIGTERM/SIGINT it publishes the last interval and, by default (--on-exit keep),
    leaves the classifier counting into pinned maps: the next start publishes what was
    counted meanwhile, so a restart or an upgrade loses nothing. `connstats reset`
    removes it all when no probe runs.
    """
    cfg = load_config(config)
    plan = probe_plan(cfg, NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), iface, interval, host,
                      http, ProbeFlags(auto, exclude, docker_socket, capacity, on_exit), "keep")
    live = sys.stdout.isatty()
    setup_logging(live)
    daemon = pipeline.probe_daemon(plan)
    if live:
        daemon.interval_listeners.append(LiveSummary(""))

    def on_ready(daemon: ProbeDaemon) -> None:
        banner = _banner("probe", plan, daemon, f"NATS {redacted(plan.nats.servers)}; ")
        print(banner, file=sys.stderr, flush=True)
        for listener in daemon.interval_listeners:
            if isinstance(listener, LiveSummary):
                listener.banner = banner

    asyncio.run(pipeline.run_probe(plan, on_ready, daemon))


@app.command()
def sink(
    nats: Nats = None, store: Store = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    retention: Retention = None,
) -> None:
    """Run only the sink: consume flow records from NATS into SQLite or InfluxDB."""
    cfg = load_config(config)
    options = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key).options(cfg, name="connstats-sink", role="sink")
    spec = cfg.store_spec(store)
    if spec.startswith("sqlite:") and cfg.get("store", store) is None:
        pipeline.prepare_state_dir(cfg.state_dir())
    setup_logging(False)
    backend = pipeline.make_store(spec, cfg.get("retention", _retention_flag(retention)))
    asyncio.run(pipeline.run_sink_only(options, backend))


def _retention_flag(text: str | None) -> float | None:
    return None if text is None else parse_duration(text) / 1e9
