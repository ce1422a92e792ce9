"""History queries: SQL on real SQLite files written by SqliteStore, Flux against the InfluxDB
test server, and the pure builders. Exact rows, exact totals."""
from __future__ import annotations

import asyncio
import sqlite3
import urllib.request

import pytest

from connstats.probe.contract.errors import ConfigError, StoreError
from connstats.probe.contract.wire import FlowBatch
from connstats.sink.history import (
    HistoryQuery,
    aggregate,
    build_flux,
    build_sql,
    influx_history,
    parse_time,
    sqlite_history,
)
from connstats.sink.influx_store import InfluxConfig, InfluxStore, encode_lines
from connstats.sink.sqlite_store import SqliteStore
from connstats.sink.stores import StoreReader
from tests.fixtures.history import (
    ALL,
    C1,
    C2,
    C3,
    C4,
    NO_WHO,
    Q1,
    Q2,
    Q3,
    SECOND,
    T0,
    T1,
    envelope,
    rec,
    write_all,
    write_pods,
    write_quality,
)
from tests.fixtures.influx import TEST_ORG, TEST_TOKEN, InfluxTestServer


@pytest.fixture
async def db(tmp_path):
    store = SqliteStore(tmp_path / "flows.sqlite")
    await write_all(store)
    await store.close()
    return tmp_path / "flows.sqlite"


# -- SQLite ----------------------------------------------------------------------------------


def test_default_is_one_row_per_connection_sorted_by_bytes(db):
    assert sqlite_history(db, HistoryQuery(**ALL)) == [C2, C3, C1, C4]


@pytest.mark.parametrize("filters, expected", [
    ({"port": 53}, [C1]),
    ({"port": 443}, [C2, C3]),  # either side
    ({"proto": 17}, [C1]),
    ({"direction": "ingress"}, [C3, C4]),
    ({"iface": "veth1"}, [C3]),
    ({"host": "node-2"}, [C4]),
    ({"iface": "veth0", "proto": 6}, [C2]),
    ({"container": "web"}, []),
    ({"iface": "x' OR 1=1 --"}, []),  # bound, never spliced into the SQL
])
def test_filters(db, filters, expected):
    assert sqlite_history(db, HistoryQuery(**ALL, **filters)) == expected


def test_range_selects_intervals_that_overlap_it(db):
    first_only = sqlite_history(db, HistoryQuery(since=T0, until=T1))
    assert [(r["dst_port"], r["packets"], r["bytes"]) for r in first_only] == [(443, 10, 5000), (53, 3, 300)]


def test_group_by_port_uses_the_lower_port(db):
    rows = sqlite_history(db, HistoryQuery(**ALL, group_by="port"))
    assert [(r["proto"], r["port"], r["packets"], r["bytes"]) for r in rows] == [
        ("tcp", 443, 18, 5900), ("udp", 53, 7, 700), ("icmp", 0, 2, 196)]


def test_group_by_iface_and_proto(db):
    by_iface = sqlite_history(db, HistoryQuery(**ALL, group_by="iface"))
    assert [(r["ifname"], r["direction"], r["packets"], r["bytes"]) for r in by_iface] == [
        ("veth0", "egress", 17, 5700), ("veth1", "ingress", 8, 900), ("eth0", "ingress", 2, 196)]
    by_proto = sqlite_history(db, HistoryQuery(**ALL, group_by="proto"))
    assert [(r["proto"], r["packets"], r["bytes"]) for r in by_proto] == [
        ("tcp", 18, 5900), ("udp", 7, 700), ("icmp", 2, 196)]


def test_every_makes_time_buckets_and_top_applies_per_bucket(db):
    query = HistoryQuery(**ALL, group_by="proto", every=10 * SECOND, top=1)
    rows = sqlite_history(db, query)
    assert [(r["time"], r["proto"], r["packets"], r["bytes"]) for r in rows] == [
        (T0, "tcp", 10, 5000), (T1, "tcp", 8, 900)]


def test_top_without_every(db):
    assert sqlite_history(db, HistoryQuery(**ALL, top=2)) == [C2, C3]


