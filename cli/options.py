"""Options shared by several commands, defined once.

Every option defaults to ``None`` so that ``Config.get`` can tell "not given" apart and
fall back to the environment, the config file and the default (see ``config.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Optional

import typer

from .config import Config, load_config


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


ConfigFile = Annotated[Optional[str], typer.Option(
    "--config", metavar="FILE", help="TOML config file [default: /etc/connstats/config.toml]")]
Nats = Annotated[Optional[str], typer.Option(
    "--nats", metavar="URL", help="NATS server URL(s), comma-separated [default: <state>/nats.url, "
    "else nats://127.0.0.1:4222]")]
NatsCreds = Annotated[Optional[str], typer.Option("--nats-creds", metavar="FILE", help="NATS credentials file")]
TlsCa = Annotated[Optional[str], typer.Option("--tls-ca", metavar="FILE", help="CA bundle for NATS TLS")]
TlsCert = Annotated[Optional[str], typer.Option("--tls-cert", metavar="FILE", help="client certificate for NATS TLS")]
TlsKey = Annotated[Optional[str], typer.Option("--tls-key", metavar="FILE", help="client key for NATS TLS")]
Host = Annotated[Optional[str], typer.Option("--host", metavar="NAME", help="host name the probe publishes as "
                                             "[default: this machine's host name]")]
Ifaces = Annotated[Optional[list[str]], typer.Option(
    "--iface", "-i", metavar="NAME", help="interface to attach to (repeatable) [default: every "
    "non-loopback interface that is up]")]
Interval = Annotated[Optional[float], typer.Option(
    "--interval", metavar="SECONDS", min=0.05, help="seconds per interval, fractions allowed [default: 10]")]
Store = Annotated[Optional[str], typer.Option(
    "--store", metavar="sqlite:PATH|influxdb", help="where flows are stored [default: "
    "influxdb if INFLUXDB_V2_URL is set, else sqlite:<state>/flows.sqlite]")]
Http = Annotated[Optional[str], typer.Option(
    "--http", metavar="ADDR:PORT", help="serve the HTTP API here; 'none' for no HTTP API "
    "(and no since-attach totals to keep) [default: 127.0.0.1:9102]")]
HttpGroup = Annotated[Optional[str], typer.Option(
    "--http-group", metavar="GROUP", help="members of this group may call the HTTP API and the web page "
    "(root may, and anyone with the token in <state>/ui-token) [default: none]")]
Ui = Annotated[Optional[str], typer.Option(
    "--ui", metavar="ADDR:PORT", help="serve the web page here; 'none' for no page; a non-loopback "
    "address requires a token, printed at start [default: 127.0.0.1:9470]")]
Retention = Annotated[Optional[str], typer.Option(
    "--retention", metavar="DURATION", help="SQLite: delete rows older than this, e.g. 7d "
    "[default: keep everything]; InfluxDB: set it on the bucket")]
Capacity = Annotated[Optional[int], typer.Option(
    "--capacity", metavar="N", min=1, help="connections per flow map and buffer; memory grows "
    "linearly, ~72 MiB at the default [default: 131072]")]
Auto = Annotated[Optional[list[str]], typer.Option(
    "--auto", metavar="PATTERN", help="attach devices whose name matches this glob as they come "
    "up (repeatable) [default: every device, when no --iface is given]")]
Exclude = Annotated[Optional[list[str]], typer.Option(
    "--exclude", metavar="PATTERN", help="never auto-attach devices matching this glob (repeatable; "
    "lo always)")]
DockerSocket = Annotated[Optional[str], typer.Option(
    "--docker-socket", metavar="PATH", help="Docker Engine socket to watch containers on; "
    "'none' to disable [default: /var/run/docker.sock when present]")]
PodmanSocket = Annotated[Optional[str], typer.Option(
    "--podman-socket", metavar="PATH", help="rootful podman's API socket to watch containers and "
    "pods on; 'none' to disable [default: /run/podman/podman.sock when present]")]
ContainerdSocket = Annotated[Optional[str], typer.Option(
    "--containerd-socket", metavar="PATH", help="containerd socket to watch pods and containers on "
    "(read-only calls); 'none' to disable [default: /run/containerd/containerd.sock when present]")]
Processes = Annotated[Optional[bool], typer.Option(
    "--processes/--no-processes", help="name the process on each end of a connection (socket-owner "
    "tracepoints, read at every drain) [default: on where the kernel has BTF and the tracepoints]")]
Quality = Annotated[Optional[bool], typer.Option(
    "--quality/--no-quality", help="measure RTT, retransmitted segments and kernel drops with their reason "
    "per connection (tcp_probe, tcp_retransmit_skb and kfree_skb tracepoints, joined at every drain) "
    "[default: on where the kernel has the tracepoints]")]
InfluxUrl = Annotated[Optional[str], typer.Option(
    "--influx-url", metavar="URL", help="InfluxDB 2.x URL for --store influxdb [default: "
    "CONNSTATS_INFLUX_URL, INFLUXDB_V2_URL, [influxdb] url]; the token comes from INFLUXDB_V2_TOKEN")]
InfluxOrg = Annotated[Optional[str], typer.Option(
    "--influx-org", metavar="ORG", help="InfluxDB organization [default: CONNSTATS_INFLUX_ORG, "
    "INFLUXDB_V2_ORG, [influxdb] org]")]
InfluxBucket = Annotated[Optional[str], typer.Option(
    "--influx-bucket", metavar="BUCKET", help="InfluxDB bucket [default: connstats]")]
Metrics = Annotated[Optional[str], typer.Option(
    "--metrics", metavar="ADDR:PORT", help="serve /metrics, /healthz and /readyz here; a bare PORT "
    "means 127.0.0.1:PORT; nothing of the HTTP API is served there [default: off (probe and up: "
    "on the --http listener only)]")]
StreamReplicas = Annotated[Optional[int], typer.Option(
    "--stream-replicas", metavar="N", min=1, help="replicas of the streams connstats creates, on a "
    "JetStream cluster; an existing stream is changed to N [default: 1 for a new stream, an existing one left as it is]")]
Format = Annotated[OutputFormat, typer.Option("--format", "-f", help="output format")]
OnExit = Annotated[Optional[str], typer.Option(
    "--on-exit", metavar="keep|detach", help="on SIGTERM/SIGINT, after the last interval is "
    "published: keep the classifier counting (pinned) for the next start, or detach it "
    "[default: keep for probe, detach for up]")]

Rules = Annotated[Optional[str], typer.Option(
    "--rules", metavar="FILE", help="alert rules (TOML): run the alert engine (see docs/alerts.md)")]
Webhooks = Annotated[Optional[list[str]], typer.Option(
    "--webhook", metavar="URL", help="with --rules: POST alerts to URL/api/v2/alerts in the Alertmanager "
    "v2 format (repeatable)")]


@dataclass(frozen=True)
class NatsFlags:
    """The NATS connection flags of one command, kept together."""

    url: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def options(self, config: Config, name: str = "connstats", role: str = "admin"):
        """``role`` (probe, sink, admin, alert) picks the login on the embedded server of ``up``."""
        return config.nats_options(self.url, creds=self.creds, tls_ca=self.tls_ca,
                                   tls_cert=self.tls_cert, tls_key=self.tls_key, name=name,
                                   role=role)


__all__ = [
    "Auto", "Capacity", "Config", "Retention", "ConfigFile", "DockerSocket", "Exclude", "Format", "Host", "Http", "HttpGroup", "Ifaces",
    "InfluxBucket", "InfluxOrg", "InfluxUrl", "Interval", "Metrics", "Nats", "NatsCreds",
    "NatsFlags", "OnExit", "OutputFormat", "PodmanSocket", "Rules", "Store", "StreamReplicas", "TlsCa", "TlsCert", "TlsKey",
    "Ui", "Webhooks", "load_config",
]
