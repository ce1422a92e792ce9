"""FlowPublisher against a real nats-server: chunking, de-duplication, crashes, the outbox."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import msgspec
import nats
import pytest

from connstats.probe.contract import (
    NatsOptions,
    control_subject,
    events_subject,
    flows_subject,
    host_from_token,
    host_of_subject,
    host_token,
    message_id,
)
from connstats.probe.contract.errors import ConfigError, TransportError
from connstats.probe.contract.events import Attached
from connstats.probe.contract.record import OverflowCount
from connstats.probe.contract.wire import FlowBatch, decode_message
from connstats.probe.publish.publisher import FlowPublisher, PublisherSettings, encode_interval, payload_limit
from tests.fixtures.nats import read_stream, sample_envelope, sample_records
from tests.fixtures.wait import until_async

SMALL_PAYLOAD = 64 * 1024


def options(server, **overrides) -> NatsOptions:
    return NatsOptions(servers=(server.url,), reconnect_time_wait=0.1, connect_timeout=1.0, **overrides)


def split(batch) -> tuple:
    return batch.envelope, batch.records()


def decoded(messages) -> list:
    """(envelope, records) per message."""
    return [split(decode_message(m.data)) for m in messages]


# -- subjects ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["node-1", "web.example.com", "a*b>c", "tab\there", "50%", "ünï", "_2E"])
def test_host_token_is_one_safe_token_and_reversible(host):
    token = host_token(host)
    assert not set(token) & set(".*> \t\r\n")
    assert host_from_token(token) == host
    assert host_of_subject(flows_subject(host)) == host


def test_subject_names():
    assert flows_subject("web.example.com") == "connstats.v1.flows.web%2Eexample%2Ecom"
    assert events_subject("n1") == "connstats.v1.events.n1"
    assert control_subject("n1", "reload") == "connstats.v1.ctl.n1.reload"
    assert message_id("n1", "boot", 7, 3) == "n1/boot/7/3"
    assert host_token("50%") != host_token("50%25")


def test_empty_host_is_a_config_error():
    with pytest.raises(ConfigError):
        host_token("")


# -- chunking (pure) -----------------------------------------------------------------------------


def test_encode_interval_splits_under_the_limit_and_keeps_order():
    envelope = replace(sample_envelope(1), overflow=(OverflowCount(10, "veth0", "ingress", 5, 700),))
    records = sample_records(envelope, 5000)
    chunks = encode_interval(FlowBatch.from_records(envelope, records), 60_000)
    assert all(len(payload) <= 60_000 for _, payload in chunks)
    parts = [split(decode_message(payload)) for _, payload in chunks]
    assert [e.chunk for e, _ in parts] == list(range(len(chunks)))
    assert {e.chunks for e, _ in parts} == {len(chunks)}
    assert [r for _, rs in parts for r in rs] == records
    assert [e.record_offset for e, _ in parts] == [sum(len(rs) for _, rs in parts[:i]) for i in range(len(parts))]
    assert [e.overflow for e, _ in parts] == [envelope.overflow] + [()] * (len(parts) - 1)


def test_encode_interval_with_uneven_records_still_fits():
    envelope = sample_envelope(2)
    records = sample_records(envelope, 400) + sample_records(envelope, 400, ipv6_every=1)
    chunks = encode_interval(FlowBatch.from_records(envelope, records), 20_000)
    assert all(len(payload) <= 20_000 for _, payload in chunks)
    assert [r for _, p in chunks for r in decode_message(p).records()] == records


def test_encode_interval_without_records_is_one_message():
    chunks = encode_interval(FlowBatch.from_records(sample_envelope(3), []), 10_000)
    assert [(e.chunk, e.chunks, e.record_offset) for e, _ in chunks] == [(0, 1, 0)]


# -- against nats-server -----------------------------------------------------------------------


async def test_interval_is_chunked_under_max_payload_and_arrives_once(nats_server_factory):
    server = nats_server_factory(max_payload=SMALL_PAYLOAD)
    envelope = sample_envelope(1)
    records = sample_records(envelope, 20_000)
    async with FlowPublisher(options(server)) as publisher:
        chunks = await publisher.submit(FlowBatch.from_records(envelope, records))
        assert await publisher.flush(10)
        stats = publisher.stats
    stored = await read_stream(server.url)
    assert chunks == len(stored) == stats.published_messages
    assert chunks >= sum(len(m.data) for m in stored) // payload_limit(SMALL_PAYLOAD)  # none wasted
    assert max(len(m.data) for m in stored) <= payload_limit(SMALL_PAYLOAD)
    assert [r for _, rs in decoded(stored) for r in rs] == records
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [
        f"node-1.example/{envelope.boot_id}/1/{chunk}" for chunk in range(chunks)]
    assert {m.subject for m in stored} == {"connstats.v1.flows.node-1%2Eexample"}
    assert (stats.published_records, stats.duplicates, stats.outbox_depth) == (20_000, 0, 0)


async def test_resubmitted_interval_is_deduplicated_by_the_server(nats_server):
    envelope = sample_envelope(5)
    records = sample_records(envelope, 3000)
    async with FlowPublisher(options(nats_server)) as publisher:
        first = await publisher.submit(FlowBatch.from_records(envelope, records))
        second = await publisher.submit(FlowBatch.from_records(envelope, records))
        assert await publisher.flush(10)
        stats = publisher.stats
    stored = await read_stream(nats_server.url)
    assert first == second == len(stored)
    assert (stats.published_messages, stats.duplicates) == (2 * first, first)
    assert sum(len(rs) for _, rs in decoded(stored)) == 3000


async def test_server_killed_mid_stream_loses_and_duplicates_nothing(nats_server):
    settings = PublisherSettings(host="node-1.example", ack_timeout=1.0, retry_max=0.5)
    sent = {}
    async with FlowPublisher(options(nats_server), settings) as publisher:
        for seq in range(20):
            if seq == 6:
                nats_server.kill()
            if seq == 13:
                assert publisher.stats.outbox_depth == 7  # intervals 6..12, one chunk each
                await asyncio.to_thread(nats_server.start)
            envelope = sample_envelope(seq)
            sent[seq] = 200 + 37 * seq
            await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, sent[seq])))
            await asyncio.sleep(0.1)
        assert await publisher.flush(30)
        stats = publisher.stats
    stored = decoded(await read_stream(nats_server.url))
    keys = [(e.interval_seq, e.chunk) for e, _ in stored]
    assert keys == sorted(set(keys))
    assert {seq: sum(len(rs) for e, rs in stored if e.interval_seq == seq) for seq in sent} == sent
    assert (stats.published_records, stats.outbox_depth, stats.dropped_messages) == (sum(sent.values()), 0, 0)


async def test_server_killed_with_chunks_in_flight_keeps_order_and_totals(nats_server_factory):
    server = nats_server_factory(max_payload=SMALL_PAYLOAD)
    settings = PublisherSettings(ack_timeout=1.0, retry_max=0.5, max_in_flight=8)
    sent = {}
    async with FlowPublisher(options(server), settings) as publisher:
        for seq in range(20):
            envelope = sample_envelope(seq)
            sent[seq] = 2000 + seq
            await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, sent[seq])))
            if seq == 6:
                server.kill()  # while the chunks of interval 6 are being sent
            if seq == 13:
                await asyncio.to_thread(server.start)
            await asyncio.sleep(0.1)
        assert await publisher.flush(30)
        stats = publisher.stats
    stored = decoded(await read_stream(server.url))
    keys = [(e.interval_seq, e.chunk) for e, _ in stored]
    assert keys == sorted(set(keys))
    assert {seq: sum(len(rs) for e, rs in stored if e.interval_seq == seq) for seq in sent} == sent
    assert (stats.published_records, stats.outbox_depth) == (sum(sent.values()), 0)


async def test_outbox_spool_survives_a_probe_restart_while_nats_is_down(nats_server, tmp_path):
    settings = PublisherSettings(state_dir=tmp_path / "outbox", memory_cap=100_000, ack_timeout=0.5)
    async with FlowPublisher(options(nats_server), settings) as publisher:
        nats_server.kill()
        for seq in range(8):
            envelope = sample_envelope(seq)
            await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, 1000)))
        await publisher.close(flush_timeout=0.2)
        assert publisher.stats.outbox_depth == 8
    assert len(list((tmp_path / "outbox").glob("*.msg"))) == 8
    await asyncio.to_thread(nats_server.start)
    async with FlowPublisher(options(nats_server), settings) as restarted:
        assert await restarted.flush(10)
        assert (restarted.stats.published_messages, restarted.stats.published_records) == (8, 8000)
    stored = decoded(await read_stream(nats_server.url))
    assert [e.interval_seq for e, _ in stored] == list(range(8))
    assert list((tmp_path / "outbox").glob("*.msg")) == []


async def test_outbox_overflow_is_counted_and_reported_when_nats_is_back(nats_server):
    envelope = sample_envelope(0)
    one_message = len(encode_interval(FlowBatch.from_records(envelope, sample_records(envelope, 100)), 1 << 20)[0][1])
    settings = PublisherSettings(host="probe-a", memory_cap=3 * one_message + 100, ack_timeout=0.5)
    async with FlowPublisher(options(nats_server), settings) as publisher:
        nats_server.kill()
        for seq in range(10):
            envelope = sample_envelope(seq)
            await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, 100)))
        assert (publisher.stats.dropped_messages, publisher.stats.dropped_records) == (7, 700)
        await asyncio.to_thread(nats_server.start)
        assert await publisher.flush(10)

        async def reported() -> bool:  # the report follows the drain
            return any(m.subject == events_subject("probe-a") for m in await read_stream(nats_server.url))

        await until_async(reported, 10, "the outbox_overflow event")
    stored = await read_stream(nats_server.url)
    flows = [decode_message(m.data).envelope.interval_seq for m in stored if ".flows." in m.subject]
    events = [msgspec.json.decode(m.data) for m in stored if m.subject == events_subject("probe-a")]
    assert flows == [7, 8, 9]
    assert [(e["event"], e["dropped_messages"], e["dropped_records"]) for e in events] == [
        ("outbox_overflow", 7, 700)]


async def test_message_over_max_payload_is_refused_without_blocking_the_outbox(nats_server_factory):
    server = nats_server_factory(max_payload=SMALL_PAYLOAD)
    giant = sample_envelope(0)
    [record] = sample_records(giant, 1)
    async with FlowPublisher(options(server)) as publisher:
        await publisher.submit(FlowBatch.from_records(giant, [replace(record, ifname="x" * SMALL_PAYLOAD)]))
        await publisher.submit(FlowBatch.from_records(sample_envelope(1), sample_records(sample_envelope(1), 10)))
        assert await publisher.flush(10)
        stats = publisher.stats
    stored = decoded(await read_stream(server.url))
    assert [(e.interval_seq, len(rs)) for e, rs in stored] == [(1, 10)]
    assert (stats.rejected, stats.published_messages, stats.outbox_depth) == (1, 1, 0)


async def test_publish_event_goes_to_the_events_subject(nats_server):
    async with FlowPublisher(options(nats_server), PublisherSettings(host="h.1")) as publisher:
        assert await publisher.publish_event(Attached(ifname="veth1", ifindex=7))
    [stored] = await read_stream(nats_server.url)
    body = msgspec.json.decode(stored.data)
    assert (stored.subject, body["event"], body["ifname"], body["host"]) == (
        "connstats.v1.events.h%2E1", "attached", "veth1", "h.1")


async def test_stream_is_created_with_the_settings(nats_server):
    async with FlowPublisher(options(nats_server)):
        pass
    nc = await nats.connect(nats_server.url)
    info = await nc.jetstream().stream_info("CONNSTATS")
    await nc.close()
    assert (info.config.subjects, info.config.duplicate_window, info.config.storage, info.config.max_age) == (
        ["connstats.v1.flows.>", "connstats.v1.events.>"], 120.0, "file", 7 * 24 * 3600.0)


async def test_unreachable_nats_is_a_transport_error_without_credentials(nats_server):
    nats_server.kill()
    url = nats_server.url.replace("nats://", "nats://alice:s3cret@")
    with pytest.raises(TransportError) as caught:
        await FlowPublisher(NatsOptions(servers=(url,), connect_timeout=0.5, reconnect_time_wait=0.1)).start()
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


async def test_a_stream_already_owning_the_subjects_is_a_transport_error(nats_server):
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(name="SOMEONE_ELSE", subjects=["connstats.>"])
    await nc.close()
    with pytest.raises(TransportError) as caught:
        await FlowPublisher(options(nats_server)).start()
    assert str(caught.value).startswith("cannot create stream CONNSTATS: ")
    assert str(caught.value).endswith("; check for another stream on the same subjects")