def test_reads_while_a_writer_holds_a_transaction(db):
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE flows SET bytes = 1")
        assert sqlite_history(db, HistoryQuery(**ALL)) == [C2, C3, C1, C4]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_missing_database(tmp_path):
    with pytest.raises(StoreError) as caught:
        sqlite_history(tmp_path / "none.sqlite", HistoryQuery(**ALL))
    assert str(caught.value) == (f"no flow database at {tmp_path / 'none.sqlite'}; start `connstats up` "
                                 "or `connstats sink`, or check --store")


def test_file_without_flows(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError) as caught:
        sqlite_history(path, HistoryQuery(**ALL))
    assert str(caught.value) == f"{path} holds no flows table; is it a connstats database?"


def test_build_sql_binds_every_value():
    sql, params = build_sql(HistoryQuery(since=1, until=2, iface="eth0", port=53, top=5))
    assert sql == (
        "SELECT ifname, direction, proto, src_ip, src_port, dst_ip, dst_port, MAX(pod) AS pod, "
        "MAX(workload) AS workload, MAX(runtime) AS runtime, MAX(process) AS process, MAX(pid) AS pid, "
        "MAX(peer_process) AS peer_process, MAX(peer_pid) AS peer_pid, "
        "SUM(packets >> 32) AS packets_hi, SUM(packets & 4294967295) AS packets_lo, "
        "SUM(bytes >> 32) AS bytes_hi, SUM(bytes & 4294967295) AS bytes_lo, "
        "MIN(first_seen) AS first_seen, MAX(last_seen) AS last_seen FROM ("
        "SELECT ifname AS ifname, direction AS direction, proto AS proto, src_ip AS src_ip, "
        "src_port AS src_port, dst_ip AS dst_ip, dst_port AS dst_port, pod AS pod, workload AS workload, "
        "runtime AS runtime, process AS process, pid AS pid, peer_process AS peer_process, peer_pid AS peer_pid, "
        "packets, bytes, first_seen, "
        "last_seen FROM flows WHERE interval_end > :since AND interval_start < :until AND ifname = :iface "
        "AND (src_port = :port OR dst_port = :port)) "
        "GROUP BY ifname, direction, proto, src_ip, src_port, dst_ip, dst_port")  # a port filter: no overflow
    assert params == {"since": 1, "until": 2, "iface": "eth0", "port": 53}


def test_build_sql_adds_overflow_to_device_totals():
    sql, params = build_sql(HistoryQuery(since=1, until=2, host="h", group_by="iface", every=10))
    assert sql == (
        "SELECT (interval_start / :every) * :every AS time, ifname, direction, "
        "SUM(packets >> 32) AS packets_hi, SUM(packets & 4294967295) AS packets_lo, "
        "SUM(bytes >> 32) AS bytes_hi, SUM(bytes & 4294967295) AS bytes_lo, "
        "MIN(first_seen) AS first_seen, MAX(last_seen) AS last_seen FROM ("
        "SELECT interval_start, ifname AS ifname, direction AS direction, packets, bytes, first_seen, "
        "last_seen FROM flows WHERE interval_end > :since AND interval_start < :until AND host = :host "
        "UNION ALL SELECT interval_start, ifname AS ifname, direction AS direction, packets, bytes, NULL, "
        "NULL FROM overflow WHERE interval_end > :since AND interval_start < :until AND host = :host) "
        "GROUP BY time, ifname, direction")
    assert params == {"since": 1, "until": 2, "host": "h", "every": 10}


# -- InfluxDB ---------------------------------------------------------------------------------


async def test_influx_gives_the_same_rows_as_sqlite(influx, db):
    await write_all(influx)
    assert await influx_history(influx, HistoryQuery(**ALL)) == sqlite_history(db, HistoryQuery(**ALL))
    query = HistoryQuery(**ALL, group_by="port", top=2)
    assert await influx_history(influx, query) == sqlite_history(db, query)
    for group_by in ("pod", "workload", "process"):  # nobody known: one row of "", as on SQLite
        query = HistoryQuery(**ALL, group_by=group_by)
        rows = sqlite_history(db, query)
        assert await influx_history(influx, query) == rows
        assert [(r[group_by], r["packets"], r["bytes"]) for r in rows] == [("", 27, 6796)]


WEB = {"pod": "shop/web-7d9f-x2", "workload": "web", "runtime": "containerd"}
DB = {"pod": "shop/db-0", "workload": "db", "runtime": "containerd"}
HOST = {"pod": "", "workload": "", "runtime": ""}


