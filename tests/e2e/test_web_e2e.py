"""End to end: the web page of ``connstats up --ui`` in a real headless Chromium, with real
BPF on test veths, real traffic between two test namespaces, the embedded nats-server and
the real SQLite store.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from connstats.probe.runtime.durations import parse_duration
from connstats.sink.history import HistoryQuery, sqlite_history
from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD
from tests.fixtures.nats import free_port
from tests.fixtures.web import fetch, wait_stored

pytestmark = pytest.mark.kernel

MS = 1_000_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def screenshot(page, name: str) -> None:
    """For the README: with CONNSTATS_SCREENSHOTS set, the view as the test left it."""
    if os.environ.get("CONNSTATS_SCREENSHOTS"):
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def start_up(start, a, b, ui: str):
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", *NO_HTTP_CLASH, "--ui", ui)
    up.wait_for("connstats up: watching")
    return up


RECORD_LIVE = """() => {
  window.seen = {};
  const table = document.getElementById("live-table");
  new MutationObserver(() => {
    for (const row of table.querySelectorAll("tbody tr[data-src-port='40101']")) {
      const cells = row.querySelectorAll("td");
      const interval = table.dataset.intervals;
      window.seen[interval + " " + row.dataset.ifname] = [Number(cells[7].textContent), Number(cells[8].textContent)];
    }
  }).observe(table, {subtree: true, childList: true, attributes: true});
}"""


def shown_seq(page) -> int:
    return int(page.get_attribute("#live-table", "data-intervals").split(":")[-1])


def test_live_map_and_history_show_the_real_traffic(quiet_network, cs_env, start, browser_page):
    a, b = quiet_network
    port = free_port()
    up = start_up(start, a, b, f"127.0.0.1:{port}")
    token = (Path(cs_env["CONNSTATS_STATE_DIR"]) / "ui-token").read_text().strip()
    assert f"connstats up: web page on http://127.0.0.1:{port}/?token={token}\n" in up.stderr
    page = browser_page
    page.goto(f"http://127.0.0.1:{port}/")  # root's browser: admitted by its uid, no token

    # Live: filtered to the port, the connection within two intervals, exact counts
    page.fill("#live-filters input[name=port]", "5353")
    page.click("#live-filters button[type=submit]")
    page.wait_for_function("document.getElementById('live-table').dataset.intervals", timeout=20_000)
    page.evaluate(RECORD_LIVE)
    before = shown_seq(page)
    a.traffic("udp", b.ipv4, 5353, 40101, 1000, 100)
    page.wait_for_function("Object.keys(window.seen).length >= 2 && (() => {"
                           "const t = {}; for (const [k, v] of Object.entries(window.seen)) "
                           "{ const i = k.split(' ')[1]; t[i] = (t[i] || 0) + v[0]; } "
                           "return Object.values(t).every(n => n === 1000); })()", timeout=20_000)
    seen = page.evaluate("window.seen")
    first = min(int(k.split(" ")[0].split(":")[-1]) for k in seen)
    assert first <= before + 2, (before, seen)
    totals = {}
    for key, (packets, nbytes) in seen.items():
        ifname = key.split(" ")[1]
        totals[ifname] = [sum(x) for x in zip(totals.get(ifname, [0, 0]), (packets, nbytes), strict=True)]
    assert totals == {a.host_if: [1000, 1000 * (UDP_V4_OVERHEAD + 100)],
                      b.host_if: [1000, 1000 * (UDP_V4_OVERHEAD + 100)]}

    # Map: the edge between the two namespaces holds the bytes the store holds for the range
    store = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
    wait_stored(store, 5353, 1000)
    page.click("#tabs button[data-view=map]")
    page.select_option("#map-filters select[name=since]", "15m")
    page.click("#map-filters button[type=submit]")
    page.wait_for_function("document.getElementById('map-svg').dataset.since", timeout=20_000)
    host = socket.gethostname()
    # the probe names a veth's owner by its network namespace when no container runtime knows it
    source, target = f"container:{host}/{a.netns}", f"container:{host}/{b.netns}"
    edge = page.locator(f".edge[data-source='{source}'][data-target='{target}']")
    assert edge.count() == 1, page.evaluate("[...document.querySelectorAll('.edge')].map(e => e.outerHTML)")
    since, until = (int(page.get_attribute("#map-svg", f"data-{k}")) * MS for k in ("since", "until"))
    held = sqlite_history(store, HistoryQuery(since=since, until=until, iface=a.host_if, direction="egress"))
    assert int(edge.get_attribute("data-bytes")) == sum(r["bytes"] for r in held) == 1000 * 142
    back = sqlite_history(store, HistoryQuery(since=since, until=until, iface=b.host_if, direction="egress"))
    assert [r["proto"] for r in back] == ["icmp"]  # b's "port unreachable" answers, and nothing else
    edges = page.evaluate("[...document.querySelectorAll('.edge')].map(e => [e.dataset.source, e.dataset.target, "
                          "Number(e.dataset.bytes)])")
    # b's ingress of the same packets is not a second edge
    assert edges == [[source, target, 142_000], [target, source, back[0]["bytes"]]]
    page.click(f".node[data-id='{source}']")
    assert page.locator("#map-connections tbody tr").count() == 2
    row = page.inner_text("#map-connections tbody tr >> nth=0").split("\t")
    # the sender is traffic.py, a process of a's namespace (named, with its pid); nothing
    # listens on b's port (no peer process), no policy; b's kernel dropped every datagram, for
    # want of a socket (no RTT, no retransmits: UDP)
    assert re.fullmatch(rf"{re.escape(Path(sys.executable).name[:15])} \(\d+\)", row[2]), row
    assert row[:2] + row[3:] == ["udp", f"{a.ipv4}:40101", f"{b.ipv4}:5353", "", "1000", "142000", "", "", "", "",
                                 "1000 (NO_SOCKET)"]

    # History: exactly the points the store returns, per interface, every 5 s
    page.click("#tabs button[data-view=history]")
    page.select_option("#history-filters select[name=group_by]", "iface")
    page.select_option("#history-filters select[name=since]", "15m")
    page.fill("#history-filters input[name=every]", "5s")
    page.select_option("#history-filters select[name=metric]", "packets")
    page.wait_for_function("document.getElementById('history-svg').dataset.every === '5000' && "
                           "document.getElementById('history-svg').dataset.metric === 'packets'", timeout=20_000)
    since, until = (int(page.get_attribute("#history-svg", f"data-{k}")) * MS for k in ("since", "until"))
    rows = sqlite_history(store, HistoryQuery(since=since, until=until, group_by="iface", every=parse_duration("5s")))
    drawn = sorted(tuple(page.evaluate("""() => [...document.querySelectorAll('#history-svg circle.point')]
        .map(c => [c.dataset.series, Number(c.dataset.timeMs), Number(c.dataset.value)])""")))
    assert [tuple(p) for p in drawn] == sorted((f"{r['ifname']} {r['direction']}", r["time"] // MS, r["packets"])
                                               for r in rows)
    assert sum(p[2] for p in drawn) == 2 * (1000 + back[0]["packets"])  # both ends of both ways

    # Policy: the learn preview is what `connstats policy learn` writes
    page.click("#tabs button[data-view=policy]")
    page.wait_for_function("document.getElementById('learn-toml').dataset.rules", timeout=20_000)
    preview = page.inner_text("#learn-toml")
    from tests.fixtures.cli import connstats

    learned = connstats(cs_env, "policy", "learn", "--since", "24h")
    assert learned.returncode == 0, learned.stderr
    assert preview[preview.index("[groups]"):].rstrip("\n") == learned.stdout[learned.stdout.index("[groups]"):].rstrip("\n")
    assert f'from = "{a.netns}"' in preview
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_a_non_loopback_address_requires_the_token(test_network, cs_env, start, browser_page):
    """The page listens on an address of the test's own bridge (not loopback): every
    request from another host (here namespace a) needs the token printed at start."""
    a, b = test_network.hosts
    address = f"10.199.{test_network.subnet}.254"
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", test_network.bridge], check=True)
    port = free_port()
    up = start_up(start, a, b, f"{address}:{port}")
    found = re.search(rf"connstats up: web page on http://{re.escape(address)}:{port}/\?token=(\S+)\n", up.stderr)
    assert found, up.stderr
    token = found.group(1)
    assert f"web page on {address}:{port} is reachable from the network; it requires the token" in up.stderr
    token_file = Path(cs_env["CONNSTATS_STATE_DIR"]) / "ui-token"
    assert token_file.read_text() == token + "\n" and stat.S_IMODE(token_file.stat().st_mode) == 0o600

    base = f"http://{address}:{port}"

    def remote(path: str, headers: dict | None = None) -> tuple[int, str]:
        """A caller on another host: curl in namespace a, whose socket the page cannot see."""
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", base + path]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        text, _, status = a.run(*argv).stdout.rpartition("\n")
        return int(status), text

    for path in ("/", "/api/history", "/api/live", "/static/live.js"):
        status, _ = remote(path)
        assert status == 401, path
    wrong = token[:-1] + ("x" if token[-1] != "x" else "y")  # one character off (a token may end in x)
    assert remote("/api/history", {"Authorization": "Bearer " + wrong})[0] == 401
    status, body = remote("/api/history?since=15m", {"Authorization": "Bearer " + token})
    assert status == 200 and json.loads(body)["group_by"] == "container"
    assert json.loads(remote("/api/map")[1]) == {
        "error": "this page needs its token; open the address printed at start (?token=...) or send "
                 f"'Authorization: Bearer <the token in {token_file}>'"}

    page = browser_page  # root on this host: admitted by its uid; the token still sets the cookie
    page.goto(f"{base}/?token={token}")  # sets the cookie, then redirects to /
    assert page.url == base + "/#live"  # the token left the address bar
    page.wait_for_function("document.getElementById('live-table').dataset.intervals", timeout=20_000)
    page.click("#tabs button[data-view=history]")
    page.wait_for_function("document.getElementById('history-svg').dataset.every", timeout=20_000)
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_up_without_its_default_page_when_the_port_is_taken(quiet_network, cs_env, start):
    a, b = quiet_network
    del cs_env["CONNSTATS_UI"]  # the default page, which the taken port refuses
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 9470))
    except OSError:
        pytest.skip("127.0.0.1:9470 is in use here")
    taken.listen()
    try:
        up = start("up", "--iface", a.host_if, "--interval", "1", *NO_HTTP_CLASH)
        up.wait_for("connstats up: watching")
        assert ("no web page: cannot listen on 127.0.0.1:9470 for the web page: Address already in use; "
                "pick another ADDR:PORT") in up.stderr
        assert up.interrupt() == 0
        explicit = start("up", "--iface", a.host_if, *NO_HTTP_CLASH, "--ui", "127.0.0.1:9470")
        assert explicit.process.wait(60) == 1
        assert explicit.stderr.endswith("error: cannot listen on 127.0.0.1:9470 for the web page: Address already "
                                        "in use; pick another ADDR:PORT\n")
        none = start("up", "--iface", a.host_if, "--interval", "1", *NO_HTTP_CLASH, "--ui", "none")
        none.wait_for("connstats up: watching")
        assert "web page" not in none.stderr
        assert none.interrupt() == 0
    finally:
        taken.close()


def test_the_map_shows_the_edge_between_two_docker_containers(dockerd, cs_env, start, browser_page):
    """Two real containers of a real dockerd: their host-side veths watched by `up`, which
    learns their names from the Docker socket; the map's edge holds the store's bytes."""
    from tests.fixtures.docker import host_ifname, host_side_ifindex, in_netns, udp_from

    containers = {}
    for name in ("cs-web1", "cs-web2"):
        doc = dockerd.run(name, "sleep", "600")
        ifname = host_ifname(host_side_ifindex(doc["State"]["Pid"]))
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
        containers[name] = dict(pid=doc["State"]["Pid"], ip=doc["NetworkSettings"]["IPAddress"], ifname=ifname,
                                mac=doc["NetworkSettings"]["MacAddress"])
    one, two = containers["cs-web1"], containers["cs-web2"]
    for here, there in ((one, two), (two, one)):  # static neighbours: no ARP in the counts
        in_netns(here["pid"], "ip", "neigh", "replace", there["ip"], "lladdr", there["mac"], "dev", "eth0",
                 "nud", "permanent")
    port = free_port()
    up = start("up", "--iface", one["ifname"], "--iface", two["ifname"], "--interval", "1", *NO_HTTP_CLASH,
               "--docker-socket", dockerd.socket, "--ui", f"127.0.0.1:{port}")
    up.wait_for("connstats up: watching")
    udp_from(one["pid"], two["ip"], 5353, 41501, 40, 100)
    store = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
    wait_stored(store, 5353, 40)

    page = browser_page
    page.goto(f"http://127.0.0.1:{port}/#map")
    page.wait_for_function("document.getElementById('map-svg').dataset.since", timeout=20_000)
    host = socket.gethostname()
    source, target = f"container:{host}/cs-web1", f"container:{host}/cs-web2"
    since, until = (int(page.get_attribute("#map-svg", f"data-{k}")) * MS for k in ("since", "until"))
    held = sqlite_history(store, HistoryQuery(since=since, until=until, container="cs-web1", direction="egress"))
    edge = page.locator(f".edge[data-source='{source}'][data-target='{target}']")
    assert int(edge.get_attribute("data-bytes")) == sum(r["bytes"] for r in held) == 40 * (UDP_V4_OVERHEAD + 100)
    labels = page.evaluate("[...document.querySelectorAll('#map-svg text')].map(t => t.textContent)")
    assert {"cs-web1", "cs-web2"} <= set(labels)
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_connstats_ui_finds_ups_nats_and_store_without_flags(quiet_network, cs_env, start):
    a, b = quiet_network
    up = start_up(start, a, b, "none")
    port = free_port()
    ui = start("ui", "--listen", f"127.0.0.1:{port}")  # logs in to up's embedded NATS as admin
    ui.wait_for(f"connstats ui: serving the web page on http://127.0.0.1:{port}/")
    a.traffic("udp", b.ipv4, 5353, 40202, 300, 10)
    wait_stored(Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite", 5353, 300)
    status, body = fetch(f"http://127.0.0.1:{port}/api/history?group_by=port&since=15m&every=15m&port=5353")
    assert status == 200
    assert [(s["key"], sum(p["packets"] for p in s["points"])) for s in json.loads(body)["series"]] == [
        ("udp/5353", 600)]  # a's egress and b's ingress
    request = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/live?port=5353", timeout=10)
    assert request.readline() == b": connected\n"
    event = b""
    while not event.startswith(b"data: "):
        event = request.readline()
    assert json.loads(event.removeprefix(b"data: "))["host"] == socket.gethostname()
    request.close()
    assert ui.interrupt() == 0 and up.interrupt() == 0
    assert "Traceback" not in ui.stderr + up.stderr


@pytest.mark.parametrize("argv, message", [
    (("ui", "--listen", "nonsense"), "web page address 'nonsense' is not ADDR:PORT; use e.g. 127.0.0.1:9470, or none"),
    (("up", "--ui", "localhost"), "web page address 'localhost' is not ADDR:PORT; use e.g. 127.0.0.1:9470, or none"),
])
def test_a_bad_address_is_one_line(cs_env, test_network, argv, message):
    from tests.fixtures.cli import assert_one_line_error, connstats

    extra = ("--iface", test_network.hosts[0].host_if, *NO_HTTP_CLASH) if argv[0] == "up" else ()
    assert_one_line_error(connstats(cs_env, *argv, *extra), message)


def test_verdicts_policy_and_alerts_views(quiet_network, cs_env, start, browser_page, tmp_path):
    """A policy in monitor mode allows a -> b udp/5353 only: the map's a -> b edge is
    allowed (green), b's ICMP answers are denied (red) and listed as violations; a
    threshold rule inside `up` fires and the Alerts view lists it."""
    a, b = quiet_network
    rules = tmp_path / "alerts.toml"
    rules.write_text('[[rule]]\nname = "web-udp"\nkind = "threshold"\nmetric = "packets"\nby = ["dst_port"]\n'
                     'where = { proto = "udp", direction = "egress" }\nwindow = "1m"\nabove = 999\n'
                     'severity = "critical"\n')
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[groups]\na = {{ ifaces = ["{a.host_if}"] }}\nb = {{ ifaces = ["{b.host_if}"] }}\n\n'
                      '[[allow]]\nfrom = "a"\nto = "b"\nproto = "udp"\nports = [5353]\n')
    port = free_port()
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "1", *NO_HTTP_CLASH,
               "--ui", f"127.0.0.1:{port}", "--rules", str(rules))
    up.wait_for("connstats up: watching")
    from tests.fixtures.cli import connstats

    applied = connstats(cs_env, "policy", "apply", str(policy), "--mode", "monitor")
    assert applied.returncode == 0, applied.stderr
    page = browser_page
    page.goto(f"http://127.0.0.1:{port}/#policy")  # subscribed to violations from here on
    page.wait_for_function("document.getElementById('policy-summary').dataset.mode === 'monitor'", timeout=20_000)
    a.traffic("udp", b.ipv4, 5353, 40301, 1000, 100)  # allowed; b answers "port unreachable"
    listener = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, "-c",  # so a answers nothing
                                 "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                 "s.bind(('0.0.0.0', 6000)); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "ready\n"
        b.traffic("udp", a.ipv4, 6000, 40302, 20, 50)  # b -> a is not allowed: denied (monitor: not dropped)
        store = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"
        wait_stored(store, 5353, 1000)
        wait_stored(store, 6000, 20)
    finally:
        listener.kill()
        listener.wait(10)

    page.click("#tabs button[data-view=map]")
    page.select_option("#map-filters select[name=since]", "15m")
    page.click("#map-filters button[type=submit]")
    page.wait_for_function("document.getElementById('map-summary').textContent.includes('drawn in')", timeout=20_000)
    edges = page.evaluate("[...document.querySelectorAll('.edge')].map(e => [e.dataset.source.split('/')[1], "
                          "e.dataset.target.split('/')[1], e.dataset.verdict, getComputedStyle(e).stroke])")
    now = time.time_ns()
    denied = sqlite_history(store, HistoryQuery(since=now - 900 * 10**9, until=now, verdict="deny", direction="egress"))
    assert [(r["ifname"], r["proto"], r["dst_port"], r["packets"]) for r in denied] == [(b.host_if, "udp", 6000, 20)]
    green, red = "rgb(46, 157, 87)", "rgb(211, 60, 60)"
    assert edges == [[a.netns, b.netns, "allow", green], [b.netns, a.netns, "deny", red]]
    page.select_option("#map-filters select[name=verdict]", "deny")  # only what the policy denied
    page.click("#map-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('.edge').length === 1", timeout=20_000)
    assert page.get_attribute(".edge", "data-bytes") == str(20 * (UDP_V4_OVERHEAD + 50))

    page.click("#tabs button[data-view=policy]")
    page.wait_for_selector("#violations-table tbody tr", timeout=20_000)
    summary = page.inner_text("#policy-summary")
    assert summary.startswith(f"host {socket.gethostname()}: mode monitor, 2 groups, 1 rules; governs ")
    rows = [r.split("\t") for r in page.locator("#violations-table tbody tr").all_inner_texts()]
    assert {(r[1], r[2], r[3], r[4], r[5], r[8], r[9]) for r in rows} == {
        ("monitor", ifname, "udp", f"{b.ipv4}:40302", f"{a.ipv4}:6000", "20", str(20 * (UDP_V4_OVERHEAD + 50)))
        for ifname in (a.host_if, b.host_if)}
    screenshot(page, "policy")

    page.click("#tabs button[data-view=alerts]")
    page.wait_for_selector("#alerts-table tbody tr[data-rule='web-udp']", timeout=30_000)
    row = page.inner_text("#alerts-table tbody tr[data-rule='web-udp']").split("\t")
    assert (row[0], row[1], row[3], row[4]) == ("web-udp", "critical", "dst_port=5353", "1000")
    screenshot(page, "alerts")
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr
