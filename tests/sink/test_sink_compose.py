"""sink/compose.py's run loop and drain wait where the NATS client has nothing to say: no
server (a connection that dropped), no sequence. Fakes stand in for the client; the real
server's paths are in tests/cli/test_cli_up.py."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import connstats.sink.compose as compose
from connstats.probe.contract import NatsOptions
from connstats.sink.consumer import ConsumerStats
from tests.fixtures.nats import MemoryStore


class _DroppedClient:
    """A client whose connection dropped after connect(): ``connected_url`` is None."""

    connected_url = None

    def __init__(self) -> None:
        self.closed = False

    def jetstream(self) -> _LastMessageWithoutSequence:
        return _LastMessageWithoutSequence()

    async def drain(self) -> None:
        self.closed = True

    async def close(self) -> None:
        self.closed = True


class _LastMessageWithoutSequence:
    async def get_last_msg(self, stream: str, subject: str) -> SimpleNamespace:
        return SimpleNamespace(seq=None)


class _Consumer:
    def __init__(self, *args: object) -> None:
        self.settings = SimpleNamespace(durable="connstats-sink")
        self.stats = ConsumerStats(0, 0, 0, 0, 0)

    async def __aenter__(self) -> _Consumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def consume_forever(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def test_the_sink_starts_consuming_when_the_connection_dropped_right_after_connect(monkeypatch, caplog):
    client = _DroppedClient()

    async def connect(options: NatsOptions, **callbacks: object) -> _DroppedClient:
        return client

    async def answers(nc: object) -> None:
        pass

    monkeypatch.setattr(compose, "connect", connect)
    monkeypatch.setattr(compose, "check_jetstream", answers)
    monkeypatch.setattr(compose, "FlowConsumer", _Consumer)
    stop = asyncio.Event()
    stop.set()
    store = MemoryStore()
    with caplog.at_level(logging.INFO, logger="connstats.sink.run"):
        stats = await compose.consume_flows(NatsOptions(), store, stop=stop)
    assert isinstance(stats, ConsumerStats)
    assert "sink consuming connstats-sink as ?" in caplog.text
    assert client.closed and store.closed


async def test_wait_until_stored_cannot_check_a_last_message_without_a_sequence(monkeypatch, caplog):
    client = _DroppedClient()

    async def connect(options: NatsOptions, **callbacks: object) -> _DroppedClient:
        return client

    monkeypatch.setattr(compose, "connect", connect)
    with caplog.at_level(logging.WARNING, logger="connstats.sink"):
        assert await compose.wait_until_stored(NatsOptions(), "node1", timeout=0.1) is False
    assert "came without a sequence" in caplog.text
    assert client.closed
