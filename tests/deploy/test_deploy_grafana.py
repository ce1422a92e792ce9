"""deploy/grafana/: the dashboards and their provisioning.

The dashboards are checked three ways: against the structure Grafana's dashboard schema
requires for the schemaVersion they declare; for names (every measurement, field and tag a
Flux query names is one connstats writes, found by writing real rows through the real store;
every metric a PromQL query names is one a probe or sink registry exports); and by running
every Flux query, its variables substituted the way Grafana does, through influxdb-client
against the InfluxDB v2 test server (which checks Flux and runs the filters:
tests/fixtures/flux.py) after real rows were written through ``InfluxStore``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from connstats.probe.contract.flow_batch import FlowBatch
from connstats.probe.contract.record import DropCount, Envelope, FlowRecord, OverflowCount
from connstats.sink import influx_store
from connstats.sink.influx_store import InfluxConfig, InfluxStore
from tests.fixtures import flux
from tests.fixtures.influx import TEST_ORG, TEST_TOKEN, InfluxTestServer
from tests.fixtures.records import flow_record

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
FLOWS = json.loads((DASHBOARDS / "connstats-flows.json").read_text())
SELF = json.loads((DASHBOARDS / "connstats-self.json").read_text())

# -- the structure schemaVersion 36 requires ---------------------------------------------------
# From Grafana's dashboard kind (kinds/dashboard/dashboard_kind.cue, schema 0.0, whose
# `schemaVersion: uint16 | *36`): a field is required when it is neither optional (`?`) nor
# given a default; a field with a default may be left out, but when present has that type.
# (type, required) per key; a tuple of values is an enum.
DASHBOARD = {"schemaVersion": (int, True), "title": (str, False), "uid": (str, False),
             "style": (("light", "dark"), False), "editable": (bool, False),
             "graphTooltip": ((0, 1, 2), False), "timezone": (str, False), "tags": (list, False),
             "time": (dict, False), "timepicker": (dict, False), "refresh": (str, False),
             "panels": (list, False), "templating": (dict, False), "annotations": (dict, False),
             "links": (list, False), "version": (int, False), "liveNow": (bool, False),
             "fiscalYearStartMonth": (int, False), "description": (str, False)}
PANEL = {"type": (str, True), "id": (int, False), "title": (str, False), "description": (str, False),
         "datasource": (dict, False), "gridPos": (dict, False), "targets": (list, False),
         "transparent": (bool, False), "repeatDirection": (("h", "v"), False),
         "transformations": (list, False), "options": (dict, False), "fieldConfig": (dict, False)}
GRID_POS = {"h": (int, False), "w": (int, False), "x": (int, False), "y": (int, False)}
FIELD_CONFIG = {"defaults": (dict, True), "overrides": (list, True)}
TRANSFORMATION = {"id": (str, True), "options": (dict, True)}
VARIABLE = {"type": (("query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"), True),
            "name": (str, True), "hide": ((0, 1, 2), True),
            "state": (("NotStarted", "Loading", "Streaming", "Done", "Error"), True),
            "id": (str, False), "label": (str, False), "global": (bool, False),
            "skipUrlSync": (bool, False), "index": (int, False), "description": (str, False),
            "query": ((str, dict), False), "datasource": (dict, False)}
DATASOURCE_REF = {"type": (str, False), "uid": (str, False)}


def schema_errors(where: str, value: dict, schema: dict) -> list[str]:
    errors = [f"{where}: not an object"] if not isinstance(value, dict) else []
    for key, (kind, required) in schema.items() if not errors else ():
        if key not in value:
            errors += [f"{where}.{key}: required"] if required else []
        elif isinstance(kind, tuple) and not isinstance(kind[0], type):
            errors += [] if value[key] in kind else [f"{where}.{key}: {value[key]!r} not one of {kind}"]
        elif not isinstance(value[key], kind) or (kind is int and isinstance(value[key], bool)):
            errors.append(f"{where}.{key}: {type(value[key]).__name__}, expected {kind}")
    return errors


def dashboard_errors(dashboard: dict) -> list[str]:
    errors = schema_errors("dashboard", dashboard, DASHBOARD)
    for panel in dashboard.get("panels", []):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        errors += schema_errors(where, panel, PANEL)
        errors += schema_errors(f"{where}.gridPos", panel["gridPos"], GRID_POS)
        errors += grid_errors(where, panel["gridPos"])
        errors += schema_errors(f"{where}.fieldConfig", panel["fieldConfig"], FIELD_CONFIG)
        errors += schema_errors(f"{where}.datasource", panel["datasource"], DATASOURCE_REF)
        for transformation in panel["transformations"]:
            errors += schema_errors(f"{where}.transformations", transformation, TRANSFORMATION)
        errors += [f"{where}: a target is not an object" for t in panel["targets"] if not isinstance(t, dict)]
    for variable in dashboard.get("templating", {}).get("list", []):
        errors += schema_errors(f"variable {variable.get('name')}", variable, VARIABLE)
    return errors


def grid_errors(where: str, pos: dict) -> list[str]:
    """#GridPos: h > 0, 0 < w <= 24, 0 <= x < 24, y >= 0; and the panel fits the 24 columns."""
    ok = pos["h"] > 0 and 0 < pos["w"] <= 24 and 0 <= pos["x"] < 24 and pos["y"] >= 0 and pos["x"] + pos["w"] <= 24
    return [] if ok else [f"{where}.gridPos {pos} outside the 24-column grid"]


