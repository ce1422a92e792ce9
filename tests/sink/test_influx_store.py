"""encode_lines (table-driven, exact lines) and InfluxStore against the InfluxDB v2 test server."""
from __future__ import annotations

import dataclasses
import datetime
import http.client
import socket
import threading

import pytest
from influxdb_client import Point, WritePrecision

from connstats.probe.contract.errors import MessageError, StoreError, StoreFull, StoreUnavailable
from connstats.probe.contract.record import DropCount, Envelope, FlowRecord, OverflowCount
from connstats.probe.contract.wire import FlowBatch
from connstats.sink.influx_store import (
    InfluxConfig,
    InfluxStore,
    encode_drop_lines,
    encode_lines,
    encode_overflow_lines,
    escape_string,
    escape_tag,
    service_port_tag,
)
from tests.fixtures.influx import TEST_ORG, TEST_TOKEN, InfluxTestServer, ParsedPoint, parse_line
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
ENVELOPE = Envelope(host="node-1", boot_id="boot", interval_seq=7, interval_start=T0,
                    interval_end=T0 + 10 * SECOND)
BASE = flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=3, ifname="veth0",
                   direction="egress", family=4, proto=6, src_ip="10.0.0.2", dst_ip="93.184.216.34",
                   src_port=51234, dst_port=443, packets=12, bytes=3456, first_seen=T0 + 5, last_seen=T0 + 9,
                   tcp_flags=0x1B)
FIELDS = ('bytes=3456i,dst_ip="93.184.216.34",dst_port=443i,family=4i,first_seen={f}i,ifindex=3i,'
          'last_seen={l}i,packets=12i,src_ip="10.0.0.2",src_port=51234i,tcp_flags=27i').format(
              f=T0 + 5, l=T0 + 9)
TAGS = "connstats_flow,direction=egress,host=node-1,ifname=veth0,proto=tcp,service_port=443"


def flow(**changes) -> FlowRecord:
    return dataclasses.replace(BASE, **changes)


# -- encode_lines ---------------------------------------------------------------------------

