"""``policy learn`` on real SQLite files written by SqliteStore, and through the InfluxDB v2 API
test server: known flows in, the exact policy file out."""
from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import tomllib
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from connstats.cli.main import app
from connstats.probe.contract.errors import ConfigError, PolicyError
from connstats.probe.contract.policy_file import Group, Policy, PolicyRule, parse_policy
from connstats.probe.contract.record import Envelope, FlowRecord
from connstats.probe.contract.wire import FlowBatch
from connstats.probe.policy import Endpoint, resolve
from connstats.sink.history import influx_history, sqlite_history
from connstats.sink.influx_store import InfluxConfig, InfluxStore
from connstats.sink.policy_learn import (
    LearnedPolicy,
    PeerSettings,
    learn_policy,
    learn_query,
    learned_policy_text,
    pod_glob,
    port_ranges,
)
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.influx import TEST_ORG, TEST_TOKEN
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
HOST = "node-1"
RANGE = dict(since=T0 - 3600 * SECOND, until=T0 + 3600 * SECOND)


@dataclass(frozen=True)
class End:
    """One end of a connection: its address, and the device it is counted on (None: remote)."""

    ip: str
    ifindex: int = 0
    ifname: str = ""
    container_id: str = ""
    container_name: str = ""
    pod: str = ""

    def record(self, start: int, direction: str, proto: int, src: str, dst: str, sport: int, dport: int,
               packets: int, nbytes: int, first: int) -> FlowRecord:
        return flow_record(interval_start=start, interval_end=start + 10 * SECOND, ifindex=self.ifindex,
                           ifname=self.ifname, direction=direction, family=6 if ":" in src else 4, proto=proto,
                           src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, packets=packets,
                           bytes=nbytes, first_seen=first, last_seen=first + 5, tcp_flags=0,
                           container_id=self.container_id, container_name=self.container_name,
                           container_image="img:1" if self.container_id else "", pod=self.pod,
                           workload=self.pod.split("/")[-1].split("-")[0], runtime="containerd" if self.pod else "")


WEB = End("10.0.0.2", 11, "veth-web", "a" * 64, "web")
DB = End("10.0.0.3", 12, "veth-db", "b" * 64, "db")
WEB6 = End("fd00::2", 11, "veth-web", "a" * 64, "web")
DB6 = End("fd00::3", 12, "veth-db", "b" * 64, "db")
ETH0 = End("192.0.2.10", 2, "eth0")
NS_A = End("10.199.0.1", 21, "csh0a", "", "cs0a")


def conn(client: End, server: End, proto: int, sport: int, dport: int, packets: int = 3, nbytes: int = 300,
         start: int = T0, reply_first: int | None = None) -> list[FlowRecord]:
    """The records of one connection on each end's device: client to server, and the replies
    (``packets - 1`` of ``nbytes - 100``)."""
    first = start + 1
    back = first if reply_first is None else reply_first
    out = []
    for end, there, here in ((client, "egress", "ingress"), (server, "ingress", "egress")):
        if end.ifindex:
            out.append(end.record(start, there, proto, client.ip, server.ip, sport, dport, packets, nbytes, first))
            out.append(end.record(start, here, proto, server.ip, client.ip, dport, sport, packets - 1,
                                  nbytes - 100, back))
    return out


async def store_records(path, records: list[FlowRecord], host: str = HOST) -> None:
    store = SqliteStore(path)
    try:
        await store.write(FlowBatch.from_records(envelope(host), records))
    finally:
        await store.close()


def envelope(host: str = HOST) -> Envelope:
    return Envelope(host=host, boot_id="boot", interval_seq=1, interval_start=T0, interval_end=T0 + 10 * SECOND)


