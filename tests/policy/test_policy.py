"""The policy's pure parts: the file (errors naming line and key), resolution of groups,
rules as port prefixes, violation events, the POLICY column (table-driven, no kernel)."""
from __future__ import annotations

import dataclasses
import ipaddress

import msgspec
import pytest

from connstats.cli.live import interval_summary
from connstats.probe.contract.errors import PolicyError
from connstats.probe.contract.policy_file import MAX_NAME, Group, Policy, PolicyRule, format_policy
from connstats.probe.contract.record import Envelope
from connstats.probe.contract.violations import decode_violation, encode_violation
from connstats.probe.contract.wire import FlowBatch, decode_message, encode_message
from connstats.probe.policy import Endpoint, parse_policy, resolve
from connstats.probe.policy.resolve import HOST_BIT, WORLD_BIT
from connstats.probe.policy.tables import port_entries, port_prefixes, unpack, word
from connstats.probe.policy.violations import violations
from tests.fixtures.records import flow_record

GOOD = '''\
[groups]
web    = { containers = ["web*"] }
db     = { containers = ["db"], images = ["postgres:*"] }
client = { cidrs = ["10.0.7.0/24", "fd00:7::/64"] }
edge   = { ifaces = ["eth*"], netns = ["lab-*"] }

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432, "8000-8099"]

[[allow]]
from = "client"
to = "world"
proto = "icmp"
'''


def test_a_good_file():
    policy = parse_policy(GOOD)
    assert policy.group_names == ("host", "world", "web", "db", "client", "edge")
    assert policy.group("db").images == ("postgres:*",)
    assert policy.group("client").cidrs == (ipaddress.ip_network("10.0.7.0/24"), ipaddress.ip_network("fd00:7::/64"))
    assert [(r.source, r.target, r.proto, r.ports) for r in policy.rules] == [
        ("web", "db", 6, ((5432, 5432), (8000, 8099))), ("client", "world", 1, ())]


def test_the_writer_writes_a_parsed_file_back_in_one_layout():
    assert format_policy(parse_policy(GOOD), ["written back"]) == """\
# written back
[groups]
web = { containers = ["web*"] }
db = { containers = ["db"], images = ["postgres:*"] }
client = { cidrs = ["10.0.7.0/24", "fd00:7::/64"] }
edge = { ifaces = ["eth*"], netns = ["lab-*"] }

[[allow]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432, "8000-8099"]

[[allow]]
from = "client"
to = "world"
proto = "icmp"
"""


ODD = Policy(
    (Group("my.app", containers=('we"b*', "back\\slash", "tab\there", "new\nline", "caf\u00e9"), images=("img:1",)),
     Group("x" * MAX_NAME, ifaces=("eth0",), netns=("netns:4026532999",)),
     Group("_dash-9", cidrs=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
                             ipaddress.ip_network("192.0.2.7/32"))),
     Group("one-netns", netns=("n",)),
     Group("shop-web", pods=("shop/web-*", "*/we\"b?"), k8s_namespaces=("shop", "shop-[ab]*"),
           labels=(("app", "web"), ("app.kubernetes.io/name", "web_1.x"), ("example.com/tier", ""))),
     Group("by-label", labels=(("app", "db"),), containers=("db",))),
    (PolicyRule("my.app", "x" * MAX_NAME, 6, ((0, 0), (22, 22), (8000, 8099), (65535, 65535))),
     PolicyRule("host", "world", 58),
     PolicyRule("_dash-9", "host", 132, ((1, 65535),)),
     PolicyRule("world", "my.app", 47),
     PolicyRule("one-netns", "one-netns", 17, ((53, 53),)),
     PolicyRule("my.app", "_dash-9", 1),
     PolicyRule("shop-web", "by-label", 6, ((5432, 5432),))),
)