def seen(first: int, last: int) -> dict:
    return {"first_seen": first + 1, "last_seen": last + 2}


def sums(packets: int) -> dict:
    return {"packets": packets, "bytes": 100 * packets}


POD_CASES = {
    "group by pod": (dict(group_by="pod"), [
        {**WEB, **sums(14), **seen(T0, T1)}, {**DB, **sums(4), **seen(T0, T0)}, {**HOST, **sums(3), **seen(T0, T0)}]),
    "group by workload": (dict(group_by="workload"), [
        {"workload": "web", **sums(14), **seen(T0, T1)}, {"workload": "db", **sums(4), **seen(T0, T0)},
        {"workload": "", **sums(3), **seen(T0, T0)}]),
    "group by process; one known later is still its connection's": (dict(group_by="process"), [
        {"process": "", **sums(7), **seen(T0, T1)}, {"process": "nginx", **sums(5), **seen(T0, T0)},
        {"process": "postgres", **sums(4), **seen(T0, T0)}, {"process": "curl", **sums(3), **seen(T0, T0)},
        {"process": "sshd", **sums(2), **seen(T0, T0)}]),
    "a pod glob": (dict(group_by="pod", pod="shop/*"), [
        {**WEB, **sums(14), **seen(T0, T1)}, {**DB, **sums(4), **seen(T0, T0)}]),
    "a pod glob with a prefix": (dict(group_by="pod", pod="shop/web-*"), [{**WEB, **sums(14), **seen(T0, T1)}]),
    "a pod glob with a class": (dict(group_by="pod", pod="shop/[a-d]?-[0-9]"), [{**DB, **sums(4), **seen(T0, T0)}]),
    "a pod glob with a negated class": (dict(group_by="pod", pod="shop/[!w]*"), [{**DB, **sums(4), **seen(T0, T0)}]),
    "a pod glob with ?": (dict(group_by="pod", pod="shop/db-?"), [{**DB, **sums(4), **seen(T0, T0)}]),
    "no pod": (dict(group_by="iface", pod=""), [
        {"ifname": "eth0", "direction": "egress", **sums(3), **seen(T0, T0)}]),
    "a workload": (dict(group_by="process", workload="db"), [{"process": "postgres", **sums(4), **seen(T0, T0)}]),
    "a process": (dict(process="nginx"), [
        {"ifname": "veth0", "direction": "egress", "proto": "tcp", "src_ip": "10.0.0.1", "src_port": 40000,
         "dst_ip": "10.0.0.2", "dst_port": 5432, **WEB, "process": "nginx", "pid": 4242, "peer_process": "postgres",
         "peer_pid": 77, **sums(5), **seen(T0, T0)}]),
    "no process": (dict(group_by="iface", process=""), [
        {"ifname": "veth0", "direction": "egress", **sums(6), **seen(T1, T1)},
        {"ifname": "eth0", "direction": "egress", **sums(1), **seen(T0, T0)}]),
    "a connection names its pod and both processes": (dict(top=2), [
        {"ifname": "veth0", "direction": "egress", "proto": "tcp", "src_ip": "10.0.0.1", "src_port": 40000,
         "dst_ip": "10.0.0.2", "dst_port": 5432, **WEB, "process": "nginx", "pid": 4242, "peer_process": "postgres",
         "peer_pid": 77, **sums(11), **seen(T0, T1)},
        {"ifname": "veth1", "direction": "egress", "proto": "tcp", "src_ip": "10.0.0.1", "src_port": 5432,
         "dst_ip": "10.0.0.2", "dst_port": 40000, **DB, "process": "postgres", "pid": 77, "peer_process": "nginx",
         "peer_pid": 4242, **sums(4), **seen(T0, T0)}]),
}


@pytest.mark.parametrize("query, expected", POD_CASES.values(), ids=POD_CASES.keys())
async def test_pods_and_processes_give_the_same_rows_on_both_stores(flux_influx, tmp_path, query, expected):
    """Filters run where the store runs them: in SQL, in Flux on the test server that runs it."""
    _, influx = flux_influx
    store = SqliteStore(tmp_path / "flows.sqlite")
    await write_pods(store)
    await store.close()
    await write_pods(influx)
    rows = sqlite_history(tmp_path / "flows.sqlite", HistoryQuery(**ALL, **query))
    assert rows == expected
    assert await influx_history(influx, HistoryQuery(**ALL, **query)) == expected