async def learned(tmp_path, records: list[FlowRecord], peers: PeerSettings = PeerSettings(), own=()) -> str:
    path = tmp_path / "flows.sqlite"
    await store_records(path, records)
    rows = sqlite_history(path, learn_query(RANGE["since"], RANGE["until"], HOST))
    learned = learn_policy(rows, host_addresses=own, peers=peers)
    text = learned_policy_text(learned)
    assert parse_policy(text) == learned.policy  # what learn writes reads back as what it learned
    return text


def checked(text: str) -> dict:
    """The TOML of a policy text the probe's parser accepts."""
    parse_policy(text)
    return tomllib.loads(text)


# -- scenarios -------------------------------------------------------------------------------------


async def test_two_containers_web_to_db_5432(tmp_path):
    records = conn(WEB, DB, 6, 40000, 5432) + conn(WEB, DB, 6, 40001, 5432, 10, 2000)
    assert await learned(tmp_path, records) == """\
[groups]
db = { containers = ["db"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432]
"""


async def test_a_world_client_and_a_world_server(tmp_path):
    client = End("198.51.100.7")
    records = conn(client, WEB, 6, 50000, 443) + conn(client, WEB, 6, 50001, 443) + conn(
        WEB, End("203.0.113.9"), 17, 40000, 53)
    assert await learned(tmp_path, records) == """\
[groups]
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "world"
proto = "udp"
ports = [53]

[[allow]]
from = "world"
to = "web"
proto = "tcp"
ports = [443]
"""


async def test_world_peers_as_their_prefixes(tmp_path):
    records = (conn(End("198.51.100.7"), WEB, 6, 50000, 443) + conn(End("198.51.100.200"), WEB, 6, 50001, 443)
               + conn(End("203.0.113.9"), WEB, 6, 50002, 443) + conn(End("2001:db8:1::7"), WEB6, 6, 50003, 443))
    assert await learned(tmp_path, records, PeerSettings("prefix")) == """\
[groups]
net-198-51-100-0-24-and-2-more = { cidrs = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/64"] }
web = { containers = ["web"] }

[[allow]]
from = "net-198-51-100-0-24-and-2-more"
to = "web"
proto = "tcp"
ports = [443]
"""


async def test_prefixes_allowed_different_things_stay_apart(tmp_path):
    """Two prefixes that reach web on 443 share a group; a third that reaches 22 too, and a
    fourth that web calls, get groups of their own: four prefixes, three groups, three rules."""
    records = (conn(End("198.51.100.7"), WEB, 6, 50000, 443) + conn(End("203.0.113.9"), WEB, 6, 50001, 443)
               + conn(End("192.0.2.5"), WEB, 6, 50002, 443) + conn(End("192.0.2.5"), WEB, 6, 50003, 22)
               + conn(WEB, End("100.64.1.1"), 17, 40000, 53))
    doc = checked(await learned(tmp_path, records, PeerSettings("prefix")))
    assert doc["groups"] == {
        "net-100-64-1-0-24": {"cidrs": ["100.64.1.0/24"]},
        "net-192-0-2-0-24": {"cidrs": ["192.0.2.0/24"]},
        "net-198-51-100-0-24-and-1-more": {"cidrs": ["198.51.100.0/24", "203.0.113.0/24"]},
        "web": {"containers": ["web"]}}
    assert [(r["from"], r["to"], r["proto"], r["ports"]) for r in doc["allow"]] == [
        ("net-192-0-2-0-24", "web", "tcp", [22, 443]),
        ("net-198-51-100-0-24-and-1-more", "web", "tcp", [443]),
        ("web", "net-100-64-1-0-24", "udp", [53])]


async def test_a_port_range_and_single_ports(tmp_path):
    records = [r for port in (8000, 8001, 8002, 8005, 9000, 80)
               for r in conn(WEB, DB, 6, 40000 + port, port)]
    text = await learned(tmp_path, records)
    assert text.splitlines()[-1] == 'ports = [80, "8000-8002", 8005, 9000]'
    assert text.count("[[allow]]") == 1


