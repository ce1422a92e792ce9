"""The web page's JSON API (sink/web) against a real nats-server and a real SQLite store:
live intervals from chunked flow messages (top N only), the map and history through the
history query code, 400s for bad parameters, Host/Origin checks.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec
import numpy as np
import pytest

from connstats.probe.contract import (
    AlertMessage,
    NatsOptions,
    alerts_subject,
    connect,
    encode_alert,
    encode_message,
    ensure_stream,
    flows_subject,
    policy_subject,
)
from connstats.probe.contract.policy_file import parse_policy
from connstats.probe.runtime.durations import parse_duration
from connstats.sink.alerts.notify import alerts_stream_config
from connstats.sink.history import HistoryQuery, sqlite_history
from connstats.sink.policy_learn import PeerSettings, learn_policy, learn_query, learned_policy_text
from connstats.sink.sqlite_store import SqliteStore
from connstats.sink.web.compose import UiConfig, build_ui
from connstats.sink.web.graph import build_map
from connstats.sink.web.server import STATIC
from tests.fixtures.records import envelope, flow_batch, flow_record
from tests.fixtures.wait import until_async
from tests.web_data import POD_NODE, SECOND, chunked_messages, pod_records, synthetic_batch

MS = 1_000_000


@pytest.fixture
async def store_path(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await store.ping()
    await store.close()
    return path


@pytest.fixture
async def web(nats_server, store_path, tmp_path):
    ui = build_ui(UiConfig(listen="127.0.0.1:0", nats=NatsOptions(servers=(nats_server.url,)),
                           store=f"sqlite:{store_path}", state_dir=tmp_path))
    await ui.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{ui.port}") as session:
        yield ui, session
    await ui.close()


async def write(path, *batches) -> None:
    store = SqliteStore(path)
    for batch in batches:
        await store.write(batch)
    await store.close()


async def next_event(response: aiohttp.ClientResponse, timeout: float = 20.0) -> tuple[dict, int]:
    """The next ``interval`` event of an SSE stream, and its size on the wire."""
    import json

    async def read() -> tuple[dict, int]:
        event, size = {}, 0
        async for raw in response.content:
            size += len(raw)
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
            elif line == "" and event:
                return event, size
        raise AssertionError("stream ended")

    return await asyncio.wait_for(read(), timeout)


async def test_live_sends_only_the_top_n_of_a_chunked_interval(web, nats_server):
    ui, session = web
    batch = synthetic_batch("web-1", 7, time.time_ns() - 10 * SECOND, 10 * SECOND, 131_072, seed=3)
    messages = chunked_messages(batch, 8_192)
    assert len(messages) == 16 and max(map(len, messages)) < 1024 * 1024
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        async with session.get("/api/live", params={"limit": "25"}) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            assert await response.content.readline() == b": connected\n"
            await until_async(lambda: ui.api.feed.pages, 10, "the page's live feed", step=0.01)
            for message in messages:
                await nc.publish(flows_subject("web-1"), message)
            event, size = await next_event(response)
    finally:
        await nc.close()
    nbytes = np.asarray(batch.columns.bytes, dtype=np.uint64)
    packets = np.asarray(batch.columns.packets, dtype=np.uint64)
    order = np.lexsort((-packets.astype(np.int64), -nbytes.astype(np.int64)))[:25]
    assert [(r["src_ip"], r["src_port"], r["dst_ip"], r["bytes"], r["packets"]) for r in event["rows"]] == [
        (batch.columns.src_ip[i], batch.columns.src_port[i], batch.columns.dst_ip[i], int(nbytes[i]),
         int(packets[i])) for i in order.tolist()]
    assert (event["host"], event["interval_seq"], event["connections"]) == ("web-1", 7, 131_072)
    assert (event["packets"], event["bytes"]) == (int(packets.sum()), int(nbytes.sum()))
    assert size < 8 * 1024  # 25 rows of 131,072, never all of them


async def test_a_message_nested_1000_deep_is_skipped_and_the_live_page_goes_on(web, nats_server):
    """Issue 18: the nesting was a RecursionError that ended the live feed's task for good."""
    ui, session = web
    nested = b'{"a":' * 1000 + b"1" + b"}" * 1000
    batch = synthetic_batch("web-1", 8, time.time_ns() - 10 * SECOND, 10 * SECOND, 40, seed=5)
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        async with session.get("/api/live") as response:
            assert await response.content.readline() == b": connected\n"
            await until_async(lambda: ui.api.feed.pages, 5, "the page in the feed")
            await nc.publish(flows_subject("web-1"), nested)
            await nc.publish(policy_subject("web-1"), nested)  # the Policy view's violations
            await nc.publish(flows_subject("web-1"), encode_message(batch))
            event, _ = await next_event(response)
    finally:
        await nc.close()
    assert (event["host"], event["interval_seq"], event["connections"]) == ("web-1", 8, 40)
    assert (event["packets"], event["bytes"]) == (sum(batch.columns.packets), sum(batch.columns.bytes))
    await until_async(lambda: ui.api.violations.skipped, 5, "the nested violation skipped")
    assert (ui.api.feed.bad_messages, ui.api.violations.skipped, list(ui.api.violations.events)) == (1, 1, [])


