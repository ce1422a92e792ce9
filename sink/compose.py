"""The sink's composition root: one ``SinkConfig`` in, a runnable ``Sink`` out.

    build_sink(config)
      store: SqliteStore(path, retention) | InfluxStore(InfluxConfig)     stores.make_store
      Sink.run(stop): connect ─ JetStream answers ─ store answers ─ FlowConsumer until stop
      SinkMetrics on the Telemetry (config.telemetry; `up` passes the one it serves)
      Sink.wait_until_stored(host): the consumer's ack floor reached the host's last flow message

``connstats sink`` runs one; ``connstats up`` runs one next to a probe and, before
stopping it, waits until it stored what the probe published last.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors

from connstats.probe.contract import STREAM_NAME, ConnstatsError, NatsOptions, StreamSettings, connect, flows_subject
from connstats.probe.runtime.telemetry import Telemetry

from .consumer import ConsumerSettings, ConsumerStats
from .influx_store import InfluxConfig
from .jetstream import DEFAULT_DURABLE
from .metrics import SinkMetrics
from .run import check_store, run_sink
from .store import Store
from .stores import make_store, parse_store  # noqa: F401 (re-exported)

log = logging.getLogger("connstats.sink")


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


class Sink:
    """One consumer into one store; ``check()`` before anything else starts, then ``run(stop)``."""

    def __init__(self, config: SinkConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.metrics = SinkMetrics(config.telemetry, (config.consumer or ConsumerSettings()).durable)

    async def check(self) -> None:
        """Raise ``StoreError`` (and close the store) unless it takes writes."""
        try:
            await check_store(self.store)
        except ConnstatsError:
            await self.store.close()
            raise

    async def run(self, stop: asyncio.Event) -> ConsumerStats:
        """Consume until ``stop``; closes the store and the connection."""
        return await run_sink(self.config.nats, self.store, self.config.consumer, stream=self.config.stream,
                              stop=stop, handle_signals=False, metrics=self.metrics)

    async def wait_until_stored(self, host: str, timeout: float) -> bool:
        return await wait_until_stored(self.config.nats, host, timeout)


def build_sink(config: SinkConfig) -> Sink:
    return Sink(config, make_store(config.store, config.retention_seconds, config.influx))


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


async def _acked_through(js) -> int:
    """The stream sequence up to which the sink's consumer acked everything (0: no consumer yet)."""
    try:
        floor = (await js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)).ack_floor
    except nats.js.errors.NotFoundError:
        return 0
    return (floor.stream_seq or 0) if floor is not None else 0
