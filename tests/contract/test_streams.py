"""Creating the streams on a JetStream that answers late (a cluster electing its leaders):
``ensure_stream`` asks again instead of failing the process at start."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import nats
import pytest

from connstats.probe.contract import STREAM_NAME, StreamSettings, TransportError, ensure_stream, flow_stream_config


async def paused(server, seconds: float) -> None:
    """SIGSTOP the server (by pid) for ``seconds``: it keeps its connections but answers nothing."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_a_stream_read_that_times_out_is_asked_again_until_jetstream_answers(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream(timeout=0.5)
        await ensure_stream(js, flow_stream_config(StreamSettings()))
        pause = asyncio.create_task(paused(nats_server, 1.5))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await ensure_stream(js, flow_stream_config(StreamSettings()))  # times out 2-3 times, then answers
        assert time.monotonic() - started >= 1.3
        await pause
        assert (await js.stream_info(STREAM_NAME)).config.name == STREAM_NAME
    finally:
        await nc.close()


async def test_jetstream_that_never_answers_is_one_transport_error(nats_server, monkeypatch):
    monkeypatch.setattr("connstats.probe.contract.messaging.STREAM_READ_PATIENCE", 2.0)  # 15 s in production
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream(timeout=0.5)
        pause = asyncio.create_task(paused(nats_server, 4.0))
        await asyncio.sleep(0.1)
        with pytest.raises(TransportError, match="cannot read stream CONNSTATS: .*Timeout"):
            await ensure_stream(js, flow_stream_config(StreamSettings()))
        await pause
    finally:
        await nc.close()