async def test_icmp_goes_from_the_side_that_sent_first(tmp_path):
    records = conn(WEB, DB, 1, 0, 0, reply_first=T0 + 2)
    assert await learned(tmp_path, records) == """\
[groups]
db = { containers = ["db"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "db"
proto = "icmp"
"""


async def test_same_ports_at_the_same_moment_allow_both_ways(tmp_path):
    text = await learned(tmp_path, conn(WEB, DB, 17, 123, 123))
    rules = [rule for rule in checked(text)["allow"]]
    assert rules == [{"from": "db", "to": "web", "proto": "udp", "ports": [123]},
                     {"from": "web", "to": "db", "proto": "udp", "ports": [123]}]


async def test_ipv6_without_neighbour_discovery(tmp_path):
    nd = [WEB6.record(T0, "egress", 58, "fe80::1", "ff02::1:ff00:3", 0, 0, 1, 86, T0 + 1),
          WEB6.record(T0, "ingress", 58, "fe80::2", "fe80::1", 0, 0, 1, 86, T0 + 1)]
    records = conn(WEB6, DB6, 6, 40000, 5432) + conn(WEB6, DB6, 58, 0, 0, reply_first=T0 + 9) + nd
    assert await learned(tmp_path, records) == """\
[groups]
db = { containers = ["db"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "db"
proto = "icmp"

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432]
"""


async def test_devices_without_a_container_the_host_and_netns_containers(tmp_path):
    non_ip = flow_record(interval_start=T0, interval_end=T0 + 10 * SECOND, ifindex=ETH0.ifindex,
                         ifname=ETH0.ifname, direction="ingress", family=0, proto=0, src_ip="", dst_ip="",
                         src_port=0, dst_port=0, packets=4, bytes=240, first_seen=T0 + 1, last_seen=T0 + 2,
                         tcp_flags=0)  # ARP: family 0
    dhcp = conn(NS_A, End("255.255.255.255"), 17, 68, 67)
    records = (conn(End("198.51.100.7"), ETH0, 6, 50000, 22) + conn(NS_A, End("192.0.2.10"), 6, 40000, 80)
               + conn(NS_A, End("10.0.9.9"), 6, 40001, 80) + dhcp + [non_ip])
    assert await learned(tmp_path, records, own=["10.0.9.9", "192.0.2.10"]) == """\
[groups]
cs0a = { netns = ["cs0a"] }
eth0 = { ifaces = ["eth0"] }

[[allow]]
from = "cs0a"
to = "host"
proto = "tcp"
ports = [80]

[[allow]]
from = "world"
to = "eth0"
proto = "tcp"
ports = [22]
"""


async def test_odd_names_are_made_plain_and_never_clash(tmp_path):
    odd = End("10.0.0.8", 13, "veth-odd", "c" * 64, "my.app")
    host_named = End("10.0.0.9", 14, "veth-h", "d" * 64, "host")
    netns_web = End("10.0.0.10", 15, "csh-web", "", "web")
    unnamed = End("10.0.0.11", 16, "csh-x", "", "netns:4026532999")
    long = End("10.0.0.12", 17, "veth-l", "e" * 64, "x" * 70)
    also_long = End("10.0.0.13", 18, "csh-l", "", "x" * 70)
    records = [r for end in (odd, host_named, netns_web, unnamed, long, also_long)
               for r in conn(end, WEB, 6, 40000 + end.ifindex, 80)]
    doc = checked(await learned(tmp_path, records))
    assert doc["groups"] == {
        "host-containers": {"containers": ["host"]}, "my-app": {"containers": ["my.app"]},
        "netns-4026532999": {"netns": ["netns:4026532999"]}, "web": {"containers": ["web"]},
        "web-netns": {"netns": ["web"]}, "x" * 63: {"containers": ["x" * 70]},
        "x" * 57 + "-netns": {"netns": ["x" * 70]}}
    assert [(r["from"], r["to"]) for r in doc["allow"]] == [
        ("host-containers", "web"), ("my-app", "web"), ("netns-4026532999", "web"), ("web-netns", "web"),
        ("x" * 57 + "-netns", "web"), ("x" * 63, "web")]  # by name: "-" before "x"


