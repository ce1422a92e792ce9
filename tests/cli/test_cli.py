"""The command line with typer's CliRunner: parsing, configuration, rendering and one-line errors."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import threading
import time

import msgspec
import nats
import pytest
from typer.testing import CliRunner

from connstats.cli.config import Config, load_config, parse_store
from connstats.cli.doctor import Check, CheckFailed, effective_capabilities, run_checks
from connstats.cli.live import interval_summary
from connstats.cli.main import app
from connstats.cli.options import OutputFormat
from connstats.cli.render import Column, render, rfc3339
from connstats.probe.api.control import ControlService
from connstats.probe.contract import DropCount, Envelope, FlowBatch, NatsOptions
from connstats.probe.contract.errors import ConfigError
from connstats.sink.consumer import FlowConsumer
from connstats.sink.influx_store import InfluxConfig
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.control import SINCE, FakeDaemon, record
from tests.fixtures.history import C1, C2, C3, C4, write_all, write_pods, write_quality
from tests.fixtures.nats import MemoryStore, free_port, sample_envelope, sample_records
from tests.fixtures.store import consume_until, publish_batches
from tests.fixtures.wait import until_async

runner = CliRunner()


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No real config file, no real state directory, no InfluxDB."""
    for name in ("CONNSTATS_CONFIG", "CONNSTATS_NATS", "CONNSTATS_HOST", "CONNSTATS_STORE", "INFLUXDB_V2_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONNSTATS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("connstats.cli.config.DEFAULT_CONFIG_FILE", tmp_path / "no-config.toml")


def test_help_lists_every_command_in_order():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [line.split()[1] for line in result.stdout.splitlines()
                if line.startswith("│ ") and line[2] != " " and line.split()[1] != "--help"]
    assert commands == ["up", "probe", "sink", "attach", "detach", "list", "stats", "top", "history", "ui", "policy",
                        "alert", "alerts", "deadletter", "doctor", "reset"]


# -- configuration ----------------------------------------------------------------------------

TOML = """
host = "from-file"
[nats]
url = "nats://file:4222"
[probe]
ifaces = ["eth0", "eth1"]
interval = 2.5
[sink]
store = "sqlite:/file/flows.sqlite"
"""


def test_precedence_flag_env_file_default(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    config = load_config(path, env={"CONNSTATS_NATS": "nats://env:4222", "CONNSTATS_IFACE": "a, b"})
    assert config.nats_url("nats://flag:4222") == "nats://flag:4222"
    assert config.nats_url() == "nats://env:4222"
    assert config.get("iface", ["x"]) == ["x"]
    assert config.get("iface") == ["a", "b"]
    assert config.host() == "from-file"
    assert config.get("interval") == 2.5
    assert config.store_spec() == "sqlite:/file/flows.sqlite"
    empty = load_config(tmp_path / "absent.toml" if False else None, env={})
    assert empty.get("interval", None, 10.0) == 10.0


def test_nats_url_falls_back_to_the_file_up_writes(tmp_path):
    config = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path)}, None)
    assert config.nats_url() == "nats://127.0.0.1:4222"
    (tmp_path / "nats.url").write_text("nats://127.0.0.1:4333\n")
    assert config.nats_url() == "nats://127.0.0.1:4333"
    assert config.store_spec() == f"sqlite:{tmp_path / 'flows.sqlite'}"


def test_influxdb_url_in_the_environment_selects_influxdb():
    assert Config({}, {"INFLUXDB_V2_URL": "http://influx:8086"}, None).store_spec() == "influxdb"


def test_one_rule_picks_the_store_and_its_influxdb_settings(tmp_path):
    """``Config.store``: what up, sink, ui, history and policy learn all store to and read from."""
    env = {"CONNSTATS_STATE_DIR": str(tmp_path)}
    assert Config({}, env, None).store() == (f"sqlite:{tmp_path / 'flows.sqlite'}", None)
    assert Config({}, env, None).store("sqlite:/x.db", "http://flag:8086") == ("sqlite:/x.db", None)
    influx = {**env, "INFLUXDB_V2_URL": "http://v2:8086", "INFLUXDB_V2_ORG": "o", "INFLUXDB_V2_TOKEN": "t"}
    assert Config({}, influx, None).store() == ("influxdb", InfluxConfig("http://v2:8086", "o", "t", "connstats"))
    assert Config({}, {**influx, "CONNSTATS_STORE": "influx"}, None).store(None, None, None, "b")[1].bucket == "b"
    with pytest.raises(ConfigError) as caught:
        Config({}, env, None).store("influxdb:foo")
    assert str(caught.value) == "store 'influxdb:foo' is not sqlite:PATH or influxdb; check --store"