def test_what_the_writer_writes_parses_back_to_the_same_policy():
    """Quoted names and values, every selector (pod globs and labels too), v4 and v6
    prefixes, named and numbered protocols, single ports and ranges up to 0 and 65535, the
    built-in groups."""
    text = format_policy(ODD, ["a header"])
    assert parse_policy(text) == ODD
    assert format_policy(parse_policy(text), ["a header"]) == text
    lines = text.splitlines()
    assert lines[2] == '"my.app" = { containers = ["we\\"b*", "back\\\\slash", "tab\\u0009here", "new\\u000aline", ' \
                       '"caf\u00e9"], images = ["img:1"] }'
    assert lines[4] == '_dash-9 = { cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"] }'
    assert lines[6:8] == [
        'shop-web = { pods = ["shop/web-*", "*/we\\"b?"], k8s_namespaces = ["shop", "shop-[ab]*"], labels = { '
        'app = "web", "app.kubernetes.io/name" = "web_1.x", "example.com/tier" = "" } }',
        'by-label = { containers = ["db"], labels = { app = "db" } }']
    assert [line for line in lines if line.startswith(("proto", "ports"))] == [
        'proto = "tcp"', 'ports = [0, 22, "8000-8099", 65535]', 'proto = "icmpv6"', "proto = 132",
        'ports = ["1-65535"]', "proto = 47", 'proto = "udp"', "ports = [53]", 'proto = "icmp"', 'proto = "tcp"',
        "ports = [5432]"]


def test_an_empty_policy_is_written_and_read_back():
    assert format_policy(Policy((), ())) == "[groups]\n"
    assert parse_policy("[groups]\n") == Policy((), ())


def bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("text,message", [
    ("[groups\n", "p: not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 8)); fix the syntax"),
    (GOOD + "\n[deny]\nx = 1\n", "p line 18: deny: unknown section 'deny'; use [groups] and [[allow]]"),
    (bad("web    =", "host   ="), "p line 2: groups.host: 'host' is built in; give the group another name"),
    (bad('images = ["postgres:*"]', 'label = ["x"]'), "p line 3: groups.db.label: unknown key; use containers, "
     "images, ifaces, netns, pods, k8s_namespaces, labels, cidrs"),
    (bad('"10.0.7.0/24"', '"10.0.7.0/33"'), "p line 4: groups.client.cidrs: '10.0.7.0/33' is not an address prefix; "
     "write e.g. 10.0.7.0/24 or fd00::/64"),
    (bad('containers = ["web*"]', "containers = []"), None),  # an empty list selects nothing: allowed
    (bad('containers = ["web*"]', 'containers = "web*"'), "p line 2: groups.web.containers: must be a list of "
     'non-empty strings, e.g. ["web*"]'),
    (bad('to = "db"', 'to = "dbx"'), "p line 9: allow[0].to: no group 'dbx'; define it under [groups] or use host "
     "or world"),
    (bad('from = "client"', ""), "p line 13: allow[1].from: is missing or not a group name; write e.g. from = \"web\""),
    (bad('proto = "tcp"', 'proto = "tcpp"'), "p line 10: allow[0].proto: 'tcpp' is not tcp, udp, icmp, icmpv6 or a protocol "
     'number 0-255; write e.g. proto = "tcp"'),
    (bad('proto = "tcp"', "proto = 300"), "p line 10: allow[0].proto: 300 is not tcp, udp, icmp, icmpv6 or a protocol "
     'number 0-255; write e.g. proto = "tcp"'),
    (bad('"8000-8099"', '"8099-8000"'), "p line 11: allow[0].ports: '8099-8000' is not a port 0-65535 or a range "
     'like "8000-8099"; fix it'),
    (bad("5432", "65536"), "p line 11: allow[0].ports: 65536 is not a port 0-65535 or a range like \"8000-8099\"; fix it"),
    (bad('proto = "icmp"', 'proto = "icmp"\nports = [1]'), "p line 17: allow[1].ports: only tcp, udp, sctp and "
     "udplite have ports; leave ports out"),
    (bad("[5432", "[5432, true"), "p line 11: allow[0].ports: True is not a port 0-65535 or a range like "
     '"8000-8099"; fix it'),
    (bad('proto = "tcp"', 'proto = "tcp"\nport = 1'), "p line 11: allow[0].port: unknown key; use from, to, proto, "
     "ports"),
    (bad('images = ["postgres:*"]', 'labels = { app = 5 }'), "p line 3: groups.db.labels: the value of 'app' is "
     'not a string; write e.g. app = "web"'),
    (bad('images = ["postgres:*"]', 'labels = { app.kubernetes.io = "x" }'), "p line 3: groups.db.labels: the "
     "value of 'app' is not a string; write e.g. app = \"web\"; quote a name with dots, e.g. "
     '"app.kubernetes.io/name" = "web"'),
    (bad('images = ["postgres:*"]', "labels = {}"), "p line 3: groups.db.labels: must be a table of at least "
     'one label, e.g. labels = { app = "web" }'),
    (bad('images = ["postgres:*"]', 'labels = ["app=web"]'), "p line 3: groups.db.labels: must be a table of at "
     'least one label, e.g. labels = { app = "web" }'),
    (bad('images = ["postgres:*"]', 'labels = { "-app" = "web" }'), "p line 3: groups.db.labels: '-app' is not a "
     "Kubernetes label name (an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_', '.'); fix it"),
    (bad('images = ["postgres:*"]', 'labels = { app = "web!" }'), "p line 3: groups.db.labels: the value 'web!' "
     "of 'app' is not a Kubernetes label value (up to 63 letters, digits, '-', '_', '.', alphanumeric at both "
     "ends); fix it"),
    (bad('images = ["postgres:*"]', 'labels = { app = "' + "x" * 64 + '" }'), "p line 3: groups.db.labels: the "
     "value '" + "x" * 64 + "' of 'app' is not a Kubernetes label value (up to 63 letters, digits, '-', '_', '.', "
     "alphanumeric at both ends); fix it"),
    (bad('images = ["postgres:*"]', "labels = { " + ", ".join(f'l{i} = "v"' for i in range(33)) + " }"),
     "p line 3: groups.db.labels: 33 labels; at most 32, keep the ones that decide"),
    (bad('images = ["postgres:*"]', 'pods = ["db-*"]'), "p line 3: groups.db.pods: 'db-*' has no '/'; write "
     '<namespace>/<pod name>, globs allowed, e.g. "shop/web-*" or "*/web-*"'),
    (bad('images = ["postgres:*"]', 'pods = ["shop/db", ""]'), "p line 3: groups.db.pods: must be a list of "
     'non-empty strings, e.g. ["shop/web-*"]'),
    (bad('images = ["postgres:*"]', 'k8s_namespaces = ["shop/db"]'), "p line 3: groups.db.k8s_namespaces: "
     "'shop/db' is not a namespace name (no '/'); select pods with pods = [\"<namespace>/<pod name>\"]"),
    (bad('images = ["postgres:*"]', "k8s_namespaces = [1]"), "p line 3: groups.db.k8s_namespaces: must be a list "
     'of non-empty strings, e.g. ["shop"]'),
    ("[groups]\n" + "".join(f"g{i} = {{ ifaces = ['x'] }}\n" for i in range(63)),
     "p line 1: groups: 63 groups; at most 62 fit, merge some"),
])
def test_every_mistake_is_one_line_naming_line_and_key(text, message):
    if message is None:
        parse_policy(text, "p")
        return
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p")
    assert str(caught.value) == message


