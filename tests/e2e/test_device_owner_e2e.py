"""End to end: two `connstats probe` processes on one host, one device, and names no
interface can have; the installed command run as a user would (helpers from
test_cli_e2e.py; every process is stopped by its pid at teardown)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH, assert_one_line_error, connstats

pytestmark = pytest.mark.kernel


def our_filters(ifname: str) -> list[str]:
    return [hook for hook in ("ingress", "egress") if "pref 3159 " in subprocess.run(
        ["tc", "filter", "show", "dev", ifname, hook], capture_output=True, text=True).stdout]


def test_a_second_probe_is_refused_with_the_first_ones_pid_and_takes_over_once_it_was_killed(
        test_network, cs_env, start, nats_server, tmp_path):
    a, _ = test_network.hosts
    elsewhere = dict(cs_env, CONNSTATS_STATE_DIR=str(tmp_path / "state-2"))  # one probe per state dir
    first = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_server.url,
                  "--host", "owner-1", *NO_HTTP_CLASH)
    first.wait_for("connstats probe: watching")

    second = connstats(elsewhere, "probe", "--iface", a.host_if, "--nats", nats_server.url, "--host", "owner-2",
                       *NO_HTTP_CLASH)
    assert_one_line_error(second, f"{a.host_if} is attached by the connstats probe with pid "
                                  f"{first.process.pid}; detach it there first")
    assert our_filters(a.host_if) == ["ingress", "egress"]  # the first probe's, untouched

    first.stop()  # SIGKILL: the kernel drops its lock; its filters stay behind
    assert our_filters(a.host_if) == ["ingress", "egress"]
    third = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_server.url,
                  "--host", "owner-2", *NO_HTTP_CLASH)
    third.wait_for("connstats probe: watching")
    listed = connstats(cs_env, "list", "--format", "json", "--nats", nats_server.url, "--host", "owner-2")
    assert [d["name"] for d in json.loads(listed.stdout)] == [a.host_if]
    assert third.interrupt() == 0
    assert "Traceback" not in third.stderr


@pytest.mark.parametrize("name", ["eth0\x00x", "eth0\x1bx", "eth0\nx", "abcdefghijklmnop"])
def test_an_iface_name_no_interface_can_have_is_one_line(cs_env, name):
    """From the config file: an argv cannot carry a NUL byte, TOML can (``\\u0000``)."""
    shown = repr(name)
    Path(cs_env["CONNSTATS_CONFIG"]).write_text(f"[probe]\nifaces = [{json.dumps(name)}]\n")
    result = connstats(cs_env, "probe", "--nats", "nats://127.0.0.1:1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: interface name {shown} ") and result.stderr.count("\n") == 1
    assert result.stderr.endswith("; see `ip link`\n")
