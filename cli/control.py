"""``attach``, ``detach``, ``list`` and ``stats``: requests to the running probe over NATS.

``list`` and ``stats`` (as a table) end with the sink's backlog when a sink consumer exists
on the stream: messages behind and the age of the oldest (sink/backlog.py)."""
from __future__ import annotations

import asyncio
from enum import Enum
from typing import Annotated, Any, Optional

import nats.errors
import typer

from connstats.probe.contract import ConnstatsError, ControlClient, connect
from connstats.sink.backlog import read_backlog

from .config import Config
from .live import connection_columns, connection_row
from .options import (
    ConfigFile,
    Format,
    Host,
    Nats,
    NatsCreds,
    NatsFlags,
    OutputFormat,
    TlsCa,
    TlsCert,
    TlsKey,
    load_config,
)
from .render import Column, render

app = typer.Typer()


class Direction(str, Enum):
    auto = "auto"
    normal = "normal"
    inverted = "inverted"


Timeout = Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=0.1,
                                        help="how long to wait for the probe's answer")]
Iface = Annotated[str, typer.Argument(metavar="IFACE", help="network interface name")]

DEVICE_COLUMNS = (
    Column("name", "IFACE"), Column("ifindex", "IFINDEX", "int"), Column("kind", "KIND"),
    Column("mode", "MODE"), Column("direction", "DIRECTION"), Column("since", "SINCE", "time"),
)
RECORD_COLUMNS = tuple(Column(key, key, kind) for key, kind in (
    ("ifname", "text"), ("direction", "text"), ("proto", "text"), ("src_ip", "text"),
    ("src_port", "int"), ("dst_ip", "text"), ("dst_port", "int"), ("packets", "int"),
    ("bytes", "int"), ("first_seen", "time"), ("last_seen", "time"), ("container_name", "text"),
    ("verdict", "text"), ("pod", "text"), ("workload", "text"), ("runtime", "text"), ("process", "text"),
    ("pid", "int"), ("peer_process", "text"), ("peer_pid", "int"),
))
# what a stats row leaves out when it is empty (RecordV1 omits defaults)
_ROW_DEFAULTS = {"verdict": "", "pod": "", "workload": "", "runtime": "", "process": "", "pid": 0,
                 "peer_process": "", "peer_pid": 0}


def request(config: Config, flags: NatsFlags, host: str | None, verb: str, body: dict | None = None,
            timeout: float = 5.0) -> dict[str, Any]:
    """One request/reply with the probe of ``host``; ``ConnstatsError`` on any failure."""
    options = flags.options(config, name="connstats-cli")

    async def call() -> dict[str, Any]:
        async with ControlClient(options, config.host(host), timeout) as client:
            return await client.request(verb, body)

    return asyncio.run(call())


def _describe(device: dict) -> str:
    kind = device.get("kind") or "device"
    return f"{device['name']} (ifindex {device['ifindex']}, {kind}, direction {device['direction']})"


@app.command()
def attach(
    iface: Iface, host: Host = None,
    direction: Annotated[Direction, typer.Option(help="auto inverts veths (container's view)")] = Direction.auto,
    timeout: Timeout = 5.0, nats: Nats = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Attach the running probe to IFACE."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    reply = request(load_config(config), flags, host, "attach",
                    {"iface": iface, "direction": direction.value}, timeout)
    typer.echo(f"attached {_describe(reply['device'])}")


@app.command()
def detach(
    iface: Iface, host: Host = None, timeout: Timeout = 5.0, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None,
    tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Detach the running probe from IFACE."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    reply = request(load_config(config), flags, host, "detach", {"iface": iface}, timeout)
    typer.echo(f"detached {_describe(reply['device'])}")


@app.command("list")
def list_devices(
    host: Host = None, format: Format = OutputFormat.table, timeout: Timeout = 5.0, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None,
    tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """List the devices the running probe is attached to."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    reply = request(load_config(config), flags, host, "list", {}, timeout)
    render(reply["devices"], DEVICE_COLUMNS, format, empty="no device is attached")
    if format is OutputFormat.table:
        _echo_backlog(load_config(config), flags, timeout)


@app.command()
def stats(
    iface: Annotated[Optional[str], typer.Argument(metavar="[IFACE]", help="only this interface")] = None,
    host: Host = None, format: Format = OutputFormat.table,
    limit: Annotated[int, typer.Option(min=1, help="show at most this many connections")] = 1000,
    timeout: Timeout = 5.0, nats: Nats = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Counters of the current interval, not yet published, busiest first."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    body: dict[str, Any] = {"limit": limit} | ({"iface": iface} if iface else {})
    reply = request(load_config(config), flags, host, "stats", body, timeout)
    records = [_ROW_DEFAULTS | r for r in reply["records"]]  # rows omit empty fields
    if format is not OutputFormat.table:
        render(records, RECORD_COLUMNS, format)
        return
    typer.echo(f"{reply['connections']} connections, {reply['packets']} packets, {reply['bytes']} bytes "
               f"so far this interval" + (f" (showing {len(records)})" if len(records) < reply["connections"] else ""))
    rows = [connection_row(r) for r in records]
    render(rows, connection_columns(rows), format, empty="(no traffic)")
    _echo_backlog(load_config(config), flags, timeout)


def _echo_backlog(config: Config, flags: NatsFlags, timeout: float) -> None:
    """The sink's backlog in one line, if a sink consumer exists; nothing if it cannot be read."""
    options = flags.options(config, name="connstats-cli")

    async def read():
        nc = await connect(options)
        try:
            return await asyncio.wait_for(read_backlog(nc.jetstream()), timeout)
        finally:
            await nc.close()

    try:
        backlog = asyncio.run(read())
    except (ConnstatsError, nats.errors.Error, asyncio.TimeoutError, OSError):
        return
    if backlog is not None:
        typer.echo(backlog.describe())
