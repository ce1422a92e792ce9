"""The map of ``connstats up --ui`` in a real headless Chromium: two namespaces, each routed
to the host through its own addressed veth (real BPF, real traffic, the embedded nats-server
and the real SQLite store), talk to the host. The host is one node named for it, not one
outside address per veth."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from connstats.sink.history import HistoryQuery, sqlite_history
from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD
from tests.fixtures.nats import free_port
from tests.fixtures.web import wait_stored

pytestmark = pytest.mark.kernel

MS = 1_000_000
NODES = """() => [...document.querySelectorAll('#map-svg .node')].map(n => [n.dataset.id, n.classList[1],
    n.querySelector('title').textContent.split('\\n')[0]])"""
EDGES = """() => [...document.querySelectorAll('#map-svg .edge')].map(e => [e.dataset.source, e.dataset.target,
    Number(e.dataset.bytes), Number(e.dataset.packets)])"""


def test_two_namespaces_talking_to_the_host_draw_one_host_node(routed_namespaces, cs_env, start, browser_page):
    (a, b), (a_host_end, b_host_end) = routed_namespaces.hosts, routed_namespaces.host_ends
    ports = (free_port(), free_port())
    receivers = []
    for address, port in ((a_host_end, ports[0]), (b_host_end, ports[1])):  # the host's programs: no ICMP back
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((address, port))
        receivers.append(receiver)
    ui = free_port()
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", *NO_HTTP_CLASH,
               "--ui", f"127.0.0.1:{ui}")
    try:
        up.wait_for("connstats up: watching")
        senders = []  # `ip netns exec` execs the program: its pid is the sender's
        for host, address, port, sport, count in ((a, a_host_end, ports[0], 40101, 1000),
                                                  (b, b_host_end, ports[1], 40102, 500)):
            sender = host.popen_traffic("udp", address, port, sport, count, 100)
            assert json.loads(sender.communicate(timeout=60)[0]) == {"sent": count}
            senders.append(sender.pid)
        store = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
        wait_stored(store, ports[0], 1000)
        wait_stored(store, ports[1], 500)

        page = browser_page
        page.goto(f"http://127.0.0.1:{ui}/#map")
        page.select_option("#map-filters select[name=since]", "15m")
        page.click("#map-filters button[type=submit]")
        page.wait_for_function("document.getElementById('map-svg').dataset.since", timeout=20_000)
        host = socket.gethostname()
        here, there = f"container:{host}/{a.netns}", f"container:{host}/{b.netns}"
        assert sorted(page.evaluate(NODES)) == [[here, "container", a.netns], [there, "container", b.netns],
                                                 [f"host:{host}", "host", f"host {host}"]]
        assert sorted(page.evaluate(EDGES)) == sorted([
            [here, f"host:{host}", 1000 * (UDP_V4_OVERHEAD + 100), 1000],
            [there, f"host:{host}", 500 * (UDP_V4_OVERHEAD + 100), 500]])
        since, until = (int(page.get_attribute("#map-svg", f"data-{k}")) * MS for k in ("since", "until"))
        held = sqlite_history(store, HistoryQuery(since=since, until=until, group_by="iface"))
        assert sorted((r["ifname"], r["direction"], r["packets"]) for r in held) == [
            (a.host_if, "egress", 1000), (b.host_if, "egress", 500)]  # nothing but the test's packets
        centre = page.locator(f".node[data-id='host:{host}']")
        assert (centre.get_attribute("cx"), centre.get_attribute("cy")) == ("500.0", "500.0")  # in the middle
        assert sorted(page.evaluate("[...document.querySelectorAll('#map-svg text')].map(t => t.textContent)")) == sorted(
            [a.netns, b.netns, host])
        page.click(f".node[data-id='host:{host}']")
        # each end's program: the sender in its namespace, the receiver this test's own process
        sender, receiver = Path(sys.executable).name[:15], f"{Path('/proc/self/comm').read_text().strip()} ({os.getpid()})"
        # the receivers never read: what found their buffers full is dropped (the sockets' own count)
        dropped = [f"{n} (SOCKET_RCVBUFF)" if n else "" for n in map(udp_drops, ports)]
        assert [page.inner_text(f"#map-connections tbody tr >> nth={i}").split("\t") for i in range(2)] == [
            ["udp", f"{a.ipv4}:40101", f"{sender} ({senders[0]})", f"{a_host_end}:{ports[0]}", receiver, "1000",
             "142000", "", "", "", "", dropped[0]],
            ["udp", f"{b.ipv4}:40102", f"{sender} ({senders[1]})", f"{b_host_end}:{ports[1]}", receiver, "500",
             "71000", "", "", "", "", dropped[1]]]
        assert up.interrupt() == 0
        assert "Traceback" not in up.stderr
    finally:
        for receiver in receivers:
            receiver.close()


def udp_drops(port: int) -> int:
    """The drops of this namespace's IPv4 UDP socket bound to ``port`` (/proc/net/udp)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")
