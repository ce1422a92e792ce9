"""The seed-compatible HTTP API on a real ProbeDaemon: real classifier, real veths, real NATS.

Traffic goes from test namespace a to b (tests/fixtures/netns.py); on the host-side veths
a's datagrams are "egress" on a's veth and "ingress" on b's. A UDP datagram over IPv4 is
14 + 20 + 8 bytes plus its payload.
"""
from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import time

import aiohttp
import pytest

from connstats.probe.api.http import (
    DEFAULT_HTTP_ADDRESS,
    HttpApi,
    connection_to_json,
    http_service,
    parse_address,
    protocol_text,
)
from connstats.probe.api.totals import ConnectionTotal, ConnectionTotals, forgetting
from connstats.probe.contract import NatsOptions
from connstats.probe.contract.errors import ConfigError
from connstats.probe.contract.record import Owner
from connstats.probe.daemon import DaemonSettings, ProbeDaemon
from connstats.probe.kernel.devices import AttachedDevice, LinkInfo
from connstats.probe.kernel.kernel_probe import ProbeSettings
from connstats.probe.publish.publisher import PublisherSettings
from tests.fixtures.netns import require_root
from tests.fixtures.records import flow_record
from tests.fixtures.wait import until_async

UDP_V4_OVERHEAD = 14 + 20 + 8
INTERVAL = 0.2
ATTACH = "/traffic_count_attach_device"
STATS = "/traffic_device_connection_stats"


# -- pure parts -------------------------------------------------------------------------------


def test_parse_address():
    assert parse_address(DEFAULT_HTTP_ADDRESS) == ("127.0.0.1", 9102)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("9102", ":9102", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="is not ADDR:PORT"):
            parse_address(bad)


def test_connection_json_has_the_seed_fields_and_the_added_ones():
    total = ConnectionTotal(3, 12, "vethab", "ingress", 6, 6, "fd00::1", "fd00::2", 443, 50000,
                            9, 1234, 1_790_000_000_000_000_001, 1_790_000_001_000_000_002, "web", "deny")
    assert connection_to_json(total) == {
        "device_id": 12, "src_port": 443, "dst_port": 50000, "direction": "ingress",
        "protocol": "TCP", "timestamp": 1_790_000_001_000_000_002, "total_packets": 9,
        "total_bytes": 1234, "src_ip": "fd00::1", "dst_ip": "fd00::2", "ifname": "vethab",
        "family": 6, "first_seen": 1_790_000_000_000_000_001, "container_name": "web", "verdict": "deny",
    }
    assert [protocol_text(p) for p in (1, 6, 17, 58, 0)] == ["ICMP", "TCP", "UDP", "ICMPV6", "0"]
    known = dataclasses.replace(total, pod="shop/web-1", workload="web", runtime="containerd", process="nginx",
                                pid=42, peer_process="", peer_pid=0)
    assert connection_to_json(known) == connection_to_json(total) | {
        "pod": "shop/web-1", "workload": "web", "runtime": "containerd", "process": "nginx", "pid": 42}


# -- a real daemon ------------------------------------------------------------------------------