def test_a_group_written_as_its_own_table_is_found_by_line_too():
    text = '[groups.web]\ncontainers = ["web*"]\nimages = 5\n'
    with pytest.raises(PolicyError, match=r"^p line 3: groups\.web\.images: must be a list"):
        parse_policy(text, "p")


def endpoint(ifindex, ifname, *addresses, **owner):
    return Endpoint(ifindex, ifname, addresses=tuple(map(ipaddress.ip_address, addresses)), **owner)


def test_groups_resolve_to_governed_devices_and_nested_prefixes():
    policy = parse_policy(GOOD)
    web, db, client, edge = (1 << policy.group_names.index(n) for n in ("web", "db", "client", "edge"))
    resolved = resolve(policy, [
        endpoint(7, "veth7", "10.0.7.5", container="/web-1"),  # in client's prefix too
        endpoint(8, "veth8", "10.0.9.2", image="postgres:16"),
        endpoint(9, "eth0"),
        endpoint(10, "veth10", "10.0.9.3", netns="lab-3"),
        endpoint(11, "veth11", "10.0.9.4", container="cache"),  # no group: not governed
    ], [ipaddress.ip_address("192.0.2.1")])
    assert resolved.devices == {7: web, 8: db, 9: edge, 10: edge}
    assert resolved.prefixes[ipaddress.ip_network("10.0.7.5/32")] == web | client
    assert resolved.prefixes[ipaddress.ip_network("10.0.7.0/24")] == client
    assert resolved.groups_of("10.0.7.9") == client
    assert resolved.groups_of("10.0.9.3") == edge
    assert resolved.groups_of("192.0.2.1") == HOST_BIT
    assert resolved.groups_of("10.0.9.4") == resolved.groups_of("8.8.8.8") == WORLD_BIT
    assert resolved.names(web | client) == ["web", "client"]


