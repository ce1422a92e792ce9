"""The deployed NATS roles (deploy/nats-server.conf) on a real nats-server, and secrets in errors.

Every server here is started from the deployed config with fresh passwords per test
(tests/fixtures/secure_nats.py): probes for node-1 and node-2.example, the sink, the admin.
"""
from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
import pytest

from connstats.probe.api.control import ControlService
from connstats.probe.contract import STREAM_NAME, NatsOptions, connect, control_subject, events_subject, flows_subject
from connstats.probe.contract.control import ControlClient
from connstats.probe.contract.errors import TransportError
from connstats.probe.contract.events import Attached
from connstats.probe.contract.wire import FlowBatch, decode_message
from connstats.probe.kernel.devices import AttachedDevice, LinkInfo
from connstats.probe.publish.publisher import FlowPublisher, PublisherSettings
from connstats.sink.compose import consume_flows
from connstats.sink.jetstream import DEADLETTER_STREAM_NAME, DEFAULT_DURABLE
from tests.fixtures.nats import MemoryStore, sample_envelope, sample_records
from tests.fixtures.wait import until_async

NODE1, NODE2 = "node-1", "node-2.example"


class Connection:
    """A nats-py client connected with ``connect()``, keeping what its error callback saw."""

    def __init__(self) -> None:
        self.nc = None
        self.errors: list[str] = []

    async def open(self, options: NatsOptions) -> "Connection":
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await connect(options, error_cb=on_error)
        return self

    async def violation(self, timeout: float = 2.0) -> str:
        """The first permissions violation the server reported (nats-py lower-cases it)."""
        found = await until_async(lambda: [e for e in self.errors if "permissions violation" in e.lower()], timeout,
                                  "permissions violation reported", step=0.01, detail=lambda: f"errors: {self.errors}")
        return found[0]

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@pytest.fixture
async def connections():
    opened: list[Connection] = []

    async def open_as(options: NatsOptions) -> Connection:
        connection = Connection()
        opened.append(connection)
        return await connection.open(options)

    yield open_as
    for connection in opened:
        await connection.close()


async def publish_interval(options: NatsOptions, host: str, seq: int, count: int) -> list:
    """One interval of ``count`` records through a real FlowPublisher; the records."""
    envelope = sample_envelope(seq, host=host)
    records = sample_records(envelope, count)
    async with FlowPublisher(options, PublisherSettings(host=host)) as publisher:
        await publisher.submit(FlowBatch.from_records(envelope, records))
        assert await publisher.flush(5)
        assert publisher.stats.published_messages == 1
    return records


# -- the probe ----------------------------------------------------------------------------


async def test_probe_creates_the_stream_and_publishes_its_own_flows_and_events(role_nats, connections):
    records = await publish_interval(role_nats.options("probe", NODE1), NODE1, 1, 25)
    async with FlowPublisher(role_nats.options("probe", NODE1), PublisherSettings(host=NODE1)) as publisher:
        assert await publisher.publish_event(Attached(ifname="veth1", ifindex=7))

    admin = await connections(role_nats.options("admin"))
    js = admin.nc.jetstream()
    info = await js.stream_info(STREAM_NAME)
    assert (info.state.first_seq, info.state.last_seq) == (1, 2)
    flows, event = await js.get_msg(STREAM_NAME, 1), await js.get_msg(STREAM_NAME, 2)
    assert (flows.subject, event.subject) == (flows_subject(NODE1), events_subject(NODE1))
    assert decode_message(flows.data).records() == records
    assert msgspec.json.decode(event.data)["event"] == "attached"


