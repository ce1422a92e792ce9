"""``connstats up``, ``connstats probe`` and ``connstats sink``: the long-running commands."""
from __future__ import annotations

import asyncio
import sys

import typer

from connstats.probe.compose import ProbeConfig, ProbeDaemon, build_probe
from connstats.probe.contract import ConfigError, redacted
from connstats.probe.runtime.memory import bound_heap
from connstats.probe.runtime.private import prepare_state_dir
from connstats.probe.runtime.telemetry import parse_metrics_address
from connstats.sink.compose import SinkConfig, build_sink

from . import pipeline
from .config import Config
from .live import LiveSummary
from .options import (
    Auto,
    Capacity,
    ConfigFile,
    ContainerdSocket,
    DockerSocket,
    Exclude,
    Host,
    Http,
    HttpGroup,
    Ifaces,
    InfluxBucket,
    InfluxOrg,
    InfluxUrl,
    Interval,
    Metrics,
    Nats,
    NatsCreds,
    NatsFlags,
    OnExit,
    PodmanSocket,
    Processes,
    Quality,
    Retention,
    Rules,
    Store,
    StreamReplicas,
    TlsCa,
    TlsCert,
    TlsKey,
    Ui,
    Webhooks,
    load_config,
)
from .settings import InfluxFlags, ProbeFlags, alert_config, probe_config, setup_logging, sink_config

app = typer.Typer()


def _banner(command: str, probe: ProbeConfig, daemon: ProbeDaemon, extra: str) -> str:
    names = ", ".join(d.name for d in daemon.devices()) or "no interface"
    return (f"connstats {command}: watching {names} every {probe.interval:g} s as host {probe.host}\n"
            f"  {extra}Ctrl-C to stop")


@app.command()
def up(
    iface: Ifaces = None, interval: Interval = None, store: Store = None, nats: Nats = None,
    host: Host = None, http: Http = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    auto: Auto = None, exclude: Exclude = None, docker_socket: DockerSocket = None,
    capacity: Capacity = None, retention: Retention = None, on_exit: OnExit = None,
    influx_url: InfluxUrl = None, influx_org: InfluxOrg = None, influx_bucket: InfluxBucket = None,
    metrics: Metrics = None, stream_replicas: StreamReplicas = None, rules: Rules = None,
    webhook: Webhooks = None, ui: Ui = None, http_group: HttpGroup = None,
    podman_socket: PodmanSocket = None,
    containerd_socket: ContainerdSocket = None, processes: Processes = None, quality: Quality = None,
) -> None:
    """Run the whole pipeline on this host in the foreground: probe, sink, and NATS if needed.

    Without --nats it starts an embedded nats-server (loopback, JetStream, port 4222 if
    free) and writes its URL to <state>/nats.url, where every other command finds it.
    """
    cfg = load_config(config)
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    if webhook and rules is None:
        raise ConfigError("--webhook needs --rules FILE: the alert engine sends the webhooks")
    alert_cfg = alert_config(cfg, flags, rules, webhook, host, stream_replicas) if rules is not None else None
    probe_cfg = probe_config(cfg, flags, iface, interval, host, http,
                             ProbeFlags(auto, exclude, docker_socket, capacity, on_exit, stream_replicas, http_group,
                                        podman_socket, containerd_socket, processes, quality),
                             "detach")
    sink_cfg = sink_config(cfg, flags, store, retention, InfluxFlags(influx_url, influx_org, influx_bucket),
                           stream_replicas)
    nats_url = cfg.get("nats", nats)  # not <state>/nats.url: that is what up itself writes
    ui_cfg = _ui_config(cfg, flags, ui, sink_cfg, probe_cfg.host, probe_cfg.http.group)
    live = sys.stdout.isatty()
    setup_logging(live)
    bound_heap()  # the per-interval arrays go back to the system when freed (runtime/memory.py)
    summary = LiveSummary("")
    if live:
        probe_cfg.interval_listeners.append(summary)

    def on_ready(daemon: ProbeDaemon) -> None:
        where = "embedded " if nats_url is None else ""
        engine = f"alerts {len(alert_cfg.rules)} rules; " if alert_cfg else ""
        banner = _banner("up", probe_cfg, daemon,
                         f"NATS {where}{redacted(probe_cfg.nats.servers)}; store {sink_cfg.store}; {engine}")
        print(banner, file=sys.stderr, flush=True)
        summary.banner = banner

    asyncio.run(pipeline.run_up(probe_cfg, sink_cfg, nats_url, on_ready,
                                metrics_address=cfg.get("metrics", metrics), alerts=alert_cfg, ui=ui_cfg))