POD_GROUPS = """\
[groups]
web      = { pods = ["shop/web-*"] }
shop     = { k8s_namespaces = ["shop*"] }
labelled = { labels = { app = "web", "app.kubernetes.io/part-of" = "shop" } }
narrow   = { k8s_namespaces = ["shop"], labels = { app = "web" } }
either   = { containers = ["legacy"], pods = ["*/db-0"] }
"""


def test_pod_selectors_match_the_pod_name_its_namespace_and_every_label_pair():
    policy = parse_policy(POD_GROUPS)
    web, shop, labelled, narrow, either = (resolve(policy, [], []).bit(n)
                                           for n in ("web", "shop", "labelled", "narrow", "either"))
    both_labels = (("app", "web"), ("app.kubernetes.io/part-of", "shop"), ("pod-template-hash", "7d9f"))
    resolved = resolve(policy, [
        endpoint(1, "veth1", "10.0.1.1", pod="shop/web-7d9f-abc12", pod_labels=both_labels),
        endpoint(2, "veth2", "10.0.1.2", pod="shop-b/web-1", pod_labels=(("app", "web"),)),  # one pair of two
        endpoint(3, "veth3", "10.0.1.3", pod="other/db-0", pod_labels=both_labels),
        endpoint(4, "veth4", "10.0.1.4", container="legacy"),
        endpoint(5, "veth5", "10.0.1.5", container="web-1", netns="shop"),  # no pod: no pod selector
        endpoint(6, "veth6", "10.0.1.6", pod="shop/api-0", pod_labels=(("app", "web2"),)),
    ], [])
    assert resolved.devices == {1: web | shop | labelled | narrow, 2: shop, 3: labelled | either, 4: either, 6: shop}
    assert resolved.groups_of("10.0.1.1") == web | shop | labelled | narrow
    assert resolved.groups_of("10.0.1.5") == WORLD_BIT


def test_rules_become_port_prefixes_with_every_covering_rule_ored_in():
    text = ('[groups]\na = { ifaces = ["a"] }\nb = { ifaces = ["b"] }\n'
            '[[allow]]\nfrom = "a"\nto = "b"\nproto = "udp"\nports = ["8000-8003"]\n'
            '[[allow]]\nfrom = "b"\nto = "a"\nproto = "udp"\nports = [8002]\n'
            '[[allow]]\nfrom = "a"\nto = "world"\nproto = "icmp"\n')
    resolved = resolve(parse_policy(text), [], [])
    a, b = resolved.bit("a"), resolved.bit("b")
    entries = [(proto, first, bits, {i: int(m) for i, m in enumerate(allowed) if m}) for proto, first, bits, allowed
               in port_entries(resolved)]
    assert entries == [
        (17, 8000, 15, {2: b}),  # 8000-8001
        (17, 8002, 16, {2: b, 3: a}),
        (17, 8003, 16, {2: b}),
        (1, 0, 0, {2: WORLD_BIT}), (58, 0, 0, {2: WORLD_BIT}),  # icmp: v4 and v6, any "port"
    ]


@pytest.mark.parametrize("low,high", [(0, 65535), (1, 65534), (8000, 8099), (443, 443), (1024, 65535)])
def test_port_prefixes_cover_a_range_exactly(low, high):
    covered = [port for first, bits in port_prefixes(low, high) for port in range(first, first + (1 << (16 - bits)))]
    assert covered == list(range(low, high + 1))


def test_the_policy_word():
    assert unpack(word(5, 1, "protect")) == (5, 1, "protect")
    assert unpack(word(2**29 + 3, 0, "monitor")) == (3, 0, "monitor")


T0 = 1_800_000_000 * 1_000_000_000
ENVELOPE = Envelope("node-1", "b00t", 4, T0, T0 + 10**9)