class RunningProbe:
    """A ProbeDaemon running in the test's loop, its HTTP API, and a client session."""

    def __init__(self, daemon: ProbeDaemon, api: HttpApi, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.api = api
        self.session = session

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.session.get(self.api.url + path) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def post(self, path: str, body: bytes | str) -> tuple[int, dict]:
        data = body.encode() if isinstance(body, str) else body
        async with self.session.post(self.api.url + path, data=data,
                                     headers={"Content-Type": "application/json"}) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def attach(self, iface: str, action: str = "add") -> dict:
        status, body = await self.post(ATTACH, f'{{"iface": "{iface}", "action": "{action}"}}')
        assert status == 200, body
        return body

    async def connection(self, device_id: int, **match) -> tuple[str, dict]:
        status, body = await self.get(f"{STATS}/{device_id}")
        assert status == 200, body
        found = [(k, v) for k, v in body.items() if all(v[f] == x for f, x in match.items())]
        assert len(found) == 1, body
        return found[0]

    async def settled(self, device_id: int, packets: int, **match) -> tuple[str, dict]:
        """The one matching connection once it shows ``packets`` (the kernel counts as the
        datagrams are forwarded); then the exact fields are for the test to assert."""
        return await until_async(lambda: self.connection(device_id, **match), 5, step=0.02, fail=False,
                                 accept=lambda found: found[1]["total_packets"] == packets)


@pytest.fixture
async def running_probe(nats_server, test_network):
    require_root()
    apis: list[HttpApi] = []
    totals = ConnectionTotals()
    make_api = http_service("127.0.0.1:0", totals)

    def capture(daemon):
        apis.append(make_api(daemon))
        return apis[-1]

    settings = DaemonSettings(
        probe=ProbeSettings(interval=INTERVAL, capacity=1024, host="http-test"),
        nats=NatsOptions(servers=(nats_server.url,), connect_timeout=2.0),
        publisher=PublisherSettings(host="http-test"),
        shutdown_flush_seconds=2.0,
        services=[capture],
    )
    daemon = ProbeDaemon(settings)
    daemon.on_interval(totals)  # as build_probe wires them
    daemon.on_detach(forgetting(totals, daemon.live_records))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    session = aiohttp.ClientSession()
    try:
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises the daemon's start-up error
        assert daemon.ready.is_set(), "the probe daemon did not start within 30 s"
        yield RunningProbe(daemon, apis[0], session)
    finally:
        await session.close()
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            if not task.done():
                task.cancel()


def without_times(connection: dict) -> dict:
    return {k: v for k, v in connection.items() if k not in ("timestamp", "first_seen")}


async def wait_intervals(count: int) -> None:
    await asyncio.sleep(count * INTERVAL + 0.05)


async def test_totals_since_attach_are_exact_and_stay_exact_across_intervals(running_probe, test_network):
    probe = running_probe
    a, b = test_network.hosts
    for host in (a, b):  # only the test's datagrams: the listings below are compared exactly
        host.quiet([h for h in (a, b) if h is not host])
    added = await probe.attach(a.host_if)
    device_a = added["device_id"]
    assert added == {"iface": a.host_if, "device_id": device_a, "action": "add", "attached": True,
                     "direction_mode": "auto", "inverted": True}
    device_b = (await probe.attach(b.host_if))["device_id"]

    a.traffic("udp", b.ipv4, 5353, 40001, 50, 100)
    a.traffic("udp", b.ipv4, 5353, 40002, 20, 1200)
    udp = dict(protocol="UDP", dst_port=5353)
    key, first = await probe.settled(device_a, 50, src_port=40001, **udp)
    assert (first["total_packets"], first["total_bytes"]) == (50, 50 * (UDP_V4_OVERHEAD + 100))
    assert (first["device_id"], first["ifname"], first["direction"], first["family"]) == (
        device_a, a.host_if, "egress", 4)
    assert (first["src_ip"], first["dst_ip"], first["container_name"]) == (a.ipv4, b.ipv4, "")
    assert first["first_seen"] <= first["timestamp"] <= time.time_ns()
    _, second = await probe.settled(device_a, 20, src_port=40002, **udp)
    assert (second["total_packets"], second["total_bytes"]) == (20, 20 * (UDP_V4_OVERHEAD + 1200))
    _, on_b = await probe.settled(device_b, 50, src_port=40001, **udp)
    assert (on_b["direction"], on_b["total_bytes"]) == ("ingress", 50 * (UDP_V4_OVERHEAD + 100))

    await wait_intervals(3)  # every datagram is now in a published interval, none in the live one
    again_key, again = await probe.connection(device_a, src_port=40001, **udp)
    assert (again_key, without_times(again)) == (key, without_times(first))
    # Live and published records convert kernel time to wall time at different moments.
    assert abs(again["timestamp"] - first["timestamp"]) < 1_000_000
    a.traffic("udp", b.ipv4, 5353, 40001, 5, 100)
    _, more = await probe.settled(device_a, 55, src_port=40001, **udp)
    assert (more["total_packets"], more["total_bytes"]) == (55, 55 * (UDP_V4_OVERHEAD + 100))

    status, everything = await probe.get(STATS)
    assert status == 200
    assert everything[key]["total_packets"] == 55
    assert {v["device_id"] for v in everything.values()} == {device_a, device_b}
    status, only_b = await probe.get(f"{STATS}/{device_b}")
    assert {v["device_id"] for v in only_b.values()} == {device_b}
    assert set(only_b) == {k for k, v in everything.items() if v["device_id"] == device_b}


async def test_a_device_s_pod_shows_in_its_connections_and_no_key_where_nothing_is_known(running_probe,
                                                                                      test_network):
    probe = running_probe
    a, b = test_network.hosts
    owner = Owner(container_id="c0ffee", container_name="web", pod="shop/web-1", workload="web", runtime="containerd")
    device_a = (await probe.daemon.attach(a.host_if, owner=owner)).ifindex
    device_b = (await probe.attach(b.host_if))["device_id"]
    a.traffic("udp", b.ipv4, 5353, 40003, 30, 100)
    udp = dict(protocol="UDP", dst_port=5353, src_port=40003)
    _, on_a = await probe.settled(device_a, 30, **udp)
    assert (on_a["total_bytes"], on_a["container_name"], on_a["pod"], on_a["workload"], on_a["runtime"]) == (
        30 * (UDP_V4_OVERHEAD + 100), "web", "shop/web-1", "web", "containerd")
    _, on_b = await probe.settled(device_b, 30, **udp)
    assert on_b["total_bytes"] == 30 * (UDP_V4_OVERHEAD + 100)
    await wait_intervals(3)  # published now: the totals keep them
    _, published = await probe.connection(device_a, **udp)
    assert (published["total_packets"], published["pod"]) == (30, "shop/web-1")
    for entry in (published, (await probe.connection(device_b, **udp))[1]):
        assert not {"process", "pid", "peer_process", "peer_pid"} & set(entry)  # no process known here
    assert not {"pod", "workload", "runtime"} & set((await probe.connection(device_b, **udp))[1])


async def test_remove_forgets_the_totals_and_add_starts_from_zero(running_probe, test_network):
    probe = running_probe
    a, b = test_network.hosts
    device_a = (await probe.attach(a.host_if))["device_id"]
    a.traffic("udp", b.ipv4, 5353, 40011, 30, 64)
    udp = dict(protocol="UDP", src_port=40011, dst_port=5353)
    _, before = await probe.settled(device_a, 30, **udp)
    assert before["total_packets"] == 30

    removed = await probe.attach(a.host_if, "remove")
    assert (removed["device_id"], removed["attached"]) == (device_a, False)
    assert await probe.get(f"{STATS}/{device_a}") == (
        404, {"error": f"device {device_a} is not attached; attach it first"})
    assert (await probe.get(STATS)) == (200, {})
    a.traffic("udp", b.ipv4, 5353, 40011, 4, 64)  # not attached: not counted

    await probe.attach(a.host_if)  # most likely within the interval of the detach
    a.traffic("udp", b.ipv4, 5353, 40011, 7, 64)
    _, after = await probe.settled(device_a, 7, **udp)
    assert (after["total_packets"], after["total_bytes"]) == (7, 7 * (UDP_V4_OVERHEAD + 64))
    await wait_intervals(3)
    _, later = await probe.connection(device_a, **udp)
    assert (later["total_packets"], later["total_bytes"]) == (7, 7 * (UDP_V4_OVERHEAD + 64))


async def test_bad_requests_answer_4xx_with_a_json_error(running_probe, test_network):
    probe = running_probe
    a, _ = test_network.hosts
    cases = [
        ("{not json", 400, "request body is not JSON"),
        ("[1, 2]", 400, "request body is not a JSON object"),
        ('{"action": "add"}', 400, '"iface" is missing or not a string'),
        (f'{{"iface": "{a.host_if}", "action": "attach"}}', 400, "\"action\" is 'attach'; use \"add\" or \"remove\""),
        (f'{{"iface": "{a.host_if}", "action": "add", "mode": "sideways"}}', 400,
         "direction mode 'sideways' is not one of auto, normal, inverted"),
        ('{"iface": "no-such-if0", "action": "add"}', 400, "no network interface 'no-such-if0'"),
        (f'{{"iface": "{a.host_if}", "action": "remove"}}', 400, f"'{a.host_if}' is not attached"),
        ('{"a":' * 1000 + "1" + "}" * 1000, 400, "request body is nested 1000 deep, deeper than the 32 levels "
                                                 "of arrays and objects allowed; send flatter data"),
    ]
    for body, status, message in cases:
        got_status, got = await probe.post(ATTACH, body)
        assert (got_status, list(got)) == (status, ["error"]), body[:80]
        assert got["error"].startswith(message), (body, got)
        assert "\n" not in got["error"] and "Traceback" not in got["error"]
    assert probe.daemon.devices() == []

    assert await probe.get(f"{STATS}/4294967295") == (
        404, {"error": "device 4294967295 is not attached; attach it first"})
    assert await probe.get(f"{STATS}/eth0") == (
        400, {"error": "device id 'eth0' is not an ifindex; use a number"})
    assert await probe.get("/traffic_count") == (404, {"error": "not found: GET /traffic_count"})
    assert await probe.get(ATTACH) == (405, {"error": f"method not allowed: GET {ATTACH}"})
    status, _ = await probe.post(ATTACH, b"{" + b" " * (64 * 1024) + b"}")
    assert status == 413


async def test_a_taken_port_is_a_one_line_config_error():
    class NoDaemon:
        pass

    first = http_service("127.0.0.1:0", ConnectionTotals())(NoDaemon())
    await first.start()
    try:
        second = http_service(f"127.0.0.1:{first.port}", ConnectionTotals())(NoDaemon())
        with pytest.raises(ConfigError, match=rf"^cannot listen on 127.0.0.1:{first.port} for HTTP: "
                                              r"Address already in use; pick another --http ADDR:PORT$"):
            await second.start()
    finally:
        await first.close()


# -- who may call: Host, Origin, Content-Type (a real server, a fake daemon, raw requests) ------


class FakeDaemon:
    """What the HTTP API calls on the daemon; these tests are about HTTP, not the kernel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.interval_listeners: list = []
        self.detach_listeners: list = []

    async def attach(self, name, mode=None, owner=None):
        self.calls.append(("attach", name))
        return AttachedDevice(LinkInfo(42, name, "veth", True), mode or "auto", True, 1)

    async def detach(self, name):
        self.calls.append(("detach", name))
        return AttachedDevice(LinkInfo(42, name, "veth", True), "auto", True, 1)

    def devices(self) -> list:
        return []

    async def live_records(self) -> list:
        return []


@pytest.fixture
async def fake_api():
    """An HttpApi on a free loopback port in front of a FakeDaemon; closed at teardown."""
    api = HttpApi(FakeDaemon(), "127.0.0.1", 0, ConnectionTotals())
    await api.start()
    yield api
    await api.close()


def raw_request(api: HttpApi, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
    """One request with exactly these headers (http.client adds none it is told to skip)."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body or method == "POST":
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), json.loads(response.read())
    finally:
        connection.close()


