"""``connstats top``: the busiest connections of each interval, live, from the flows subject.

A ``FlowSubscription`` on ``connstats.v1.flows.<host>`` (core NATS hands JetStream-stored
messages to subscribers too): an interval is shown once all its chunks arrived; one still
missing chunks when it expires (or is pushed out by newer ones) is not shown.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Optional, TextIO

import typer

from connstats.probe.contract import FLOWS_WILDCARD, FlowBatch, FlowSubscription, Interval, connect, flows_subject

from .live import CLEAR, interval_summary
from .options import ConfigFile, Host, Nats, NatsCreds, NatsFlags, TlsCa, TlsCert, TlsKey, load_config
from .pipeline import stop_on_signals

app = typer.Typer()


async def watch(flags: NatsFlags, config, subject: str, iface: str | None, count: int | None,
                limit: int, out: TextIO) -> int:
    """Show intervals until ``count`` were shown or SIGINT/SIGTERM; return how many were shown."""
    nc = await connect(flags.options(config, name="connstats-top"))
    stop = asyncio.Event()
    shown = 0
    clear = CLEAR if out.isatty() else ""

    failed: list[Exception] = []  # e.g. stdout closed: top ends with it, as it would without a subscription

    def show(interval: Interval[FlowBatch]) -> None:
        nonlocal shown
        if not interval.complete or stop.is_set():
            return
        try:
            out.write(clear + interval_summary(interval.batch().on_device(iface), limit=limit)
                      + ("" if clear else "\n"))
            out.flush()
        except Exception as exc:
            failed.append(exc)
            stop.set()
            return
        shown += 1
        if count is not None and shown >= count:
            stop.set()

    flows = FlowSubscription(show)
    try:
        await flows.start(nc, subject)
        with stop_on_signals(stop):
            await stop.wait()
    finally:
        await flows.close()
        await nc.close()
    if failed:
        raise failed[0]
    return shown


@app.command()
def top(
    host: Host = None,
    iface: Annotated[Optional[str], typer.Option("--iface", "-i", metavar="NAME", help="only this interface")] = None,
    count: Annotated[Optional[int], typer.Option("--count", "-n", min=1, help="exit after N intervals")] = None,
    limit: Annotated[int, typer.Option(min=1, help="connections shown per interval")] = 20,
    all_hosts: Annotated[bool, typer.Option("--all-hosts", help="every host's intervals, not one host's")] = False,
    nats: Nats = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None,
    tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Live view of the busiest connections in each interval (Ctrl-C to stop)."""
    cfg = load_config(config)
    subject = FLOWS_WILDCARD if all_hosts else flows_subject(cfg.host(host))
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    asyncio.run(watch(flags, cfg, subject, iface, count, limit, sys.stdout))
