"""The contract: typed events with one encoder, and a contract module a subscriber can import."""
import subprocess
import sys

import msgspec
import pytest

from connstats.probe.contract import Attached, Failed, Gone, HandoverLost, OutboxOverflow, decode_event, event_body
from connstats.probe.contract.events import device_event
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