WEB_1 = End("10.244.1.5", 31, "veth1a", "f" * 64, "web", "shop/web-7d9f8c4b5d-x2k4q")
WEB_2 = End("10.244.1.6", 32, "veth2b", "9" * 64, "web", "shop/web-7d9f8c4b5d-p9zmn")  # its replica
DB_0 = End("10.244.1.7", 33, "veth3c", "8" * 64, "db", "shop/db-0")  # a StatefulSet's
BY_HAND = End("10.244.1.8", 34, "veth4d", "7" * 64, "debug", "tools/debug")  # no generated suffix
CACHE = End("10.0.0.4", 35, "veth-cache", "6" * 64, "cache")  # Docker: no pod


async def test_pods_are_grouped_by_workload_as_a_glob_of_their_names(tmp_path):
    records = (conn(WEB_1, DB_0, 6, 40000, 5432) + conn(WEB_2, DB_0, 6, 40001, 5432) + conn(WEB_2, CACHE, 6, 40002, 6379)
               + conn(End("198.51.100.7"), WEB_1, 6, 50000, 443) + conn(BY_HAND, DB_0, 6, 40003, 5432))
    text = await learned(tmp_path, records)
    assert text == """\
[groups]
cache = { containers = ["cache"] }
shop-db = { pods = ["shop/db-*"] }
shop-web = { pods = ["shop/web-*"] }
tools-debug = { pods = ["tools/debug"] }

[[allow]]
from = "shop-web"
to = "cache"
proto = "tcp"
ports = [6379]

[[allow]]
from = "shop-web"
to = "shop-db"
proto = "tcp"
ports = [5432]

[[allow]]
from = "tools-debug"
to = "shop-db"
proto = "tcp"
ports = [5432]

[[allow]]
from = "world"
to = "shop-web"
proto = "tcp"
ports = [443]
"""
    policy = parse_policy(text)
    endpoints = [Endpoint(end.ifindex, end.ifname, container=end.container_name, pod=end.pod,
                          addresses=(ipaddress.ip_address(end.ip),)) for end in (WEB_1, WEB_2, DB_0, BY_HAND, CACHE)]
    resolved = resolve(policy, [*endpoints, Endpoint(36, "veth5e", pod="shop/web-7d9f8c4b5d-n4w2t")], [])
    assert {ifindex: resolved.names(mask) for ifindex, mask in resolved.devices.items()} == {
        31: ["shop-web"], 32: ["shop-web"], 33: ["shop-db"], 34: ["tools-debug"], 35: ["cache"],
        36: ["shop-web"]}  # a replica that came later is in its workload's group too


@pytest.mark.parametrize("pod,glob", [
    ("shop/web-7d9f8c4b5d-x2k4q", "shop/web-*"),  # Deployment: pod-template-hash and five characters
    ("shop/web-api-5c6b4f9d8-zz2x9", "shop/web-api-*"),
    ("kube-system/kube-proxy-x7zqk", "kube-system/kube-proxy-*"),  # DaemonSet
    ("shop/db-0", "shop/db-*"), ("shop/db-12", "shop/db-*"),  # StatefulSet
    ("shop/my-nginx", "shop/my-nginx"),  # vowels: a word, not a generated suffix
    ("shop/web", "shop/web"), ("shop/db-01", "shop/db-01"),
])
def test_the_glob_of_a_pods_workload(pod, glob):
    assert pod_glob(pod) == glob


