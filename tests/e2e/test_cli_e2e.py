"""End to end: the installed ``.venv/bin/connstats`` run as a user would, against real processes,
real BPF on test veths, a real nats-server and a real SQLite file.

Every process a test starts is stopped by its pid at teardown, also when the test fails;
the namespaces and links come from the ``test_network`` fixture, which deletes them.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import (
    CONNSTATS,
    NO_HTTP_CLASH,
    REPO,
    assert_one_line_error,
    connstats,
    descendants,
    udp_row,
    without_times,
)
from tests.fixtures.nats import free_port
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

# -- up: the whole pipeline -------------------------------------------------------------------


def test_up_stores_exact_udp_totals_and_drains_on_sigint(quiet_network, cs_env, start):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    url = (state / "nats.url").read_text().strip()
    assert url.startswith("nats://127.0.0.1:")

    listed = connstats(cs_env, "list", "--format", "json")  # finds NATS through <state>/nats.url
    assert [(d["name"], d["direction"]) for d in json.loads(listed.stdout)] == sorted(
        [(a.host_if, "inverted"), (b.host_if, "inverted")],
        key=lambda n: int(Path(f"/sys/class/net/{n[0]}/ifindex").read_text()))

    a.traffic("udp", b.ipv4, 5353, 40001, 1000, 100)
    a.traffic("udp", b.ipv4, 5353, 40002, 300, 1200)
    assert up.interrupt() == 0  # at once: the last, partial interval must be drained and stored
    assert "Traceback" not in up.stderr
    assert not (state / "nats.url").exists()
    assert (state / "flows.sqlite").is_file() and (state / "jetstream").is_dir()

    history = connstats(cs_env, "history", "--port", "5353", "--format", "json")
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)
    assert without_times(rows) == [
        udp_row(a.host_if, "egress", a, b, 40002, 5353, 300, 1200),
        udp_row(b.host_if, "ingress", a, b, 40002, 5353, 300, 1200),
        udp_row(a.host_if, "egress", a, b, 40001, 5353, 1000, 100),
        udp_row(b.host_if, "ingress", a, b, 40001, 5353, 1000, 100),
    ]
    assert all(r["first_seen"].endswith("Z") and r["first_seen"] <= r["last_seen"] for r in rows)
    by_iface = connstats(cs_env, "history", "--port", "5353", "--group-by", "iface", "--format", "json")
    assert without_times(json.loads(by_iface.stdout)) == [
        {"ifname": a.host_if, "direction": "egress", "packets": 1300, "bytes": 1000 * 142 + 300 * 1242},
        {"ifname": b.host_if, "direction": "ingress", "packets": 1300, "bytes": 1000 * 142 + 300 * 1242},
    ]


def test_top_shows_bounded_intervals_under_80_columns(quiet_network, cs_env, start):
    a, b = quiet_network
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    traffic = a.popen_traffic("udp-paced", b.ipv4, 5353, 40003, 2000, 100, 3)
    try:
        top = connstats(cs_env, "top", "--count", "3", timeout=30)
    finally:
        traffic.wait(30)
    assert up.interrupt() == 0
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert len([line for line in lines if " interval " in line]) == 3
    assert max(len(line) for line in lines) < 80


# -- probe, with the control plane ---------------------------------------------------------------


def test_attach_list_stats_detach_through_a_running_probe(quiet_network, cs_env, start, nats_server):
    a, b = quiet_network
    target = ("--nats", nats_server.url, "--host", "e2e-probe")
    probe = start("probe", "--iface", a.host_if, "--interval", "60", *target, *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")

    attached = connstats(cs_env, "attach", b.host_if, "--direction", "normal", *target)
    index_b = int(Path(f"/sys/class/net/{b.host_if}/ifindex").read_text())
    index_a = int(Path(f"/sys/class/net/{a.host_if}/ifindex").read_text())
    assert (attached.returncode, attached.stdout) == (0, f"attached {b.host_if} (ifindex {index_b}, veth, direction normal)\n")
    listed = json.loads(connstats(cs_env, "list", "--format", "json", *target).stdout)
    assert sorted((d["name"], d["ifindex"], d["kind"], d["mode"], d["direction"]) for d in listed) == sorted([
        (a.host_if, index_a, "veth", "auto", "inverted"), (b.host_if, index_b, "veth", "normal", "normal")])

    a.traffic("udp", b.ipv4, 6000, 41000, 500, 200)
    stats = connstats(cs_env, "stats", "--format", "json", *target)
    assert stats.returncode == 0, stats.stderr
    flows = [r for r in json.loads(stats.stdout) if r["dst_port"] == 6000]
    assert sorted((r["ifname"], r["direction"], r["packets"], r["bytes"]) for r in flows) == sorted([
        (a.host_if, "egress", 500, 500 * 242), (b.host_if, "egress", 500, 500 * 242)])
    only_a = json.loads(connstats(cs_env, "stats", a.host_if, "-f", "json", *target).stdout)
    assert {r["ifname"] for r in only_a} == {a.host_if}
    assert [(r["packets"], r["bytes"]) for r in only_a if r["dst_port"] == 6000] == [(500, 500 * 242)]

    detached = connstats(cs_env, "detach", b.host_if, *target)
    assert detached.stdout == f"detached {b.host_if} (ifindex {index_b}, veth, direction normal)\n"
    assert [d["name"] for d in json.loads(connstats(cs_env, "list", "-f", "json", *target).stdout)] == [a.host_if]

    assert_one_line_error(connstats(cs_env, "attach", "nope0", *target), "no network interface 'nope0'; see `ip link`")
    assert_one_line_error(connstats(cs_env, "detach", b.host_if, *target),
                          f"'{b.host_if}' is not attached; see `connstats list`")
    assert probe.interrupt() == 0
    assert "Traceback" not in probe.stderr
    # `probe` keeps counting for its next start (--on-exit keep); `reset` removes it for good
    assert "pref 3159" in subprocess.run(["tc", "filter", "show", "dev", a.host_if, "ingress"],
                                          capture_output=True, text=True).stdout
    assert connstats(cs_env, "reset").returncode == 0
    assert "pref 3159" not in subprocess.run(["tc", "filter", "show", "dev", a.host_if, "ingress"],
                                              capture_output=True, text=True).stdout


def test_probe_and_sink_as_separate_processes(quiet_network, cs_env, start, nats_server, tmp_path):
    a, b = quiet_network
    store = f"sqlite:{tmp_path / 'central.sqlite'}"
    sink = start("sink", "--nats", nats_server.url, "--store", store)
    sink.wait_for("sink consuming")
    probe = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_server.url, *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")
    a.traffic("udp", b.ipv4, 7000, 42000, 250, 64)
    assert probe.interrupt() == 0
    expected = [udp_row(a.host_if, "egress", a, b, 42000, 7000, 250, 64)]

    def stored() -> bool:  # the sink stores what the probe published, shortly after
        result = connstats(cs_env, "history", "--store", store, "--port", "7000", "--format", "json")
        return result.returncode == 0 and without_times(json.loads(result.stdout)) == expected

    until(stored, 30, f"the probe's rows {expected} in the store")
    assert sink.interrupt() == 0
    assert "Traceback" not in sink.stderr + probe.stderr


# -- expected failures: one line, exit status 1, no traceback -------------------------------------


def test_no_probe_answering(cs_env, nats_server):
    assert_one_line_error(connstats(cs_env, "list", "--nats", nats_server.url, "--host", "nobody"),
                          f"no probe answers for host 'nobody' on {nats_server.url}; start `connstats up` or "
                          "`connstats probe` there, or check --host and --nats")


def test_nats_unreachable(cs_env):
    url = f"nats://127.0.0.1:{free_port()}"
    for command in (("list",), ("stats",), ("top", "--count", "1"), ("sink",)):
        assert_one_line_error(connstats(cs_env, *command, "--nats", url),
                              f"cannot connect to NATS at {url}: NoServersError; check the URL, that "
                              "nats-server runs, and the credentials")


def test_bad_store_path(cs_env, nats_server, test_network):
    bad = "sqlite:/nonexistent-connstats/flows.sqlite"
    message = "SQLite directory /nonexistent-connstats does not exist; create it or choose another path"
    assert_one_line_error(connstats(cs_env, "sink", "--nats", nats_server.url, "--store", bad), message)
    a = test_network.hosts[0]
    assert_one_line_error(connstats(cs_env, "up", "--iface", a.host_if, "--store", bad, *NO_HTTP_CLASH), message)
    assert not (Path(cs_env["CONNSTATS_STATE_DIR"]) / "nats.url").exists()  # its nats-server was stopped
    assert_one_line_error(connstats(cs_env, "history", "--store", bad),
                          "no flow database at /nonexistent-connstats/flows.sqlite; start `connstats up` or "
                          "`connstats sink`, or check --store")


def test_unknown_interface_for_up(cs_env):
    assert_one_line_error(connstats(cs_env, "up", "--iface", "nope0"), "no network interface 'nope0'; see `ip link`")


# -- make run ------------------------------------------------------------------------------------


def test_make_run_starts_and_stops_cleanly(quiet_network, start):
    a, _ = quiet_network
    args = f"ARGS=--iface {a.host_if} --interval 0.5 --http 127.0.0.1:0"
    make = start(argv=["make", "-s", "-C", str(REPO), "run", args])
    make.wait_for("connstats up: watching", timeout=300)
    make.wait_for("interval 2:")  # a few intervals
    (up,) = [pid for pid in descendants(make.process.pid)
             if b"connstats\x00up" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert make.interrupt(pid=up) == 0  # Ctrl-C reaches `connstats up`; make then exits 0 too
    assert "interval 2:" in make.stderr and "Traceback" not in make.stderr


# -- doctor --------------------------------------------------------------------------------------


def doctor_alone(env: dict, *args: str) -> subprocess.CompletedProcess:
    """``connstats doctor`` in a mount namespace with a bpffs of its own: its pinned-state check
    looks at the whole host, where other tests' probes, killed mid-test, leave pins for a moment."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           'mount -t bpf bpf /sys/fs/bpf && exec "$@"', "sh", str(CONNSTATS), "doctor", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_doctor_passes_here_and_names_the_fix_for_nats(cs_env, nats_server):
    good = doctor_alone(cs_env, "--nats", nats_server.url)
    assert good.returncode == 0, good.stdout
    assert [line.split(":")[0] for line in good.stdout.splitlines()] == [
        "[pass] privileges", "[pass] bcc", "[pass] kernel headers", "[pass] BPF load", "[pass] TC attach",
        "[pass] processes", "[pass] quality", "[pass] pinned state", "[pass] NATS", "[pass] store"]
    assert not Path("/sys/class/net/csdoctor0").exists()
    url = f"nats://127.0.0.1:{free_port()}"
    bad = doctor_alone(cs_env, "--nats", url)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[8:10] == [
        f"[FAIL] NATS: cannot connect to NATS at {url}: NoServersError; check the URL, that nats-server "
        "runs, and the credentials",
        "       fix: start `connstats up` (it runs an embedded nats-server), or `nats-server -js`, or pass --nats URL",
    ]
