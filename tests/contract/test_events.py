"""The contract: typed events, policy violations and alert messages with one encoder and one
bounded decoder each, and a contract module a subscriber can import."""
import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from connstats.probe.contract import (
    AlertMessage,
    Attached,
    Failed,
    FiringAlerts,
    Gone,
    HandoverLost,
    MessageError,
    OutboxOverflow,
    ViolationMessage,
    decode_alert,
    decode_event,
    decode_firing,
    decode_violation,
    encode_alert,
    encode_firing,
    encode_violation,
    event_body,
)
from connstats.probe.contract.alerts import MAX_ALERT_BYTES, MAX_FIRING_BYTES
from connstats.probe.contract.events import device_event
from connstats.probe.contract.violations import MAX_VIOLATION_BYTES
from connstats.probe.kernel.devices import AttachedDevice, LinkInfo

VETH = AttachedDevice(LinkInfo(12, "veth1a", "veth", True), "auto", True, 1)


@pytest.mark.parametrize("event, body", [
    (device_event("attached", VETH, source="docker", netns=4026532100, netns_name="", pid=42,
                  container_id="c1", container_name="web", container_image="nginx"),
     {"event": "attached", "ifname": "veth1a", "ifindex": 12, "direction_mode": "auto", "inverted": True,
      "source": "docker", "netns": 4026532100, "netns_name": "", "pid": 42, "container_id": "c1",
      "container_name": "web", "container_image": "nginx"}),
    (device_event("gone", VETH, source="auto"),
     {"event": "gone", "ifname": "veth1a", "ifindex": 12, "direction_mode": "auto", "inverted": True,
      "source": "auto"}),
    (device_event("replaced", VETH, hooks={"ingress": None}),
     {"event": "replaced", "ifname": "veth1a", "ifindex": 12, "direction_mode": "auto", "inverted": True,
      "hooks": {"ingress": None}}),
    (Failed(ifname="veth1a", ifindex=12, reason="busy", attempt=2, retry_in=1.0, source="auto"),
     {"event": "failed", "ifname": "veth1a", "ifindex": 12, "reason": "busy", "attempt": 2, "retry_in": 1.0,
      "source": "auto"}),
    (HandoverLost(layout="v1-abc", connections=3, packets=0, bytes=0),
     {"event": "handover_lost", "layout": "v1-abc", "connections": 3, "packets": 0, "bytes": 0}),
    (OutboxOverflow(dropped_messages=2, dropped_records=9, dropped_since_last_report=2),
     {"event": "outbox_overflow", "dropped_messages": 2, "dropped_records": 9, "dropped_since_last_report": 2}),
])
def test_each_event_has_one_body_and_reads_back(event, body):
    assert event_body(event) == body
    published = msgspec.json.encode({**body, "host": "node-1", "time_ns": 5})
    decoded = decode_event(published)
    assert type(decoded) is type(event) and (decoded.host, decoded.time_ns) == ("node-1", 5)
    assert event_body(decoded) == {**body, "host": "node-1", "time_ns": 5}


def test_a_misspelt_event_field_is_refused():
    with pytest.raises(TypeError):
        device_event("attached", VETH, sorce="auto")
    assert isinstance(decode_event(b'{"event": "gone", "ifname": "x", "ifindex": 1}'), Gone)
    assert not isinstance(decode_event(b'{"event": "attached", "ifname": "x", "ifindex": 1}'), Gone)
    assert Attached.__struct_config__.tag == "attached"


def test_the_contract_loads_no_bpf_and_no_netlink():
    code = ("import sys, connstats.probe.contract; "
            "print(sorted(m for m in ('bcc', 'pyroute2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- policy violations and alert messages: typed, the JSON as the producers sent it before -----

VIOLATION = {"host": "node-1", "interval_seq": 4812, "interval_start": 1795000000000000000,
             "interval_end": 1795000010000000000, "mode": "protect", "ifname": "veth3a9f2c1",
             "container": "web-1", "pod": "", "proto": "tcp", "src_ip": "172.17.0.2", "src_port": 43512,
             "dst_ip": "172.17.0.9", "dst_port": 22, "packets": 3, "bytes": 222,
             "from_groups": ["web"], "to_groups": ["world"]}
VIOLATION_JSON = (b'{"host":"node-1","interval_seq":4812,"interval_start":1795000000000000000,'
                  b'"interval_end":1795000010000000000,"mode":"protect","ifname":"veth3a9f2c1",'
                  b'"container":"web-1","pod":"","proto":"tcp","src_ip":"172.17.0.2","src_port":43512,'
                  b'"dst_ip":"172.17.0.9","dst_port":22,"packets":3,"bytes":222,'
                  b'"from_groups":["web"],"to_groups":["world"]}')
ALERT = {"fingerprint": "0f3c2a9d81b4e6a7", "state": "firing", "rule": "udp-burst", "kind": "threshold",
         "severity": "warning", "host": "web-1",
         "labels": {"alertname": "udp-burst", "severity": "warning", "ifname": "veth3a9f2c1", "dst_port": "5353"},
         "value": 184220, "threshold": 100000,
         "summary": "ifname=veth3a9f2c1 dst_port=5353: 184220 packets in 30s, above 100000",
         "description": "", "started_at": 1795000012000000000, "ended_at": 0,
         "sent_at": 1795000012000000000, "repeat_ns": 60000000000, "engine": "web-1"}
ALERT_JSON = (b'{"fingerprint":"0f3c2a9d81b4e6a7","state":"firing","rule":"udp-burst","kind":"threshold",'
              b'"severity":"warning","host":"web-1","labels":{"alertname":"udp-burst","severity":"warning",'
              b'"ifname":"veth3a9f2c1","dst_port":"5353"},"value":184220,"threshold":100000,'
              b'"summary":"ifname=veth3a9f2c1 dst_port=5353: 184220 packets in 30s, above 100000",'
              b'"description":"","started_at":1795000012000000000,"ended_at":0,'
              b'"sent_at":1795000012000000000,"repeat_ns":60000000000,"engine":"web-1"}')


def old_alert_body(alert: dict) -> bytes:
    """How sink/alerts/notify.py encoded an alert's dict before the type."""
    return json.dumps(alert, separators=(",", ":")).encode()


def test_a_violation_encodes_as_the_probe_sent_its_dict_and_reads_back():
    violation = ViolationMessage(**VIOLATION)
    assert encode_violation(violation) == VIOLATION_JSON == msgspec.json.encode(VIOLATION)  # the old encoder
    assert decode_violation(VIOLATION_JSON) == violation
    assert msgspec.to_builtins(decode_violation(VIOLATION_JSON)) == VIOLATION
    assert list(ViolationMessage.__struct_fields__) == list(VIOLATION)  # the keys in the order sent


@pytest.mark.parametrize("changes", [
    {},
    {"state": "resolved", "ended_at": 1795000072500000000, "sent_at": 1795000072500000000},
    {"value": 7.25, "threshold": None, "description": "see runbook"},  # new_*: threshold null
    {"value": 3.0, "threshold": 2.5},  # a float stays a float (3.0, not 3)
    {"labels": {"alertname": "per-peer", "severity": "critical", "storm": "true"}, "value": 8, "threshold": 3},
])
def test_an_alert_encodes_as_the_engine_sent_its_dict_and_reads_back(changes):
    old = ALERT | changes
    alert = AlertMessage(**old)
    assert encode_alert(alert) == old_alert_body(old)
    assert decode_alert(old_alert_body(old)) == alert
    assert msgspec.to_builtins(alert) == old
    assert [type(v) for v in (alert.value, decode_alert(encode_alert(alert)).value)] == [type(old["value"])] * 2


def test_the_alert_json_is_pinned():
    assert encode_alert(AlertMessage(**ALERT)) == ALERT_JSON
    assert list(AlertMessage.__struct_fields__) == list(ALERT)


def test_text_beyond_ascii_is_the_same_json_value_as_before():
    """json.dumps wrote \\u00e9, msgspec writes the UTF-8 bytes: one value, either reads back."""
    old = ALERT | {"summary": "café ☕", "labels": {"alertname": "é", "severity": "warning", "ifname": "ä\n"}}
    assert json.loads(encode_alert(AlertMessage(**old))) == json.loads(old_alert_body(old)) == old
    assert decode_alert(old_alert_body(old)) == decode_alert(encode_alert(AlertMessage(**old))) == AlertMessage(**old)


def test_the_engines_firing_answer_reads_back():
    old = {"engine": "web-1", "alerts": [ALERT, ALERT | {"fingerprint": "1111222233334444", "value": 0.5}]}
    firing = decode_firing(old_alert_body(old))  # the engine's json.dumps of its dict before
    assert (firing.engine, [a.fingerprint for a in firing.alerts]) == (
        "web-1", ["0f3c2a9d81b4e6a7", "1111222233334444"])
    assert encode_firing(firing) == old_alert_body(old)
    assert decode_firing(b'{"engine": "e", "alerts": []}') == FiringAlerts(engine="e", alerts=[])


def documented_json(page: str, heading: str) -> list:
    """The JSON code blocks of ``docs/<page>`` between ``heading`` and the next heading of its level."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    level = heading.split(" ")[0]
    section = text.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", section, re.S)]


def test_the_documented_messages_decode():
    [alert] = documented_json("alerts.md", "## The alert message")
    assert msgspec.to_builtins(decode_alert(json.dumps(alert).encode())) == alert == ALERT
    violation = next(block for block in documented_json("policy.md", "## Verdicts and violations")
                     if isinstance(block, dict) and "interval_seq" in block)
    assert msgspec.to_builtins(decode_violation(json.dumps(violation).encode())) == violation == VIOLATION


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def one_line_error(decode, data: bytes) -> str:
    with pytest.raises(MessageError) as caught:
        decode(data)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 400, text
    return text


HOSTILE_VIOLATIONS = [
    (b"not json", "not a policy violation: JSON is malformed"),
    (b"\xff\xfe{}", "not a policy violation: JSON is malformed"),
    (b"[]", "not a policy violation: Expected `object`, got `array`"),
    (b"null", "not a policy violation: Expected `object`, got `null`"),
    (msgspec.json.encode({k: v for k, v in VIOLATION.items() if k != "dst_port"}),
     "not a policy violation: Object missing required field `dst_port`"),
    (msgspec.json.encode(VIOLATION | {"src_port": "43512"}),
     "not a policy violation: Expected `int`, got `str` - at `$.src_port`"),
    (msgspec.json.encode(VIOLATION | {"dst_port": 70000}),
     "not a policy violation: Expected `int` <= 65535 - at `$.dst_port`"),
    (msgspec.json.encode(VIOLATION | {"packets": -1}),
     "not a policy violation: Expected `int` >= 0 - at `$.packets`"),
    (msgspec.json.encode(VIOLATION | {"bytes": True}),
     "not a policy violation: Expected `int`, got `bool` - at `$.bytes`"),
    (msgspec.json.encode(VIOLATION | {"mode": "off"}),
     "not a policy violation: Invalid enum value 'off' - at `$.mode`"),
    (msgspec.json.encode(VIOLATION | {"to_groups": "world"}),
     "not a policy violation: Expected `array`, got `str` - at `$.to_groups`"),
    (msgspec.json.encode(VIOLATION | {"from_groups": [f"g{i}" for i in range(65)]}),
     "not a policy violation: Expected `array` of length <= 64 - at `$.from_groups`"),
    (msgspec.json.encode(VIOLATION | {"host": ""}),
     "not a policy violation: Expected `str` of length >= 1 - at `$.host`"),
    (msgspec.json.encode(VIOLATION | {"interval_seq": 10**30}),
     "not a policy violation: Expected `int` <= 9223372036854775807 - at `$.interval_seq`"),
]


@pytest.mark.parametrize("data, error", HOSTILE_VIOLATIONS)
def test_a_malformed_violation_is_one_line(data, error):
    assert one_line_error(decode_violation, data).startswith(error)


HOSTILE_ALERTS = [
    (b"", "not an alert message: Input data was truncated"),
    (b'{"fingerprint": ', "not an alert message: Input data was truncated"),
    (b"[1, 2]", "not an alert message: Expected `object`, got `array`"),
    (msgspec.json.encode({k: v for k, v in ALERT.items() if k != "state"}),
     "not an alert message: Object missing required field `state`"),
    (msgspec.json.encode(ALERT | {"state": "pending"}),
     "not an alert message: Invalid enum value 'pending' - at `$.state`"),
    (msgspec.json.encode(ALERT | {"value": "184220"}),
     "not an alert message: Expected `int | float`, got `str` - at `$.value`"),
    (msgspec.json.encode(ALERT | {"value": False}),
     "not an alert message: Expected `int | float`, got `bool` - at `$.value`"),
    (ALERT_JSON.replace(b'"value":184220', b'"value":NaN'), "not an alert message: JSON is malformed"),
    (ALERT_JSON.replace(b'"value":184220', b'"value":1e999'), "not an alert message: Number out of range"),
    (msgspec.json.encode(ALERT | {"labels": {"dst_port": 5353}}),
     "not an alert message: Expected `str`, got `int` - at `$.labels[...]`"),
    (msgspec.json.encode(ALERT | {"labels": ["dst_port"]}),
     "not an alert message: Expected `object`, got `array` - at `$.labels`"),
    (msgspec.json.encode(ALERT | {"sent_at": -5}), "not an alert message: Expected `int` >= 0 - at `$.sent_at`"),
    (msgspec.json.encode(ALERT | {"started_at": 2**63}),
     "not an alert message: Expected `int` <= 9223372036854775807 - at `$.started_at`"),
    (msgspec.json.encode(ALERT | {"threshold": {}}),
     "not an alert message: Expected `int | float | null`, got `object` - at `$.threshold`"),
]


@pytest.mark.parametrize("data, error", HOSTILE_ALERTS)
def test_a_malformed_alert_is_one_line(data, error):
    assert one_line_error(decode_alert, data).startswith(error)


BAD_ENUM = "x\n" * 2_000  # msgspec quotes a wrong enum value in its reason


@pytest.mark.parametrize("decode, limit, what, quoting", [
    (decode_violation, MAX_VIOLATION_BYTES, "a policy violation", VIOLATION | {"mode": BAD_ENUM}),
    (decode_alert, MAX_ALERT_BYTES, "an alert message", ALERT | {"state": BAD_ENUM}),
    (decode_firing, MAX_FIRING_BYTES, "the alert engine's answer",
     {"engine": "e", "alerts": [ALERT | {"state": BAD_ENUM}]}),
])
def test_huge_deep_and_quoted_inputs_are_one_line(decode, limit, what, quoting):
    assert one_line_error(decode, b" " * (limit + 1)) == (
        f"{limit + 1} bytes, more than the {limit} allowed; send less")
    deep = one_line_error(decode, f'{{"labels": {nested(1000)}}}'.encode())
    assert deep == "nested 1001 deep, deeper than the 32 levels of arrays and objects allowed; send flatter data"
    assert one_line_error(decode, nested(32).encode()).startswith(f"not {what}: Expected `object`, got `array`")
    quoted = one_line_error(decode, msgspec.json.encode(quoting))  # newlines escaped, the reason cut short
    assert quoted.startswith(f"not {what}: Invalid enum value 'x\\nx\\n") and quoted.endswith("...")


def test_the_firing_answer_refuses_what_is_not_one():
    assert one_line_error(decode_firing, b'{"engine": "e"}') == (
        "not the alert engine's answer: Object missing required field `alerts`")
    assert one_line_error(decode_firing, msgspec.json.encode({"engine": "e", "alerts": [ALERT | {"rule": 1}]})) == (
        "not the alert engine's answer: Expected `str`, got `int` - at `$.alerts[0].rule`")


def test_an_unknown_event_type_is_quoted_short():
    text = one_line_error(decode_event, b'{"event": "' + b"x" * 10_000 + b'"}')
    assert text.startswith("not an event: Invalid value 'xxx") and text.endswith("...") and len(text) < 330
