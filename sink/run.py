"""The sink process, in one place: check NATS, check the store, consume until told to stop.

    NATS (CONNSTATS stream) --FlowConsumer--> decode_message --> Store.write --> ack

Start-up failures are fatal (``TransportError``/``StoreError`` with a one-line message,
which the CLI prints as ``error: ...``); failures while running are retried and counted.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Iterator

import nats.errors
from nats.aio.client import Client

from connstats.probe.contract import NatsOptions, StoreError, StreamSettings, TransportError, connect
from connstats.probe.runtime.lifecycle import stop_on_signals
from connstats.sink.consumer import ConsumerSettings, ConsumerStats, FlowConsumer
from connstats.sink.store import Store

if TYPE_CHECKING:
    from connstats.sink.metrics import SinkMetrics

log = logging.getLogger(__name__)


async def run_sink(nats_options: NatsOptions, store: Store, settings: ConsumerSettings | None = None, *,
                   stream: StreamSettings | None = None, stop: asyncio.Event | None = None,
                   handle_signals: bool = True, metrics: SinkMetrics | None = None) -> ConsumerStats:
    """Run one sink until SIGINT/SIGTERM or ``stop``; closes the store and the connection.
    ``metrics`` reads the consumer's counters while it runs."""
    stop = stop or asyncio.Event()
    try:
        nc = await connect(nats_options, name="connstats-sink")
    except TransportError:
        await store.close()
        raise
    try:
        await check_jetstream(nc)
        await check_store(store)
        on_write = metrics.write_seconds.observe if metrics is not None else None
        async with FlowConsumer(nc, store, settings, stream, on_write) as consumer:
            log.info("sink consuming %s as %s", consumer.settings.durable, nc.connected_url.hostname)
            watching = metrics.watching(nc, consumer, store) if metrics is not None else contextlib.nullcontext()
            with _stop_on_signals(stop, enabled=handle_signals):
                async with watching:
                    await consumer.consume_forever(stop)
            log.info("sink stopped: %s", consumer.stats)
            return consumer.stats
    finally:
        await _close_quietly(nc)
        await store.close()


async def check_jetstream(nc: Client) -> None:
    """Raise ``TransportError`` unless JetStream answers for this account."""
    try:
        await nc.jetstream().account_info()
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        raise TransportError(f"JetStream does not answer ({type(exc).__name__}); "
                             "start nats-server with -js and check the account's permissions") from exc


async def check_store(store: Store) -> None:
    """Raise ``StoreError`` unless the store takes writes."""
    try:
        await store.ping()
    except StoreError:
        raise
    except Exception as exc:  # a store that failed to translate its error still fails start-up
        raise StoreError(f"the store is not usable: {exc!r}; check the store settings") from exc


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, *, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with stop_on_signals(stop):
        yield


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.drain()
    except (nats.errors.Error, asyncio.TimeoutError, OSError):
        await nc.close()