ENCODE_CASES = {
    "tcp to a well-known port": (ENVELOPE, [BASE], frozenset(), [f"{TAGS} {FIELDS} {T0}"]),
    "empty ifname omits the tag": (
        ENVELOPE, [flow(ifname="")], frozenset(),
        [f"connstats_flow,direction=egress,host=node-1,proto=tcp,service_port=443 {FIELDS} {T0}"],
    ),
    "escaped host and ifname": (
        dataclasses.replace(ENVELOPE, host="rack 1,node=2"), [flow(ifname="we\\ird")], frozenset(),
        [r"connstats_flow,direction=egress,host=rack\ 1\,node\=2,ifname=we\\ird,proto=tcp,"
         rf"service_port=443 {FIELDS} {T0}"],
    ),
    "string fields escape quotes and backslashes": (
        ENVELOPE, [flow(src_ip='a"b\\c')], frozenset(),
        [f"{TAGS} {FIELDS.replace('10.0.0.2', 'a' + chr(92) + chr(34) + 'b' + chr(92) * 2 + 'c')} {T0}"],
    ),
    "timestamps add record_offset and index": (
        dataclasses.replace(ENVELOPE, chunk=1, chunks=2, record_offset=5000),
        [BASE, flow(src_port=51235), flow(src_port=51236)], frozenset(),
        [f"{TAGS} {FIELDS.replace('src_port=51234i', f'src_port={p}i')} {T0 + 5000 + i}"
         for i, p in enumerate((51234, 51235, 51236))],
    ),
    "container labels: name is a tag, id and image are fields": (
        ENVELOPE, [flow(container_id="c0ffee", container_name="web 1", container_image="nginx:1.27")],
        frozenset(),
        [f"connstats_flow,container_name=web\\ 1,{TAGS[len('connstats_flow,'):]} "
         f'{FIELDS.replace("bytes=3456i,", "bytes=3456i,container_id=" + chr(34) + "c0ffee" + chr(34) + ",container_image=" + chr(34) + "nginx:1.27" + chr(34) + ",")} {T0}'],
    ),
    "pod, workload, runtime and process are tags; pid and the peer are fields": (
        ENVELOPE, [flow(pod="shop/web-7d9f-x2", workload="web", runtime="containerd", process="nginx", pid=4242,
                        peer_process="curl", peer_pid=77),
                   flow(ifindex=4, ifname="eth0", src_port=51235, process="nginx", pid=4243)],
        frozenset(),
        ["connstats_flow,direction=egress,host=node-1,ifname=veth0,pod=shop/web-7d9f-x2,process=nginx,proto=tcp,"
         f"runtime=containerd,service_port=443,workload=web "
         f"{FIELDS.replace('packets=12i,', 'packets=12i,peer_pid=77i,peer_process=' + chr(34) + 'curl' + chr(34) + ',pid=4242i,')} {T0}",
         "connstats_flow,direction=egress,host=node-1,ifname=eth0,process=nginx,proto=tcp,service_port=443 "
         f"{FIELDS.replace('packets=12i,', 'packets=12i,pid=4243i,').replace('51234', '51235').replace('ifindex=3i', 'ifindex=4i')} {T0 + 1}"],
    ),
    "quality numbers are fields left out when 0, the drop reason a tag": (
        ENVELOPE, [flow(rtt_min_us=120, rtt_avg_us=180, rtt_max_us=4_000_000_000, retransmits=3, drop_packets=2,
                        drop_bytes=2900, drop_reason="TCP_INVALID_SEQUENCE"),
                   flow(src_port=51235, proto=17, drop_packets=9, drop_bytes=1 << 40, drop_reason="SOCKET_RCVBUFF"),
                   flow(src_port=51236)],
        frozenset(),
        ["connstats_flow,direction=egress,drop_reason=TCP_INVALID_SEQUENCE,host=node-1,ifname=veth0,proto=tcp,"
         "service_port=443 " + FIELDS.replace("bytes=3456i,", "bytes=3456i,drop_bytes=2900i,drop_packets=2i,"
                                              "retransmits=3i,rtt_avg_us=180i,rtt_max_us=4000000000i,rtt_min_us=120i,")
         + f" {T0}",
         "connstats_flow,direction=egress,drop_reason=SOCKET_RCVBUFF,host=node-1,ifname=veth0,proto=udp,"
         "service_port=443 " + FIELDS.replace("bytes=3456i,", f"bytes=3456i,drop_bytes={1 << 40}i,drop_packets=9i,")
         .replace("51234", "51235") + f" {T0 + 1}",
         f"{TAGS} {FIELDS.replace('51234', '51236')} {T0 + 2}"],
    ),
    "no records, no lines": (ENVELOPE, [], frozenset(), []),
}


@pytest.mark.parametrize("envelope, records, ports, expected", ENCODE_CASES.values(), ids=ENCODE_CASES.keys())
def test_encode_lines(envelope, records, ports, expected):
    assert encode_lines(FlowBatch.from_records(envelope, records), ports) == expected


OVERFLOW_CASES = {
    "none": ((), []),
    "one device": ((OverflowCount(3, "veth0", "egress", 485, 672695),),
                   [f"connstats_overflow,direction=egress,host=node-1,ifname=veth0 bytes=672695i,ifindex=3i,packets=485i {T0}"]),
    "repeats summed, unknown name left out, one ns apart": (
        (OverflowCount(3, "veth 0", "ingress", 1, 60), OverflowCount(0, "", "egress", 2, 120),
         OverflowCount(3, "veth 0", "ingress", 4, 240)),
        [f"connstats_overflow,direction=ingress,host=node-1,ifname=veth\\ 0 bytes=300i,ifindex=3i,packets=5i {T0}",
         f"connstats_overflow,direction=egress,host=node-1 bytes=120i,ifindex=0i,packets=2i {T0 + 1}"]),
}


@pytest.mark.parametrize("overflow, expected", OVERFLOW_CASES.values(), ids=OVERFLOW_CASES.keys())
def test_encode_overflow_lines(overflow, expected):
    assert encode_overflow_lines(dataclasses.replace(ENVELOPE, overflow=overflow)) == expected


