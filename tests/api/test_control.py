"""The control plane: ControlService on a fake daemon and ControlClient, over a real nats-server."""
from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import pytest

from connstats.probe.api.control import ControlService
from connstats.probe.contract import NatsOptions, control_subject
from connstats.probe.contract.control import ControlClient
from connstats.probe.contract.errors import DeviceError, TransportError
from tests.fixtures.control import HOST, SINCE, FakeDaemon, record
from tests.fixtures.nats import free_port


@pytest.fixture
async def control(nats_server):
    daemon = FakeDaemon()
    options = NatsOptions(servers=(nats_server.url,))
    service = ControlService(daemon, options, HOST)
    await service.start()
    try:
        yield daemon, options
    finally:
        await service.close()


async def ask(options, verb, body=None, host=HOST, timeout=2.0):
    async with ControlClient(options, host, timeout) as client:
        return await client.request(verb, body)


VETH0 = {"name": "veth0", "ifindex": 3, "kind": "veth", "mode": "auto", "direction": "inverted", "since": SINCE}


async def test_attach_list_detach(control):
    daemon, options = control
    assert await ask(options, "attach", {"iface": "veth0", "direction": "auto"}) == {"device": VETH0}
    assert await ask(options, "attach", {"iface": "eth0", "direction": "normal"}) == {"device": {
        "name": "eth0", "ifindex": 4, "kind": "", "mode": "normal", "direction": "normal", "since": SINCE}}
    listed = await ask(options, "list")
    assert [d["name"] for d in listed["devices"]] == ["veth0", "eth0"]
    assert await ask(options, "detach", {"iface": "veth0"}) == {"device": VETH0}
    assert [d["name"] for d in (await ask(options, "list"))["devices"]] == ["eth0"]
    assert await ask(options, "ping") == {"host": HOST, "devices": 1}


async def test_probe_errors_come_back_as_the_same_error(control):
    _, options = control
    with pytest.raises(DeviceError) as caught:
        await ask(options, "attach", {"iface": "nope0"})
    assert str(caught.value) == "no network interface 'nope0'; see `ip link`"
    with pytest.raises(DeviceError) as caught:
        await ask(options, "detach", {"iface": "eth0"})
    assert str(caught.value) == "'eth0' is not attached; see `connstats list`"


async def test_stats_busiest_first_with_iface_and_limit(control):
    daemon, options = control
    await ask(options, "attach", {"iface": "veth0", "direction": "auto"})
    await ask(options, "attach", {"iface": "eth0", "direction": "auto"})
    everything = await ask(options, "stats")
    assert (everything["connections"], everything["packets"], everything["bytes"]) == (3, 8, 1300)
    assert [r["src_port"] for r in everything["records"]] == [1001, 1002, 1000]
    assert everything["records"][1]["container_name"] == "web"
    one = await ask(options, "stats", {"iface": "veth0", "limit": 1})
    assert (one["connections"], one["packets"], one["bytes"]) == (2, 3, 400)
    assert [r["src_port"] for r in one["records"]] == [1002]
    with pytest.raises(DeviceError):
        await ask(options, "stats", {"iface": "eth9"})


async def test_stats_rows_carry_the_pod_and_processes_where_known(control):
    daemon, options = control
    web = dict(pod="shop/web-1", workload="web", runtime="containerd")
    daemon.records = [record("veth0", 1000, 1, 100, **web, process="nginx", pid=42, peer_process="curl",
                             peer_pid=7),
                      record("veth0", 1002, 2, 300, **web), record("eth0", 1001, 5, 900, process="sshd", pid=1)]
    await ask(options, "attach", {"iface": "veth0", "direction": "auto"})
    await ask(options, "attach", {"iface": "eth0", "direction": "auto"})
    rows = {r["src_port"]: {k: r[k] for k in ("pod", "workload", "runtime", "process", "pid", "peer_process",
                                              "peer_pid") if k in r}
            for r in (await ask(options, "stats"))["records"]}
    assert rows == {  # an empty field is left out, as before pods and processes
        1000: {**web, "process": "nginx", "pid": 42, "peer_process": "curl", "peer_pid": 7},
        1002: web, 1001: {"process": "sshd", "pid": 1}}


@pytest.mark.parametrize("payload, error", [
    (b"{not json", "the request is not JSON; send a JSON object"),
    (b"[1, 2]", "the request is not a JSON object; send a JSON object"),
    (b'{"direction": "auto"}', "the request lacks 'iface'"),
    (b'{"iface": 7}', "'iface' must be a string"),
    (b'{"a":' * 1000 + b"1" + b"}" * 1000, "the request is nested 1000 deep, deeper than the 32 levels of arrays "
                                            "and objects allowed; send flatter data"),
])
async def test_bad_requests_get_an_error_reply_and_the_service_goes_on(control, nats_server, payload, error):
    _, options = control
    nc = await nats.connect(nats_server.url)
    try:
        reply = await nc.request(control_subject(HOST, "attach"), payload, timeout=2)
        assert msgspec.json.decode(reply.data) == {"ok": False, "error": error, "kind": "ConfigError"}
        unknown = await nc.request(control_subject(HOST, "reboot"), b"", timeout=2)
        assert msgspec.json.decode(unknown.data) == {
            "ok": False, "kind": "ConfigError",
            "error": "unknown control verb 'reboot'; use one of attach, detach, list, stats, ping"}
        odd = control_subject(HOST, "list").removesuffix(".list") + ".li%73t"  # 's' escaped: not a verb token
        escaped = await nc.request(odd, b"", timeout=2)
        assert msgspec.json.decode(escaped.data) == {
            "ok": False, "kind": "ConfigError",
            "error": f"subject {odd} is not connstats.v1.ctl.node-1%2Eexample.<verb>; send requests with ControlClient"}
    finally:
        await nc.close()
    assert await ask(options, "list") == {"devices": []}


