"""The settings of the long-running commands, each built from flags, environment and the
file (config.py) in one function: ``probe_config`` -> ``ProbeConfig``, ``sink_config`` ->
``SinkConfig``, ``alert_config`` -> ``AlertConfig``; and their logging (``setup_logging``).

``up``, ``probe`` and ``sink`` (run_commands.py), ``alert`` (alert.py) and ``ui`` (ui.py)
import them from here; this module imports no command module.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from connstats.probe.compose import (
    DEFAULT_CAPACITY,
    DEFAULT_CONTAINERD_SOCKET,
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_PODMAN_SOCKET,
    HttpConfig,
    ProbeConfig,
    WatchConfig,
    check_interfaces,
    default_interfaces,
)
from connstats.probe.contract import ConfigError, StreamSettings
from connstats.probe.runtime.durations import duration_seconds
from connstats.probe.runtime.private import prepare_state_dir, private_dir
from connstats.sink.alerts import load_rules
from connstats.sink.alerts.compose import AlertConfig
from connstats.sink.backlog import DEFAULT_LAG_WARNING_INTERVALS
from connstats.sink.compose import SinkConfig

from .config import DEFAULT_HTTP, Config
from .options import NatsFlags

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
    stream_replicas: int | None = None
    http_group: str | None = None
    podman_socket: str | None = None
    containerd_socket: str | None = None
    processes: bool | None = None
    quality: bool | None = None


@dataclass(frozen=True)
class InfluxFlags:
    url: str | None = None
    org: str | None = None
    bucket: str | None = None


def probe_config(config: Config, flags: NatsFlags, iface: list[str] | None, interval: float | None,
                 host: str | None, http: str | None, probe_flags: ProbeFlags = ProbeFlags(),
                 on_exit_default: str = "detach") -> ProbeConfig:
    """The one ``ProbeConfig`` of flags, environment and file."""
    ifaces = config.get("iface", iface) or []
    auto = config.get("auto", probe_flags.auto) or ([] if ifaces else ["*"])
    if ifaces:
        check_interfaces(ifaces)
    elif not config.get("auto", probe_flags.auto):
        ifaces = default_interfaces()
    if not ifaces and not auto:
        raise ConfigError("no network interface other than loopback is up; name one with --iface")
    docker_socket = config.get("docker_socket", probe_flags.docker_socket, DEFAULT_DOCKER_SOCKET)
    podman_socket = config.get("podman_socket", probe_flags.podman_socket, DEFAULT_PODMAN_SOCKET)
    containerd_socket = config.get("containerd_socket", probe_flags.containerd_socket, DEFAULT_CONTAINERD_SOCKET)
    seconds = config.get("interval", interval, DEFAULT_INTERVAL)
    if seconds < 0.05:
        raise ConfigError(f"interval {seconds:g} s is too short; use at least 0.05")
    address = config.get("http", http)
    return ProbeConfig(
        host=config.host(host), nats=flags.options(config, name="connstats-probe", role="probe"),
        ifaces=ifaces, interval=seconds, state_dir=prepare_state_dir(config.state_dir()),
        capacity=config.get("capacity", probe_flags.capacity, DEFAULT_CAPACITY),
        on_exit=config.get("on_exit", probe_flags.on_exit, on_exit_default),
        http=HttpConfig(None if address == "none" else address or DEFAULT_HTTP,
                        required=address not in (None, "none"), group=http_group(config, probe_flags.http_group)),
        watch=WatchConfig(auto=auto, exclude=config.get("exclude", probe_flags.exclude, []),
                          docker_socket=None if docker_socket == "none" else docker_socket,
                          podman_socket=None if podman_socket == "none" else podman_socket,
                          containerd_socket=None if containerd_socket == "none" else containerd_socket),
        stream=stream_settings(config, probe_flags.stream_replicas),
        processes=config.get("processes", probe_flags.processes, True),
        quality=config.get("quality", probe_flags.quality, True),
    )


def http_group(config: Config, flag: str | None) -> str | None:
    """The group whose members may call the HTTP API and the web page; checked here."""
    group = config.get("http_group", flag)
    if group:
        from connstats.probe.runtime.callers import group_id

        group_id(group)  # no such group: a ConfigError before anything starts
    return group or None


def stream_settings(config: Config, replicas: int | None) -> StreamSettings:
    """The streams' settings: replicas from --stream-replicas, env or file (None: not set)."""
    return StreamSettings(replicas=config.get("stream_replicas", replicas))


def sink_config(config: Config, flags: NatsFlags, store: str | None, retention: str | None,
                influx: InfluxFlags = InfluxFlags(), stream_replicas: int | None = None) -> SinkConfig:
    """The one ``SinkConfig`` of flags, environment and file."""
    spec, influx_config = config.store(store, influx.url, influx.org, influx.bucket)
    if influx_config is None and config.get("store", store) is None:
        prepare_state_dir(config.state_dir())
    return SinkConfig(
        nats=flags.options(config, name="connstats-sink", role="sink"), store=spec,
        retention_seconds=config.get("retention", _retention_flag(retention)),
        lag_warning_intervals=config.get("lag_warning_intervals", None, DEFAULT_LAG_WARNING_INTERVALS),
        influx=influx_config,
        stream=stream_settings(config, stream_replicas),
    )


def _retention_flag(text: str | None) -> float | None:
    return None if text is None else duration_seconds(text)


def check_webhook(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--webhook {url!r} is not an http(s) URL; give e.g. http://alertmanager:9093")
    return url


def alert_config(config: Config, flags: NatsFlags, rules_file: str, webhooks: list[str] | None,
                 host: str | None, stream_replicas: int | None = None) -> AlertConfig:
    """The one ``AlertConfig`` of flags, environment and file (``alert`` and ``up --rules``)."""
    rules = load_rules(rules_file)
    state_dir = config.state_dir()
    try:
        private_dir(state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create the state directory {state_dir} (mode 0700): {exc.strerror}; "
                          "set CONNSTATS_STATE_DIR to a directory you own") from exc
    return AlertConfig(rules, flags.options(config, name="connstats-alert", role="alert"), config.host(host),
                       state_dir, tuple(check_webhook(u) for u in webhooks or ()),
                       stream=stream_settings(config, stream_replicas))