@pytest.mark.parametrize("dashboard", [FLOWS, SELF], ids=["flows", "self"])
def test_dashboard_has_the_structure_of_its_schema_version(dashboard):
    assert dashboard["schemaVersion"] == 36
    assert dashboard_errors(dashboard) == []
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert not overlapping([panel["gridPos"] for panel in dashboard["panels"]])


def overlapping(positions: list[dict]) -> list[tuple]:
    cells = {}
    for n, pos in enumerate(positions):
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                cells.setdefault((x, y), []).append(n)
    return [tuple(owners) for owners in cells.values() if len(owners) > 1]


def test_the_structure_check_finds_what_the_schema_forbids():
    broken = json.loads(json.dumps(FLOWS))
    del broken["schemaVersion"]
    broken["panels"][0]["gridPos"]["w"] = 25
    broken["panels"][1]["type"] = 7
    broken["templating"]["list"][1]["hide"] = 3
    assert dashboard_errors(broken) == [
        "dashboard.schemaVersion: required",
        "panel 1 'Bytes per interface and direction'.gridPos {'x': 0, 'y': 0, 'w': 25, 'h': 8} outside the 24-column grid",
        "panel 2 'Packets per interface and direction'.type: int, expected <class 'str'>",
        "variable host.hide: 3 not one of (0, 1, 2)",
    ]


# -- provisioning -------------------------------------------------------------------------------

def test_provisioning_names_the_data_sources_the_dashboards_use():
    sources = yaml.safe_load((PROVISIONING / "datasources" / "connstats.yaml").read_text())
    assert sources["apiVersion"] == 1
    provided = {(s["type"], s["uid"]) for s in sources["datasources"]}
    used = {(p["datasource"]["type"], p["datasource"]["uid"]) for d in (FLOWS, SELF) for p in d["panels"]}
    used |= {(v["datasource"]["type"], v["datasource"]["uid"])
             for d in (FLOWS, SELF) for v in d["templating"]["list"] if "datasource" in v}
    assert used == provided == {("influxdb", "connstats-influxdb"), ("prometheus", "connstats-prometheus")}
    influx = next(s for s in sources["datasources"] if s["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "Flux"
    assert influx["jsonData"]["defaultBucket"] == InfluxConfig(url="x", org="x", token="x").bucket


# -- names: only what connstats writes ----------------------------------------------------------

SECOND = 1_000_000_000
T0 = (time.time_ns() // (10 * SECOND) - 30) * 10 * SECOND  # 5 minutes ago, on a 10 s window
ENVELOPE = Envelope(host="node-1", boot_id="boot", interval_seq=1, interval_start=T0, interval_end=T0 + 10 * SECOND,
                    overflow=(OverflowCount(3, "veth0", "egress", 7, 700), OverflowCount(4, "eth0", "ingress", 2, 180)),
                    drops=(DropCount(4, "eth0", "NO_SOCKET", 6, 360), DropCount(3, "veth0", "NETFILTER_DROP", 2, 120)))
RECORDS = [
    flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=3, ifname="veth0", direction="egress",
                family=4, proto=6, src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=51234, dst_port=443,
                packets=12, bytes=3456, first_seen=T0 + 5, last_seen=T0 + 9, tcp_flags=0x1B,
                container_id="c0ffee", container_name="web-1", container_image="nginx:1.27"),
    flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=3, ifname="veth0",
                direction="ingress", family=4, proto=6, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=443,
                dst_port=51234, packets=10, bytes=20_000, first_seen=T0 + 5, last_seen=T0 + 9, tcp_flags=0x1B,
                container_id="c0ffee", container_name="web-1", container_image="nginx:1.27"),
    flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=4, ifname="eth0", direction="egress",
                family=4, proto=17, src_ip="10.0.0.9", dst_ip="10.0.0.53", src_port=40000, dst_port=53,
                packets=3, bytes=240, first_seen=T0 + 1, last_seen=T0 + 2, tcp_flags=0),
    flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=4, ifname="eth0", direction="ingress",
                family=6, proto=6, src_ip="fd00::2", dst_ip="fd00::1", src_port=22, dst_port=60000, packets=5,
                bytes=900, first_seen=T0 + 1, last_seen=T0 + 3, tcp_flags=0x12),
]
# With the policy issue's `verdict` field (probe/contract/record.py), two connections get a verdict.
HAS_VERDICT = "verdict" in {f.name for f in dataclasses.fields(FlowRecord)}
VERDICTS = {0: "allow", 2: "deny"} if HAS_VERDICT else {}
RECORDS = [dataclasses.replace(r, verdict=VERDICTS[i]) if i in VERDICTS else r for i, r in enumerate(RECORDS)]
# veth0 is a pod's; the first two connections (its egress and ingress) and the host's DNS query
# name their programs.
WHO = {0: dict(pod="shop/web-1", workload="web", runtime="containerd", process="nginx", pid=42,
               peer_process="curl", peer_pid=7),
       1: dict(pod="shop/web-1", workload="web", runtime="containerd", process="nginx", pid=42),
       2: dict(process="curl", pid=900)}