async def call(api: HttpApi, method: str, path: str, body: bytes = b"", **headers: str):
    return await asyncio.to_thread(raw_request, api, method, path, body,
                                   {k.replace("_", "-"): v for k, v in headers.items()})


ADD_VETH9 = b'{"iface": "veth9", "action": "add"}'


async def test_the_host_header_must_name_the_api(fake_api):
    port = fake_api.port
    ok = {"iface": "veth9", "device_id": 42, "action": "add", "attached": True,
          "direction_mode": "auto", "inverted": True}
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "localhost",
                 f"LocalHost:{port}", f"[::1]:{port}", "[::1]"):
        assert await call(fake_api, "POST", ATTACH, ADD_VETH9, Host=host,
                          Content_Type="application/json") == (200, "application/json", ok), host
        assert await call(fake_api, "GET", STATS, Host=host) == (200, "application/json", {}), host
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "localhost:80",
                 f"127.0.0.2:{port}", f"10.0.0.1:{port}", ""):
        expected = (403, "application/json", {"error": f"Host {host!r} is not this API; use http://127.0.0.1:{port}"})
        assert await call(fake_api, "POST", ATTACH, ADD_VETH9, Host=host,
                          Content_Type="application/json") == expected, host
        assert await call(fake_api, "GET", STATS, Host=host) == expected, host
    assert fake_api.probe.calls == [("attach", "veth9")] * 7


