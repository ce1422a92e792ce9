"""``connstats top``: the busiest connections of each interval, live, from the flows subject.

A plain NATS subscription on ``connstats.v1.flows.<host>`` (core NATS hands JetStream-stored
messages to subscribers too). An interval is shown once all its chunks arrived.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Annotated, Optional, TextIO

import typer

from connstats.probe.contract import (
    FLOWS_WILDCARD,
    Envelope,
    FlowBatch,
    MessageError,
    connect,
    decode_message,
    flows_subject,
)

from .live import CLEAR, interval_summary
from .options import ConfigFile, Host, Nats, NatsCreds, NatsFlags, TlsCa, TlsCert, TlsKey, load_config
from .pipeline import stop_on_signals

app = typer.Typer()

MAX_PENDING_INTERVALS = 16


class IntervalAssembler:
    """Collects the chunks of each interval; ``add`` returns the interval once complete."""

    def __init__(self, iface: str | None = None) -> None:
        self.iface = iface
        self._pending: dict[tuple, tuple[Envelope, dict[int, FlowBatch]]] = {}

    def add(self, batch: FlowBatch) -> FlowBatch | None:
        envelope = batch.envelope
        key = (envelope.host, envelope.boot_id, envelope.interval_seq)
        first, chunks = self._pending.setdefault(key, (envelope, {}))
        chunks[envelope.chunk] = batch.on_device(self.iface)
        if envelope.chunk == 0:
            first = envelope
            self._pending[key] = (first, chunks)
        if len(chunks) < envelope.chunks:
            while len(self._pending) > MAX_PENDING_INTERVALS:  # chunks lost: forget the oldest
                self._pending.pop(next(iter(self._pending)))
            return None
        del self._pending[key]
        return FlowBatch.concat(replace(first, chunk=0, chunks=1, record_offset=0),
                                [chunks[index] for index in sorted(chunks)])


async def watch(flags: NatsFlags, config, subject: str, iface: str | None, count: int | None,
                limit: int, out: TextIO) -> int:
    """Show intervals until ``count`` were shown or SIGINT/SIGTERM; return how many were shown."""
    nc = await connect(flags.options(config, name="connstats-top"))
    queue: asyncio.Queue = asyncio.Queue()
    stop = asyncio.Event()
    shown = 0
    assembler = IntervalAssembler(iface)
    clear = CLEAR if out.isatty() else ""
    try:
        await nc.subscribe(subject, cb=queue.put)
        with stop_on_signals(stop):
            while not stop.is_set() and (count is None or shown < count):
                msg = await _next(queue, stop)
                if msg is None:
                    break
                try:
                    interval = assembler.add(decode_message(msg.data))
                except MessageError:
                    continue
                if interval is not None:
                    out.write(clear + interval_summary(interval, limit=limit) + ("" if clear else "\n"))
                    out.flush()
                    shown += 1
    finally:
        await nc.close()
    return shown


async def _next(queue: asyncio.Queue, stop: asyncio.Event):
    get = asyncio.create_task(queue.get())
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (get, stopped):
        task.cancel()
    return get.result() if get in done else None


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