VIOLATION = {"host": "web-1", "interval_seq": 4812, "interval_start": 1795000000000000000,
             "interval_end": 1795000010000000000, "mode": "protect", "ifname": "veth3a9f2c1",
             "container": "web-1", "proto": "tcp", "src_ip": "172.17.0.2", "src_port": 43512,
             "dst_ip": "172.17.0.9", "dst_port": 22, "packets": 3, "bytes": 222,
             "from_groups": ["web"], "to_groups": ["world"]}


async def test_the_policy_view_lists_violations_and_skips_what_is_not_one(web, nats_server):
    ui, session = web
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        for message in (VIOLATION, {"host": "web-1"}, VIOLATION | {"src_port": "x"}, [1],
                        VIOLATION | {"host": "web-2"}, VIOLATION | {"dst_port": 23}):
            await nc.publish(policy_subject("web-1"), msgspec.json.encode(message))
        await until_async(lambda: len(ui.api.violations.events) + ui.api.violations.skipped == 6, 5, "6 messages seen")
    finally:
        await nc.close()
    assert ui.api.violations.skipped == 3  # an object without the fields, a port as text, an array
    async with session.get("/api/policy", params={"host": "web-1"}) as response:
        body = await response.json()
    assert (response.status, body["available"]) == (200, False)  # no probe answers for web-1
    # the newest first, web-1's; a probe's from before pods sent no pod: read as none
    assert body["violations"] == [VIOLATION | {"dst_port": 23, "pod": ""}, VIOLATION | {"pod": ""}]


