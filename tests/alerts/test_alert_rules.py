"""The rules file: every kind parses, every mistake is one line naming the rule and the key."""
from __future__ import annotations

import pytest

from connstats.sink.alerts import KINDS, RuleError, load_rules

GOOD = '''
[[rule]]
name = "udp-burst"
kind = "threshold"
metric = "packets"
by = ["ifname", "dst_port"]
where = { proto = "udp", direction = "egress" }
window = "30s"
above = 100000
for = "0s"
severity = "warning"

[[rule]]
name = "new-port"
kind = "new_port"
by = ["container_name"]
learn = "1h"

[[rule]]
name = "new-peer"
kind = "new_peer"
where = { direction = "egress", dst_port = [80, 443] }

[[rule]]
name = "spike"
kind = "spike"
metric = "bytes"
window = "10s"
factor = 5

[[rule]]
name = "map-full"
kind = "overflow"

[[rule]]
name = "silent"
kind = "silent_host"
for = "1m"
severity = "critical"
'''


def write(tmp_path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_every_kind_parses(tmp_path):
    rules = load_rules(write(tmp_path, GOOD))
    assert [(r.name, r.kind) for r in rules] == [
        ("udp-burst", "threshold"), ("new-port", "new_port"), ("new-peer", "new_peer"), ("spike", "spike"),
        ("map-full", "overflow"), ("silent", "silent_host")]
    burst = rules[0]
    assert (burst.by, burst.where, burst.options["window"], burst.options["above"], burst.for_ns) == (
        ("ifname", "dst_port"), (("direction", frozenset({"egress"})), ("proto", frozenset({17}))),
        30 * 10**9, 100000, 0)
    assert rules[2].where == (("direction", frozenset({"egress"})), ("dst_port", frozenset({80, 443})))
    assert (rules[4].by, rules[4].options["above"]) == (("host",), 0)
    assert (rules[5].severity, rules[5].for_ns) == ("critical", 60 * 10**9)
    assert set(KINDS) == {"threshold", "new_peer", "new_port", "spike", "overflow", "silent_host",
                          "policy_violation", "rtt", "retransmit_ratio", "drops"}


def test_the_quality_kinds_parse_with_their_defaults(tmp_path):
    rtt, ratio, drops = load_rules(write(tmp_path, '''
[[rule]]
name = "slow"
kind = "rtt"
above = 100

[[rule]]
name = "lossy"
kind = "retransmit_ratio"
by = ["container_name"]
above = 0.02

[[rule]]
name = "dropped"
kind = "drops"
by = ["ifname", "drop_reason"]
where = { drop_reason = "NETFILTER_DROP" }
above = 0
'''))
    assert (rtt.kind, dict(rtt.options)) == ("rtt", {"window": 60 * 10**9, "above": 100, "statistic": "max"})
    assert (ratio.by, dict(ratio.options)) == (("container_name",), {"window": 60 * 10**9, "above": 0.02,
                                                                     "min_packets": 100})
    assert (drops.by, drops.where, dict(drops.options)) == (
        ("ifname", "drop_reason"), (("drop_reason", frozenset({"NETFILTER_DROP"})),),
        {"metric": "packets", "window": 60 * 10**9, "above": 0})


RULE = '[[rule]]\nname = "r1"\nkind = "threshold"\nmetric = "packets"\nwindow = "30s"\nabove = 5\n'

BAD = [
    (RULE.replace('kind = "threshold"', 'kind = "treshold"'),
     "rule 'r1': key 'kind': unknown kind 'treshold'; use one of threshold, new_peer, new_port, spike, overflow, silent_host, "
     "policy_violation, rtt, retransmit_ratio, drops"),
    (RULE + 'abve = 3\n', "rule 'r1': key 'abve': unknown key for kind 'threshold'; use one of name, kind, "
     "severity, for, repeat, cap, description, metric, by, where, window, above, below"),
    (RULE.replace('"30s"', '"30x"'),
     "rule 'r1': key 'window': '30x' is not a duration; use e.g. 30s, 15m, 2h, 1d"),
    (RULE.replace('window = "30s"\n', ''), "rule 'r1': key 'window': missing; a threshold rule needs it"),
    (RULE + 'by = ["ifname", "port"]\n', "rule 'r1': key 'by': unknown field 'port'; use one of interval_start, "
     "interval_end, ifindex, ifname, direction, family, proto, src_ip, dst_ip, src_port, dst_port, packets, "
     "bytes, first_seen, last_seen, tcp_flags, container_id, container_name, container_image, pod, workload, "
     "runtime, verdict, process, pid, peer_process, peer_pid, rtt_min_us, rtt_avg_us, rtt_max_us, retransmits, "
     "drop_packets, drop_bytes, drop_reason, host"),
    (RULE + 'where = { prot = "udp" }\n', "rule 'r1': key 'where': unknown field 'prot'; use one of "
     "interval_start, interval_end, ifindex, ifname, direction, family, proto, src_ip, dst_ip, src_port, "
     "dst_port, packets, bytes, first_seen, last_seen, tcp_flags, container_id, container_name, "
     "container_image, pod, workload, runtime, verdict, process, pid, peer_process, peer_pid, rtt_min_us, "
     "rtt_avg_us, rtt_max_us, retransmits, drop_packets, drop_bytes, drop_reason, host"),
    (RULE + 'where = { proto = "udpp" }\n',
     "rule 'r1': key 'where': unknown protocol 'udpp'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (RULE + 'below = 3\n', "rule 'r1': key 'above': give exactly one of above and below"),
    (RULE.replace('metric = "packets"', 'metric = "frames"'),
     "rule 'r1': key 'metric': 'frames' is not one of packets, bytes, connections"),
    (RULE + 'for = 30\n', "rule 'r1': key 'for': 30 is not a duration; write it as text, e.g. \"30s\""),
    (RULE.replace('name = "r1"\n', ''), "rule #1: key 'name': missing; every rule needs it"),
    (RULE + RULE, "rule 'r1': the name is used twice; give each rule its own name"),
    ('[[rule]]\nname = "s"\nkind = "silent_host"\n',
     "rule 's': key 'for': missing or 0; say how long a silence raises it, e.g. \"1m\""),
    ('[[rule]]\nname = "o"\nkind = "overflow"\nby = ["dst_port"]\n',
     "rule 'o': key 'by': unknown field 'dst_port'; use one of host, ifname, direction"),
    ('[rules]\n', "unknown table 'rules'; rules are [[rule]] tables"),
    ('', "no [[rule]] table; add at least one rule"),
    ('[[rule]]\nname = "k"\n', "rule 'k': key 'kind': missing; every rule needs it"),
    # issue 18: TOML's nan and inf, and an empty window
    (RULE.replace("above = 5", "above = nan"), "rule 'r1': key 'above': nan is not a finite number; write e.g. 1000 or 0.5"),
    (RULE.replace("above = 5", "above = inf"), "rule 'r1': key 'above': inf is not a finite number; write e.g. 1000 or 0.5"),
    (RULE.replace("above = 5", "above = -inf"),
     "rule 'r1': key 'above': -inf is not a finite number; write e.g. 1000 or 0.5"),
    (RULE.replace('window = "30s"', 'window = "0s"'),
     "rule 'r1': key 'window': '0s' is no time at all; use a duration above 0, e.g. \"30s\""),
    ('[[rule]]\nname = "sp"\nkind = "spike"\nmetric = "bytes"\nwindow = "10s"\nfactor = nan\n',
     "rule 'sp': key 'factor': nan is not a finite number; write e.g. 1000 or 0.5"),
    ('[[rule]]\nname = "sp"\nkind = "spike"\nmetric = "bytes"\nwindow = "0s"\nfactor = 5\n',
     "rule 'sp': key 'window': '0s' is no time at all; use a duration above 0, e.g. \"30s\""),
    # issue 20: the quality kinds
    ('[[rule]]\nname = "q"\nkind = "rtt"\n', "rule 'q': key 'above': missing; a rtt rule needs it"),
    ('[[rule]]\nname = "q"\nkind = "rtt"\nabove = 0\n', "rule 'q': key 'above': 0 is not above 0; use a positive number"),
    ('[[rule]]\nname = "q"\nkind = "rtt"\nabove = 100\nstatistic = "p99"\n',
     "rule 'q': key 'statistic': 'p99' is not one of max, avg"),
    ('[[rule]]\nname = "q"\nkind = "retransmit_ratio"\nabove = "2%"\n',
     "rule 'q': key 'above': '2%' is not a number; write e.g. 1000 or 0.5"),
    ('[[rule]]\nname = "q"\nkind = "retransmit_ratio"\nabove = 0.02\nmin_packets = 0\n',
     "rule 'q': key 'min_packets': 0 is not a whole number of at least 1"),
    ('[[rule]]\nname = "q"\nkind = "drops"\nabove = 10\nby = ["reason"]\n',
     "rule 'q': key 'by': unknown field 'reason'; use one of interval_start, interval_end, ifindex, ifname, "
     "direction, family, proto, src_ip, dst_ip, src_port, dst_port, packets, bytes, first_seen, last_seen, tcp_flags, "
     "container_id, container_name, container_image, pod, workload, runtime, verdict, process, pid, peer_process, "
     "peer_pid, rtt_min_us, rtt_avg_us, rtt_max_us, retransmits, drop_packets, drop_bytes, drop_reason, host"),
    ('[[rule]]\nname = "q"\nkind = "drops"\nabove = 10\nmetric = "segments"\n',
     "rule 'q': key 'metric': 'segments' is not one of packets, bytes"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_each_mistake_is_one_line_naming_rule_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as error:
        load_rules(path)
    assert str(error.value) == f"{path}: {message}"
    assert "\n" not in str(error.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(RuleError) as missing:
        load_rules(tmp_path / "nope.toml")
    assert str(missing.value) == f"cannot read rules file {tmp_path / 'nope.toml'}: No such file or directory; check the path"
    path = write(tmp_path, "[[rule]\n")
    with pytest.raises(RuleError) as broken:
        load_rules(path)
    assert str(broken.value).startswith(f"{path} is not valid TOML (") and str(broken.value).endswith("; fix it")
