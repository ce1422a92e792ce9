"""End to end: ``connstats policy apply|show|off`` against ``connstats up`` (embedded NATS with its
roles: the CLI sends as admin), real BPF on test veths, violation events on
``connstats.v1.policy.<host>``, verdicts in the SQLite file, the policy kept across a restart.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path

import msgspec
import nats
import pytest

from connstats.probe.contract.wire import decode_message
from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD, connstats
from tests.fixtures.policy import Violations, policy_text
from tests.fixtures.wait import steady

pytestmark = pytest.mark.kernel

SIZE = 100


def deny_rows(env, port: int) -> list[tuple]:
    out = connstats(env, "history", "--verdict", "deny", "--port", str(port), "--format", "json")
    assert out.returncode == 0, out.stderr
    return sorted((r["ifname"], r["direction"], r["packets"], r["bytes"]) for r in json.loads(out.stdout))


def test_apply_monitor_protect_restart_and_off(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(a, b))

    applied = connstats(cs_env, "policy", "apply", str(path), "--mode", "monitor", "--format", "json")
    assert applied.returncode == 0, applied.stderr
    assert sorted((d["ifname"], d["groups"]) for d in json.loads(applied.stdout)) == sorted(
        [(a.host_if, "a"), (b.host_if, "b")])

    def monitored_traffic():
        a.traffic("udp", b.ipv4, 5500, 42000, 200, SIZE)
        a.traffic("udp", b.ipv4, 5501, 42001, 300, SIZE)

    b_before = b.counters()
    events = asyncio.run(Violations(state).collect(monitored_traffic, settle=2.5))
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 500  # monitor drops nothing
    mine = [e for e in events if e.src_port == 42001]
    per_device_and_interval = [(e.ifname, e.interval_seq) for e in mine]
    assert len(per_device_and_interval) == len(set(per_device_and_interval))  # once per interval
    for ifname in (a.host_if, b.host_if):
        assert sum(e.packets for e in mine if e.ifname == ifname) == 300
        assert sum(e.bytes for e in mine if e.ifname == ifname) == 300 * (UDP_V4_OVERHEAD + SIZE)
    assert {(e.mode, e.proto, e.dst_port, tuple(e.from_groups), tuple(e.to_groups)) for e in mine} == {
        ("monitor", "udp", 5501, ("a",), ("b",))}
    assert [e for e in events if e.dst_port == 5500] == []

    protected = connstats(cs_env, "policy", "apply", str(path), "--mode", "protect")
    assert protected.returncode == 0, protected.stderr
    assert protected.stdout.startswith("mode protect: 2 groups, 1 rules, 2 governed devices\n")
    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5502, 42002, 100, SIZE)
    a.traffic("udp", b.ipv4, 5500, 42003, 50, SIZE)
    b_after = steady(b.counters, what="b's quiet veth")  # nothing still on its way
    assert b_after["rx_packets"] - b_before["rx_packets"] == 50  # the receiver gets nothing denied

    assert up.interrupt() == 0  # stored; the policy stays in the state directory
    assert (state / "policy.json").stat().st_mode & 0o777 == 0o600
    assert deny_rows(cs_env, 5501) == [(a.host_if, "egress", 300, 300 * 142), (b.host_if, "ingress", 300, 300 * 142)]
    assert deny_rows(cs_env, 5502) == [(a.host_if, "egress", 100, 100 * 142)]
    allowed = json.loads(connstats(cs_env, "history", "--verdict", "allow", "--port", "5500", "-f", "json").stdout)
    assert sorted((r["src_port"], r["ifname"], r["packets"]) for r in allowed) == [
        (42000, a.host_if, 200), (42000, b.host_if, 200), (42003, a.host_if, 50), (42003, b.host_if, 50)]

    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    up.wait_for("policy re-applied")
    shown = json.loads(connstats(cs_env, "policy", "show", "--format", "json").stdout)
    assert sorted(d["ifname"] for d in shown) == sorted([a.host_if, b.host_if])
    assert connstats(cs_env, "policy", "show").stdout.startswith(policy_text(a, b).rstrip("\n") + "\n\nmode protect")
    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5503, 42004, 40, SIZE)
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 0  # still protected after the restart

    off = connstats(cs_env, "policy", "off")
    assert (off.returncode, off.stdout) == (0, "policy off: devices are counted, nothing is judged or dropped\n")
    assert connstats(cs_env, "policy", "show").stdout.startswith("mode off: 0 groups")
    a.traffic("udp", b.ipv4, 5503, 42005, 40, SIZE)
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 40
    assert up.interrupt() == 0
    assert not (state / "policy.json").exists()


def test_a_bad_policy_file_is_one_line_naming_line_and_key(cs_env, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[groups]\nweb = { containers = ["web*"] }\n\n[[allow]]\nfrom = "web"\nto = "web"\n'
                    'proto = "tcp"\nports = [5432, "9000-80"]\n')
    result = connstats(cs_env, "policy", "apply", str(path), "--mode", "protect")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"error: {path} line 8: allow[0].ports: '9000-80' is not a port 0-65535 or a range like "
               '"8000-8099"; fix it\n')


# -- a large policy: done in time, or not at all; the probe keeps its pace --------------------

FAR = 20_000  # prefixes


def big_policy_text(a, b) -> str:
    """a -> b on udp 5500; a -> far on udp 5600, where far is 20,000 /28s far away and b's own
    address: a reaches b on 5600 only through that group's entry in the kernel's trie."""
    far = ", ".join(f'"{ipaddress.IPv4Address(0x64400000 + 16 * i)}/28"' for i in range(FAR))
    return (f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\nb = {{ ifaces = ["{b.host_if}"] }}\n'
            f'far = {{ cidrs = [{far}, "{b.ipv4}/32"] }}\n\n'
            '[[allow]]\nfrom = "a"\nto = "b"\nproto = "udp"\nports = [5500]\n\n'
            '[[allow]]\nfrom = "a"\nto = "far"\nproto = "udp"\nports = [5600]\n')


class Intervals:
    """When each interval's flow messages arrived, subscribed as the admin role."""

    def __init__(self, state: Path) -> None:
        credentials = json.loads((state / "nats-credentials.json").read_text())
        self.url, self.admin = credentials["url"], credentials["users"]["admin"]
        self.arrived: dict[int, float] = {}  # interval_seq -> first message's arrival

    async def collect(self, act):
        nc = await nats.connect(self.url, user=self.admin["user"], password=self.admin["password"])
        try:
            await nc.subscribe("connstats.v1.flows.>", cb=self._on_message)
            await nc.flush()
            return await asyncio.to_thread(act)
        finally:
            await nc.close()

    async def _on_message(self, msg) -> None:
        self.arrived.setdefault(decode_message(msg.data).envelope.interval_seq, time.monotonic())