def _ui_config(cfg: Config, flags: NatsFlags, ui: str | None, sink_cfg: SinkConfig, host: str,
               group: str | None = None):
    """The web page of ``up`` (loopback by default), or None for ``--ui none``."""
    from connstats.sink.web.compose import DEFAULT_UI, UiConfig

    from .policy_learn import own_addresses

    listen = cfg.get("ui", ui, DEFAULT_UI)
    if listen == "none":
        return None
    return UiConfig(listen=listen, nats=flags.options(cfg, name="connstats-ui", role="admin"),
                    store=sink_cfg.store, state_dir=prepare_state_dir(cfg.state_dir()), influx=sink_cfg.influx,
                    required=cfg.get("ui", ui) is not None, host=host, host_addresses=own_addresses,
                    http_group=group)


@app.command()
def probe(
    iface: Ifaces = None, interval: Interval = None, nats: Nats = None, host: Host = None,
    http: Http = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    auto: Auto = None, exclude: Exclude = None, docker_socket: DockerSocket = None,
    capacity: Capacity = None, on_exit: OnExit = None, stream_replicas: StreamReplicas = None,
    metrics: Metrics = None, http_group: HttpGroup = None, podman_socket: PodmanSocket = None,
    containerd_socket: ContainerdSocket = None, processes: Processes = None, quality: Quality = None,
) -> None:
    """Run only the probe: count connections on interfaces and publish them to NATS.

    On SIGTERM/SIGINT it publishes the last interval and, by default (--on-exit keep),
    leaves the classifier counting into pinned maps: the next start publishes what was
    counted meanwhile, so a restart or an upgrade loses nothing. `connstats reset`
    removes it all when no probe runs.
    """
    cfg = load_config(config)
    probe_cfg = probe_config(cfg, NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), iface, interval,
                             host, http, ProbeFlags(auto, exclude, docker_socket, capacity, on_exit, stream_replicas,
                                                    http_group, podman_socket, containerd_socket, processes,
                                                    quality), "keep")
    probe_cfg.metrics = cfg.get("metrics", metrics)  # not in probe_config: `up` serves its own
    live = sys.stdout.isatty()
    setup_logging(live)
    bound_heap()
    summary = LiveSummary("")
    if live:
        probe_cfg.interval_listeners.append(summary)
    daemon = build_probe(probe_cfg)

    def on_ready(daemon: ProbeDaemon) -> None:
        banner = _banner("probe", probe_cfg, daemon, f"NATS {redacted(probe_cfg.nats.servers)}; ")
        print(banner, file=sys.stderr, flush=True)
        summary.banner = banner

    asyncio.run(pipeline.run_probe(daemon, on_ready))


@app.command()
def sink(
    nats: Nats = None, store: Store = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    retention: Retention = None, influx_url: InfluxUrl = None, influx_org: InfluxOrg = None,
    influx_bucket: InfluxBucket = None, metrics: Metrics = None, stream_replicas: StreamReplicas = None,
) -> None:
    """Run only the sink: consume flow records from NATS into SQLite or InfluxDB."""
    cfg = load_config(config)
    sink_cfg = sink_config(cfg, NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), store, retention,
                           InfluxFlags(influx_url, influx_org, influx_bucket), stream_replicas)
    metrics_address = cfg.get("metrics", metrics)
    if metrics_address:
        parse_metrics_address(metrics_address)  # a bad address fails before anything starts
    setup_logging(False)
    bound_heap()
    asyncio.run(pipeline.run_sink(build_sink(sink_cfg), metrics_address))