async def test_write_sends_overflow_after_the_records(influx, influx_server):
    envelope = dataclasses.replace(ENVELOPE, overflow=(OverflowCount(3, "veth0", "egress", 7, 700),))
    await influx.write(FlowBatch.from_records(envelope, [BASE]))
    assert influx_server.lines == encode_lines(FlowBatch.from_records(envelope, [BASE])) + encode_overflow_lines(envelope)
    assert [(p.measurement, p.fields["packets"]) for p in influx_server.points()] == [
        ("connstats_flow", 12), ("connstats_overflow", 7)]


def test_encode_drop_lines_sums_repeats_per_device_and_reason():
    envelope = dataclasses.replace(ENVELOPE, drops=(
        DropCount(3, "veth 0", "NETFILTER_DROP", 7, 700), DropCount(0, "", "NO_SOCKET", 2, 120),
        DropCount(3, "veth 0", "NETFILTER_DROP", 1, 100)))
    assert encode_drop_lines(envelope) == [
        f"connstats_drop,drop_reason=NETFILTER_DROP,host=node-1,ifname=veth\\ 0 bytes=800i,ifindex=3i,packets=8i {T0}",
        f"connstats_drop,drop_reason=NO_SOCKET,host=node-1 bytes=120i,ifindex=0i,packets=2i {T0 + 1}"]
    assert encode_drop_lines(ENVELOPE) == []


async def test_write_sends_the_drops_of_no_record_after_the_overflow(influx, influx_server):
    envelope = dataclasses.replace(ENVELOPE, overflow=(OverflowCount(3, "veth0", "egress", 7, 700),),
                                   drops=(DropCount(3, "veth0", "NETFILTER_DROP", 5, 300),))
    record = flow(retransmits=4, rtt_max_us=900, drop_packets=1, drop_bytes=60, drop_reason="NETFILTER_DROP")
    await influx.write(FlowBatch.from_records(envelope, [record]))
    assert [(p.measurement, p.tags.get("drop_reason"), p.fields["packets"], p.fields.get("retransmits"))
            for p in influx_server.points()] == [
        ("connstats_flow", "NETFILTER_DROP", 12, 4), ("connstats_overflow", None, 7, None),
        ("connstats_drop", "NETFILTER_DROP", 5, None)]


TAG_CASES = {
    "udp dns reply, both ports known: lower": (dict(proto=17, src_port=53, dst_port=123), "udp", "53"),
    "configured port": (dict(src_port=8080, dst_port=40000), "tcp", "8080"),
    "unknown ports": (dict(src_port=40000, dst_port=50000), "tcp", "other"),
    "icmp has no ports": (dict(proto=1, src_port=0, dst_port=0), "icmp", "other"),
    "sctp by number": (dict(proto=132, src_port=40000, dst_port=3868), "132", "3868"),
    "ipv6 ingress": (dict(family=6, direction="ingress", src_ip="fd00::1", dst_ip="fd00::2",
                          src_port=22, dst_port=60000), "tcp", "22"),
}


@pytest.mark.parametrize("changes, proto, port", TAG_CASES.values(), ids=TAG_CASES.keys())
def test_encode_lines_tags(changes, proto, port):
    record = flow(**changes)
    (line,) = encode_lines(FlowBatch.from_records(ENVELOPE, [record]), frozenset({8080, 3868}))
    assert parse_line(line) == ParsedPoint(
        "connstats_flow",
        {"direction": record.direction, "host": "node-1", "ifname": "veth0", "proto": proto,
         "service_port": port},
        {"bytes": 3456, "dst_ip": record.dst_ip, "dst_port": record.dst_port, "family": record.family,
         "first_seen": T0 + 5, "ifindex": 3, "last_seen": T0 + 9, "packets": 12,
         "src_ip": record.src_ip, "src_port": record.src_port, "tcp_flags": 27},
        T0,
    )