RECORDS = [dataclasses.replace(r, **WHO.get(i, {})) for i, r in enumerate(RECORDS)]
# How well (issue 20): the web connection's RTT, retransmits and a drop; the DNS query's full socket buffer;
# ssh's RTT.
QUALITY = {0: dict(rtt_min_us=800, rtt_avg_us=1500, rtt_max_us=2500, retransmits=2, drop_packets=1, drop_bytes=60,
                   drop_reason="TCP_INVALID_SEQUENCE"),
           2: dict(drop_packets=3, drop_bytes=240, drop_reason="SOCKET_RCVBUFF"),
           3: dict(rtt_min_us=20_000, rtt_avg_us=30_000, rtt_max_us=40_000)}
RECORDS = [dataclasses.replace(r, **QUALITY.get(i, {})) for i, r in enumerate(RECORDS)]
# The next interval: the first connection again (a second time window for the panels).
LATER = Envelope(host="node-1", boot_id="boot", interval_seq=2, interval_start=T0 + 10 * SECOND,
                 interval_end=T0 + 20 * SECOND)
LATER_RECORDS = [dataclasses.replace(RECORDS[0], interval_start=T0 + 10 * SECOND, interval_end=T0 + 20 * SECOND,
                                     packets=4, bytes=1000, rtt_max_us=9000, retransmits=5, drop_packets=0,
                                     drop_bytes=0, drop_reason="")]
FLUX_COLUMNS = {"_measurement", "_field", "_value", "_time", "_start", "_stop"}
# Written once the policy issue lands; a query may name them only behind `exists r.<name>`.
PENDING_TAGS = {"verdict"}


@pytest.fixture
async def written():
    """The InfluxDB v2 test server (running Flux) holding two intervals, written by InfluxStore."""
    server = InfluxTestServer(flux=True).start()
    store = InfluxStore(InfluxConfig(url=server.url, org=TEST_ORG, token=TEST_TOKEN))
    try:
        await store.write(FlowBatch.from_records(ENVELOPE, RECORDS))
        await store.write(FlowBatch.from_records(LATER, LATER_RECORDS))
        yield server, store
    finally:
        await store.close()
        server.stop()


def written_names(server) -> dict[str, set[str]]:
    points = server.points()
    return {"measurements": {p.measurement for p in points},
            "fields": {f for p in points for f in p.fields},
            "tags": {t for p in points for t in p.tags}}


