"""``connstats policy learn`` end to end: real ``connstats up`` (BPF on veths, nats-server,
SQLite), real TCP and UDP between two test namespaces, and between two real Docker
containers; the printed policy is exactly the one expected, and it covers exactly the
bytes the namespaces' devices counted."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH
from tests.fixtures.netns import TRAFFIC, tcp_closing
from tests.fixtures.policy import attached_devices, learn, udp_receiver
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel


def test_learns_tcp_and_udp_between_two_namespaces(quiet_network, cs_env, start):
    a, b = quiet_network
    before = a.counters()
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")

    server = b.popen_traffic("tcp-echo-server", b.ipv4, 5432)
    try:
        assert json.loads(server.stdout.readline()) == {"listening": True}
        assert a.traffic("tcp-client", b.ipv4, 5432, 40010, 200, 700) == {"sent": 200}
        assert json.loads(server.stdout.readline()) == {"echoed": 200 * 700}
    finally:
        server.wait(30)
    # b listens, else it answers ICMP port unreachable (a rule of its own)
    receiver = udp_receiver(["ip", "netns", "exec", b.netns], b.ipv4, 5353, 5354)
    try:
        a.traffic("udp", b.ipv4, 5353, 40001, 100, 100)
        a.traffic("udp", b.ipv4, 5354, 40002, 30, 1000)
    finally:
        receiver.kill()
        receiver.wait(10)
    until(lambda: not (a.tcp_closing() or b.tcp_closing()), 5, "the last ACK of the TCP close")
    assert up.interrupt() == 0
    after = a.counters()
    seen = after["tx_bytes"] - before["tx_bytes"] + after["rx_bytes"] - before["rx_bytes"]

    header, body = learn(cs_env)
    assert body == f"""\
[groups]
{a.netns} = {{ netns = ["{a.netns}"] }}
{b.netns} = {{ netns = ["{b.netns}"] }}

[[allow]]
from = "{a.netns}"
to = "{b.netns}"
proto = "tcp"
ports = [5432]

[[allow]]
from = "{a.netns}"
to = "{b.netns}"
proto = "udp"
ports = ["5353-5354"]
"""
    assert header[1] == f"# allows the 3 connections ({seen:,} bytes) seen, with 2 rules\n"


def test_learns_two_docker_containers_as_two_container_groups(dockerd, cs_env, start):
    up = start("up", "--auto", "cs-learn-nothing", "--docker-socket", dockerd.socket, "--interval", "0.5",
               *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    client = dockerd.run("cs-learn-client", "sleep", "600")
    server = dockerd.run("cs-learn-server", "sh", "-c", "sleep 600 | nc -l -p 7000 > /tmp/got")
    attached_devices(cs_env, 2)
    server_ip = server["NetworkSettings"]["IPAddress"]

    receiver = udp_receiver(["nsenter", "-t", str(server["State"]["Pid"]), "-n"], server_ip, 5353)
    try:
        sent = subprocess.run(["nsenter", "-t", str(client["State"]["Pid"]), "-n", sys.executable, str(TRAFFIC),
                               "udp", server_ip, "5353", "41001", "40", "100"], capture_output=True, text=True)
    finally:
        receiver.kill()
        receiver.wait(10)
    assert json.loads(sent.stdout) == {"sent": 40}, sent.stderr
    tcp = subprocess.run(["docker", "-H", f"unix://{dockerd.socket}", "exec", "cs-learn-client", "sh", "-c",
                          f"seq 1 500 | nc -w 1 {server_ip} 7000"], capture_output=True, timeout=30)
    assert tcp.returncode == 0 or tcp.stderr == b"nc: timed out\n", tcp.stderr
    got = dockerd.api.exec_start(dockerd.api.exec_create("cs-learn-server", ["cat", "/tmp/got"]))
    assert got == "".join(f"{n}\n" for n in range(1, 501)).encode()
    until(lambda: not any(tcp_closing(["nsenter", "-t", str(c["State"]["Pid"]), "-n"]) for c in (client, server)),
          5, "the server's FIN and its ACK")
    assert up.interrupt() == 0

    _, body = learn(cs_env)
    assert body == """\
[groups]
cs-learn-client = { containers = ["cs-learn-client"] }
cs-learn-server = { containers = ["cs-learn-server"] }

[[allow]]
from = "cs-learn-client"
to = "cs-learn-server"
proto = "tcp"
ports = [7000]

[[allow]]
from = "cs-learn-client"
to = "cs-learn-server"
proto = "udp"
ports = [5353]
"""