async def test_probe_cannot_publish_for_another_host_nor_send_or_take_its_control(role_nats, connections):
    await publish_interval(role_nats.options("probe", NODE2), NODE2, 1, 1)  # the stream exists
    probe = await connections(role_nats.options("probe", NODE1))
    js = probe.nc.jetstream(timeout=0.5)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.publish(flows_subject(NODE2), b"{}")
    assert await probe.violation() == f'nats: permissions violation for publish to "{flows_subject(NODE2)}"'.lower()

    ack = await js.publish(flows_subject(NODE1), b"{}")  # its own subject still works
    assert (ack.stream, ack.seq) == (STREAM_NAME, 2)

    for subject in (events_subject(NODE2), control_subject(NODE1, "attach"), "$JS.API.STREAM.DELETE.CONNSTATS"):
        probe.errors.clear()
        await probe.nc.publish(subject, b"{}")
        assert await probe.violation() == f'nats: permissions violation for publish to "{subject}"'.lower()

    probe.errors.clear()
    await probe.nc.subscribe("connstats.v1.ctl.node-2%2Eexample.>")
    await probe.nc.flush()
    assert (await probe.violation()).startswith(
        'nats: permissions violation for subscription to "connstats.v1.ctl.node-2%2eexample.>"')


# -- the control plane --------------------------------------------------------------------


class FakeDaemon:
    """What ControlService calls on the daemon; this test is about NATS, not the kernel."""

    def __init__(self) -> None:
        self.attached: list[str] = []

    async def attach(self, name, mode=None, owner=None) -> AttachedDevice:
        self.attached.append(name)
        return AttachedDevice(LinkInfo(42, name, "veth", True), mode or "auto", True, 1)

    def devices(self) -> list:
        return []


async def test_only_the_admin_may_send_control_requests(role_nats):
    daemon = FakeDaemon()
    service = ControlService(daemon, role_nats.options("probe", NODE1), NODE1)
    await service.start()  # subscribes as probe-node-1 to its own control subjects
    try:
        async with ControlClient(role_nats.options("admin"), NODE1, timeout=2.0) as admin:
            reply = await admin.request("attach", {"iface": "veth9"})
        assert (reply["device"]["name"], reply["device"]["ifindex"]) == ("veth9", 42)

        subject = control_subject(NODE1, "attach")
        for role, host in (("sink", None), ("probe", NODE2), ("probe", NODE1)):
            options = role_nats.options(role, host)
            async with ControlClient(options, NODE1, timeout=2.0) as client:
                with pytest.raises(TransportError) as refused:
                    await client.request("attach", {"iface": "veth9"})
            message = str(refused.value)
            # The wording is control.py's; what matters: it names the subject and says why.
            assert subject in message and "permissions violation for publish" in message.lower(), role
            assert options.password not in message and "\n" not in message
        assert daemon.attached == ["veth9"]
    finally:
        await service.close()


# -- the sink -----------------------------------------------------------------------------


async def test_sink_consumes_acks_and_dead_letters(role_nats, connections):
    first = await publish_interval(role_nats.options("probe", NODE1), NODE1, 1, 30)
    second = await publish_interval(role_nats.options("probe", NODE2), NODE2, 1, 12)
    probe = await connections(role_nats.options("probe", NODE1))
    await probe.nc.jetstream().publish(flows_subject(NODE1), b"not a flow message")

    store, stop = MemoryStore(), asyncio.Event()
    sink = asyncio.create_task(consume_flows(role_nats.options("sink"), store, stop=stop))
    admin = await connections(role_nats.options("admin"))
    js = admin.nc.jetstream()

    async def consumed() -> bool:
        return (store.record_count() >= 42 and await _messages(js, DEADLETTER_STREAM_NAME) >= 1) or sink.done()

    try:
        await until_async(consumed, 10, fail=False)  # what the sink did is judged below
    finally:
        stop.set()
        stats = await asyncio.wait_for(sink, 10)
    assert (stats.stored_messages, stats.stored_records, stats.dead_lettered) == (2, 42, 1)
    assert sorted(store.rows.values(), key=lambda r: (r.ifname, r.src_ip, r.src_port)) == sorted(
        first + second, key=lambda r: (r.ifname, r.src_ip, r.src_port))
    consumer = await js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)
    assert (consumer.num_ack_pending, consumer.num_pending, consumer.delivered.stream_seq) == (0, 0, 3)
    assert (await js.get_msg(DEADLETTER_STREAM_NAME, 1)).data == b"not a flow message"


async def _messages(js, stream: str) -> int:
    try:
        return (await js.stream_info(stream)).state.messages
    except nats.errors.Error:
        return 0


