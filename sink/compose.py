"""The sink's composition root and its run loop: one ``SinkConfig`` in, a runnable ``Sink`` out.

    build_sink(config)
      store: SqliteStore(path, retention) | InfluxStore(InfluxConfig)     stores.make_store
      SinkMetrics on the Telemetry (config.telemetry; `up` passes the one it serves)
    Sink.run(stop) ─ consume_flows: connect ─ JetStream answers ─ store answers ─
        NATS (CONNSTATS stream) --FlowConsumer--> decode_message --> Store.write --> ack
        until ``stop``; then the store and the connection are closed
    Sink.wait_until_stored(host): the consumer's ack floor reached the host's last flow message

Start-up failures are fatal (``TransportError``/``StoreError`` with a one-line message,
which the CLI prints as ``error: ...``); failures while running are retried and counted.
``connstats sink`` runs one (cli/pipeline.py ``run_sink``: until SIGINT/SIGTERM);
``connstats up`` runs one next to a probe and, before stopping it, waits until it stored
what the probe published last.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from connstats.probe.contract import (
    STREAM_NAME,
    ConnstatsError,
    NatsOptions,
    StoreError,
    StreamSettings,
    TransportError,
    connect,
    flows_subject,
)
from connstats.probe.runtime.telemetry import Telemetry

from .backlog import DEFAULT_LAG_WARNING_INTERVALS
from .consumer import ConsumerSettings, ConsumerStats, FlowConsumer
from .jetstream import DEFAULT_DURABLE
from .metrics import SinkMetrics
from .store import Store
from .stores import make_store, parse_store  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # imports influxdb_client (~13 MiB resident): only an influxdb store loads it
    from .influx_store import InfluxConfig

log = logging.getLogger("connstats.sink")
run_log = logging.getLogger("connstats.sink.run")  # the run loop's, named as when it was sink/run.py


@dataclass
class SinkConfig:
    """Everything one sink needs; the CLI fills it from flags, env and the file."""

    nats: NatsOptions
    store: str  # sqlite:PATH or influxdb
    retention_seconds: float | None = None  # SQLite: delete older rows; InfluxDB: the bucket's
    influx: InfluxConfig | None = None  # for store "influxdb"
    consumer: ConsumerSettings | None = None
    stream: StreamSettings = field(default_factory=StreamSettings)  # the streams, if they are created
    telemetry: Telemetry = field(default_factory=Telemetry)  # `up` passes the one all its parts share
    lag_warning_intervals: float = DEFAULT_LAG_WARNING_INTERVALS  # warn when the sink is more intervals behind


class Sink:
    """One consumer into one store; ``check()`` before anything else starts, then ``run(stop)``."""

    def __init__(self, config: SinkConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.metrics = SinkMetrics((config.consumer or ConsumerSettings()).durable,
                                   lag_warning_intervals=config.lag_warning_intervals)
        config.telemetry.registry.register(self.metrics)
        config.telemetry.add_check("sink", self.metrics.not_ready)

    async def check(self) -> None:
        """Raise ``StoreError`` (and close the store) unless it takes writes."""
        try:
            await check_store(self.store)
        except ConnstatsError:
            await self.store.close()
            raise

    async def run(self, stop: asyncio.Event) -> ConsumerStats:
        """Consume until ``stop``; closes the store and the connection."""
        return await consume_flows(self.config.nats, self.store, self.config.consumer, stop=stop,
                                   stream=self.config.stream, metrics=self.metrics)

    async def wait_until_stored(self, host: str, timeout: float) -> bool:
        return await wait_until_stored(self.config.nats, host, timeout)


def build_sink(config: SinkConfig) -> Sink:
    return Sink(config, make_store(config.store, config.retention_seconds, config.influx))


# -- the run loop ----------------------------------------------------------------------------


async def consume_flows(nats_options: NatsOptions, store: Store, settings: ConsumerSettings | None = None, *,
                        stop: asyncio.Event, stream: StreamSettings | None = None,
                        metrics: SinkMetrics | None = None) -> ConsumerStats:
    """Connect, check JetStream and the store, then consume flows into ``store`` until
    ``stop``; closes the store and the connection. ``metrics`` reads the consumer's
    counters while it runs. Signals are the caller's (cli/pipeline.py)."""
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
            url = nc.connected_url  # None if the connection dropped since connect()
            run_log.info("sink consuming %s as %s", consumer.settings.durable, url.hostname if url else "?")
            watching = metrics.watching(nc, consumer, store) if metrics is not None else contextlib.nullcontext()
            async with watching:
                await consumer.consume_forever(stop)
            run_log.info("sink stopped: %s", consumer.stats)
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


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.drain()
    except (nats.errors.Error, asyncio.TimeoutError, OSError):
        await nc.close()


# -- after the run ---------------------------------------------------------------------------


async def wait_until_stored(options: NatsOptions, host: str, timeout: float) -> bool:
    """Wait until the sink's consumer acked the stream's last flow message from ``host``.

    Compares the sequence of the last message on ``flows_subject(host)`` with the ack floor
    of the durable consumer; False (and a warning) after ``timeout`` seconds.
    """
    try:
        nc = await connect(options, name="connstats-up-drain")
    except ConnstatsError as exc:
        log.warning("cannot check that the sink stored everything: %s", exc)
        return False
    try:
        js = nc.jetstream()
        try:
            target = (await js.get_last_msg(STREAM_NAME, flows_subject(host))).seq
        except nats.js.errors.NotFoundError:
            return True
        if target is None:  # nats-py types the sequence Optional; JetStream always sends it
            log.warning("cannot check that the sink stored everything: the stream's last flow "
                        "message from %s came without a sequence", host)
            return False
        deadline = time.monotonic() + timeout
        while True:
            if await _acked_through(js) >= target:
                return True
            if time.monotonic() >= deadline:
                log.warning("the sink has not stored up to stream sequence %d within %g s; the rest "
                            "stays in the stream for the next start", target, timeout)
                return False
            await asyncio.sleep(0.05)
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        log.warning("cannot check that the sink stored everything: %r", exc)
        return False
    finally:
        await nc.close()


async def _acked_through(js: JetStreamContext) -> int:
    """The stream sequence up to which the sink's consumer acked everything (0: no consumer yet)."""
    try:
        floor = (await js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)).ack_floor
    except nats.js.errors.NotFoundError:
        return 0
    return (floor.stream_seq or 0) if floor is not None else 0