async def test_a_foreign_origin_is_refused(fake_api):
    port = fake_api.port
    own = f"127.0.0.1:{port}"
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        status, _, _ = await call(fake_api, "POST", ATTACH, ADD_VETH9, Host=own, Origin=origin,
                                  Content_Type="application/json")
        assert status == 200, origin
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null",
                   f"https://127.0.0.1:{port}", "http://127.0.0.1", f"http://127.0.0.1:{port + 1}",
                   f"http://user@127.0.0.1:{port}"):
        expected = (403, "application/json", {"error": f"Origin {origin!r} may not use this API; call it "
                                                       f"from http://{own} or without a browser"})
        assert await call(fake_api, "POST", ATTACH, ADD_VETH9, Host=own, Origin=origin,
                          Content_Type="application/json") == expected, origin
        assert await call(fake_api, "GET", STATS, Host=own, Origin=origin) == expected, origin
    assert fake_api.probe.calls == [("attach", "veth9")] * 3


async def test_a_post_must_be_json(fake_api):
    own = f"127.0.0.1:{fake_api.port}"
    for content_type, seen in (("text/plain", "text/plain"),
                               ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
                               ("multipart/form-data; boundary=x", "multipart/form-data"),
                               (None, "application/octet-stream")):
        headers = {"Host": own} | ({"Content_Type": content_type} if content_type else {})
        assert await call(fake_api, "POST", ATTACH, ADD_VETH9, **headers) == (
            415, "application/json",
            {"error": f"Content-Type is {seen!r}; send the body as application/json"}), content_type
    status, _, _ = await call(fake_api, "POST", ATTACH, ADD_VETH9, Host=own,
                              Content_Type="application/json; charset=utf-8")
    assert status == 200
    assert fake_api.probe.calls == [("attach", "veth9")]


