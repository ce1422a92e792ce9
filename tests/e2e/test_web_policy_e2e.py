"""End to end: the Policy view lists the connections the policy denied from the store, so a
page started after the traffic (a fresh `connstats ui`, which saw no violation event) still
shows them, with exactly the packets and bytes the store holds as ``deny``. Real BPF on test
veths, `up` with its embedded nats-server and SQLite store, a monitor-mode policy, real
Chromium."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connstats.sink.history import HistoryQuery, sqlite_history
from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD, connstats
from tests.fixtures.nats import free_port
from tests.fixtures.web import fetch, wait_stored

pytestmark = pytest.mark.kernel

MS = 1_000_000


def denied_traffic(a, b, packets: int, size: int) -> None:
    """b -> a udp/6000 (the policy allows a -> b udp/5353 only); a listens, so it answers nothing."""
    listener = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, "-c",
                                 "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                 "s.bind(('0.0.0.0', 6000)); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "ready\n"
        b.traffic("udp", a.ipv4, 6000, 40402, packets, size)
    finally:
        listener.kill()
        listener.wait(10)


def test_a_fresh_page_lists_the_denied_connections_the_store_holds(quiet_network, cs_env, start, browser_page,
                                                                   tmp_path):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", *NO_HTTP_CLASH, "--ui", "none")
    up.wait_for("connstats up: watching")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\nb = {{ ifaces = ["{b.host_if}"] }}\n\n'
                      '[[allow]]\nfrom = "a"\nto = "b"\nproto = "udp"\nports = [5353]\n')
    applied = connstats(cs_env, "policy", "apply", str(policy), "--mode", "monitor")
    assert applied.returncode == 0, applied.stderr
    denied_traffic(a, b, 30, 60)
    store = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
    wait_stored(store, 6000, 30)

    port = free_port()  # the page starts now: it saw none of the violation events
    ui = start("ui", "--listen", f"127.0.0.1:{port}")
    ui.wait_for(f"connstats ui: serving the web page on http://127.0.0.1:{port}/")
    page = browser_page
    page.goto(f"http://127.0.0.1:{port}/#policy")
    page.wait_for_function("document.getElementById('denied-table').dataset.since", timeout=20_000)
    page.wait_for_function("document.getElementById('policy-summary').dataset.mode === 'monitor'", timeout=20_000)
    since, until = (int(page.get_attribute("#denied-table", f"data-{k}")) * MS for k in ("since", "until"))
    host = socket.gethostname()
    held = sqlite_history(store, HistoryQuery(since=since, until=until, host=host, verdict="deny"))
    shown = [r.split("\t") for r in page.locator("#denied-table tbody tr").all_inner_texts()]
    assert [(r[0], r[1], r[2], r[3], r[4], int(r[7]), int(r[8])) for r in shown] == [
        (r["ifname"], r["direction"], r["proto"], f"{r['src_ip']}:{r['src_port']}", f"{r['dst_ip']}:{r['dst_port']}",
         r["packets"], r["bytes"]) for r in held]
    sent = (30, 30 * (UDP_V4_OVERHEAD + 60))
    assert sorted((r[0], r[1], r[2], r[3], r[4], int(r[7]), int(r[8])) for r in shown) == sorted(
        (ifname, direction, "udp", f"{b.ipv4}:40402", f"{a.ipv4}:6000", *sent)
        for ifname, direction in ((b.host_if, "egress"), (a.host_if, "ingress")))
    summary = page.inner_text("#denied-summary")
    assert summary.startswith(f"host {host}: 2 denied connections, 60 packets ")
    assert page.locator("#violations-table tbody tr").count() == 0  # the events came before this page

    # the same rows through the API; a bad parameter is a 400 with a JSON error
    status, body = fetch(f"http://127.0.0.1:{port}/api/policy/violations?since=15m&host={host}")
    assert status == 200
    answer = json.loads(body)
    assert (answer["connections"], answer["packets"], answer["bytes"]) == (2, 60, 2 * sent[1])
    assert fetch(f"http://127.0.0.1:{port}/api/policy/violations?since=soon") == (
        400, '{"error":"\'soon\' is neither a duration (15m) nor an RFC 3339 time (2026-11-22T01:00:00Z)"}')
    assert ui.interrupt() == 0
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr + ui.stderr