async def test_a_file_from_before_pods_is_learned_without_them(tmp_path):
    """A schema 3 file (the sink has not opened it since pods came): no pod column, no pods."""
    path = tmp_path / "flows.sqlite"
    await store_records(path, conn(WEB, DB, 6, 40000, 5432))
    db = sqlite3.connect(path)
    for column in ("pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid"):
        db.execute(f"ALTER TABLE flows DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    rows = sqlite_history(path, learn_query(RANGE["since"], RANGE["until"], HOST))
    assert {row["pod"] for row in rows} == {""}
    assert learned_policy_text(learn_policy(rows)).splitlines()[:3] == [
        "[groups]", 'db = { containers = ["db"] }', 'web = { containers = ["web"] }']


def test_port_ranges():
    assert port_ranges([]) == ()
    assert port_ranges([5, 3, 4, 4, 9, 1]) == ((1, 1), (3, 5), (9, 9))
    assert port_ranges([65535, 65534]) == ((65534, 65535),)
    assert port_ranges([0]) == ((0, 0),)


# -- the command -----------------------------------------------------------------------------------


def empty_config(tmp_path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("")
    return {"CONNSTATS_CONFIG": str(tmp_path / "config.toml")}


async def test_the_command_prints_the_policy_with_its_header(tmp_path):
    records = conn(WEB, DB, 6, 40000, 5432, 5, 1000) + conn(WEB, DB, 6, 40001, 5432, 2, 200)
    records += conn(End("198.51.100.7"), WEB, 6, 50000, 443, 4, 600)
    await store_records(tmp_path / "flows.sqlite", records)
    await store_records(tmp_path / "flows.sqlite", conn(DB, WEB, 6, 1, 9), host="other")
    args = ["policy", "learn", "--store", f"sqlite:{tmp_path / 'flows.sqlite'}", "--host", HOST,
            "--since", "2023-11-14T21:00:00Z", "--until", "2023-11-14T23:00:00Z"]
    result = CliRunner().invoke(app, args, env=empty_config(tmp_path))
    assert result.exit_code == 0, result.output
    # bytes: each connection once (its busiest device): (1000 + 900) + (200 + 100) + (600 + 500)
    assert result.stdout == """\
# connstats policy learn: host node-1, 2023-11-14T21:00:00Z to 2023-11-14T23:00:00Z
# allows the 3 connections (3,300 bytes) seen, with 2 rules
[groups]
db = { containers = ["db"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432]

[[allow]]
from = "world"
to = "web"
proto = "tcp"
ports = [443]
"""
    out = tmp_path / "policy.toml"
    written = CliRunner().invoke(app, [*args, "--output", str(out)], env=empty_config(tmp_path))
    assert (written.exit_code, written.stdout, out.read_text()) == (0, "", result.stdout)


async def test_the_command_says_when_there_is_nothing_to_learn(tmp_path):
    await store_records(tmp_path / "flows.sqlite", conn(WEB, DB, 6, 40000, 5432))
    result = CliRunner().invoke(app, ["policy", "learn", "--store", f"sqlite:{tmp_path / 'flows.sqlite'}",
                                      "--host", "nobody", "--since", "2023-11-14T21:00:00Z",
                                      "--until", "2023-11-14T23:00:00Z"],
                                env=empty_config(tmp_path))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == ("error: the store holds no traffic of host 'nobody' from 2023-11-14T21:00:00Z to "
                             "2023-11-14T23:00:00Z; check --host and --since\n")


def _groups(n: int) -> tuple[Group, ...]:
    return tuple(Group(f"g{i}", cidrs=(ipaddress.ip_network(f"10.{i}.0.0/16"),)) for i in range(n))


def test_a_learned_policy_with_more_groups_than_fit_says_how_to_learn_fewer():
    """62 groups besides host and world fit the kernel's 64 bits; the 63rd is the learn hint."""
    assert learned_policy_text(LearnedPolicy(Policy(_groups(62), ()))).count(" = { cidrs = ") == 62
    with pytest.raises(ConfigError) as caught:
        learned_policy_text(LearnedPolicy(Policy(_groups(63), ())))
    assert str(caught.value) == ("the policy has 63 groups, more than the 62 a policy holds; merge some (learn: "
                                 "--peers world, or a shorter --prefix4/--prefix6)")


def test_a_learned_policy_is_checked_by_the_probes_parser():
    """A rule to a group the policy lacks (never learned, but checked all the same)."""
    bad = LearnedPolicy(Policy(_groups(1), (PolicyRule("g0", "db", 6, ((5432, 5432),)),)))
    with pytest.raises(PolicyError) as caught:
        learned_policy_text(bad, ["header"])
    assert str(caught.value) == ("the learned policy line 7: allow[0].to: no group 'db'; define it under [groups] "
                                 "or use host or world")


# -- InfluxDB --------------------------------------------------------------------------------------


async def test_influx_learns_the_same_policy_as_sqlite(tmp_path, influx_server):
    records = (conn(WEB, DB, 6, 40000, 5432) + conn(WEB, DB, 6, 40001, 5432, 7, 900)
               + conn(End("198.51.100.7"), WEB, 6, 50000, 443) + conn(WEB, DB, 1, 0, 0, reply_first=T0 + 3)
               + [r for port in (8000, 8001, 8002) for r in conn(WEB, DB, 17, 40000 + port, port)])
    store = InfluxStore(InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows"))
    try:
        await store.write(FlowBatch.from_records(envelope(), records))
        influx_rows = await influx_history(store, learn_query(RANGE["since"], RANGE["until"], HOST))
    finally:
        await store.close()
    await store_records(tmp_path / "flows.sqlite", records)
    sqlite_rows = sqlite_history(tmp_path / "flows.sqlite", learn_query(RANGE["since"], RANGE["until"], HOST))
    assert influx_rows == sqlite_rows
    learned = learn_policy(influx_rows)
    assert (learned.connections, learned.bytes) == (7, (300 + 200) + (900 + 800) + 500 + 500 + 3 * 500)
    assert learned_policy_text(learned) == """\
[groups]
db = { containers = ["db"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "db"
proto = "icmp"

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432]

[[allow]]
from = "web"
to = "db"
proto = "udp"
ports = ["8000-8002"]

[[allow]]
from = "world"
to = "web"
proto = "tcp"
ports = [443]
"""
    (sent,) = influx_server.queries
    assert '"container_id", "container_name", "pod"])' in sent["query"]


async def test_a_prefix_never_holds_an_address_of_a_group_or_the_host(tmp_path):
    """10.0.0.7 next to web (10.0.0.2) and db (10.0.0.3) and the host's 10.0.0.4: the longest
    prefix that holds none of them is 10.0.0.6/31; fd00::99 next to web6 gets fd00::80/121."""
    records = (conn(End("10.0.0.7"), WEB, 6, 50000, 443) + conn(WEB, DB, 6, 40000, 5432)
               + conn(End("fd00::99"), WEB6, 6, 50001, 443) + conn(End("10.0.0.200"), WEB, 6, 50002, 443))
    doc = checked(await learned(tmp_path, records, PeerSettings("prefix"), own=["10.0.0.4"]))
    assert {name: body for name, body in doc["groups"].items() if "cidrs" in body} == {
        "net-10-0-0-6-31-and-2-more": {"cidrs": ["10.0.0.6/31", "10.0.0.128/25", "fd00::80/121"]}}


def test_the_command_reads_influxdb_by_its_flags(tmp_path, influx_server):
    async def write() -> None:
        store = InfluxStore(InfluxConfig(url=influx_server.url, org=TEST_ORG, token=TEST_TOKEN, bucket="flows"))
        try:
            await store.write(FlowBatch.from_records(envelope(), conn(WEB, DB, 6, 40000, 5432)))
        finally:
            await store.close()

    asyncio.run(write())  # the command runs its own event loop
    result = CliRunner().invoke(app, [
        "policy", "learn", "--store", "influxdb", "--influx-url", influx_server.url, "--influx-org", TEST_ORG,
        "--influx-bucket", "flows", "--host", HOST, "--since", "2023-11-14T21:00:00Z",
        "--until", "2023-11-14T23:00:00Z"], env={**empty_config(tmp_path), "INFLUXDB_V2_TOKEN": TEST_TOKEN})
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "# allows the 1 connection (500 bytes) seen, with 1 rule", "[groups]", 'db = { containers = ["db"] }',
        'web = { containers = ["web"] }', "", "[[allow]]", 'from = "web"', 'to = "db"', 'proto = "tcp"',
        "ports = [5432]"]
    (sent,) = influx_server.queries
    externs = {s["assignment"]["id"]["name"]: s["assignment"]["init"].get("value") for s in sent["extern"]["body"]}
    assert (externs["p_bucket"], externs["p_host"]) == ("flows", HOST)


async def test_a_bridge_forwarding_a_containers_traffic_owns_no_address(tmp_path):
    """web's connection to 203.0.113.9:443 crosses web's veth and, routed, the bridge br0: the
    bridge sees it arrive (ingress) for somebody else, so 203.0.113.9 stays world."""
    bridge = End("203.0.113.9", 3, "br0")
    records = conn(WEB, End("203.0.113.9"), 6, 40000, 443) + conn(End(WEB.ip), bridge, 6, 40000, 443)
    assert await learned(tmp_path, records) == """\
[groups]
br0 = { ifaces = ["br0"] }
web = { containers = ["web"] }

[[allow]]
from = "web"
to = "br0"
proto = "tcp"
ports = [443]

[[allow]]
from = "web"
to = "world"
proto = "tcp"
ports = [443]
"""


def test_host_addresses_must_be_addresses(tmp_path):
    result = CliRunner().invoke(app, ["policy", "learn", "--store", f"sqlite:{tmp_path / 'none.sqlite'}",
                                      "--host-address", "10.0.0.300"], env=empty_config(tmp_path))
    assert (result.exit_code, result.stderr) == (
        1, "error: --host-address '10.0.0.300' is not an IP address; write e.g. 192.0.2.10\n")


async def test_the_text_reads_back_as_the_policy_learned(tmp_path):
    records = (conn(WEB, DB, 6, 40000, 5432) + conn(WEB, DB, 1, 0, 0, reply_first=T0 + 3)
               + [r for port in (8000, 8001, 9000) for r in conn(End("198.51.100.7"), DB, 17, 40000 + port, port)])
    await store_records(tmp_path / "flows.sqlite", records)
    learned = learn_policy(sqlite_history(tmp_path / "flows.sqlite", learn_query(RANGE["since"], RANGE["until"], HOST)),
                           peers=PeerSettings("prefix"))
    text = learned_policy_text(learned, ["a header", 'with "quotes" and \\ and \t', "host x\n[groups]\nevil = 1\r"])
    assert text.splitlines()[:3] == [
        "# a header", '# with "quotes" and \\ and \t', "# host x\\x0a[groups]\\x0aevil = 1\\x0d"]
    assert parse_policy(text) == learned.policy
    assert learned.policy == Policy(
        (Group("db", containers=("db",)), Group("net-198-51-100-0-24", cidrs=(ipaddress.ip_network("198.51.100.0/24"),)),
         Group("web", containers=("web",))),
        (PolicyRule("net-198-51-100-0-24", "db", 17, ((8000, 8001), (9000, 9000))),
         PolicyRule("web", "db", 1), PolicyRule("web", "db", 6, ((5432, 5432),))))
    assert [r["ports"] for r in tomllib.loads(text)["allow"] if "ports" in r] == [["8000-8001", 9000], [5432]]


@pytest.mark.parametrize("src, dst, side", [
    (40000, 443, "dst"), (53, 40000, "src"), (22, 80, "src"), (40000, 8080, "dst"), (8080, 40000, "src"),
    (123, 123, ""), (0, 0, ""),
])
def test_the_server_side_follows_the_service_port_rule(src, dst, side):
    from connstats.sink.store import known_ports, server_side

    assert server_side(src, dst, known_ports()) == side