def test_bad_values_name_where_they_come_from(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[probe]\ninterval = "soon"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={}).get("interval")
    assert str(caught.value) == f"{path}: probe.interval: 'soon' is not a number; fix the setting"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"CONNSTATS_INTERVAL": "x"}).get("interval")
    assert str(caught.value) == "$CONNSTATS_INTERVAL: 'x' is not a number; fix the setting"


@pytest.mark.parametrize("spec, parsed", [("sqlite:/a/b.sqlite", ("sqlite", "/a/b.sqlite")),
                                          ("influxdb", ("influxdb", ""))])
def test_parse_store(spec, parsed):
    assert parse_store(spec) == parsed


# -- one-line errors, exit status 1 ------------------------------------------------------------


def assert_one_line_error(result, message: str) -> None:
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: {message}\n")


def test_missing_config_file(tmp_path):
    result = run("history", "--config", str(tmp_path / "nope.toml"))
    assert_one_line_error(result, f"config file {tmp_path / 'nope.toml'} does not exist; check --config")


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("host = \n")
    result = run("history", "--config", str(path))
    assert_one_line_error(result, f"config file {path} is not valid TOML (Invalid value (at line 1, column 8)); fix it")


@pytest.mark.parametrize("args, message", [
    (("--since", "yesterday"), "'yesterday' is neither a duration (15m) nor an RFC 3339 time (2026-11-22T01:00:00Z)"),
    (("--store", "mysql:x"), "store 'mysql:x' is not sqlite:PATH or influxdb; check --store"),
    (("--proto", "gre2"), "unknown protocol 'gre2'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (("--store", "sqlite:/nonexistent/flows.sqlite"),
     "no flow database at /nonexistent/flows.sqlite; start `connstats up` or `connstats sink`, or check --store"),
])
def test_history_errors(args, message):
    assert_one_line_error(run("history", *args), message)


def test_nats_unreachable_is_one_line():
    port = free_port()
    result = run("list", "--nats", f"nats://127.0.0.1:{port}")
    assert_one_line_error(result, f"cannot connect to NATS at nats://127.0.0.1:{port}: NoServersError; "
                                  "check the URL, that nats-server runs, and the credentials")


def test_no_probe_answering(nats_server):
    result = run("attach", "eth0", "--host", "ghost", "--nats", nats_server.url)
    assert_one_line_error(result, f"no probe answers for host 'ghost' on {nats_server.url}; start "
                                  "`connstats up` or `connstats probe` there, or check --host and --nats")


@pytest.mark.parametrize("args", [("attach",), ("attach", "eth0", "--direction", "sideways"),
                                  ("history", "--group-by", "host"), ("up", "--interval", "0")])