SERVICE_PORT_CASES = [
    (51234, 443, frozenset(), "443"),
    (443, 51234, frozenset(), "443"),
    (22, 443, frozenset(), "22"),
    (1023, 1024, frozenset(), "1023"),
    (1024, 1025, frozenset(), "other"),
    (9092, 40000, frozenset({9092}), "9092"),
    (9092, 80, frozenset({9092}), "80"),
    (9092, 8080, frozenset({9092, 8080}), "8080"),
    (0, 0, frozenset(), "other"),
    (0, 80, frozenset(), "80"),
    (65535, 1, frozenset({65535}), "1"),
]


@pytest.mark.parametrize("src, dst, ports, expected", SERVICE_PORT_CASES)
def test_service_port_tag(src, dst, ports, expected):
    assert service_port_tag(src, dst, ports) == expected


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"), ("a b", r"a\ b"), ("a,b", r"a\,b"), ("a=b", r"a\=b"),
    ("a\\", "a\\\\"), ("a\nb", r"a\nb"), ("eth0.100", "eth0.100"),
])
def test_escape_tag(value, expected):
    assert escape_tag(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("10.0.0.1", "10.0.0.1"), ('a"b', r'a\"b'), ("a\\b", r"a\\b"), ("", ""),
])
def test_escape_string(value, expected):
    assert escape_string(value) == expected


def test_port_above_65535_is_a_message_error():
    with pytest.raises(MessageError):
        encode_lines(FlowBatch.from_records(ENVELOPE, [flow(dst_port=70000)]))


def test_encode_lines_matches_the_client_point_serialiser():
    records = [flow(src_port=40000 + i, packets=i, bytes=i * 1500, proto=(6, 17, 1)[i % 3])
               for i in range(30)]
    expected = [_point(ENVELOPE, r, T0 + i).to_line_protocol() for i, r in enumerate(records)]
    assert encode_lines(FlowBatch.from_records(ENVELOPE, records)) == expected


def _point(envelope: Envelope, r: FlowRecord, timestamp: int) -> Point:
    point = Point("connstats_flow").time(timestamp, WritePrecision.NS)
    for key, value in (("host", envelope.host), ("ifname", r.ifname), ("direction", r.direction),
                       ("proto", r.proto_name), ("service_port", service_port_tag(r.src_port, r.dst_port))):
        point.tag(key, value)
    for key in ("src_ip", "dst_ip", "src_port", "dst_port", "packets", "bytes", "first_seen",
                "last_seen", "tcp_flags", "family", "ifindex"):
        point.field(key, getattr(r, key))
    return point


# -- InfluxStore against the test server ----------------------------------------------------


def many(count: int) -> list[FlowRecord]:
    return [flow(src_ip=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", src_port=1024 + i % 60000,
                 packets=i + 1, bytes=64 * (i + 1)) for i in range(count)]


async def test_write_sends_exactly_the_encoded_lines(influx, influx_server):
    records = many(3)
    await influx.write(FlowBatch.from_records(ENVELOPE, records))
    assert influx_server.lines == encode_lines(FlowBatch.from_records(ENVELOPE, records))
    (request,) = influx_server.writes
    assert (request.org, request.bucket, request.precision, request.gzip) == (TEST_ORG, "flows", "ns", True)
    assert sum(p.fields["bytes"] for p in influx_server.points()) == 64 * 6


async def test_pods_and_processes_reach_the_server_as_tags_and_fields(influx, influx_server):
    records = [flow(pod="shop/web-1", workload="web", runtime="containerd", process="nginx", pid=4242,
                    peer_process="curl", peer_pid=77),
               flow(ifindex=4, ifname="eth0", src_port=51235)]
    await influx.write(FlowBatch.from_records(ENVELOPE, records))
    first, second = influx_server.points()
    assert {k: first.tags[k] for k in ("pod", "workload", "runtime", "process")} == {
        "pod": "shop/web-1", "workload": "web", "runtime": "containerd", "process": "nginx"}
    assert {k: first.fields[k] for k in ("pid", "peer_process", "peer_pid")} == {
        "pid": 4242, "peer_process": "curl", "peer_pid": 77}
    assert set(second.tags) == {"direction", "host", "ifname", "proto", "service_port"}
    assert "pid" not in second.fields and "peer_process" not in second.fields and "peer_pid" not in second.fields