async def test_control_characters_in_interface_names_are_refused(fake_api):
    own = f"127.0.0.1:{fake_api.port}"
    for name in ("veth\x000", "veth\n0", "eth0\r", "\x1b[31m", "a\x7fb", "veth\t1"):
        body = json.dumps({"iface": name, "action": "add"}).encode()
        status, content_type, answer = await call(fake_api, "POST", ATTACH, body, Host=own,
                                                  Content_Type="application/json")
        assert (status, content_type) == (400, "application/json"), repr(name)
        assert answer == {"error": f"interface name {name!r} contains {next(c for c in name if ord(c) < 32 or ord(c) == 127)!r}, "
                                   "which no interface name can; see `ip link`"}, repr(name)
        assert "\n" not in answer["error"] and "\x00" not in answer["error"]
    assert fake_api.probe.calls == []


# -- overflow in the totals ---------------------------------------------------------------------


async def test_overflow_is_an_entry_per_device_and_direction_so_totals_add_up():
    from connstats.probe.contract.record import Envelope, OverflowCount
    from connstats.probe.contract.wire import FlowBatch

    second = 1_000_000_000
    start = 1_790_000_000 * second
    veth7 = AttachedDevice(LinkInfo(7, "veth7", "veth", True), "auto", True, start - second)
    veth8 = AttachedDevice(LinkInfo(8, "veth8", "veth", True), "auto", True, start - second)
    daemon = FakeDaemon()
    daemon.devices = lambda: [veth7, veth8]
    totals = ConnectionTotals()
    record = flow_record(interval_start=start, interval_end=start + second, ifindex=7, ifname="veth7",
                         direction="egress", family=4, proto=17, src_ip="10.0.0.1", dst_ip="10.0.0.2",
                         src_port=40001, dst_port=5353, packets=10, bytes=1420, first_seen=start + 1,
                         last_seen=start + 2, tcp_flags=0)
    overflow = (OverflowCount(7, "veth7", "egress", 3, 3 * 142), OverflowCount(7, "veth7", "ingress", 2, 200),
                OverflowCount(0, "", "egress", 1, 60))
    totals(FlowBatch.from_records(Envelope("h", "b", 1, start, start + second, overflow=overflow), [record]))
    totals(FlowBatch.from_records(Envelope("h", "b", 2, start + second, start + 2 * second,
                                           overflow=(OverflowCount(7, "veth7", "egress", 4, 4 * 142),)), []))
    api = HttpApi(daemon, "127.0.0.1", 0, totals)
    await api.start()
    try:
        status, content_type, one = await call(api, "GET", f"{STATS}/7", Host=f"127.0.0.1:{api.port}")
        _, _, every = await call(api, "GET", STATS, Host=f"127.0.0.1:{api.port}")
    finally:
        await api.close()
    assert (status, content_type) == (200, "application/json")
    def entry(direction, packets, nbytes, end, ifindex=7, ifname="veth7"):
        return {"device_id": ifindex, "src_port": 0, "dst_port": 0, "direction": direction,
                "protocol": "OVERFLOW", "timestamp": end, "total_packets": packets,
                "total_bytes": nbytes, "ifname": ifname, "overflow": True}
    assert list(one) == ["connection_1", "overflow_7_egress", "overflow_7_ingress"]
    assert one["overflow_7_egress"] == entry("egress", 7, 7 * 142, start + 2 * second)
    assert one["overflow_7_ingress"] == entry("ingress", 2, 200, start + second)
    assert "overflow" not in one["connection_1"]
    # summing the device's entries gives its exact totals: 10 + 7 + 2 packets
    assert (sum(v["total_packets"] for v in one.values()), sum(v["total_bytes"] for v in one.values())) == (
        19, 1420 + 7 * 142 + 200)
    # every device: also what not even the overflow map could hold (ifindex 0)
    assert every == {**one, "overflow_0_egress": entry("egress", 1, 60, start + second, 0, "")}