def test_usage_errors_exit_2(args):
    result = run(*args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr + result.stdout


# -- history through the command line ------------------------------------------------------------


@pytest.fixture
async def flows_db(tmp_path):
    store = SqliteStore(tmp_path / "flows.sqlite")
    await write_all(store)
    await store.close()
    return f"sqlite:{tmp_path / 'flows.sqlite'}"


def history_json(store: str, *args: str) -> list:
    result = run("history", "--store", store, "--since", "2023-11-14T00:00:00Z",
                 "--until", "2023-11-15T00:00:00Z", "--format", "json", *args)
    assert result.exit_code == 0, result.stderr
    return msgspec.json.decode(result.stdout)


def as_output(row: dict) -> dict:
    return {**row, "first_seen": rfc3339(row["first_seen"]), "last_seen": rfc3339(row["last_seen"])}


def test_history_json(flows_db):
    assert history_json(flows_db) == [as_output(r) for r in (C2, C3, C1, C4)]
    assert history_json(flows_db, "--port", "53", "--proto", "UDP") == [as_output(C1)]
    assert history_json(flows_db, "--group-by", "proto", "--every", "10s", "--top", "1") == [
        {"time": "2023-11-14T22:13:20.000000000Z", "proto": "tcp", "packets": 10, "bytes": 5000,
         "first_seen": "2023-11-14T22:13:20.000000001Z", "last_seen": "2023-11-14T22:13:20.000000002Z"},
        {"time": "2023-11-14T22:13:30.000000000Z", "proto": "tcp", "packets": 8, "bytes": 900,
         "first_seen": "2023-11-14T22:13:30.000000001Z", "last_seen": "2023-11-14T22:13:30.000000002Z"},
    ]


def test_history_table_and_csv(flows_db):
    common = ("history", "--store", flows_db, "--since", "2023-11-14T00:00:00Z", "--until", "2023-11-15T00:00:00Z")
    table = run(*common, "--top", "2")
    assert table.stdout == (
        "IFACE DIR PROTO SOURCE         DESTINATION    PKTS BYTES LAST SEEN\n"
        "veth0 out tcp   10.0.0.1:40000 10.0.0.3:443     10  4.9K 2023-11-14T22:13:20Z\n"
        "veth1 in  tcp   10.0.0.3:443   10.0.0.1:40000    8   900 2023-11-14T22:13:30Z\n")
    csv_out = run(*common, "--group-by", "iface", "--format", "csv")
    assert csv_out.stdout == (
        "ifname,direction,packets,bytes,first_seen,last_seen\n"
        "veth0,egress,17,5700,2023-11-14T22:13:20.000000001Z,2023-11-14T22:13:30.000000002Z\n"
        "veth1,ingress,8,900,2023-11-14T22:13:30.000000001Z,2023-11-14T22:13:30.000000002Z\n"
        "eth0,ingress,2,196,2023-11-14T22:13:30.000000001Z,2023-11-14T22:13:30.000000002Z\n")
    empty = run("history", "--store", flows_db, "--since", "1h")
    assert (empty.exit_code, empty.stdout) == (0, "no traffic in this range\n")


@pytest.fixture
async def quality_db(tmp_path):
    store = SqliteStore(tmp_path / "quality.sqlite")
    await write_quality(store)
    await store.close()
    return f"sqlite:{tmp_path / 'quality.sqlite'}"


def test_history_quality_sorts_and_columns(quality_db):
    common = ("history", "--store", quality_db, "--since", "2023-11-14T00:00:00Z", "--until", "2023-11-15T00:00:00Z")
    assert run(*common, "--sort", "rtt").stdout == (
        "IFACE DIR PROTO   SOURCE         DESTINATION    PKTS BYTES RTT AVG RTT MAX RETX DROPS REASON\n"
        "veth0 out tcp     10.0.0.1:40000 10.0.0.2:443     40  3.9K     0.3     0.9    7     3 NETFILTER_DROP\n"
        "veth1 in  tcp     10.0.0.3:443   10.0.0.1:40001    2  4.9K       -       -    0     0\n"
        "veth0 out udp     10.0.0.1:5000  10.0.0.2:53       4   400       -       -    0     3 SOCKET_RCVBUFF\n"
        "veth0 -   (drops) (drops)        (drops)           0     0       -       -    0     5 NO_SOCKET\n"
        "veth1 -   (drops) (drops)        (drops)           0     0       -       -    0     1 NO_SOCKET\n")
    assert run(*common, "--quality", "--group-by", "iface", "--format", "csv").stdout == (
        "ifname,direction,packets,bytes,first_seen,last_seen,rtt_min_us,rtt_avg_us,rtt_max_us,retransmits,"
        "drop_packets,drop_bytes,drop_reason\n"
        "veth1,ingress,2,5000,2023-11-14T22:13:30.000000001Z,2023-11-14T22:13:30.000000002Z,0,0,0,0,0,0,\n"
        "veth0,egress,44,4400,2023-11-14T22:13:20.000000001Z,2023-11-14T22:13:30.000000002Z,50,350,900,7,6,600,"
        "SOCKET_RCVBUFF\n"
        "veth0,,0,0,,,0,0,0,0,5,500,NO_SOCKET\n"
        "veth1,,0,0,,,0,0,0,0,1,60,NO_SOCKET\n")
    assert [(r["src_port"], r["retransmits"]) for r in history_json(quality_db, "--sort", "retransmits", "--top", "2")
            ] == [(40000, 7), (443, 0)]
    assert "rtt_max_us" not in history_json(quality_db)[0]  # without --quality, rows as before


@pytest.fixture
async def pods_db(tmp_path):
    store = SqliteStore(tmp_path / "pods.sqlite")
    await write_pods(store)
    await store.close()
    return f"sqlite:{tmp_path / 'pods.sqlite'}"


def test_history_by_pod_workload_and_process(pods_db):
    common = ("history", "--store", pods_db, "--since", "2023-11-14T00:00:00Z", "--until", "2023-11-15T00:00:00Z")
    assert run(*common).stdout == (
        "IFACE DIR PROTO SOURCE         DESTINATION    POD              PROCESS  PKTS BYTES LAST SEEN\n"
        "veth0 out tcp   10.0.0.1:40000 10.0.0.2:5432  shop/web-7d9f-x2 nginx      11  1.1K 2023-11-14T22:13:30Z\n"
        "veth1 out tcp   10.0.0.1:5432  10.0.0.2:40000 shop/db-0        postgres    4   400 2023-11-14T22:13:20Z\n"
        "veth0 out tcp   10.0.0.1:40001 10.0.0.2:443   shop/web-7d9f-x2 curl        3   300 2023-11-14T22:13:20Z\n"
        "eth0  out tcp   10.0.0.1:22    10.0.0.2:50000 -                sshd        2   200 2023-11-14T22:13:20Z\n"
        "eth0  out tcp   10.0.0.1:123   10.0.0.2:123   -                -           1   100 2023-11-14T22:13:20Z\n")
    assert run(*common, "--group-by", "pod").stdout == (
        "POD              WORKLOAD PKTS BYTES LAST SEEN\n"
        "shop/web-7d9f-x2 web        14  1.4K 2023-11-14T22:13:30Z\n"
        "shop/db-0        db          4   400 2023-11-14T22:13:20Z\n"
        "-                -           3   300 2023-11-14T22:13:20Z\n")
    assert run(*common, "--group-by", "process", "--workload", "web").stdout == (
        "PROCESS PKTS BYTES LAST SEEN\n"
        "-          6   600 2023-11-14T22:13:30Z\n"
        "nginx      5   500 2023-11-14T22:13:20Z\n"
        "curl       3   300 2023-11-14T22:13:20Z\n")
    assert run(*common, "--pod", "shop/web-*", "--process", "curl", "--format", "csv").stdout == (
        "ifname,direction,proto,src_ip,src_port,dst_ip,dst_port,pod,workload,runtime,process,pid,peer_process,"
        "peer_pid,packets,bytes,first_seen,last_seen\n"
        "veth0,egress,tcp,10.0.0.1,40001,10.0.0.2,443,shop/web-7d9f-x2,web,containerd,curl,4300,,0,3,300,"
        "2023-11-14T22:13:20.000000001Z,2023-11-14T22:13:20.000000002Z\n")
    assert history_json(pods_db, "--group-by", "workload", "--pod", "shop/*") == [
        {"workload": "web", "packets": 14, "bytes": 1400, "first_seen": "2023-11-14T22:13:20.000000001Z",
         "last_seen": "2023-11-14T22:13:30.000000002Z"},
        {"workload": "db", "packets": 4, "bytes": 400, "first_seen": "2023-11-14T22:13:20.000000001Z",
         "last_seen": "2023-11-14T22:13:20.000000002Z"}]
    assert history_json(pods_db, "--process", "nginx") == [{
        "ifname": "veth0", "direction": "egress", "proto": "tcp", "src_ip": "10.0.0.1", "src_port": 40000,
        "dst_ip": "10.0.0.2", "dst_port": 5432, "pod": "shop/web-7d9f-x2", "workload": "web", "runtime": "containerd",
        "process": "nginx", "pid": 4242, "peer_process": "postgres", "peer_pid": 77, "packets": 5, "bytes": 500,
        "first_seen": "2023-11-14T22:13:20.000000001Z", "last_seen": "2023-11-14T22:13:20.000000002Z"}]


# -- control commands against a control service in its own thread --------------------------------


@pytest.fixture
def fake_probe(nats_server):
    """A ControlService on a FakeDaemon, in a thread with its own event loop (CliRunner runs asyncio.run)."""
    daemon = FakeDaemon()
    loop = asyncio.new_event_loop()
    service = ControlService(daemon, NatsOptions(servers=(nats_server.url,)), "node-1")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(10)
    try:
        yield daemon, ("--host", "node-1", "--nats", nats_server.url)
    finally:
        asyncio.run_coroutine_threadsafe(service.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_attach_list_stats_detach(fake_probe):
    daemon, target = fake_probe
    assert run("attach", "veth0", *target).stdout == "attached veth0 (ifindex 3, veth, direction inverted)\n"
    assert run("attach", "eth0", "--direction", "normal", *target).stdout == \
        "attached eth0 (ifindex 4, device, direction normal)\n"
    since = rfc3339(SINCE, digits=0)
    assert run("list", *target).stdout == (
        "IFACE IFINDEX KIND MODE   DIRECTION SINCE\n"
        f"veth0       3 veth auto   inverted  {since}\n"
        f"eth0        4      normal normal    {since}\n")
    listed = msgspec.json.decode(run("list", "--format", "json", *target).stdout)
    assert [(d["name"], d["direction"], d["since"]) for d in listed] == [
        ("veth0", "inverted", rfc3339(SINCE)), ("eth0", "normal", rfc3339(SINCE))]
    assert run("stats", *target).stdout == (
        "3 connections, 8 packets, 1300 bytes so far this interval\n"
        "IFACE/CTR DIR PROTO SOURCE        DESTINATION PKTS BYTES\n"
        "eth0      out udp   10.0.0.1:1001 10.0.0.2:53    5   900\n"
        "web       out udp   10.0.0.1:1002 10.0.0.2:53    2   300\n"
        "web       out udp   10.0.0.1:1000 10.0.0.2:53    1   100\n")
    stats_json = msgspec.json.decode(run("stats", "veth0", "--format", "json", *target).stdout)
    assert [(r["src_port"], r["packets"], r["bytes"], r["container_name"]) for r in stats_json] == [
        (1002, 2, 300, "web"), (1000, 1, 100, "web")]
    assert run("detach", "veth0", *target).stdout == "detached veth0 (ifindex 3, veth, direction inverted)\n"


def test_stats_shows_pod_and_process_columns_only_when_some_row_has_one(fake_probe):
    daemon, target = fake_probe
    web = dict(pod="shop/web-7d9f-x2", workload="web", runtime="containerd")
    daemon.records = [record("veth0", 1000, 1, 100, **web, process="nginx", pid=42, peer_process="curl", peer_pid=7),
                      record("veth0", 1002, 2, 300, **web), record("eth0", 1001, 5, 900, process="sshd", pid=1)]
    run("attach", "veth0", *target)
    run("attach", "eth0", *target)
    assert run("stats", *target).stdout == (
        "3 connections, 8 packets, 1300 bytes so far this interval\n"
        "IFACE/CTR DIR PROTO SOURCE        DESTINATION PKTS BYTES POD              PROCESS\n"
        "eth0      out udp   10.0.0.1:1001 10.0.0.2:53    5   900                  sshd\n"
        "web       out udp   10.0.0.1:1002 10.0.0.2:53    2   300 shop/web-7d9f-x2\n"
        "web       out udp   10.0.0.1:1000 10.0.0.2:53    1   100 shop/web-7d9f-x2 nginx\n")
    assert run("stats", "eth0", *target).stdout == (
        "1 connections, 5 packets, 900 bytes so far this interval\n"
        "IFACE/CTR DIR PROTO SOURCE        DESTINATION PKTS BYTES PROCESS\n"
        "eth0      out udp   10.0.0.1:1001 10.0.0.2:53    5   900 sshd\n")
    rows = msgspec.json.decode(run("stats", "--format", "json", *target).stdout)
    assert [{k: r[k] for k in ("src_port", "pod", "workload", "runtime", "process", "pid", "peer_process",
                               "peer_pid")} for r in rows] == [
        {"src_port": 1001, "pod": "", "workload": "", "runtime": "", "process": "sshd", "pid": 1,
         "peer_process": "", "peer_pid": 0},
        {"src_port": 1002, **web, "process": "", "pid": 0, "peer_process": "", "peer_pid": 0},
        {"src_port": 1000, **web, "process": "nginx", "pid": 42, "peer_process": "curl", "peer_pid": 7}]
    csv_header = run("stats", "--format", "csv", *target).stdout.splitlines()[0]
    assert csv_header.endswith(",container_name,verdict,pod,workload,runtime,process,pid,peer_process,peer_pid")


def test_top_shows_pod_and_process_columns_only_when_some_row_has_one():
    env = Envelope("node-1", "b", 3, SINCE, SINCE + 5 * 10**9)
    plain = [record("eth0", 1001, 5, 900)]
    assert "POD" not in interval_summary(FlowBatch.from_records(env, plain))
    named = plain + [record("veth0", 1000, 1, 100, pod="shop/web-1", workload="web", runtime="containerd",
                            process="nginx", pid=42)]
    assert interval_summary(FlowBatch.from_records(env, named)).splitlines()[2:] == [
        "IFACE/CTR DIR PROTO SOURCE        DESTINATION PKTS BYTES POD        PROCESS",
        "eth0      out udp   10.0.0.1:1001 10.0.0.2:53    5   900",
        "web       out udp   10.0.0.1:1000 10.0.0.2:53    1   100 shop/web-1 nginx"]


def test_top_shows_rtt_retransmits_and_drops_only_when_some_row_has_one():
    env = Envelope("node-1", "b", 3, SINCE, SINCE + 5 * 10**9)
    plain = [record("eth0", 1001, 5, 900)]
    assert "RTT" not in interval_summary(FlowBatch.from_records(env, plain))
    slow = plain + [record("eth0", 1000, 40, 60000, rtt_max_us=123_456, retransmits=3),
                    record("eth0", 1002, 2, 120, drop_packets=7, drop_reason="SOCKET_RCVBUFF")]
    env = dataclasses.replace(env, drops=(DropCount(2, "eth0", "NO_SOCKET", 9, 540),))
    text = interval_summary(FlowBatch.from_records(env, slow))
    assert text.splitlines()[0].endswith("3 connections, 47 packets, 59.6KB, 9 dropped outside connections")
    assert text.splitlines()[2:] == [
        "IFACE/CTR DIR PROTO SOURCE        DESTINATION PKTS BYTES   RTT RETX DROPS",
        "eth0      out udp   10.0.0.1:1000 10.0.0.2:53   40 58.6K 123.4    3     0",
        "eth0      out udp   10.0.0.1:1001 10.0.0.2:53    5   900     -    0     0",
        "eth0      out udp   10.0.0.1:1002 10.0.0.2:53    2   120     -    0     7"]
    assert max(len(line) for line in text.splitlines()[2:]) < 80


def test_control_errors_are_one_line(fake_probe):
    daemon, target = fake_probe
    assert_one_line_error(run("attach", "nope0", *target), "no network interface 'nope0'; see `ip link`")
    assert_one_line_error(run("detach", "eth0", *target), "'eth0' is not attached; see `connstats list`")
    assert_one_line_error(run("stats", "eth9", *target), "'eth9' is not attached; see `connstats list`")


# -- the renderer, top's assembler, doctor's report --------------------------------------------------


def test_render_formats():
    rows = [{"name": "a", "n": 5, "t": SINCE}, {"name": "bbbbbbbbbbbb", "n": 12345, "t": 0}]
    columns = [Column("name", "NAME", width=6), Column("n", "N", "int"), Column("t", "T", "time")]
    out = io.StringIO()
    render(rows, columns, OutputFormat.table, out)
    assert out.getvalue() == ("NAME       N T\n"
                              "a          5 2026-09-21T14:13:20Z\n"
                              "bbbbb… 12345 -\n")
    out = io.StringIO()
    render(rows, columns, OutputFormat.csv, out)
    assert out.getvalue() == "name,n,t\na,5,2026-09-21T14:13:20.000000000Z\nbbbbbbbbbbbb,12345,\n"
    out = io.StringIO()
    render(rows, columns, OutputFormat.json, out)
    assert msgspec.json.decode(out.getvalue()) == [{"name": "a", "n": 5, "t": "2026-09-21T14:13:20.000000000Z"},
                                            {"name": "bbbbbbbbbbbb", "n": 12345, "t": ""}]


def test_doctor_reports_pass_fail_and_skip():
    def ok(state):
        return "fine"

    def broken(state):
        raise CheckFailed("it is broken", "repair it")

    lines = []
    checks = (Check("one", ok), Check("two", broken), Check("three", ok, ("two",)), Check("four", ok))
    assert run_checks({}, checks, lines.append) is False
    assert lines == ["[pass] one: fine", "[FAIL] two: it is broken\n       fix: repair it",
                     "[skip] three: needs two", "[pass] four: fine"]


def test_effective_capabilities():
    assert effective_capabilities("Name:\tx\nCapEff:\t000000c000001000\n") == {12, 38, 39}


def test_permission_violation_is_one_line_without_the_password(auth_nats):
    loop = asyncio.new_event_loop()
    url = f"nats://127.0.0.1:{auth_nats}"
    service = ControlService(FakeDaemon(), NatsOptions(servers=(url,), user="probe", password="probe-pw"), "node-1")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(10)
    try:
        result = run("list", "--host", "node-1", "--nats", f"nats://viewer:viewer-pw@127.0.0.1:{auth_nats}")
    finally:
        asyncio.run_coroutine_threadsafe(service.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert_one_line_error(result, 'NATS refused the request on connstats.v1.ctl.node-1.list (permissions violation '
                                  'for publish to "connstats.v1.ctl.node-1.list"); ask for permission to publish to '
                                  'connstats.v1.ctl.> and subscribe to _INBOX.>')
    ghost = run("list", "--host", "ghost", "--nats", f"nats://probe:probe-pw@127.0.0.1:{auth_nats}")
    assert_one_line_error(ghost, f"no probe answers for host 'ghost' on nats://***@127.0.0.1:{auth_nats}; start "
                                 "`connstats up` or `connstats probe` there, or check --host and --nats")


def test_influx_settings_come_from_flag_env_or_file(tmp_path):
    from connstats.cli.options import NatsFlags
    from connstats.cli.settings import InfluxFlags, sink_config
    from connstats.probe.contract.errors import StoreError
    from connstats.sink.influx_store import InfluxConfig

    file = {"influxdb": {"url": "http://file:8086", "org": "file-org", "bucket": "file-b", "token": "file-tok"}}
    client = {"INFLUXDB_V2_URL": "http://v2:8086", "INFLUXDB_V2_ORG": "v2-org", "INFLUXDB_V2_TOKEN": "v2-tok"}
    ours = {**client, "CONNSTATS_INFLUX_URL": "http://cs:8086", "CONNSTATS_INFLUX_BUCKET": "env-b",
            "CONNSTATS_INFLUX_TOKEN": "cs-tok"}
    assert Config(file, {}, None).influx() == InfluxConfig("http://file:8086", "file-org", "file-tok", "file-b")
    assert Config(file, client, None).influx() == InfluxConfig("http://v2:8086", "v2-org", "v2-tok", "file-b")
    assert Config(file, ours, None).influx() == InfluxConfig("http://cs:8086", "v2-org", "cs-tok", "env-b")
    flags = dict(url="http://flag:8086", org="flag-org", bucket="flag-b")
    assert Config(file, ours, None).influx(**flags) == InfluxConfig("http://flag:8086", "flag-org", "cs-tok", "flag-b")
    assert Config({}, client, None).influx().bucket == "connstats"
    with pytest.raises(StoreError) as caught:
        Config({}, {"INFLUXDB_V2_URL": "http://x:8086", "INFLUXDB_V2_TOKEN": "t"}, None).influx()
    assert str(caught.value) == "--influx-org (or INFLUXDB_V2_ORG, [influxdb] org) is not set; set it to the organization name"
    # a configured URL, from anywhere, makes InfluxDB the default store; the flags reach the sink
    state = {"CONNSTATS_STATE_DIR": str(tmp_path)}
    assert Config({}, state, None).store_spec().startswith("sqlite:")
    assert Config(file, state, None).store_spec() == "influxdb"
    sink = sink_config(Config({}, {**state, "INFLUXDB_V2_TOKEN": "t"}, None), NatsFlags(), None, None,
                       InfluxFlags("http://flag:8086", "o", "b"))
    assert (sink.store, sink.influx) == ("influxdb", InfluxConfig("http://flag:8086", "o", "t", "b"))


def test_history_finds_influxdb_through_the_config_file(tmp_path, influx_server):
    from tests.fixtures.influx import TEST_ORG, TEST_TOKEN

    config = tmp_path / "config.toml"
    config.write_text(f'[influxdb]\nurl = "{influx_server.url}"\norg = "{TEST_ORG}"\nbucket = "flows"\n')
    result = run("history", "--config", str(config), "--format", "json",
                 env={"INFLUXDB_V2_TOKEN": TEST_TOKEN, "CONNSTATS_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    (sent,) = influx_server.queries  # no --store: a configured URL makes InfluxDB the store
    externs = {s["assignment"]["id"]["name"]: s["assignment"]["init"] for s in sent["extern"]["body"]}
    assert externs["p_bucket"]["value"] == "flows"


def test_retention_comes_from_flag_env_or_file_and_reaches_the_sqlite_store(tmp_path):
    from connstats.sink.stores import make_store

    assert Config({}, {"CONNSTATS_RETENTION": "7d"}, None).get("retention") == 7 * 86400
    assert Config({"sink": {"retention": "90m"}}, {}, None).get("retention") == 5400
    assert Config({}, {}, None).get("retention") is None
    store = make_store(f"sqlite:{tmp_path / 'flows.sqlite'}", 3600)
    assert store.retention_ns == 3600 * 10**9


def test_list_and_stats_end_with_the_sinks_backlog_when_a_sink_consumer_exists(fake_probe, nats_server):
    daemon, target = fake_probe
    run("attach", "veth0", *target)
    assert run("list", *target).stdout.splitlines()[-1].startswith("veth0 ")  # no sink yet: nothing more
    batches = [FlowBatch.from_records(sample_envelope(seq), sample_records(sample_envelope(seq), 10))
               for seq in range(3)]

    async def sink(consume: bool) -> float:
        """The sink's consumer, stopped (3 intervals wait) or catching up; the oldest message's time."""
        nc = await nats.connect(nats_server.url)
        consumer = FlowConsumer(nc, MemoryStore())
        await consumer.start()
        if consume:
            await consume_until(consumer, lambda: consumer.stats.stored_messages == 3)

            async def acked() -> bool:  # an ack reaches the server a moment after it was sent
                info = await nc.jetstream().consumer_info("CONNSTATS", "connstats-sink")
                return (info.num_pending, info.num_ack_pending) == (0, 0)

            await until_async(acked, 5, "the acks")
        else:
            await publish_batches(nats_server.url, batches)
        published = (await nc.jetstream().get_msg("CONNSTATS", seq=1)).time.timestamp()
        await consumer.close()
        await nc.close()
        return published

    published = asyncio.run(sink(consume=False))
    before = time.time()
    lines = run("list", *target).stdout.splitlines()
    age = time.time() - published
    behind = re.fullmatch(r"sink connstats-sink: 3 messages behind \(3 not yet delivered\), oldest (\d+\.\d) s old, "
                          r"(\d+\.\d) intervals", lines[-1])
    assert behind is not None, lines
    assert round(before - published, 1) - 0.1 <= float(behind[1]) <= round(age, 1) + 0.1
    assert float(behind[2]) == round(float(behind[1]) / 10, 1)  # the intervals are 10 s long
    assert lines[:-1] == run("list", *target).stdout.splitlines()[:-1]
    assert run("stats", *target).stdout.splitlines()[-1].startswith("sink connstats-sink: 3 messages behind (3 ")
    assert [d["name"] for d in msgspec.json.decode(run("list", "--format", "json", *target).stdout)] == ["veth0"]

    asyncio.run(sink(consume=True))
    assert run("list", *target).stdout.splitlines()[-1] == "sink connstats-sink: caught up (0 messages pending)"
    assert run("stats", *target).stdout.splitlines()[-1] == "sink connstats-sink: caught up (0 messages pending)"


def test_the_lag_warning_setting_comes_from_env_or_file_and_reaches_the_sink(tmp_path):
    from connstats.cli.options import NatsFlags
    from connstats.cli.settings import sink_config

    state = {"CONNSTATS_STATE_DIR": str(tmp_path)}
    assert sink_config(Config({}, state, None), NatsFlags(), None, None).lag_warning_intervals == 3
    file = {"sink": {"lag_warning_intervals": 5}}
    assert sink_config(Config(file, state, None), NatsFlags(), None, None).lag_warning_intervals == 5
    env = {**state, "CONNSTATS_LAG_WARNING_INTERVALS": "1.5"}
    assert sink_config(Config(file, env, None), NatsFlags(), None, None).lag_warning_intervals == 1.5
    path = tmp_path / "c.toml"
    path.write_text("[sink]\nlag_warning_intervals = 0\n")
    with pytest.raises(ConfigError) as caught:
        sink_config(load_config(path, env=state), NatsFlags(), None, None)
    assert str(caught.value) == f"{path}: sink.lag_warning_intervals: 0 is not a positive number; fix the setting"