async def test_the_store_writes_the_names_its_constants_declare(written):
    server, _ = written
    names = written_names(server)
    assert names["measurements"] == {influx_store.MEASUREMENT, influx_store.OVERFLOW_MEASUREMENT,
                                     influx_store.DROP_MEASUREMENT}
    assert names["tags"] == set(influx_store.TAGS) | {"host", "service_port"}
    assert names["fields"] == set(influx_store.FIELDS)


def flux_queries(dashboard: dict) -> list[tuple[str, str]]:
    queries = [(p["title"], t["query"]) for p in dashboard["panels"] for t in p["targets"]]
    return queries + [(f"variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"]
                      if v["type"] == "query"]


def flux_names(query: str) -> dict[str, set[str]]:
    """Measurements, fields and columns (tags) a Flux query names (once Grafana substituted it)."""
    toks = flux.check(grafana_substitute(query))
    texts = [t.text for t in toks]
    names = {"measurements": set(), "fields": set(), "columns": set(), "guarded": set()}
    for i, tok in enumerate(toks):
        if tok.text == "r" and texts[i + 1:i + 2] == ["."]:
            column = texts[i + 2]
            names["columns"].add(column)
            if texts[i + 3:i + 4] == ["=="] and toks[i + 4].kind == "string":
                key = {"_measurement": "measurements", "_field": "fields"}.get(column)
                if key:
                    names[key].add(toks[i + 4].text)
            if texts[i - 1:i] == ["exists"]:
                names["guarded"].add(column)
        if tok.text in ("columns", "rowKey", "columnKey") and texts[i + 1:i + 3] == [":", "["]:
            end = texts.index("]", i)
            names["columns"] |= {t.text for t in toks[i + 3:end] if t.kind == "string"}
        if tok.text == "tag" and texts[i + 1:i + 2] == [":"]:
            names["columns"].add(toks[i + 2].text)
    return names


@pytest.mark.parametrize("title, query", flux_queries(FLOWS), ids=[t for t, _ in flux_queries(FLOWS)])
async def test_flux_query_names_only_what_connstats_writes(written, title, query):
    server, _ = written
    written_now = written_names(server)
    names = flux_names(query)
    assert names["measurements"] <= written_now["measurements"]
    assert names["fields"] <= written_now["fields"]
    unknown = names["columns"] - written_now["tags"] - written_now["fields"] - FLUX_COLUMNS
    assert unknown <= PENDING_TAGS
    assert unknown <= names["guarded"], f"{title}: {unknown} is not written yet; guard it with `exists r.<name>`"


def test_only_the_verdict_panel_waits_for_a_pending_tag():
    pending = {title for title, query in flux_queries(FLOWS) if flux_names(query)["columns"] & PENDING_TAGS}
    assert pending == {"Policy verdicts"}


# -- every Flux query runs, with Grafana's substitutions ----------------------------------------

ALL = ".*"


def grafana_substitute(query: str, selected: dict[str, list[str]] | None = None) -> str:
    """What Grafana sends: its macros v.timeRangeStart/Stop and v.windowPeriod as Flux
    literals, ${bucket} as the constant, ${name:regex} as (a|b) of regex-escaped values, or
    the variable's custom all value (".*") when All is selected."""
    selected = selected or {}
    text = (query.replace("v.timeRangeStart", rfc3339(T0 - 3600 * SECOND))
            .replace("v.timeRangeStop", rfc3339(T0 + 3600 * SECOND)).replace("v.windowPeriod", "10000ms")
            .replace("${bucket}", "connstats"))

    def regex(match: re.Match) -> str:
        values = selected.get(match.group(1))
        # Grafana's escapeRegex (packages/grafana-data/src/text/string.ts) escapes "/" too, which
        # ends a Flux regex literal (a pod is "<namespace>/<name>")
        return "(" + "|".join(re.escape(v).replace("/", "\\/") for v in values) + ")" if values else ALL

    return re.sub(r"\$\{(\w+):regex\}", regex, text)


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // SECOND, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_no_variable_left(query: str) -> None:
    assert "${" not in query and "$__" not in query and "v." not in query


async def run(store: InfluxStore, query: str) -> list[dict]:
    assert_no_variable_left(query)
    return await store.query(query)


@pytest.mark.parametrize("title, query", flux_queries(FLOWS), ids=[t for t, _ in flux_queries(FLOWS)])
async def test_flux_query_runs_against_the_influxdb_api(written, title, query):
    server, store = written
    await run(store, grafana_substitute(query))
    await run(store, grafana_substitute(query, {"host": ["node-1"], "iface": ["veth0", "eth0"],
                                                 "container": ["web-1"]}))
    assert [q["query"] for q in server.queries][-1].startswith(("from(bucket: \"connstats\")", "import"))


