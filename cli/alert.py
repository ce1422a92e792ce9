"""``connstats alert`` (the alert engine, or ``--check`` a rules file) and ``connstats alerts``
(the alerts firing now). Rules, kinds and the engine are in ``connstats.sink.alerts``."""
from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Annotated, Optional

import msgspec
import typer

from connstats.probe.contract import AlertMessage, ConfigError, connect, redacted
from connstats.probe.runtime.telemetry import parse_metrics_address
from connstats.sink.alerts import firing_alerts, load_rules
from connstats.sink.alerts.compose import build_alerts

from . import pipeline
from .options import (
    ConfigFile,
    Format,
    Host,
    Metrics,
    Nats,
    NatsCreds,
    NatsFlags,
    OutputFormat,
    Rules,
    StreamReplicas,
    TlsCa,
    TlsCert,
    TlsKey,
    Webhooks,
    load_config,
)
from .render import Column, render
from .settings import alert_config, setup_logging

app = typer.Typer()

Check = Annotated[Optional[str], typer.Option("--check", metavar="FILE", help="validate a rules file and exit")]

ALERT_COLUMNS = (
    Column("started_at", "STARTED", "time"), Column("rule", "ALERT", width=18), Column("severity", "SEVERITY"),
    Column("host", "HOST", width=14), Column("labels", "LABELS", width=30), Column("value", "VALUE", "int"),
)
JSON_COLUMNS = (*ALERT_COLUMNS, Column("summary", "SUMMARY"), Column("fingerprint", "FINGERPRINT"))


@app.command()
def alert(
    rules: Rules = None, check: Check = None, webhook: Webhooks = None, host: Host = None, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    config: ConfigFile = None, metrics: Metrics = None, stream_replicas: StreamReplicas = None,
) -> None:
    """Run the alert engine on the live flows until Ctrl-C (or --check a rules file)."""
    if check is not None:
        checked = load_rules(check)
        kinds = Counter(r.kind for r in checked)
        typer.echo(f"{check}: {len(checked)} rules OK ({', '.join(f'{k} {n}' for k, n in kinds.items())})")
        return
    if rules is None:
        raise ConfigError("no rules file; pass --rules FILE (see `connstats alert --help`)")
    cfg = load_config(config)
    alert_cfg = alert_config(cfg, NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), rules, webhook, host,
                             stream_replicas)
    metrics_address = cfg.get("metrics", metrics)
    if metrics_address:
        parse_metrics_address(metrics_address)  # a bad address fails before anything starts
    setup_logging(False)
    service = build_alerts(alert_cfg)

    def on_ready() -> None:
        hooks = f"; webhooks {redacted(alert_cfg.webhooks)}" if alert_cfg.webhooks else ""
        print(f"connstats alert: {len(alert_cfg.rules)} rules from {rules} on NATS "
              f"{redacted(alert_cfg.nats.servers)} as host {alert_cfg.host}{hooks}\n  Ctrl-C to stop",
              file=sys.stderr, flush=True)

    asyncio.run(pipeline.run_alerts(service, alert_cfg.telemetry, on_ready, metrics_address))


@app.command()
def alerts(
    format: Format = OutputFormat.table, nats: Nats = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """The alerts firing now: when they started, their labels and value."""
    options = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key).options(load_config(config), name="connstats-cli")

    async def query() -> list[AlertMessage]:
        nc = await connect(options)
        try:
            return await firing_alerts(nc)
        finally:
            await nc.close()

    found = asyncio.run(query())
    rows = [alert_row(a, structured=format is OutputFormat.json) for a in found]
    render(rows, JSON_COLUMNS if format is not OutputFormat.table else ALERT_COLUMNS, format,
           empty="no alert is firing")


def alert_row(alert: AlertMessage, structured: bool = False) -> dict:
    group = {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}
    labels = group if structured else ",".join(f"{k}={v}" for k, v in group.items())
    return {**msgspec.to_builtins(alert), "labels": labels}