async def test_empty_message_sends_no_request(influx, influx_server):
    await influx.write(FlowBatch.from_records(ENVELOPE, []))
    assert (influx_server.requests, influx_server.lines) == (0, [])


async def test_write_posts_chunks_of_at_most_5000_lines(influx, influx_server):
    records = many(12_345)
    await influx.write(FlowBatch.from_records(ENVELOPE, records))
    assert [len(w.lines) for w in influx_server.writes] == [5000, 5000, 2345]
    assert influx_server.requests == 3
    assert influx_server.lines == encode_lines(FlowBatch.from_records(ENVELOPE, records))
    assert sum(p.fields["packets"] for p in influx_server.points()) == 12_345 * 12_346 // 2


async def test_replay_sends_identical_points(influx, influx_server):
    envelope = dataclasses.replace(ENVELOPE, record_offset=10)
    await influx.write(FlowBatch.from_records(envelope, many(4)))
    await influx.write(FlowBatch.from_records(envelope, many(4)))
    first, second = influx_server.writes
    assert first.lines == second.lines
    assert [parse_line(line).time for line in first.lines] == [T0 + 10, T0 + 11, T0 + 12, T0 + 13]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_overload_and_server_errors_are_unavailable_and_not_retried(influx, influx_server, status):
    influx_server.fail_next(status, 1)
    with pytest.raises(StoreUnavailable) as caught:
        await influx.write(FlowBatch.from_records(ENVELOPE, many(2)))
    assert influx_server.requests == 1
    assert influx_server.lines == []
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"InfluxDB at {influx_server.url} answered {status} ")
    await influx.write(FlowBatch.from_records(ENVELOPE, many(2)))
    assert len(influx_server.lines) == 2


@pytest.mark.parametrize("status, reason, message", [
    (507, "Insufficient Storage", "failing on purpose"),
    (500, "Internal Server Error", "write /var/lib/influxdb2/engine/wal/3/_00001.wal: no space left on device"),
])
async def test_an_out_of_space_answer_is_store_full(influx, influx_server, status, reason, message):
    influx_server.fail_next(status, 1, message=message)
    with pytest.raises(StoreFull) as caught:
        await influx.write(FlowBatch.from_records(ENVELOPE, many(2)))
    assert str(caught.value) == (f"InfluxDB at {influx_server.url} answered {status} {reason} ({message}); the "
                                 "store is out of space: free space or raise its quota")
    await influx.write(FlowBatch.from_records(ENVELOPE, many(2)))
    assert len(influx_server.lines) == 2


async def test_failure_until_reset(influx, influx_server):
    influx_server.fail_until_reset(503)
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await influx.write(FlowBatch.from_records(ENVELOPE, many(1)))
    influx_server.reset()
    await influx.write(FlowBatch.from_records(ENVELOPE, many(1)))
    assert (influx_server.requests, len(influx_server.lines)) == (4, 1)


async def test_failure_in_a_later_chunk_is_unavailable_and_the_replay_completes(influx, influx_server):
    records = many(5001)
    influx_server.fail_next(503, 1, after=1)
    with pytest.raises(StoreUnavailable):
        await influx.write(FlowBatch.from_records(ENVELOPE, records))
    assert [len(w.lines) for w in influx_server.writes] == [5000]
    await influx.write(FlowBatch.from_records(ENVELOPE, records))
    assert [len(w.lines) for w in influx_server.writes] == [5000, 5000, 1]
    assert influx_server.lines[5000:] == encode_lines(FlowBatch.from_records(ENVELOPE, records))
    assert influx_server.requests == 4


async def test_bad_request_is_a_permanent_store_error(influx, influx_server):
    influx_server.fail_next(400, 1)
    with pytest.raises(StoreError) as caught:
        await influx.write(FlowBatch.from_records(ENVELOPE, many(1)))
    assert type(caught.value) is StoreError
    assert str(caught.value) == (
        f"InfluxDB at {influx_server.url} answered 400 Bad Request (failing on purpose); "
        "check the data and settings"
    )