def panel_query(title: str) -> str:
    (query,) = [q for t, q in flux_queries(FLOWS) if t == title]
    return query


W1, W2 = (datetime.fromtimestamp(T0 // SECOND + s, timezone.utc) for s in (10, 20))  # window stops


def series(rows: list[dict], *columns: str) -> list[tuple]:
    return [tuple(row[c] for c in columns) for row in rows]


def in_order(title: str) -> bool:
    """Top panels answer one table in their order; others one table per series, in any order."""
    return title.startswith("Top ")


def per_second(count: int) -> float:
    """A count in one 10 s window (v.windowPeriod = 10000ms) as the panels show it."""
    return count / 10.0


# Panel, variables selected (none: All), the columns shown, and exactly what the panel gets.
PANEL_RESULTS = {
    "every device": ("Bytes per interface and direction", {}, ("ifname", "direction", "_time", "_value"), [
        ("veth0", "egress", W1, per_second(3456 + 700)), ("veth0", "egress", W2, per_second(1000)),
        ("veth0", "ingress", W1, per_second(20_000)), ("eth0", "egress", W1, per_second(240)),
        ("eth0", "ingress", W1, per_second(900 + 180))]),
    "packets": ("Packets per interface and direction", {}, ("ifname", "direction", "_time", "_value"), [
        ("veth0", "egress", W1, per_second(12 + 7)), ("veth0", "egress", W2, per_second(4)),
        ("veth0", "ingress", W1, per_second(10)), ("eth0", "egress", W1, per_second(3)),
        ("eth0", "ingress", W1, per_second(5 + 2))]),
    "one device": ("Bytes per interface and direction", {"iface": ["eth0"]}, ("ifname", "direction", "_value"), [
        ("eth0", "egress", per_second(240)), ("eth0", "ingress", per_second(1080))]),
    "another host": ("Bytes per interface and direction", {"host": ["node-2"]}, ("ifname",), []),
    "containers": ("Bytes per container", {}, ("container_name", "direction", "_time", "_value"), [
        ("web-1", "egress", W1, per_second(3456)), ("web-1", "egress", W2, per_second(1000)),
        ("web-1", "ingress", W1, per_second(20_000))]),
    "service ports": ("Top service ports", {}, ("proto", "service_port", "_value"), [
        ("tcp", "443", 3456 + 20_000 + 1000), ("tcp", "22", 900), ("udp", "53", 240)]),
    "connections": ("Top connections", {}, ("ifname", "direction", "src_ip", "src_port", "dst_port", "bytes", "packets"), [
        ("veth0", "ingress", "10.0.0.1", 443, 51234, 20_000, 10), ("veth0", "egress", "10.0.0.2", 51234, 443, 4456, 16),
        ("eth0", "ingress", "fd00::2", 22, 60000, 900, 5), ("eth0", "egress", "10.0.0.9", 40000, 53, 240, 3)]),
    "pods": ("Bytes per pod", {}, ("pod", "direction", "_time", "_value"), [
        ("shop/web-1", "egress", W1, per_second(3456)), ("shop/web-1", "egress", W2, per_second(1000)),
        ("shop/web-1", "ingress", W1, per_second(20_000))]),
    "one pod": ("Bytes per pod", {"pod": ["shop/web-1"]}, ("pod", "direction", "_value"), [
        ("shop/web-1", "egress", per_second(3456)), ("shop/web-1", "egress", per_second(1000)),
        ("shop/web-1", "ingress", per_second(20_000))]),
    "another pod": ("Bytes per pod", {"pod": ["shop/db-0"]}, ("pod",), []),
    "processes": ("Top processes", {}, ("process", "_value"), [("nginx", 3456 + 20_000 + 1000), ("curl", 240)]),
    "overflow": ("Overflow (flow map full)", {}, ("ifname", "direction", "_time", "_value"), [
        ("veth0", "egress", W1, per_second(7)), ("eth0", "ingress", W1, per_second(2))]),
    "verdicts": ("Policy verdicts", {}, ("verdict", "direction", "_time", "_value"), [
        ("allow", "egress", W1, per_second(12)), ("allow", "egress", W2, per_second(4)),
        ("deny", "egress", W1, per_second(3))] if HAS_VERDICT else []),
    "rtt": ("Round-trip time (max)", {}, ("ifname", "_time", "_value"), [
        ("veth0", W1, 2.5), ("veth0", W2, 9.0), ("eth0", W1, 40.0)]),
    "rtt of one device": ("Round-trip time (max)", {"iface": ["veth0"]}, ("ifname", "_value"), [
        ("veth0", 2.5), ("veth0", 9.0)]),
    "retransmits": ("TCP retransmits", {}, ("ifname", "_time", "_value"), [
        ("veth0", W1, per_second(2)), ("veth0", W2, per_second(5))]),
    "drops by reason, of connections and of none": ("Drops by reason", {}, ("drop_reason", "_time", "_value"), [
        ("NETFILTER_DROP", W1, per_second(2)), ("NO_SOCKET", W1, per_second(6)),
        ("SOCKET_RCVBUFF", W1, per_second(3)), ("TCP_INVALID_SEQUENCE", W1, per_second(1))]),
    "drops of one device": ("Drops by reason", {"iface": ["eth0"]}, ("drop_reason", "_value"), [
        ("NO_SOCKET", per_second(6)), ("SOCKET_RCVBUFF", per_second(3))]),
}


@pytest.mark.parametrize("title, selected, columns, expected", PANEL_RESULTS.values(), ids=PANEL_RESULTS.keys())
async def test_panel_gets_exactly_what_was_written(written, title, selected, columns, expected):
    _, store = written
    rows = await run(store, grafana_substitute(panel_query(title), selected))
    got = series(rows, *columns)
    assert got == expected if in_order(title) else sorted(got) == sorted(expected)


@pytest.fixture
async def written_real():
    """A real InfluxDB 2.x (INFLUXDB_V2_URL, _ORG, _TOKEN; the bucket must exist) holding the
    same two intervals under a host name of this run's own."""
    if not os.environ.get("INFLUXDB_V2_URL"):
        pytest.skip("INFLUXDB_V2_URL is not set; set it, INFLUXDB_V2_ORG and INFLUXDB_V2_TOKEN to test a real InfluxDB 2.x")
    host = f"deploy-test-{uuid.uuid4().hex[:12]}"
    store = InfluxStore(InfluxConfig.from_env())
    try:
        await store.write(FlowBatch.from_records(dataclasses.replace(ENVELOPE, host=host), RECORDS))
        await store.write(FlowBatch.from_records(dataclasses.replace(LATER, host=host), LATER_RECORDS))
        yield host, store
    finally:
        await store.close()


@pytest.mark.parametrize("title, selected, columns, expected", PANEL_RESULTS.values(), ids=PANEL_RESULTS.keys())
async def test_panel_gets_exactly_what_was_written_on_a_real_influxdb(written_real, title, selected, columns,
                                                                      expected):
    host, store = written_real
    query = grafana_substitute(panel_query(title), {"host": [host], **selected})
    query = query.replace('from(bucket: "connstats")', f'from(bucket: "{store.config.bucket}")')
    got = series(await run(store, query), *columns)
    assert got == expected if in_order(title) else sorted(got) == sorted(expected)


async def test_variables_list_the_written_tag_values(written):
    _, store = written
    values = {}
    for variable in ("host", "iface", "container", "pod"):
        rows = await run(store, grafana_substitute(panel_query(f"variable {variable}")))
        values[variable] = [row["_value"] for row in rows]
    assert values == {"host": ["node-1"], "iface": ["eth0", "veth0"], "container": ["web-1"], "pod": ["shop/web-1"]}


async def test_the_test_server_says_what_it_cannot_run(written):
    _, store = written
    with pytest.raises(Exception) as caught:
        await store.query('from(bucket: "b") |> range(start: -1h) |> drop(columns: ["_value"])')
    assert "501" in str(caught.value) and "drop is checked but not run by the test server" in str(caught.value)


@pytest.mark.parametrize("query, error", [
    ('from(bucket: "${bucket}") |> range(start: -1h)', "undefined identifier bucket"),
    ('from(bucket: "b") |> range(start: v.timeRangeStart)', "undefined identifier v"),
    ('from(bucket: "b") |> range(start: -1h) |> median()', "undefined identifier median"),
    ('from(bucket: "b") |> range(start: -1h', "unclosed '('"),
    ('schema.tagValues(bucket: "b", tag: "host")', "undefined identifier schema"),
    ('from("b")', "arguments must be named"),
    ('from(bucket: "b") |> range(start: -1h) |> filter(fn: (r) => r.host =~ /^${host:regex}$/)',
     "undefined identifier host:regex"),
])
async def test_the_test_server_refuses_what_influxdb_would_not_compile(written, query, error):
    server, store = written
    with pytest.raises(Exception) as caught:
        await store.query(query)
    assert "400" in str(caught.value) and error in str(caught.value)


# -- PromQL: only metrics a probe or sink exports -----------------------------------------------

TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped sample


def exported_metrics() -> dict[str, set[str]]:
    """Sample names a probe and a sink export, with their label names: scraped from
    registries built in-process by their own collectors, after one interval and one lag read."""
    from prometheus_client.parser import text_string_to_metric_families

    from connstats.probe.contract import NatsOptions
    from connstats.probe.contract import OverflowCount as Overflow
    from connstats.probe.runtime.telemetry import Telemetry
    from connstats.sink.compose import SinkConfig, build_sink
    from tests.fixtures.metrics import FakeProbe, interval, poll, record, wired

    probe, probe_telemetry = FakeProbe(), Telemetry()
    wired(probe, probe_telemetry)
    probe.publish(interval(1, [record(3, "veth0", "egress", 5, 500, 1)],
                           overflow=[Overflow(3, "veth0", "egress", 1, 60)]), poll(1, 1, 0))
    sink = build_sink(SinkConfig(nats=NatsOptions(servers=("nats://127.0.0.1:1",)), store="sqlite::memory:"))
    sink.metrics.pending = sink.metrics.ack_pending = 0
    names: dict[str, set[str]] = {}
    for telemetry in (probe_telemetry, sink.config.telemetry):
        for family in text_string_to_metric_families(telemetry.exposition().decode()):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def promql_queries(dashboard: dict) -> list[tuple[str, str]]:
    queries = [(f"{p['title']} {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    return queries + [(f"variable {v['name']}", v["query"]["query"]) for v in dashboard["templating"]["list"]]


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses."""
    metrics = set(re.findall(r"\b(connstats_\w+)", expr))
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    labels |= set(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr))
    return metrics, labels


@pytest.fixture(scope="module")
def exported():
    return exported_metrics()


def test_the_exported_metrics_are_the_ones_the_self_dashboard_was_written_for(exported):
    assert {"connstats_packets_total", "connstats_map_capacity", "connstats_outbox_messages",
            "connstats_sink_consumer_pending", "connstats_sink_write_duration_seconds_bucket"} <= set(exported)
    assert exported["connstats_packets_total"] == {"iface", "direction"}
    # the policy counters are exported before any policy (0 per device and direction counted)
    assert exported["connstats_policy_packets_total"] == {"iface", "direction", "verdict"}
    assert exported["connstats_policy_dropped_packets_total"] == {"iface", "direction"}


@pytest.mark.parametrize("title, expr", promql_queries(SELF), ids=[t for t, _ in promql_queries(SELF)])
def test_promql_names_only_metrics_connstats_exports(exported, title, expr):
    metrics, labels = promql_names(expr)
    assert metrics and metrics <= set(exported), metrics - set(exported)
    allowed = TARGET_LABELS | {label for metric in metrics for label in exported[metric]}
    assert labels <= allowed, labels - allowed
    assert set(re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{", expr)) <= metrics  # every selector is a connstats metric


def test_the_self_dashboard_covers_what_the_issue_asks():
    used = set().union(*(promql_names(expr)[0] for _, expr in promql_queries(SELF)))
    assert {"connstats_packets_total", "connstats_bytes_total", "connstats_map_entries", "connstats_map_capacity",
            "connstats_outbox_messages", "connstats_overflow_packets_total", "connstats_outbox_dropped_records_total",
            "connstats_sink_dead_letters_total", "connstats_sink_consumer_pending",
            "connstats_policy_packets_total", "connstats_policy_dropped_packets_total"} <= used


def test_the_deployment_docs_describe_every_panel():
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    section = deployment[deployment.index("### Grafana dashboards"):deployment.index("### Checks")]
    described = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
    titles = {panel["title"] for dashboard in (FLOWS, SELF) for panel in dashboard["panels"]}
    assert titles - described == set()
