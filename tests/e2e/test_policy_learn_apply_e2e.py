"""Learn, then protect: ``connstats policy learn`` from real traffic, ``policy apply --mode protect``
of what it printed, and the same traffic again flows with exact counts and verdict ``allow``
(between two test namespaces, and between two real Docker containers); what the policy does
not allow is dropped and stored as ``deny``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH, connstats
from tests.fixtures.netns import TRAFFIC
from tests.fixtures.policy import attached_devices, learn, udp_receiver
from tests.fixtures.wait import steady, until

pytestmark = pytest.mark.kernel

UDP4 = 14 + 20 + 8


def by_verdict(env: dict, verdict: str, port: int) -> list[tuple]:
    out = connstats(env, "history", "--verdict", verdict, "--port", str(port), "--format", "json")
    assert out.returncode == 0, out.stderr
    return sorted((r["ifname"], r["direction"], r["src_port"], r["packets"], r["bytes"]) for r in json.loads(out.stdout))


def namespace_traffic(a, b, tcp_sport: int, udp_sport: int) -> None:
    server = b.popen_traffic("tcp-echo-server", b.ipv4, 5432)
    try:
        assert json.loads(server.stdout.readline()) == {"listening": True}
        assert a.traffic("tcp-client", b.ipv4, 5432, tcp_sport, 50, 300) == {"sent": 50}
        assert json.loads(server.stdout.readline()) == {"echoed": 50 * 300}
    finally:
        server.wait(30)
        server.stdout.close()
    receiver = udp_receiver(["ip", "netns", "exec", b.netns], b.ipv4, 5353)
    try:
        a.traffic("udp", b.ipv4, 5353, udp_sport, 100, 100)
    finally:
        receiver.kill()
        receiver.wait(10)
        receiver.stdout.close()
    until(lambda: not (a.tcp_closing() or b.tcp_closing()), 5, "the last ACK of the TCP close")


def test_a_learned_policy_in_protect_mode_lets_the_same_traffic_through(quiet_network, cs_env, start, tmp_path):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    namespace_traffic(a, b, 40010, 40001)
    assert up.interrupt() == 0
    _, body = learn(cs_env)
    path = tmp_path / "learned.toml"
    path.write_text(body)

    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    applied = connstats(cs_env, "policy", "apply", str(path), "--mode", "protect")
    assert applied.stdout.startswith("mode protect: 2 groups, 2 rules, 2 governed devices\n"), applied.stderr
    b_before = b.counters()
    namespace_traffic(a, b, 40020, 40002)  # the same again, from other client ports
    a.traffic("udp", b.ipv4, 5399, 40003, 20, 100)  # not learned
    b_after = b.counters()
    assert up.interrupt() == 0

    assert by_verdict(cs_env, "allow", 5353) == [(a.host_if, "egress", 40002, 100, 100 * (UDP4 + 100)),
                                                 (b.host_if, "ingress", 40002, 100, 100 * (UDP4 + 100))]
    tcp = by_verdict(cs_env, "allow", 5432)
    assert {row[:3] for row in tcp} == {(a.host_if, "egress", 40020), (a.host_if, "ingress", 5432),
                                        (b.host_if, "egress", 5432), (b.host_if, "ingress", 40020)}
    assert by_verdict(cs_env, "deny", 5432) == by_verdict(cs_env, "deny", 5353) == []
    assert by_verdict(cs_env, "deny", 5399) == [(a.host_if, "egress", 40003, 20, 20 * (UDP4 + 100))]
    # what b received is exactly what b's veth counted going in: nothing denied got there
    received = connstats(cs_env, "history", "--iface", b.host_if, "--since", "1m", "--format", "json")
    into_b = [r for r in json.loads(received.stdout) if r["direction"] == "ingress"
              and r["src_port"] in (40020, 40002, 40003)]
    assert sum(r["packets"] for r in into_b) == b_after["rx_packets"] - b_before["rx_packets"]


def docker_traffic(dockerd, client, server, sport: int, server_port: int) -> None:
    server_ip = server["NetworkSettings"]["IPAddress"]
    receiver = udp_receiver(["nsenter", "-t", str(server["State"]["Pid"]), "-n"], server_ip, 5353)
    try:
        sent = subprocess.run(["nsenter", "-t", str(client["State"]["Pid"]), "-n", sys.executable, str(TRAFFIC),
                               "udp", server_ip, str(server_port), str(sport), "40", "100"],
                              capture_output=True, text=True)
    finally:
        receiver.kill()
        receiver.wait(10)
        receiver.stdout.close()
    assert json.loads(sent.stdout) == {"sent": 40}, sent.stderr
    # what the server's eth0 got once it stays still: no datagram is still on its way when up stops
    steady(lambda: Path(f"/proc/{server['State']['Pid']}/net/dev").read_text(), what="the server's quiet eth0")


def test_a_learned_policy_between_two_docker_containers(dockerd, cs_env, start, tmp_path):
    up = start("up", "--auto", "cs-learn-nothing", "--docker-socket", dockerd.socket, "--interval", "0.5",
               *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    client = dockerd.run("cs-apply-client", "sleep", "600")
    server = dockerd.run("cs-apply-server", "sleep", "600")
    attached_devices(cs_env, 2)
    docker_traffic(dockerd, client, server, 41001, 5353)
    assert up.interrupt() == 0
    _, body = learn(cs_env)
    assert 'cs-apply-client = { containers = ["cs-apply-client"] }' in body
    path = tmp_path / "learned.toml"
    path.write_text(body)

    up = start("up", "--auto", "cs-learn-nothing", "--docker-socket", dockerd.socket, "--interval", "0.5",
               *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    attached_devices(cs_env, 2)
    applied = connstats(cs_env, "policy", "apply", str(path), "--mode", "protect")
    assert applied.stdout.startswith("mode protect: 2 groups, 1 rules, 2 governed devices\n"), applied.stderr
    docker_traffic(dockerd, client, server, 41002, 5353)  # learned: flows
    docker_traffic(dockerd, client, server, 41003, 5354)  # not learned: dropped at the client's veth
    assert up.interrupt() == 0

    rows = by_verdict(cs_env, "allow", 5353)
    assert sorted((row[1], row[2], row[3], row[4]) for row in rows if row[2] == 41002) == [
        ("egress", 41002, 40, 40 * (UDP4 + 100)), ("ingress", 41002, 40, 40 * (UDP4 + 100))]
    assert [(row[1], row[3], row[4]) for row in by_verdict(cs_env, "deny", 5354)] == [
        ("egress", 40, 40 * (UDP4 + 100))]  # counted at the client's veth, never reached the server's
