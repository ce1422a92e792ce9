"""Issue 18: one message nested 1,000 deep must not take a sink (or ``top``) down. Real
``connstats`` processes, a real nats-server and a real SQLite file; each process is stopped
by its pid."""
from __future__ import annotations

import asyncio
import sqlite3

import nats

from connstats.cli.live import interval_summary
from connstats.probe.contract import NatsOptions, connect, flows_subject
from connstats.probe.contract.wire import encode_message
from tests.fixtures.nats import read_stream, sample_batch, sample_envelope
from tests.fixtures.wait import until, until_async

HOST = "node-1.example"
NESTED = b'{"a":' * 1000 + b"1" + b"}" * 1000  # 6,001 bytes
DEPTH_REASON = "nested 1000 deep, deeper than the 32 levels of arrays and objects allowed; send flatter data"


async def publish(url: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(flows_subject(HOST), payload)
    finally:
        await nc.close()


def stored(path) -> tuple[int, int, int] | None:
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT count(*), sum(packets), sum(bytes) FROM flows").fetchone()
        except sqlite3.OperationalError:  # the sink has not made its table yet
            return None


def test_a_message_nested_1000_deep_is_a_dead_letter_and_the_sink_goes_on(start, nats_server, tmp_path):
    path = tmp_path / "flows.sqlite"
    sink = start("sink", "--nats", nats_server.url, "--store", f"sqlite:{path}")
    sink.wait_for("sink consuming")
    good = encode_message(sample_batch(sample_envelope(1, HOST), 5))  # packets 1..5, 1,387 bytes each
    assert len(NESTED) == 6001
    asyncio.run(publish(nats_server.url, [NESTED, good]))

    assert until(lambda: stored(path) == (5, 15, 15 * 1387), 30, "the good message's 5 rows")
    [letter] = asyncio.run(read_stream(nats_server.url, "CONNSTATS_DEADLETTER"))
    assert letter.data == NESTED
    assert letter.headers["Connstats-Reason"] == f"undecodable: {DEPTH_REASON}"
    assert sink.process.poll() is None  # still consuming
    assert sink.interrupt() == 0
    assert "Traceback" not in sink.stderr and "RecursionError" not in sink.stderr


def test_top_skips_a_message_nested_1000_deep_and_shows_the_next_interval(start, nats_server):
    top = start("top", "--nats", nats_server.url, "--host", HOST, "--count", "1", "--limit", "5")
    good = sample_batch(sample_envelope(1, HOST), 5)

    async def feed() -> None:
        nc = await connect(NatsOptions(servers=(nats_server.url,)))

        async def send_both() -> bool:  # until top has subscribed and shown an interval
            await nc.publish(flows_subject(HOST), NESTED)
            await nc.publish(flows_subject(HOST), encode_message(good))
            await nc.flush()
            return top.process.poll() is not None
        try:
            await until_async(send_both, 30, "top to show one interval and exit")
        finally:
            await nc.close()

    asyncio.run(feed())
    assert (top.process.wait(10), top.stdout, top.stderr) == (0, interval_summary(good, limit=5) + "\n", "")