class CountingTotals(ConnectionTotals):
    """Real totals that count how often a view of them is built (on the probe's loop)."""

    views = 0

    def view(self, *args, **kwargs):
        self.views += 1
        return super().view(*args, **kwargs)


def many_connections(count: int) -> tuple[AttachedDevice, CountingTotals]:
    from connstats.probe.contract.record import Envelope
    from connstats.probe.contract.wire import FlowBatch

    second = 1_000_000_000
    start = 1_790_000_000 * second
    device = AttachedDevice(LinkInfo(7, "veth7", "veth", True), "auto", True, start - second)
    records = [flow_record(interval_start=start, interval_end=start + second, ifindex=7, ifname="veth7",
                           direction="egress", family=4, proto=6, src_ip="10.0.0.1",
                           dst_ip=f"10.1.{n // 250}.{n % 250}", src_port=40000 + n % 20000, dst_port=443,
                           packets=2, bytes=200, first_seen=start + 1, last_seen=start + 2, tcp_flags=0) for n in range(count)]
    totals = CountingTotals()
    totals(FlowBatch.from_records(Envelope("h", "b", 1, start, start + second), records))
    return device, totals


async def test_a_crowd_of_stats_requests_builds_one_view_at_a_time():
    """200 concurrent requests for 13,000 connections: each gets all of them, and the probe's
    loop builds the view once per wave of requests, not once per request (200 before). How
    many waves depends on how fast the 200 connections arrive: 4-6 here, 10 is the bound."""
    device, totals = many_connections(13_000)
    daemon = FakeDaemon()
    daemon.devices = lambda: [device]
    api = HttpApi(daemon, "127.0.0.1", 0, totals)
    await api.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def get(path: str) -> tuple[int, int]:
                async with session.get(api.url + path) as response:
                    return response.status, len(await response.json())

            answers = await asyncio.gather(*(get(STATS if n % 2 else f"{STATS}/7") for n in range(200)))
    finally:
        await api.close()
    assert answers == [(200, 13_000)] * 200
    assert totals.views <= 10