async def test_wrong_token_is_a_store_error_without_the_token(influx_server):
    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token="s3cret-token", bucket="flows")
    store = InfluxStore(config)
    try:
        with pytest.raises(StoreError) as caught:
            await store.write(FlowBatch.from_records(ENVELOPE, many(1)))
    finally:
        await store.close()
    assert type(caught.value) is StoreError
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(config)
    assert str(caught.value) == (
        f"InfluxDB at {influx_server.url} answered 401 Unauthorized (unauthorized access); "
        "check INFLUXDB_V2_TOKEN and its permissions"
    )


async def test_credentials_in_the_url_stay_out_of_messages(influx_server):
    url = influx_server.url.replace("http://", "http://user:pa55word@")
    store = InfluxStore(InfluxConfig(url=url, org=TEST_ORG, token=TEST_TOKEN))
    try:
        influx_server.fail_next(503, 1)
        with pytest.raises(StoreUnavailable) as caught:
            await store.write(FlowBatch.from_records(ENVELOPE, many(1)))
    finally:
        await store.close()
    assert "pa55word" not in str(caught.value)
    assert f"InfluxDB at {influx_server.url} answered 503" in str(caught.value)


def _free_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


async def test_server_down_is_unavailable():
    url = _free_port_url()
    store = InfluxStore(InfluxConfig(url=url, org=TEST_ORG, token=TEST_TOKEN, timeout=1.0))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.write(FlowBatch.from_records(ENVELOPE, many(1)))
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    assert str(caught.value) == (
        f"InfluxDB at {url} unreachable (NewConnectionError); check that it runs and the URL"
    )


async def test_server_that_never_answers_times_out_as_unavailable():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = InfluxStore(InfluxConfig(url=url, org=TEST_ORG, token=TEST_TOKEN, timeout=0.3))
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.write(FlowBatch.from_records(ENVELOPE, many(1)))
        finally:
            await store.close()
    assert str(caught.value) == (
        f"InfluxDB at {url} unreachable (ReadTimeoutError); check that it runs and the URL"
    )


async def test_ping(influx, influx_server):
    await influx.ping()
    influx_server.fail_next(503, 1)
    with pytest.raises(StoreUnavailable) as caught:
        await influx.ping()
    assert "\n" not in str(caught.value)
    assert influx_server.requests == 2