def flow(direction, src, sport, dst, dport, packets, verdict, ifindex=7, first=1, pod=""):
    return flow_record(interval_start=T0, interval_end=T0 + 10**9, ifindex=ifindex, ifname=f"veth{ifindex}",
                       direction=direction, family=4, proto=17, src_ip=src, dst_ip=dst, src_port=sport,
                       dst_port=dport, packets=packets, bytes=packets * 100, first_seen=T0 + first,
                       last_seen=T0 + 5, tcp_flags=0, container_name="web-1", verdict=verdict, pod=pod)


def test_a_denied_connection_is_one_event_per_device_with_both_directions_summed():
    policy = parse_policy('[groups]\nweb = { containers = ["web*"] }\n'
                          '[[allow]]\nfrom = "web"\nto = "world"\nproto = "tcp"\n')
    resolved = resolve(policy, [endpoint(7, "veth7", "10.0.0.1", container="web-1")], [])
    pod = "shop/web-1"  # the device is a pod's: the event names it
    batch = FlowBatch.from_records(ENVELOPE, [
        flow("egress", "10.0.0.1", 40000, "10.0.0.2", 53, 3, "deny", first=2, pod=pod),
        flow("ingress", "10.0.0.2", 53, "10.0.0.1", 40000, 2, "deny", first=3, pod=pod),
        flow("egress", "10.0.0.1", 40001, "10.0.0.2", 53, 9, "allow", pod=pod),
        flow("egress", "10.0.0.1", 40002, "10.0.0.2", 53, 9, "", pod=pod),
    ])
    [event] = violations(batch, resolved, "protect")
    assert msgspec.to_builtins(event) == {
        "host": "node-1", "interval_seq": 4, "interval_start": T0, "interval_end": T0 + 10**9, "mode": "protect",
        "ifname": "veth7", "container": "web-1", "pod": "shop/web-1", "proto": "udp", "src_ip": "10.0.0.1", "src_port": 40000,
        "dst_ip": "10.0.0.2", "dst_port": 53, "packets": 5, "bytes": 500, "from_groups": ["web"],
        "to_groups": ["world"]}
    assert decode_violation(encode_violation(event)) == event  # what the publisher sends reads back


def test_verdict_travels_in_schema_2_and_is_empty_when_absent():
    records = [flow("egress", "10.0.0.1", 40000, "10.0.0.2", 53, 3, "deny"),
               flow("egress", "10.0.0.1", 40001, "10.0.0.2", 53, 3, "")]
    assert [r.verdict for r in decode_message(encode_message(FlowBatch.from_records(ENVELOPE, records)))] == [
        "deny", ""]
    ungoverned = [dataclasses.replace(r, verdict="") for r in records]
    data = encode_message(FlowBatch.from_records(ENVELOPE, ungoverned))
    assert b"verdict" not in data  # as a probe before policies sent it
    assert [r.verdict for r in decode_message(data)] == ["", ""]


def test_top_shows_the_policy_column_only_when_a_device_is_governed():
    plain = FlowBatch.from_records(ENVELOPE, [flow("egress", "10.0.0.1", 40000, "10.0.0.2", 53, 3, "")])
    assert "POLICY" not in interval_summary(plain)
    judged = FlowBatch.from_records(ENVELOPE, [flow("egress", "10.0.0.1", 40000, "10.0.0.2", 53, 3, "deny")])
    header, row = interval_summary(judged).splitlines()[-2:]
    assert header.split()[-1] == "POLICY" and row.split()[-1] == "deny"
    assert max(len(line) for line in interval_summary(judged).splitlines()) < 80


def test_more_prefixes_than_the_kernel_tables_hold_is_one_line():
    cidrs = ", ".join(f'"10.{i >> 8 & 255}.{i & 255}.0/24"' for i in range(32_001 - 2))
    text = f'[groups]\nweb = {{ ifaces = ["veth*"] }}\nfar = {{ cidrs = [{cidrs}, "fd00::/64", "fd00:1::/64"] }}\n'
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "far.toml")
    assert str(caught.value) == ("far.toml line 1: groups: 32,001 distinct prefixes in all; at most 32,000 fit "
                                 "the kernel's tables, merge some")
