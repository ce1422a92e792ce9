"""``connstats ui``: the web page (live connections, the map, history) on its own.

It finds `up`'s NATS and store like every other command (flags, environment, config file,
then what `up` left in the state directory) and logs in to `up`'s embedded NATS as admin
(the role that may read the flows subjects). ``up`` serves the same page with ``--ui``.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Optional

import typer

from connstats.probe.runtime.lifecycle import stop_on_signals
from connstats.probe.runtime.private import prepare_state_dir
from connstats.sink.web.compose import DEFAULT_UI, UiConfig, WebUi, build_ui

from .config import Config
from .options import (
    ConfigFile,
    HttpGroup,
    InfluxBucket,
    InfluxOrg,
    InfluxUrl,
    Nats,
    NatsCreds,
    NatsFlags,
    Store,
    TlsCa,
    TlsCert,
    TlsKey,
    load_config,
)
from .policy_learn import own_addresses
from .settings import http_group, setup_logging

app = typer.Typer()

Listen = Annotated[Optional[str], typer.Option(
    "--listen", metavar="ADDR:PORT", help=f"where to serve the page; a non-loopback address requires "
    f"a token, printed at start [default: {DEFAULT_UI}]")]


def ui_config(config: Config, listen: str, flags: NatsFlags, store: str | None,
              influx: tuple[str | None, str | None, str | None] = (None, None, None),
              group: str | None = None) -> UiConfig:
    spec, influx_config = config.store(store, *influx)
    return UiConfig(listen=listen, nats=flags.options(config, name="connstats-ui", role="admin"), store=spec,
                    state_dir=prepare_state_dir(config.state_dir()), influx=influx_config,
                    host=config.host(), host_addresses=own_addresses, http_group=http_group(config, group))


def announce(ui: WebUi) -> None:
    print(f"connstats ui: serving the web page on {ui.url}", file=sys.stderr, flush=True)


async def serve(ui: WebUi) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await ui.start()
        try:
            announce(ui)
            await stop.wait()
        finally:
            await ui.close()


@app.command()
def ui(
    listen: Listen = None, nats: Nats = None, store: Store = None, nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
    influx_url: InfluxUrl = None, influx_org: InfluxOrg = None, influx_bucket: InfluxBucket = None,
    http_group: HttpGroup = None,
) -> None:
    """Serve the web page: live connections, the container map, history (Ctrl-C to stop)."""
    cfg = load_config(config)
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    setup_logging(False)
    asyncio.run(serve(build_ui(ui_config(cfg, cfg.get("ui", listen, DEFAULT_UI), flags, store,
                                         (influx_url, influx_org, influx_bucket), http_group))))
