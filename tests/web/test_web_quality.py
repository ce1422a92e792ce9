"""How well, on the map's side of the server: the quality columns and device drops read from
a real SQLite store (sink/web/quality.py) and added up per connection, edge and node
(graph.py); a store without them (schema 4) reads nothing and the map is drawn as before."""
from __future__ import annotations

import time

from connstats.sink.history import HistoryQuery, sqlite_history
from connstats.sink.sqlite_store import SqliteStore
from connstats.sink.web.graph import build_map
from connstats.sink.web.quality import sqlite_quality, with_quality
from tests.web_data import QUALITY_NODE as NODE
from tests.web_data import SECOND, quality_batches, synthetic_batch, write_with_quality

A, B, C = (f"container:{NODE}/{name}" for name in "abc")
DNS, WEB = "peer:198.51.100.53", "peer:203.0.113.9"


def read_map(path, since: int, until: int, **filters) -> dict:
    query = HistoryQuery(since=since, until=until, group_by="connection_owner", **filters)
    quality = sqlite_quality(path, query)
    return build_map(with_quality(sqlite_history(path, query), quality.rows), {}, quality.drops)


async def test_the_map_carries_each_connection_s_quality_edges_and_device_drops(tmp_path):
    path, start = tmp_path / "flows.sqlite", time.time_ns() - 60 * SECOND
    await write_with_quality(path, quality_batches(start))
    body = read_map(path, start - SECOND, start + 30 * SECOND)
    assert body["quality"] is True
    edges = {(e["source"], e["target"]): e for e in body["edges"]}
    assert {k: (e["rtt_max_us"], e["retransmits"], e["drop_packets"], e["drop_bytes"], e["drop_reason"])
            for k, e in edges.items()} == {
        (A, B): (4000, 10, 40, 6000, "NETFILTER_DROP"),  # a's RTT and retransmits, b's drops: 30 + 10
        (A, WEB): (120_000, 0, 0, 0, ""), (B, DNS): (0, 0, 1500, 120_000, "QDISC_DROP"), (C, DNS): (0, 0, 0, 0, "")}
    fields = body["connection_fields"]
    quality = {(c["source"], c["target"]): (c["rtt_avg_us"], c["rtt_max_us"], c["retransmits"], c["drop_packets"],
                                           c["drop_reason"]) for c in (dict(zip(fields, c, strict=True))
                                                                        for c in body["connections"])}
    assert quality == {(A, B): (2400, 4000, 10, 40, "NETFILTER_DROP"),  # (1500 * 100 + 2700 * 300) / 400
                       (A, WEB): (90_000, 120_000, 0, 0, ""),
                       (B, DNS): (0, 0, 0, 1500, "QDISC_DROP"), (C, DNS): (0, 0, 0, 0, "")}
    assert len(body["connections"]) == 4  # b's ingress of a -> b is drawn from a's egress, its drops with it
    drops = {n["id"]: n.get("drops") for n in body["nodes"]}
    assert drops == {A: [["vethA", "NETFILTER_DROP", 20, 1400]], B: None, C: None, DNS: None, WEB: None,
                     f"device:{NODE}/eth9": [["eth9", "NO_SOCKET", 10, 600]]}  # eth9: no record, a node of its own

    # the map's filters hold for quality too: the first interval alone, and a's device alone
    first = read_map(path, start - SECOND, start + 5 * SECOND)
    assert [(e["source"], e["target"], e["drop_packets"], e["drop_reason"], e["rtt_max_us"]) for e in first["edges"]
            if e["source"] == A and e["target"] == B] == [(A, B, 30, "NETFILTER_DROP", 2500)]
    only_a = read_map(path, start - SECOND, start + 30 * SECOND, iface="vethA")
    assert [(e["target"], e["drop_packets"], e["retransmits"]) for e in only_a["edges"]] == [
        ("peer:10.60.0.3", 0, 10), (WEB, 0, 0)]  # b's drops are on b's device (b unseen: a peer)
    assert [n["drops"] for n in only_a["nodes"] if "drops" in n] == [[["vethA", "NETFILTER_DROP", 20, 1400]]]


async def test_a_store_without_quality_reads_none_and_the_map_is_as_before(tmp_path):
    path, start = tmp_path / "flows.sqlite", time.time_ns() - 60 * SECOND
    store = SqliteStore(path)
    await store.write(synthetic_batch("plain-1", 1, start, 10 * SECOND, 300, seed=1))
    await store.close()
    query = HistoryQuery(since=start - SECOND, until=start + 20 * SECOND, group_by="connection_owner")
    quality = sqlite_quality(path, query)
    assert (quality.rows, quality.drops) == ({}, [])
    missing = sqlite_quality(tmp_path / "none.sqlite", query)  # the map's rows, read beside, say it is missing
    assert (missing.rows, missing.drops) == ({}, [])
    body = read_map(path, query.since, query.until)
    plain = build_map(sqlite_history(path, query))
    assert body == plain and body["quality"] is False and len(body["connections"]) == 300
    assert "rtt_max_us" not in body["edges"][0] and "rtt_avg_us" not in body["connection_fields"]


async def test_the_map_from_influxdb_carries_the_same_quality_as_from_sqlite(nats_server, influx_server, tmp_path):
    """The page's /api/map on an InfluxDB store asks the map's query with quality: the same
    edges, connections and device drops as from SQLite. (The InfluxDB test server returns
    every point it holds: the range covers all of them.)"""
    import aiohttp

    from connstats.probe.contract import NatsOptions
    from connstats.sink.influx_store import InfluxConfig, InfluxStore
    from connstats.sink.web.compose import UiConfig, build_ui
    from tests.fixtures.influx import TEST_ORG, TEST_TOKEN

    path, start = tmp_path / "flows.sqlite", time.time_ns() - 60 * SECOND
    batches = quality_batches(start)
    await write_with_quality(path, batches)
    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")
    influx = InfluxStore(config)
    for batch in batches:
        await influx.write(batch)
    await influx.close()
    answers = []
    for store, influx_config in ((f"sqlite:{path}", None), ("influxdb", config)):
        ui = build_ui(UiConfig(listen="127.0.0.1:0", nats=NatsOptions(servers=(nats_server.url,)), store=store,
                               state_dir=tmp_path, influx=influx_config, host="elsewhere"))
        await ui.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{ui.port}") as session:
                async with session.get("/api/map", params={"since": "2026-01-01T00:00:00Z",
                                                          "until": "2030-01-01T00:00:00Z"}) as response:
                    assert response.status == 200, await response.text()
                    answers.append(await response.json())
        finally:
            await ui.close()
    sqlite_map, influx_map = answers
    assert influx_map["quality"] is True
    for part in ("edges", "nodes", "connections", "connection_fields"):
        assert influx_map[part] == sqlite_map[part], part
    assert [n["drops"] for n in influx_map["nodes"] if n["id"] == f"device:{NODE}/eth9"] == [
        [["eth9", "NO_SOCKET", 10, 600]]]