def port_totals(env, port: int, verdict: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(packets, bytes) per (device, direction) to ``port`` that the store holds with ``verdict``."""
    out = connstats(env, "history", "--verdict", verdict, "--port", str(port), "--format", "json")
    assert out.returncode == 0, out.stderr
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for row in json.loads(out.stdout):
        packets, nbytes = totals.get((row["ifname"], row["direction"]), (0, 0))
        totals[row["ifname"], row["direction"]] = (packets + row["packets"], nbytes + row["bytes"])
    return totals


def test_a_policy_of_20000_prefixes_applies_in_time_while_traffic_is_counted(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    small, big = tmp_path / "small.toml", tmp_path / "big.toml"
    small.write_text(policy_text(a, b))
    big.write_text(big_policy_text(a, b))
    assert connstats(cs_env, "policy", "apply", str(small), "--mode", "protect").returncode == 0

    def apply_under_traffic():
        sender = a.popen_traffic("udp-paced", b.ipv4, 5500, 42100, 3000, SIZE, 3)  # allowed by both
        started = time.monotonic()
        applied = connstats(cs_env, "policy", "apply", str(big), "--mode", "protect")  # --timeout 10
        took = time.monotonic() - started
        assert sender.wait(20) == 0
        sender.stdout.close()
        return applied, took

    intervals = Intervals(Path(cs_env["CONNSTATS_STATE_DIR"]))
    applied, took = asyncio.run(intervals.collect(apply_under_traffic))
    assert (applied.returncode, applied.stderr) == (0, "")
    assert applied.stdout.startswith("mode protect: 3 groups, 2 rules, 2 governed devices\n")
    print(f"apply of {FAR} prefixes: {took:.2f} s")
    seqs = sorted(intervals.arrived)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # no interval missing while it compiled ...
    gaps = [intervals.arrived[s] - intervals.arrived[p] for p, s in zip(seqs, seqs[1:], strict=False)]
    assert len(seqs) >= 4 and max(gaps) < 2.0, gaps  # ... nor late (one every 0.5 s)

    b_before = b.counters()
    a.traffic("udp", b.ipv4, 5600, 42101, 100, SIZE)  # allowed as far: b's /32 among the 20,000
    a.traffic("udp", b.ipv4, 5601, 42102, 50, SIZE)  # denied
    assert b.counters()["rx_packets"] - b_before["rx_packets"] == 100
    shown = connstats(cs_env, "policy", "show", "--format", "json")
    assert sorted((d["ifname"], d["groups"]) for d in json.loads(shown.stdout)) == sorted(
        [(a.host_if, "a"), (b.host_if, "b")])

    assert up.interrupt() == 0
    wire = UDP_V4_OVERHEAD + SIZE
    assert port_totals(cs_env, 5500, "allow") == {(a.host_if, "egress"): (3000, 3000 * wire),
                                                 (b.host_if, "ingress"): (3000, 3000 * wire)}
    assert port_totals(cs_env, 5500, "deny") == {}  # allowed by the old policy and the new, none lost
    assert port_totals(cs_env, 5600, "allow") == {(a.host_if, "egress"): (100, 100 * wire),
                                                 (b.host_if, "ingress"): (100, 100 * wire)}
    assert port_totals(cs_env, 5601, "deny") == {(a.host_if, "egress"): (50, 50 * wire)}


def test_a_policy_file_over_max_payload_is_one_line(cs_env, nats_server_factory, tmp_path):
    server = nats_server_factory(max_payload=65_536)
    path = tmp_path / "big.toml"
    text = '[groups]\nfar = { cidrs = [' + ", ".join(f'"10.{i >> 8}.{i & 255}.0/24"' for i in range(5000)) + "] }\n"
    path.write_text(text)
    result = connstats(cs_env, "policy", "apply", str(path), "--mode", "monitor", "--nats", server.url, "--host", "h")
    size = len(msgspec.json.encode({"text": text, "mode": "monitor", "source": "big.toml", "within_ms": 9000,
                                    "deadline_ms": 1_000_000_000_000}))
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"error: the policy_apply request is {size:,} bytes, more than the 65,536 bytes the NATS server "
               "takes in one message (max_payload); send less (a policy: fewer or merged prefixes) or raise "
               "max_payload in the server's configuration\n")