async def test_a_bug_in_the_daemon_is_an_error_reply_not_a_crash(control):
    daemon, options = control
    daemon.fail_with = RuntimeError("boom")
    with pytest.raises(Exception) as caught:
        await ask(options, "attach", {"iface": "veth0"})
    assert str(caught.value) == "internal error in the probe: RuntimeError('boom'); see the probe's log"
    daemon.fail_with = None
    assert (await ask(options, "attach", {"iface": "veth0", "direction": "auto"}))["device"] == VETH0


async def test_no_probe_answering(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    with pytest.raises(TransportError) as caught:
        await ask(options, "list", host="ghost")
    assert str(caught.value) == (f"no probe answers for host 'ghost' on {nats_server.url}; start "
                                 "`connstats up` or `connstats probe` there, or check --host and --nats")


async def test_a_reply_nested_1000_deep_is_a_one_line_transport_error(nats_server):
    """Issue 18: the client decodes what answers on the subject too, bounded."""
    options = NatsOptions(servers=(nats_server.url,))
    nc = await nats.connect(nats_server.url)

    async def answer(msg) -> None:
        await msg.respond(b'{"a":' * 1000 + b"1" + b"}" * 1000)
    try:
        await nc.subscribe(control_subject("deep", "list"), cb=answer)
        await nc.flush()
        with pytest.raises(TransportError) as caught:
            await ask(options, "list", host="deep")
    finally:
        await nc.close()
    assert str(caught.value) == ("the probe's reply is nested 1000 deep, deeper than the 32 levels of arrays and "
                                 "objects allowed; send flatter data; is something else answering on connstats.v1.ctl?")


async def test_a_probe_that_does_not_answer_times_out(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe(control_subject("mute", "list"))  # takes requests, never replies
        await nc.flush()
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            await ask(options, "list", host="mute", timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        await nc.close()
    assert str(caught.value) == ("the probe for host 'mute' did not answer within 0.3 s; check that it "
                                 "runs and is not overloaded")


async def test_a_request_with_a_deadline_that_is_not_answered_was_not_done(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe(control_subject("mute", "policy_apply"))  # takes requests, never replies
        await nc.flush()
        with pytest.raises(TransportError) as caught:
            async with ControlClient(options, "mute", 0.3) as client:
                await client.request("policy_apply", {"text": "", "within_ms": 240, "deadline_ms": 0})
    finally:
        await nc.close()
    assert str(caught.value) == ("the probe for host 'mute' did not answer within 0.3 s, so nothing was changed "
                                 "(the request's deadline has passed); check that it runs and is not overloaded")


async def test_nats_unreachable():
    options = NatsOptions(servers=(f"nats://127.0.0.1:{free_port()}",), connect_timeout=0.5)
    with pytest.raises(TransportError) as caught:
        await ask(options, "list")
    assert str(caught.value).startswith("cannot connect to NATS at nats://127.0.0.1:")


# -- permissions --------------------------------------------------------------------------------


async def test_permission_violation_is_named(auth_nats):
    probe = NatsOptions(servers=(f"nats://127.0.0.1:{auth_nats}",), user="probe", password="probe-pw")
    service = ControlService(FakeDaemon(), probe, HOST)
    await service.start()
    try:
        viewer = NatsOptions(servers=(f"nats://127.0.0.1:{auth_nats}",), user="viewer", password="viewer-pw")
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            await ask(viewer, "list", timeout=3)
        assert time.monotonic() - started < 2  # named as soon as the server says so, not at the timeout
        assert await ask(probe, "list") == {"devices": []}
    finally:
        await service.close()
    assert str(caught.value) == (
        'NATS refused the request on connstats.v1.ctl.node-1%2Eexample.list (permissions violation for '
        'publish to "connstats.v1.ctl.node-1%2eexample.list"); ask for permission to publish to '
        'connstats.v1.ctl.> and subscribe to _INBOX.>')


async def test_a_slow_request_does_not_hold_up_the_others(nats_server):
    """A verb that takes long (a large policy compiling) and, meanwhile, others answered."""
    daemon, options = FakeDaemon(), NatsOptions(servers=(nats_server.url,))
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(body: dict) -> dict:
        entered.set()
        await release.wait()
        return {"done": True}

    service = ControlService(daemon, options, HOST, more={"slow": slow})
    await service.start()
    try:
        waiting = asyncio.create_task(ask(options, "slow", timeout=10))
        await asyncio.wait_for(entered.wait(), 5)  # the probe is busy with it
        assert await ask(options, "ping", timeout=2) == {"host": HOST, "devices": 0}
        assert not waiting.done()
        release.set()
        assert await waiting == {"done": True}
    finally:
        await service.close()


async def test_a_reply_over_max_payload_is_an_error_reply(nats_server_factory):
    server = nats_server_factory(max_payload=4096)
    daemon, options = FakeDaemon(), NatsOptions(servers=(server.url,))

    async def show(body: dict) -> dict:
        return {"text": "#" * 5000}

    service = ControlService(daemon, options, HOST, more={"policy_show": show})
    await service.start()
    try:
        with pytest.raises(TransportError) as caught:
            await ask(options, "policy_show")
    finally:
        await service.close()
    assert str(caught.value) == ("the reply is 5,021 bytes, more than the 4,096 bytes the NATS server takes in one "
                                 "message (max_payload); raise max_payload in the server's configuration")