async def test_sink_and_admin_cannot_publish_flows_or_delete_streams(role_nats, connections):
    await publish_interval(role_nats.options("probe", NODE1), NODE1, 1, 1)
    for role in ("sink", "admin"):
        client = await connections(role_nats.options(role))
        for subject in (flows_subject(NODE1), f"$JS.API.STREAM.DELETE.{STREAM_NAME}",
                        f"$JS.API.STREAM.PURGE.{STREAM_NAME}",
                        f"$JS.API.CONSUMER.DELETE.{STREAM_NAME}.{DEFAULT_DURABLE}"):
            client.errors.clear()
            await client.nc.publish(subject, b"{}")
            assert await client.violation() == f'nats: permissions violation for publish to "{subject}"'.lower(), role
    admin = await connections(role_nats.options("admin"))
    assert (await admin.nc.jetstream().stream_info(STREAM_NAME)).state.messages == 1


# -- secrets never show ---------------------------------------------------------------------


def _assert_secret_hidden(secret: str, error: TransportError, caplog, capfd) -> None:
    message = str(error)
    assert message.startswith("NATS at ") and "\n" not in message
    assert " refused the connection: authorization violation; run as root" in message
    assert secret not in message and secret not in repr(error.__cause__)
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert not [line for line in logged if secret in line]
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err


@pytest.mark.parametrize("where", ["url", "options"])
async def test_a_wrong_password_is_never_shown(role_nats, caplog, capfd, where):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + role_nats.passwords["sink"]
    host_port = role_nats.url.removeprefix("nats://")
    if where == "url":
        options = NatsOptions(servers=(f"nats://sink:{wrong}@{host_port}",), connect_timeout=1.0)
    else:
        options = role_nats.server.options("sink", wrong)
    assert wrong not in repr(options) or where == "url"
    with pytest.raises(TransportError) as failed:
        await connect(options)
    assert str(failed.value).startswith(
        f"NATS at nats://{'***@' if where == 'url' else ''}{host_port} refused the connection: ")
    _assert_secret_hidden(wrong, failed.value, caplog, capfd)
    # the right password, the same ways, connects
    right = role_nats.passwords["sink"]
    good = (NatsOptions(servers=(f"nats://sink:{right}@{host_port}",), connect_timeout=1.0)
            if where == "url" else role_nats.server.options("sink", right))
    nc = await connect(good)
    await nc.close()


@pytest.mark.parametrize("where", ["url", "options"])
async def test_a_wrong_token_is_never_shown(secure_nats_factory, caplog, capfd, where):
    import secrets

    token = secrets.token_urlsafe(18)
    server = secure_nats_factory(f'authorization {{ token: "{token}" }}\n')
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + token
    host_port = server.url.removeprefix("nats://")
    options = (NatsOptions(servers=(f"nats://{wrong}@{host_port}",), connect_timeout=1.0)
               if where == "url" else server.options(token=wrong))
    assert where == "url" or wrong not in repr(options)
    with pytest.raises(TransportError) as failed:
        await connect(options)
    _assert_secret_hidden(wrong, failed.value, caplog, capfd)
    good = (NatsOptions(servers=(f"nats://{token}@{host_port}",), connect_timeout=1.0)
            if where == "url" else server.options(token=token))
    nc = await connect(good)
    await nc.close()


async def test_the_sink_role_can_tell_when_up_may_stop_its_sink(role_nats):
    """``up`` runs its sink as ``sink`` and, before stopping it, waits until the last flow
    message of its host is acked: reading that message needs STREAM.MSG.GET.CONNSTATS."""
    from connstats.sink.compose import wait_until_stored

    await publish_interval(role_nats.options("probe", NODE1), NODE1, 1, 20)
    sink_options = role_nats.options("sink")
    assert await wait_until_stored(sink_options, NODE1, timeout=0.3) is False  # no consumer yet
    store, stop = MemoryStore(), asyncio.Event()
    sink = asyncio.create_task(consume_flows(sink_options, store, stop=stop))
    try:
        assert await wait_until_stored(sink_options, NODE1, timeout=10) is True
        assert store.record_count() == 20
    finally:
        stop.set()
        await asyncio.wait_for(sink, 10)