async def test_a_file_of_schema_3_reads_as_without_pods_and_processes(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await write_all(store)
    await store.close()
    with sqlite3.connect(path) as db:  # what a sink of schema 3 left, not opened since
        for column in ("pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid"):
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 3")
    assert sqlite_history(path, HistoryQuery(**ALL)) == [C2, C3, C1, C4]
    assert sqlite_history(path, HistoryQuery(**ALL, group_by="pod")) == [
        {"pod": "", "workload": "", "runtime": "", "packets": 27, "bytes": 6796, "first_seen": T0 + 1,
         "last_seen": T1 + 2}]
    assert sqlite_history(path, HistoryQuery(**ALL, pod="shop/*")) == []
    assert [r["packets"] for r in sqlite_history(path, HistoryQuery(**ALL, process="", group_by="proto"))] == [18, 7, 2]


def test_the_pod_glob_and_names_travel_as_parameters():
    sql, params = build_sql(HistoryQuery(since=T0, until=T1, pod="shop/*", workload="web", process="nginx"))
    assert "pod GLOB :pod AND workload = :workload AND process = :process" in sql
    assert "connstats_glob(:pod, pod)" in build_sql(HistoryQuery(since=T0, until=T1, pod="shop/[!a]*"))[0]
    assert "overflow" not in sql and (params["pod"], params["workload"], params["process"]) == ("shop/*", "web", "nginx")
    flux, params = build_flux(HistoryQuery(since=T0, until=T1, pod="shop/*", workload="web", process=""), "flows")
    assert flux.splitlines()[3:5] == ["  |> filter(fn: (r) => r.workload == p_workload)",
                                      "  |> filter(fn: (r) => not exists r.process)"]
    assert "shop" not in flux and '"pod"' in flux.splitlines()[-1] and params["p_workload"] == "web"


@pytest.mark.parametrize("group_by", ["container", "connection_owner"])
async def test_the_web_page_groupings_are_the_same_on_both_stores(influx, db, group_by):
    """The web page's groupings (per container; per connection with who counted it)."""
    await write_all(influx)
    query = HistoryQuery(**ALL, group_by=group_by, every=10 * SECOND)
    rows = sqlite_history(db, query)
    assert await influx_history(influx, query) == rows
    if group_by == "container":
        assert [(r["time"], r["host"], r["container_name"], r["packets"]) for r in rows] == [
            (T0, "node-1", "", 13), (T1, "node-1", "", 12), (T1, "node-2", "", 2)]
    else:
        assert {(r["host"], r["ifname"], r["src_port"]) for r in rows} == {
            ("node-1", "veth0", 5000), ("node-1", "veth0", 40000), ("node-1", "veth1", 443), ("node-2", "eth0", 0)}


async def test_one_reader_reads_either_store_alike(influx, influx_server, db):
    """The web page (``rows``) and ``connstats history`` (``read``) read through ``StoreReader``:
    the same rows from SQLite and InfluxDB; one InfluxDB client for all queries of a reader."""
    await write_all(influx)
    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")
    by_port = HistoryQuery(**ALL, group_by="port", top=2)
    sqlite = StoreReader(f"sqlite:{db}")
    assert await sqlite.rows(HistoryQuery(**ALL)) == sqlite.read(HistoryQuery(**ALL)) == [C2, C3, C1, C4]
    async with StoreReader("influx", config) as reader:
        assert await reader.rows(HistoryQuery(**ALL)) == [C2, C3, C1, C4]
        assert await reader.rows(by_port) == await sqlite.rows(by_port) == sqlite_history(db, by_port)
        assert reader._influx is not None
    assert (len(influx_server.queries), reader._influx) == (2, None)  # closed by async with


def test_the_readers_synchronous_read_of_influxdb_closes_its_client(influx_server):
    config = InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows")

    async def write() -> None:
        store = InfluxStore(config)
        try:
            await write_all(store)
        finally:
            await store.close()

    asyncio.run(write())
    reader = StoreReader("influxdb", config)
    assert reader.read(HistoryQuery(**ALL, top=1)) == [C2]
    assert (len(influx_server.queries), reader._influx) == (1, None)


@pytest.mark.parametrize("spec", ["postgres:x", "sqlite:", "influxdb:x", ""])
def test_the_reader_refuses_a_spec_that_names_no_store(spec):
    with pytest.raises(ConfigError) as caught:
        StoreReader(spec)
    assert str(caught.value) == f"store {spec!r} is not sqlite:PATH or influxdb; check --store"


async def test_influx_sends_user_input_only_as_params(influx, influx_server):
    evil = 'x") |> drop() //'
    query = HistoryQuery(**ALL, iface=evil, port=53, proto=17, direction="egress", host="node-1",
                         container="web")
    await influx_history(influx, query)
    (sent,) = influx_server.queries
    assert evil not in sent["query"] and "53" not in sent["query"] and "node-1" not in sent["query"]
    externs = {s["assignment"]["id"]["name"]: s["assignment"]["init"] for s in sent["extern"]["body"]}
    assert {k: v.get("value") for k, v in externs.items() if k not in ("p_start", "p_stop")} == {
        "p_bucket": "flows", "p_measurement": "connstats_flow", "p_iface": evil, "p_port": "53",
        "p_proto": "udp", "p_direction": "egress", "p_host": "node-1", "p_container": "web",
    }
    assert externs["p_port"]["type"] == "IntegerLiteral"
    assert externs["p_start"] == {"type": "DateTimeLiteral", "value": "2023-11-14T21:13:20.000000000Z"}


@pytest.fixture
async def flux_influx():
    """The InfluxDB v2 test server running Flux (tests/fixtures/flux_tables.py), and a store on it."""
    server = InfluxTestServer(flux=True).start()
    store = InfluxStore(InfluxConfig(url=server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows"))
    try:
        yield server, store
    finally:
        await store.close()
        server.stop()


async def test_icmpv6_by_name_and_number_also_finds_points_tagged_58_before_it_had_a_name(flux_influx):
    """Issue 18: 58 is ``icmpv6``; an older connstats tagged its points ``proto=58``."""
    server, store = flux_influx
    old = FlowBatch.from_records(envelope(T0), [rec(T0, "veth0", "egress", 58, "10.0.0.1", 0, "10.0.0.2", 0, 3, 354)])
    lines = [line.replace(",proto=icmpv6,", ",proto=58,") for line in encode_lines(old)]
    assert lines != encode_lines(old)
    request = urllib.request.Request(f"{server.url}/api/v2/write?org={TEST_ORG}&bucket=flows&precision=ns",
                                     data="\n".join(lines).encode(), headers={"Authorization": f"Token {TEST_TOKEN}"})
    assert (await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)).status == 204
    await store.write(FlowBatch.from_records(envelope(T1), [
        rec(T1, "veth0", "egress", 58, "10.0.0.1", 0, "10.0.0.2", 0, 2, 236),
        rec(T1, "veth0", "egress", 17, "10.0.0.1", 5000, "10.0.0.2", 53, 4, 400)]))
    rows = await influx_history(store, HistoryQuery(**ALL, proto=58))
    assert [(r["proto"], r["packets"], r["bytes"]) for r in rows] == [("icmpv6", 5, 590)]
    udp = await influx_history(store, HistoryQuery(**ALL, proto=17))
    assert [(r["proto"], r["packets"], r["bytes"]) for r in udp] == [("udp", 4, 400)]


def test_build_flux_text():
    flux, params = build_flux(HistoryQuery(since=T0, until=T1, port=443), "flows")
    assert flux == "\n".join([
        "from(bucket: p_bucket)",
        "  |> range(start: p_start, stop: p_stop)",
        "  |> filter(fn: (r) => r._measurement == p_measurement)",
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        "  |> filter(fn: (r) => r.src_port == p_port or r.dst_port == p_port)",
        '  |> keep(columns: ["_time", "_measurement", "host", "ifname", "direction", "proto", "src_ip", "src_port", '
        '"dst_ip", "dst_port", "packets", "bytes", "first_seen", "last_seen", "pod", "workload", "runtime", '
        '"process", "pid", "peer_process", "peer_pid"])',
    ])
    assert params["p_port"] == 443 and params["p_bucket"] == "flows" and "p_overflow" not in params
    flux, params = build_flux(HistoryQuery(since=T0, until=T1, iface="veth0"), "flows")
    assert flux.splitlines()[2:4] == [
        "  |> filter(fn: (r) => r._measurement == p_measurement or r._measurement == p_overflow)",
        "  |> filter(fn: (r) => r.ifname == p_iface)"]
    assert (params["p_overflow"], params["p_iface"]) == ("connstats_overflow", "veth0")


def test_the_verdict_filter_in_sql_and_flux():
    sql, params = build_sql(HistoryQuery(since=T0, until=T1, verdict="deny"))
    assert "verdict = :verdict" in sql and params["verdict"] == "deny" and "overflow" not in sql
    flux, params = build_flux(HistoryQuery(since=T0, until=T1, verdict="deny"), "flows")
    assert flux.splitlines()[2:4] == ["  |> filter(fn: (r) => r._measurement == p_measurement)",
                                      "  |> filter(fn: (r) => r.verdict == p_verdict)"]
    assert params["p_verdict"] == "deny"
    flux, params = build_flux(HistoryQuery(since=T0, until=T1, verdict=""), "flows")  # ungoverned: no tag
    assert flux.splitlines()[3] == "  |> filter(fn: (r) => not exists r.verdict)" and "p_verdict" not in params
    with pytest.raises(ConfigError, match="^--verdict 'maybe' is not allow, deny or none$"):
        HistoryQuery(since=T0, until=T1, verdict="maybe")


def test_aggregate_buckets_points_by_time():
    points = [{**C1, "proto": "udp", "_time": T0 + 5}, {**C1, "proto": "udp", "_time": T1 + 5}]
    rows = aggregate(points, HistoryQuery(**ALL, every=10 * SECOND))
    assert [(r["time"], r["packets"], r["bytes"]) for r in rows] == [(T0, 7, 700), (T1, 7, 700)]


# -- times and validation -----------------------------------------------------------------------


def test_parse_time():
    now = T0
    assert parse_time("15m", now) == T0 - 900 * SECOND
    assert parse_time("now", now) == T0
    assert parse_time("2023-11-14T22:13:20Z", now) == T0
    assert parse_time("2023-11-14T23:13:20.5+01:00", now) == T0 + SECOND // 2


@pytest.mark.parametrize("text, message", [
    ("yesterday", "'yesterday' is neither a duration (15m) nor an RFC 3339 time (2026-11-22T01:00:00Z)"),
    ("2023-11-14T22:13:20", "'2023-11-14T22:13:20' has no time zone; add Z or an offset like +01:00"),
])
def test_parse_time_errors(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_time(text, T0)
    assert str(caught.value) == message


@pytest.mark.parametrize("changes, message", [
    ({"group_by": "host"}, "--group-by 'host' is not one of connection, port, iface, proto, container, "
                           "connection_owner, service, pod, workload, process"),
    ({"port": 70000}, "--port 70000 is not between 0 and 65535"),
    ({"until": ALL["since"]}, "--until must be later than --since"),
    ({"every": 0}, "--every must be a positive duration, e.g. 1m"),
])
def test_query_validation(changes, message):
    with pytest.raises(ConfigError) as caught:
        HistoryQuery(**{**ALL, **changes})
    assert str(caught.value) == message


@pytest.mark.parametrize("src, dst, port, tag", [
    (40000, 443, 443, "443"), (53, 40000, 53, "53"), (22, 80, 22, "22"), (0, 0, 0, "other"),
    (40000, 8080, 8080, "other"), (8080, 40000, 8080, "other"),
])
async def test_the_service_port_is_one_rule_for_history_and_influx(tmp_path, src, dst, port, tag):
    from connstats.sink.influx_store import service_port_tag

    store = SqliteStore(tmp_path / "flows.sqlite")
    await store.write(FlowBatch.from_records(envelope(T0), [
        rec(T0, "veth0", "egress", 6, "10.0.0.1", src, "10.0.0.2", dst, 1, 100)]))
    await store.close()
    [row] = sqlite_history(tmp_path / "flows.sqlite", HistoryQuery(**ALL, group_by="port"))
    assert (row["port"], service_port_tag(src, dst)) == (port, tag)


def test_the_history_columns_are_fields_of_a_record_by_name():
    """Declared once: every column history reads (SQL keys, Flux columns, values) is a field of
    FlowRecord, the SQLite table's columns and the points' tags and fields."""
    from connstats.probe.contract.wire import RECORD_FIELDS
    from connstats.sink import history, influx_store
    from connstats.sink.sqlite_store import _COLUMNS

    read = {*(k for keys in history.GROUPS.values() for k in keys), *history.VALUES} - set(history.DERIVED)
    assert read - {"host"} <= set(RECORD_FIELDS) and read <= set(_COLUMNS)  # host: the envelope's
    flux = {*history._FLUX_COLUMNS, *history._FLUX_CONTAINER_COLUMNS} - {"_time", "_measurement"}
    assert flux <= {"host", *influx_store.TAGS, *influx_store.FIELDS}
    assert set(history._SQL_KEYS) - set(history.DERIVED) == {
        k for k in history._SQL_KEYS.values() if k in {"host", *RECORD_FIELDS}}


# -- quality: RTT, retransmits and drops (issue 20) ----------------------------------------------

NO_QUALITY = {"rtt_min_us": 0, "rtt_avg_us": 0, "rtt_max_us": 0, "retransmits": 0, "drop_packets": 0,
              "drop_bytes": 0, "drop_reason": ""}
CONNECTION = ("ifname", "direction", "proto", "src_ip", "src_port", "dst_ip", "dst_port")


def q_row(q: dict, **values) -> dict:
    return {**{k: q[k] for k in CONNECTION}, **NO_WHO, **NO_QUALITY, **values}


# Q1: 10 packets at 200 us and 30 at 400 us: (2000 + 12000) / 40 = 350 us; its reasons: 2 NETFILTER_DROP
# against 1 TCP_INVALID_SEQUENCE.
QR1 = q_row(dict(Q1, proto="tcp"), packets=40, bytes=4000, first_seen=T0 + 1, last_seen=T1 + 2, rtt_min_us=50,
            rtt_avg_us=350, rtt_max_us=900, retransmits=7, drop_packets=3, drop_bytes=300, drop_reason="NETFILTER_DROP")
QR2 = q_row(dict(Q2, proto="udp"), packets=4, bytes=400, first_seen=T0 + 1, last_seen=T0 + 2, drop_packets=3,
            drop_bytes=300, drop_reason="SOCKET_RCVBUFF")
QR3 = q_row(dict(Q3, proto="tcp"), packets=2, bytes=5000, first_seen=T1 + 1, last_seen=T1 + 2)


def drops_row(ifname: str, packets: int, nbytes: int) -> dict:
    return {"ifname": ifname, "direction": "", "proto": "(drops)", "src_ip": "(drops)", "src_port": 0,
            "dst_ip": "(drops)", "dst_port": 0, **NO_WHO, **NO_QUALITY, "packets": 0, "bytes": 0, "first_seen": None,
            "last_seen": None, "drop_packets": packets, "drop_bytes": nbytes, "drop_reason": "NO_SOCKET"}


D0, D1 = drops_row("veth0", 5, 500), drops_row("veth1", 1, 60)


def iface(ifname: str, direction: str, **values) -> dict:
    return {"ifname": ifname, "direction": direction, **NO_QUALITY, **values}


QUALITY_CASES = {
    "by bytes": (dict(quality=True), [QR3, QR1, QR2, D0, D1]),
    "by rtt: the greatest rtt_max_us": (dict(sort="rtt"), [QR1, QR3, QR2, D0, D1]),
    "by retransmits": (dict(sort="retransmits"), [QR1, QR3, QR2, D0, D1]),
    "by drops: a tie goes by bytes": (dict(sort="drops", top=3), [D0, QR1, QR2]),
    "a direction filter leaves the drops of no record out": (dict(quality=True, direction="egress"), [QR1, QR2]),
    "a port filter too": (dict(sort="drops", port=443), [QR1, QR3]),
    "device totals: drops of no record have no direction": (dict(quality=True, group_by="iface"), [
        iface("veth1", "ingress", packets=2, bytes=5000, first_seen=T1 + 1, last_seen=T1 + 2),
        iface("veth0", "egress", packets=44, bytes=4400, first_seen=T0 + 1, last_seen=T1 + 2, rtt_min_us=50,
              rtt_avg_us=350, rtt_max_us=900, retransmits=7, drop_packets=6, drop_bytes=600,
              drop_reason="SOCKET_RCVBUFF"),
        iface("veth0", "", packets=0, bytes=0, first_seen=None, last_seen=None, drop_packets=5, drop_bytes=500,
              drop_reason="NO_SOCKET"),
        iface("veth1", "", packets=0, bytes=0, first_seen=None, last_seen=None, drop_packets=1, drop_bytes=60,
              drop_reason="NO_SOCKET")]),
    "per bucket": (dict(sort="rtt", group_by="proto", every=10 * SECOND), [
        {"time": T0, "proto": "tcp", **NO_QUALITY, "packets": 10, "bytes": 1000, "first_seen": T0 + 1,
         "last_seen": T0 + 2, "rtt_min_us": 100, "rtt_avg_us": 200, "rtt_max_us": 300, "retransmits": 2,
         "drop_packets": 1, "drop_bytes": 100, "drop_reason": "TCP_INVALID_SEQUENCE"},
        {"time": T0, "proto": "udp", **NO_QUALITY, "packets": 4, "bytes": 400, "first_seen": T0 + 1,
         "last_seen": T0 + 2, "drop_packets": 3, "drop_bytes": 300, "drop_reason": "SOCKET_RCVBUFF"},
        {"time": T0, "proto": "(drops)", **NO_QUALITY, "packets": 0, "bytes": 0, "first_seen": None,
         "last_seen": None, "drop_packets": 5, "drop_bytes": 500, "drop_reason": "NO_SOCKET"},
        {"time": T1, "proto": "tcp", **NO_QUALITY, "packets": 32, "bytes": 8000, "first_seen": T1 + 1,
         "last_seen": T1 + 2, "rtt_min_us": 50, "rtt_avg_us": 400, "rtt_max_us": 900, "retransmits": 5,
         "drop_packets": 2, "drop_bytes": 200, "drop_reason": "NETFILTER_DROP"},
        {"time": T1, "proto": "(drops)", **NO_QUALITY, "packets": 0, "bytes": 0, "first_seen": None,
         "last_seen": None, "drop_packets": 1, "drop_bytes": 60, "drop_reason": "NO_SOCKET"}]),
}


@pytest.mark.parametrize("query, expected", QUALITY_CASES.values(), ids=QUALITY_CASES.keys())
async def test_quality_gives_the_same_rows_on_both_stores(flux_influx, tmp_path, query, expected):
    _, influx = flux_influx
    store = SqliteStore(tmp_path / "flows.sqlite")
    await write_quality(store)
    await store.close()
    await write_quality(influx)
    rows = sqlite_history(tmp_path / "flows.sqlite", HistoryQuery(**ALL, **query))
    assert rows == expected
    assert await influx_history(influx, HistoryQuery(**ALL, **query)) == expected


async def test_without_quality_the_rows_are_as_before(db):
    assert sqlite_history(db, HistoryQuery(**ALL)) == [C2, C3, C1, C4]


async def test_a_file_of_schema_4_reads_with_quality_as_nothing_known(tmp_path):
    path = tmp_path / "flows.sqlite"
    store = SqliteStore(path)
    await write_quality(store)
    await store.close()
    with sqlite3.connect(path) as db:  # what a sink of schema 4 left, not opened since
        db.execute("DROP TABLE drops")
        for column in NO_QUALITY:
            db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 4")
    assert sqlite_history(path, HistoryQuery(**ALL, sort="rtt")) == [
        {**row, **NO_QUALITY} for row in (QR3, QR1, QR2)]


def test_a_sort_and_quality_are_checked():
    with pytest.raises(ConfigError) as caught:
        HistoryQuery(**ALL, sort="latency")
    assert str(caught.value) == "--sort 'latency' is not one of bytes, rtt, retransmits, drops"
    with pytest.raises(ConfigError) as caught:
        HistoryQuery(**ALL, group_by="service", quality=True)
    assert str(caught.value) == "the service grouping has no quality columns; leave out --quality and --sort"