async def test_the_firing_alerts_are_the_stream_s_alert_messages_with_their_start_in_ms(web, nats_server):
    ui, session = web
    now = time.time_ns()
    alert = AlertMessage(
        fingerprint="0f3c2a9d81b4e6a7", state="firing", rule="udp-burst", kind="threshold", severity="warning",
        host="web-1", labels={"alertname": "udp-burst", "severity": "warning", "dst_port": "5353"}, value=184220,
        threshold=100000, summary="dst_port=5353: 184220 packets in 30s, above 100000", description="",
        started_at=now - 1_500_000_123, ended_at=0, sent_at=now, repeat_ns=60 * SECOND, engine="web-1")
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        js = nc.jetstream()
        await ensure_stream(js, alerts_stream_config())
        await js.publish(alerts_subject("web-1"), encode_alert(alert))
        await js.publish(alerts_subject("web-1"), b'{"state": "firing"}')  # not an alert: passed over
    finally:
        await nc.close()
    async with session.get("/api/alerts") as response:
        body = await response.json()
    assert body == {"available": True, "alerts": [
        msgspec.to_builtins(alert) | {"started_ms": (now - 1_500_000_123) // MS}]}


async def test_live_filters_column_wise(web, nats_server):
    ui, session = web
    batch = synthetic_batch("web-2", 1, time.time_ns() - 10 * SECOND, 10 * SECOND, 5_000)
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        params = {"container": "app-03", "proto": "udp", "port": "53", "limit": "1000"}
        async with session.get("/api/live", params=params) as response:
            await response.content.readline()
            await until_async(lambda: ui.api.feed.pages, 10, "the page's live feed", step=0.01)
            await nc.publish(flows_subject("web-2"), b"not a flow message")  # skipped, not fatal
            for message in chunked_messages(batch, 2_000):
                await nc.publish(flows_subject("web-2"), message)
            event, _ = await next_event(response)
    finally:
        await nc.close()
    c = batch.columns
    expected = [i for i in range(len(batch)) if c.ifindex[i] == 1003 and c.proto[i] == 17 and c.dst_port[i] == 53]
    assert event["connections"] == len(expected) == 84
    assert sorted((r["src_port"], r["bytes"]) for r in event["rows"]) == sorted(
        (c.src_port[i], c.bytes[i]) for i in expected)
    assert {(r["container"], r["ifname"], r["proto"]) for r in event["rows"]} == {("app-03", "veth003", "udp")}
    assert ui.api.feed.bad_messages == 1


async def test_map_and_history_are_the_store_rows(web, store_path):
    _, session = web
    now = time.time_ns()
    start = now - 40 * 60 * SECOND
    batches = [synthetic_batch("web-3", i, start + i * 300 * SECOND, 300 * SECOND, 2_000, containers=4,
                               peers=10, seed=i) for i in range(3)]
    await write(store_path, *batches)
    async with session.get("/api/map", params={"since": "1h"}) as response:
        assert response.status == 200
        body = await response.json()
    total = sum(int(np.asarray(b.columns.bytes, dtype=np.uint64).sum()) for b in batches)
    assert sum(e["bytes"] for e in body["edges"]) == total
    assert len(body["connections"]) == 2_000  # the same 2,000 connections in three intervals
    query = HistoryQuery(since=body["since_ms"] * MS, until=body["until_ms"] * MS, group_by="connection_owner")
    assert {k: v for k, v in body.items() if not k.endswith("_ms")} == build_map(sqlite_history(store_path, query))
    assert {n["kind"] for n in body["nodes"]} == {"container", "peer"}
    assert sorted(n["label"] for n in body["nodes"] if n["kind"] == "container") == [
        "app-00", "app-01", "app-02", "app-03"]

    async with session.get("/api/history", params={"since": "1h", "group_by": "container", "every": "5m"}) as response:
        history = await response.json()
    query = HistoryQuery(since=history["since_ms"] * MS, until=history["until_ms"] * MS, group_by="container",
                         every=parse_duration("5m"))
    rows = sqlite_history(store_path, query)
    assert len(rows) == 12 and history["every_ms"] == 300_000
    assert sorted((s["key"], p["time_ms"], p["bytes"], p["packets"]) for s in history["series"] for p in s["points"]) == \
        sorted((r["container_name"], r["time"] // MS, r["bytes"], r["packets"]) for r in rows)


async def test_the_learn_preview_is_what_policy_learn_writes(web, store_path):
    _, session = web
    now = time.time_ns()
    batches = [synthetic_batch("web-6", i, now - (30 - 5 * i) * 60 * SECOND, 300 * SECOND, 300, containers=3,
                               peers=5, seed=i) for i in range(2)]
    await write(store_path, *batches)
    async with session.get("/api/policy/learn", params={"since": "1h", "host": "web-6", "peers": "prefix"}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    query = learn_query(body["since_ms"] * MS, body["until_ms"] * MS, "web-6")
    learned = learn_policy(sqlite_history(store_path, query), peers=PeerSettings("prefix"))
    assert body["toml"] == learned_policy_text(learned, ["connstats policy learn (preview): host web-6"])
    assert parse_policy(body["toml"]) == learned.policy
    assert (body["groups"], body["rules"], body["connections"], body["bytes"]) == (
        len(learned.policy.groups), len(learned.policy.rules), learned.connections, learned.bytes)
    assert body["groups"] >= 3 and body["rules"] >= 3 and body["connections"] > 0


async def test_map_and_history_are_the_same_from_influxdb(nats_server, store_path, influx_server, tmp_path):
    """The same batches in SQLite and in the InfluxDB v2 API test server: the same answers."""
    from connstats.sink.influx_store import InfluxConfig, InfluxStore
    from tests.fixtures.influx import TEST_ORG, TEST_TOKEN

    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")
    start = time.time_ns() - 30 * 60 * SECOND
    batches = [synthetic_batch("web-4", i, start + i * 300 * SECOND, 300 * SECOND, 300, containers=3, peers=5,
                               seed=i) for i in range(2)]
    await write(store_path, *batches)
    influx = InfluxStore(config)
    for batch in batches:
        await influx.write(batch)
    await influx.close()
    params = {"since": "2026-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"}
    answers = []
    for store, influx_config in ((f"sqlite:{store_path}", None), ("influxdb", config)):
        ui = build_ui(UiConfig(listen="127.0.0.1:0", nats=NatsOptions(servers=(nats_server.url,)), store=store,
                               state_dir=tmp_path, influx=influx_config))
        await ui.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{ui.port}") as session:
                async with session.get("/api/map", params=params) as response:
                    map_body = await response.json()
                async with session.get("/api/history", params={**params, "group_by": "port", "every": "1d"}) as response:
                    history = await response.json()
            answers.append((map_body, history))
        finally:
            await ui.close()
    assert answers[0] == answers[1]
    assert len(answers[0][0]["connections"]) == 300


async def test_the_map_names_pods_and_processes_alike_from_sqlite_and_influxdb(nats_server, store_path,
                                                                                 influx_server, tmp_path):
    """A node's pods in SQLite and in the InfluxDB v2 API test server: the same map, pods
    named and in their namespaces, each end's process on the connections."""
    from connstats.sink.influx_store import InfluxConfig, InfluxStore
    from tests.fixtures.influx import TEST_ORG, TEST_TOKEN

    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")
    of = envelope(POD_NODE, 1, start=time.time_ns() - 60 * SECOND)
    batch = flow_batch(of, pod_records(of))
    await write(store_path, batch)
    influx = InfluxStore(config)
    await influx.write(batch)
    await influx.close()
    answers, histories = [], []
    for store, influx_config in ((f"sqlite:{store_path}", None), ("influxdb", config)):
        ui = build_ui(UiConfig(listen="127.0.0.1:0", nats=NatsOptions(servers=(nats_server.url,)), store=store,
                               state_dir=tmp_path, influx=influx_config))
        await ui.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{ui.port}") as session:
                async with session.get("/api/map", params={"since": "15m"}) as response:
                    answers.append(await response.json())
                async with session.get("/api/history", params={"since": "15m", "group_by": "pod"}) as response:
                    histories.append(await response.json())
        finally:
            await ui.close()
    sqlite, influxdb = ({k: v for k, v in body.items() if not k.endswith("_ms")} for body in answers)
    assert sqlite == influxdb
    assert histories[0]["series"] == histories[1]["series"]
    assert [(s["key"], sum(p["bytes"] for p in s["points"])) for s in histories[0]["series"]] == [
        ("shop/api-0", 7100), ("shop/web-7d9f8c6b5-x2x9z", 5000), ("shop/db-0", 1200),
        ("payments/gateway-5c4f-k2j9d", 700), ("payments/ledger-0", 700), ("kube-system/coredns-abc12-zz9x8", 160),
        ("(no pod)", 80)]
    assert [(n["id"], n["namespace"], n["workload"], n["processes"]) for n in sqlite["nodes"] if n["kind"] == "pod"] == [
        (f"pod:{POD_NODE}/{pod}", pod.split("/")[0], workload, processes)
        for pod, workload, processes in sorted([
            ("kube-system/coredns-abc12-zz9x8", "coredns", [["coredns", 55]]),
            ("payments/gateway-5c4f-k2j9d", "gateway", []), ("payments/ledger-0", "ledger", []),
            ("shop/api-0", "api", [["api-server", 977]]), ("shop/db-0", "db", [["postgres", 70]]),
            ("shop/web-7d9f8c6b5-x2x9z", "web", [["curl", 812]])])]
    fields = sqlite["connection_fields"]
    assert sorted((c[fields.index("source_process")], c[fields.index("target_process")], c[fields.index("bytes")])
                  for c in sqlite["connections"]) == [
        ("", "", 80), ("", "", 700), ("", "api-server", 900), ("api-server", "postgres", 1200), ("coredns", "", 160),
        ("curl", "api-server", 5000)]


async def test_denied_connections_are_the_stores_deny_rows_in_sqlite_and_influxdb(
        nats_server, store_path, influx_server, tmp_path):
    """Every 4th connection denied: /api/policy/violations is `connstats history --verdict deny`'s
    rows of the host, per connection, the same from SQLite and from InfluxDB. (The InfluxDB
    test server runs no Flux: it is sent only the denied records of the host, so this checks
    the InfluxDB path's grouping and sums; the Flux verdict filter is tests/sink/test_history.py's.)"""
    from connstats.sink.influx_store import InfluxConfig, InfluxStore
    from tests.fixtures.influx import TEST_ORG, TEST_TOKEN

    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")
    start = time.time_ns() - 30 * 60 * SECOND
    batches = [synthetic_batch("web-5", i, start + i * 300 * SECOND, 300 * SECOND, 200, containers=3, peers=5,
                               seed=i, deny_every=4) for i in range(2)]
    batches.append(synthetic_batch("web-6", 0, start, 300 * SECOND, 40, seed=7, deny_every=2))  # another host
    await write(store_path, *batches)
    influx = InfluxStore(config)
    for batch in batches[:2]:
        await influx.write(batch.take(np.flatnonzero(np.asarray(batch.columns.verdict) == "deny")))
    await influx.close()
    params = {"since": "2026-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z", "host": "web-5"}
    answers = []
    for store, influx_config in ((f"sqlite:{store_path}", None), ("influxdb", config)):
        ui = build_ui(UiConfig(listen="127.0.0.1:0", nats=NatsOptions(servers=(nats_server.url,)), store=store,
                               state_dir=tmp_path, influx=influx_config, host="elsewhere"))
        await ui.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{ui.port}") as session:
                async with session.get("/api/policy/violations", params=params) as response:
                    assert response.status == 200, await response.text()
                    answers.append(await response.json())
                async with session.get("/api/policy/violations", params={**params, "limit": "7"}) as response:
                    answers.append(await response.json())
        finally:
            await ui.close()
    assert answers[0] == answers[2] and answers[1] == answers[3]
    body, limited = answers[0], answers[1]
    query = HistoryQuery(since=body["since_ms"] * MS, until=body["until_ms"] * MS, host="web-5", verdict="deny")
    held = sqlite_history(store_path, query)
    denied = [np.asarray(b.columns.verdict) == "deny" for b in batches[:2]]
    assert len(held) == body["connections"] == 50  # connections 0, 4, 8, ... of 200, in both intervals
    assert body["bytes"] == sum(int(np.asarray(b.columns.bytes, dtype=np.uint64)[d].sum())
                                for b, d in zip(batches[:2], denied, strict=True))
    assert [(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["packets"], r["bytes"]) for r in body["rows"]] \
        == [(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["packets"], r["bytes"]) for r in held]
    assert (limited["connections"], limited["bytes"], limited["rows"]) == (50, body["bytes"], body["rows"][:7])


@pytest.mark.parametrize("path, params, message", [
    ("/api/map", {"since": "yesterday"}, "'yesterday' is neither a duration (15m) nor an RFC 3339 time"),
    ("/api/map", {"since": "1h", "until": "2h"}, "--until must be later than --since"),
    ("/api/map", {"port": "70000"}, "port='70000' is not a whole number from 0 to 65535"),
    ("/api/map", {"colour": "red"}, "unknown parameter 'colour'"),
    ("/api/history", {"group_by": "planet"}, "group_by='planet' is not one of container, pod, iface, port"),
    ("/api/history", {"every": "1ms"}, "every=1ms makes more than 2400 points; use a wider bucket"),
    ("/api/history", {"every": "soon"}, "'soon' is not a duration"),
    ("/api/history", {"proto": "carrier-pigeon"}, "carrier-pigeon"),
    ("/api/map", {"verdict": "maybe"}, "verdict='maybe' is not allow, deny or none"),
    ("/api/policy/learn", {"peers": "everyone"}, "--peers 'everyone' is not world or prefix"),
    ("/api/policy/violations", {"since": "soon"}, "'soon' is neither a duration (15m) nor an RFC 3339 time"),
    ("/api/policy/violations", {"limit": "10001"}, "limit='10001' is not a whole number from 1 to 10000"),
    ("/api/policy/violations", {"verdict": "allow"}, "unknown parameter 'verdict'"),
    ("/api/live", {"limit": "0"}, "limit='0' is not a whole number from 1 to 1000"),
    ("/api/live", {"host": "a\x01b"}, "host is longer than 256 characters or holds control characters"),
])
async def test_bad_parameters_get_400_with_a_json_error(web, path, params, message):
    _, session = web
    async with session.get(path, params=params) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert message in (await response.json())["error"]


async def test_live_views_are_bounded(web):
    ui, session = web
    ui.api.max_live_pages = 2
    first, second = await session.get("/api/live"), await session.get("/api/live")
    try:
        await until_async(lambda: len(ui.api.feed.pages) >= 2, 10, "two pages on the live feed", step=0.01)
        async with session.get("/api/live") as third:
            assert third.status == 503
            assert await third.json() == {"error": "2 live views are open already; close one and retry"}
    finally:
        first.close()
        second.close()
    await until_async(lambda: not ui.api.feed.pages, 10, "empty feed once the live views closed", step=0.02)


async def test_foreign_host_and_origin_are_refused(web):
    ui, session = web
    async with session.get("/api/map", headers={"Host": "rebound.example:80"}) as response:
        assert response.status == 403
        assert "is not this page" in (await response.json())["error"]
    async with session.get("/api/map", headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403
    async with session.get("/", headers={"Origin": f"http://localhost:{ui.port}"}) as response:
        assert response.status == 200
        assert "<title>connstats</title>" in await response.text()
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self';")
        assert response.headers["Referrer-Policy"] == "no-referrer"
    async with session.get("/api/nothing") as response:
        assert (response.status, await response.json()) == (404, {"error": "not found: GET /api/nothing"})


async def test_a_static_name_of_5000_characters_is_a_404(web, caplog):
    """Issue 18: it was a 500 and a traceback (ENAMETOOLONG from the file system)."""
    _, session = web
    for name, path in (("a" * 5000, "/static/" + "a" * 5000), ("nothing.js", "/static/nothing.js"),
                       ("..%2fserver.py", "/static/../server.py"), ("style.css%00", "/static/style.css\x00")):
        async with session.get(f"/static/{name}") as response:
            assert (response.status, await response.json()) == (404, {"error": f"not found: GET {path}"}), name[:20]
    async with session.get("/static/style.css") as response:
        assert (response.status, response.content_type) == (200, "text/css")
        assert await response.read() == (STATIC / "style.css").read_bytes()
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_live_rows_name_the_pod_and_the_process_on_each_end(web, nats_server):
    ui, session = web
    of = envelope("web-3", 5, start=time.time_ns() - 10 * SECOND)
    batch = flow_batch(of, [
        flow_record(of, ifindex=21, ifname="vethapi", container_name="api-0", pod="shop/api-0", workload="api",
                    runtime="containerd", direction="ingress", src_ip="10.244.0.5", src_port=41000,
                    dst_ip="10.244.0.6", dst_port=8080, packets=10, bytes=5000, process="api-server", pid=977,
                    peer_process="curl", peer_pid=812),
        flow_record(of, ifindex=22, ifname="vethleg", container_name="legacy", direction="egress", proto=17,
                    src_ip="172.17.0.2", src_port=5000, dst_ip="198.51.100.53", dst_port=53, packets=1, bytes=80),
    ])
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        async with session.get("/api/live") as response:
            assert await response.content.readline() == b": connected\n"
            await until_async(lambda: ui.api.feed.pages, 5, "the page in the feed")
            await nc.publish(flows_subject("web-3"), encode_message(batch))
            event, _ = await next_event(response)
    finally:
        await nc.close()
    who = ("pod", "process", "pid", "peer_process", "peer_pid")
    assert [(r["container"], r["bytes"], {k: r[k] for k in who if k in r}) for r in event["rows"]] == [
        ("api-0", 5000, {"pod": "shop/api-0", "process": "api-server", "pid": 977, "peer_process": "curl",
                         "peer_pid": 812}),
        ("legacy", 80, {})]  # nothing known: left out