async def test_query_returns_rows_and_sends_params(influx, influx_server):
    records = many(3)
    await influx.write(FlowBatch.from_records(ENVELOPE, records))
    flux = 'from(bucket: bucket) |> range(start: -1h) |> filter(fn: (r) => r.host == host)'
    rows = await influx.query(flux, {"bucket": "flows", "host": "node-1"})
    assert [(r["_time"], r["src_ip"], r["packets"], r["bytes"], r["service_port"]) for r in rows] == [
        (datetime.datetime.fromtimestamp(T0 // SECOND, datetime.timezone.utc), "10.0.0.0", 1, 64, "443"),
        (datetime.datetime.fromtimestamp(T0 // SECOND, datetime.timezone.utc), "10.0.0.1", 2, 128, "443"),
        (datetime.datetime.fromtimestamp(T0 // SECOND, datetime.timezone.utc), "10.0.0.2", 3, 192, "443"),
    ]
    (sent,) = influx_server.queries
    assert sent["query"] == flux
    externs = {s["assignment"]["id"]["name"]: s["assignment"]["init"] for s in sent["extern"]["body"]}
    assert externs == {
        "bucket": {"type": "StringLiteral", "value": "flows"},
        "host": {"type": "StringLiteral", "value": "node-1"},
    }


def test_test_server_stops_with_a_keep_alive_connection_open():
    before = threading.active_count()
    server = InfluxTestServer().start()
    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=5)
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read() == (
            b'{"name": "influxdb", "message": "ready for queries and writes", "status": "pass", '
            b'"checks": [], "version": "2.7.0", "commit": "test"}'
        )
        server.stop()
        assert threading.active_count() == before
    finally:
        connection.close()


async def test_query_naming_a_params_record_is_refused_as_influxdb_does(influx, influx_server):
    with pytest.raises(StoreError) as caught:
        await influx.query("from(bucket: params.bucket) |> range(start: -1h)", {"bucket": "flows"})
    assert type(caught.value) is StoreError
    assert str(caught.value) == (
        f"InfluxDB at {influx_server.url} answered 400 Bad Request "
        "(error @1:1-1:7: undefined identifier params); check the data and settings"
    )


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("INFLUXDB_V2_URL", "http://influx:8086")
    monkeypatch.setenv("INFLUXDB_V2_ORG", "ops")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "tok")
    monkeypatch.delenv("CONNSTATS_INFLUX_BUCKET", raising=False)
    assert InfluxConfig.from_env() == InfluxConfig("http://influx:8086", "ops", "tok", "connstats")
    monkeypatch.setenv("CONNSTATS_INFLUX_BUCKET", "net")
    assert InfluxConfig.from_env().bucket == "net"
    assert InfluxConfig.from_env(bucket="other").bucket == "other"
    assert "tok" not in repr(InfluxConfig.from_env())


@pytest.mark.parametrize("missing, message", [
    ("INFLUXDB_V2_URL", "INFLUXDB_V2_URL is not set; set it to the InfluxDB URL, e.g. http://localhost:8086"),
    ("INFLUXDB_V2_ORG", "INFLUXDB_V2_ORG is not set; set it to the organization name"),
    ("INFLUXDB_V2_TOKEN", "INFLUXDB_V2_TOKEN is not set; set it to an API token that can write the bucket"),
])
def test_config_from_env_names_what_is_missing(monkeypatch, missing, message):
    for name in ("INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN"):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv(missing)
    with pytest.raises(StoreError) as caught:
        InfluxConfig.from_env()
    assert str(caught.value) == message


def test_invalid_url_is_a_store_error():
    with pytest.raises(StoreError) as caught:
        InfluxStore(InfluxConfig(url="http://user:pa55@[::1", org=TEST_ORG, token=TEST_TOKEN))
    assert str(caught.value) == "the InfluxDB URL is not valid (Invalid IPv6 URL); fix INFLUXDB_V2_URL"


def test_tags_and_fields_are_every_field_of_a_record_by_name():
    """Declared once: the tags and fields of a point are the record's fields (the interval is the
    timestamp), each with its own value: a swapped pair of ports or counters fails here."""
    from connstats.probe.contract.wire import RECORD_FIELDS
    from connstats.sink import influx_store

    record = flow(ifindex=9, src_port=51234, dst_port=443, packets=12, bytes=3456, family=4, tcp_flags=5,
                  first_seen=T0 + 5, last_seen=T0 + 9, container_id="c0ffee", container_name="web",
                  container_image="nginx:1", verdict="deny", pod="shop/web-1", workload="web",
                  runtime="podman", process="nginx", pid=31, peer_process="curl", peer_pid=32, rtt_min_us=41,
                  rtt_avg_us=42, rtt_max_us=43, retransmits=44, drop_packets=45, drop_bytes=46,
                  drop_reason="NETFILTER_DROP")
    (line,) = encode_lines(FlowBatch.from_records(ENVELOPE, [record]))
    point = parse_line(line)
    assert set(influx_store.TAGS) | set(influx_store.FIELDS) == set(RECORD_FIELDS) - {"interval_start", "interval_end"}
    assert set(point.tags) == {*influx_store.TAGS, "host", "service_port"}
    assert point.fields == {name: getattr(record, name) for name in influx_store.FIELDS}
    assert {name: point.tags[name] for name in ("container_name", "direction", "drop_reason", "ifname")} == {
        "container_name": "web", "direction": "egress", "drop_reason": "NETFILTER_DROP", "ifname": "veth0"}
    assert (point.tags["proto"], point.time) == ("tcp", T0)
