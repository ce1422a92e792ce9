"""Restarts and crashes of the probe lose no count and store none twice.

Real processes: ``connstats probe`` (pinned maps, ``--on-exit keep``), ``connstats sink``
into SQLite, a nats-server, UDP between two test namespaces. The probe is stopped with
SIGTERM or SIGKILL at random moments and started again; what the store holds at the end
must equal what was sent, packet for packet and byte for byte.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from connstats.probe.kernel.pins import PinnedInstance
from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD, connstats
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

RESTARTS = 20
DATAGRAMS, SIZE = 16_000, 60


def terminate(running) -> int:
    os.kill(running.process.pid, signal.SIGTERM)
    return running.process.wait(60)


def stored_totals(env: dict, port: int) -> tuple[int, int]:
    result = connstats(env, "history", "--since", "1h", "--port", str(port), "--group-by", "iface",
                       "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    return sum(r["packets"] for r in rows), sum(r["bytes"] for r in rows)


def wait_for_totals(env: dict, port: int, expected: tuple[int, int], timeout: float = 30.0) -> tuple[int, int]:
    """The stored totals once they are ``expected``, or those after ``timeout``: the test judges them."""
    return until(lambda: stored_totals(env, port), timeout, step=0.5, fail=False,
                 accept=lambda totals: totals == expected)


def test_sigterm_and_sigkill_at_random_moments_lose_nothing(quiet_network, cs_env, start, nats_server, tmp_path):
    a, b = quiet_network
    target = ("--nats", nats_server.url, "--host", "restart-test")
    start("sink", "--nats", nats_server.url, "--store", f"sqlite:{tmp_path / 'flows.sqlite'}")
    cs_env["CONNSTATS_STORE"] = f"sqlite:{tmp_path / 'flows.sqlite'}"
    rng = random.Random(8)
    probe = start("probe", "--iface", a.host_if, "--interval", "0.3", *target, *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")
    traffic = a.popen_traffic("udp-paced", b.ipv4, 5400, 41000, DATAGRAMS, SIZE, 50)
    kills = terms = 0
    try:
        for _ in range(RESTARTS):
            time.sleep(rng.uniform(0.05, 1.2))
            if rng.random() < 0.5:
                probe.stop()  # SIGKILL
                kills += 1
            else:
                assert terminate(probe) == 0, probe.stderr
                terms += 1
            probe = start("probe", "--iface", a.host_if, "--interval", "0.3", *target, *NO_HTTP_CLASH)
            probe.wait_for("connstats probe: watching")
    finally:
        sent = json.loads(traffic.communicate(timeout=120)[0].strip().splitlines()[-1])["sent"]
    assert sent == DATAGRAMS and kills and terms
    assert terminate(probe) == 0, probe.stderr
    last = start("probe", "--iface", a.host_if, "--interval", "0.3", "--on-exit", "detach", *target,
                 *NO_HTTP_CLASH)
    last.wait_for("connstats probe: watching")
    assert terminate(last) == 0, last.stderr
    assert "Traceback" not in last.stderr

    expected = (DATAGRAMS, DATAGRAMS * (UDP_V4_OVERHEAD + SIZE))
    assert wait_for_totals(cs_env, 5400, expected) == expected
    assert not PinnedInstance.for_state_dir(Path(cs_env["CONNSTATS_STATE_DIR"])).path.exists()


def test_keep_leaves_counting_and_the_next_start_publishes_it(quiet_network, cs_env, start, nats_server, tmp_path):
    """While no probe runs, the kept classifier counts; the next probe publishes those counts."""
    a, b = quiet_network
    target = ("--nats", nats_server.url, "--host", "keep-test")
    start("sink", "--nats", nats_server.url, "--store", f"sqlite:{tmp_path / 'flows.sqlite'}")
    cs_env["CONNSTATS_STORE"] = f"sqlite:{tmp_path / 'flows.sqlite'}"
    probe = start("probe", "--iface", a.host_if, "--interval", "0.5", *target, *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")
    assert terminate(probe) == 0
    instance = PinnedInstance.for_state_dir(Path(cs_env["CONNSTATS_STATE_DIR"]))
    assert instance.path.is_dir() and instance.owner() is None

    a.traffic("udp", b.ipv4, 5401, 41001, 700, 100)  # no probe runs: counted in the pinned maps
    doctor = connstats(cs_env, "doctor", "--nats", nats_server.url)
    assert "[FAIL] pinned state: " in doctor.stdout
    assert f"{instance.path} (state directory {cs_env['CONNSTATS_STATE_DIR']}) is owned by no running probe" in doctor.stdout

    probe = start("probe", "--interval", "0.5", "--on-exit", "detach", "--auto", "none-such*", *target,
                  *NO_HTTP_CLASH)  # no --iface: the device is adopted from the pins
    probe.wait_for("connstats probe: watching")
    listed = json.loads(connstats(cs_env, "list", "--format", "json", *target).stdout)
    assert [d["name"] for d in listed] == [a.host_if]
    assert terminate(probe) == 0
    assert wait_for_totals(cs_env, 5401, (700, 700 * (UDP_V4_OVERHEAD + 100))) == (700, 700 * 142)
    assert not instance.path.exists()
    assert "bpf" not in os.popen(f"tc filter show dev {a.host_if} ingress").read()


def test_reset_removes_what_a_killed_probe_left(quiet_network, cs_env, start, nats_server):
    a, _ = quiet_network
    probe = start("probe", "--iface", a.host_if, "--interval", "5", "--nats", nats_server.url,
                  *NO_HTTP_CLASH)
    probe.wait_for("connstats probe: watching")
    refused = connstats(cs_env, "reset")
    assert refused.returncode == 1 and refused.stderr.startswith(
        f"error: the connstats probe with pid {probe.process.pid} owns ")
    probe.stop()  # SIGKILL: the filter and the pins stay
    assert "connstats_ingress" in os.popen(f"tc filter show dev {a.host_if} ingress").read()
    result = connstats(cs_env, "reset")
    instance = PinnedInstance.for_state_dir(Path(cs_env["CONNSTATS_STATE_DIR"]))
    assert (result.returncode, result.stdout) == (
        0, f"removed connstats filters from 1 device(s) and unpinned {instance.path}\n")
    assert "bpf" not in os.popen(f"tc filter show dev {a.host_if} ingress").read()
    assert not instance.path.exists()
