"""Who may call the HTTP API and the web page of a real ``connstats up``: root, members of
the ``--http-group``, holders of the token, and nobody else, whatever the request says.
The callers are real local users: ``curl`` run as ``nobody`` (``runuser``) or as a uid with
no account (``setpriv``); the uid is the kernel's, from the owner of curl's socket.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import connstats
from tests.fixtures.nats import free_port
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

STATS = "/traffic_device_connection_stats"
ATTACH = "/traffic_count_attach_device"
NO_ACCOUNT_UID = 48_213  # a uid with no passwd entry: in no group at all


def curl(url: str, *, as_user: str | int = 0, method: str = "GET", body: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request by ``curl`` run as root (0), a user name (runuser) or a bare uid (setpriv)."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if body is not None:
        argv += ["--data-binary", body]
    if isinstance(as_user, str):
        argv = ["runuser", "-u", as_user, "--", *argv]
    elif as_user:
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    text, _, status = out.stdout.rpartition("\n")
    assert out.returncode == 0, out.stderr
    return int(status), text


def start_up(start, a, b, *extra: str):
    """``up`` on a's and b's veths with its HTTP API and its page on free loopback ports."""
    api, page = free_port(), free_port()
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5",
               "--http", f"127.0.0.1:{api}", "--ui", f"127.0.0.1:{page}", *extra)
    up.wait_for("connstats up: watching")
    up.wait_for("connstats up: web page on")
    return up, f"http://127.0.0.1:{api}", f"http://127.0.0.1:{page}"


def attached(env: dict) -> list[str]:
    listed = connstats(env, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return sorted(d["name"] for d in json.loads(listed.stdout))


def test_nobody_is_refused_root_and_the_token_get_in(quiet_network, cs_env, start):
    a, b = quiet_network
    up, api, page = start_up(start, a, b)
    token_file = Path(cs_env["CONNSTATS_STATE_DIR"]) / "ui-token"
    a.traffic("udp", b.ipv4, 5353, 40021, 7, 100)

    hint = f"send 'Authorization: Bearer <the token in {token_file}>'"
    refused = json.dumps({"error": "user nobody (uid 65534) may not use this API; run as root, be in the group "
                                   f"named with --http-group, or {hint}"}, separators=(",", ":"))
    assert curl(api + STATS, as_user="nobody") == (403, refused)
    assert curl(f"{api}{STATS}/{_ifindex(a.host_if)}", as_user="nobody") == (403, refused)
    remove = json.dumps({"iface": b.host_if, "action": "remove"})
    assert curl(api + ATTACH, as_user="nobody", method="POST", body=remove,
                headers={"Content-Type": "application/json"}) == (403, refused)
    assert attached(cs_env) == sorted([a.host_if, b.host_if])  # still attached: nothing was turned off
    page_refused = {"error": "user nobody (uid 65534) may not use this page; run as root, be in the group named "
                             f"with --http-group, or open the address printed at start (?token=...) or {hint}"}
    status, text = curl(page + "/api/map?since=1h", as_user="nobody")
    assert (status, json.loads(text)) == (403, page_refused)
    assert curl(page + "/", as_user="nobody")[0] == 403

    # a wrong token is a 401; the right one lets nobody in, on both listeners
    token = token_file.read_text().strip()
    assert f"connstats up: web page on {page}/?token={token}\n" in up.stderr
    wrong = {"Authorization": "Bearer " + token[:-1] + ("x" if token[-1] != "x" else "y")}
    status, text = curl(api + STATS, as_user="nobody", headers=wrong)
    assert (status, json.loads(text)) == (401, {"error": f"the token is not this API's; {hint}"})
    bearer = {"Authorization": f"Bearer {token}"}
    status, text = curl(api + STATS, as_user="nobody", headers=bearer)
    assert status == 200
    assert _udp_totals(json.loads(text), 40021) == {(a.host_if, "egress"): (7, 7 * 142),
                                                    (b.host_if, "ingress"): (7, 7 * 142)}
    status, text = curl(page + "/api/map?since=1h", as_user="nobody", headers=bearer)
    assert status == 200 and set(json.loads(text)) >= {"nodes", "edges", "since_ms"}

    # root's plain curl of the earlier tool's endpoints, no token
    status, text = curl(api + STATS)
    assert status == 200 and _udp_totals(json.loads(text), 40021) == {(a.host_if, "egress"): (7, 7 * 142),
                                                                      (b.host_if, "ingress"): (7, 7 * 142)}
    assert curl(page + "/api/map?since=1h")[0] == 200
    # /metrics, /healthz and /readyz stay open to everybody
    assert curl(api + "/healthz", as_user="nobody")[0] == 200
    assert curl(api + "/metrics", as_user="nobody")[0] == 200

    # one log line per refused uid and listener, however many requests it sent
    assert up.stderr.count("refused user nobody (uid 65534) on this API (403)") == 1
    assert up.stderr.count("refused user nobody (uid 65534) on this page (403)") == 1
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_the_http_group_lets_its_members_in(quiet_network, cs_env, start):
    """``--http-group nogroup``: nobody (whose group that is) may call both; a uid without an
    account may not."""
    a, b = quiet_network
    up, api, page = start_up(start, a, b, "--http-group", "nogroup")
    a.traffic("udp", b.ipv4, 5353, 40022, 3, 10)
    until(lambda: _udp_totals(json.loads(curl(api + STATS, as_user="nobody")[1]), 40022)
          == {(a.host_if, "egress"): (3, 3 * 52), (b.host_if, "ingress"): (3, 3 * 52)}, 10, "nobody's stats")
    assert curl(page + "/api/map?since=1h", as_user="nobody")[0] == 200
    remove = json.dumps({"iface": b.host_if, "action": "remove"})
    status, text = curl(api + ATTACH, as_user="nobody", method="POST", body=remove,
                        headers={"Content-Type": "application/json"})
    assert (status, json.loads(text)["attached"]) == (200, False)
    assert attached(cs_env) == [a.host_if]

    token_file = Path(cs_env["CONNSTATS_STATE_DIR"]) / "ui-token"
    status, text = curl(api + STATS, as_user=NO_ACCOUNT_UID)
    assert (status, json.loads(text)) == (403, {"error": f"user {NO_ACCOUNT_UID} (uid {NO_ACCOUNT_UID}) may not use "
                                                         "this API; run as root, join group nogroup, or send "
                                                         f"'Authorization: Bearer <the token in {token_file}>'"})
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_an_unknown_http_group_is_a_one_line_error(cs_env):
    result = connstats(cs_env, "up", "--http-group", "no-such-group-i18", "--iface", "lo")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("error: --http-group: no group 'no-such-group-i18' on this host; create it "
                             "(groupadd no-such-group-i18) or name another\n")


def _ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


def _udp_totals(body: dict, src_port: int) -> dict:
    return {(c["ifname"], c["direction"]): (c["total_packets"], c["total_bytes"]) for c in body.values()
            if c.get("protocol") == "UDP" and c["src_port"] == src_port}
