"""``connstats up`` for real: its embedded nats-server lets in root's commands and no one else.

Root runs ``up`` on a test veth with a fresh state directory; the commands root runs find
NATS and its credentials with no flags. User ``nobody`` (``runuser -u nobody``) may neither
attach, detach, list nor watch flows: each attempt is one ``error:`` line and exit 1, and
a raw nats-py client is refused too. Every process, link and directory the test made is
removed, also when it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from connstats.probe.kernel.pins import PinnedInstance
from tests.fixtures.netns import require_root, run_tag
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
CONNSTATS = REPO / ".venv" / "bin" / "connstats"
PYTHON = REPO / ".venv" / "bin" / "python"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
RAW_SUBSCRIBE = """
import asyncio, sys, nats
async def quiet(exc):
    pass
async def main():
    try:
        nc = await nats.connect(sys.argv[1], allow_reconnect=False, connect_timeout=2, error_cb=quiet)
        await nc.subscribe("connstats.v1.flows.>")
        await nc.flush()
    except Exception as exc:
        print(f"refused: {exc}")
        sys.exit(1)
    print("subscribed")
asyncio.run(main())
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def veth():
    """A veth pair in the root namespace, up; deleted at teardown."""
    require_root()
    name = f"cs{run_tag()}au"  # the run's tag: the leftover check (tests/fixtures/netns.py) sees it
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    try:
        for link in (name, name + "p"):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


@pytest.fixture
def root_env():
    """The environment of root on a clean machine: a fresh state directory, an empty config."""
    base = Path(tempfile.mkdtemp(prefix="connstats-auth-"))
    config = base / "config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNSTATS_", "INFLUXDB_V2_"))}
    env.update(CONNSTATS_STATE_DIR=str(base / "state"), CONNSTATS_CONFIG=str(config),
               CONNSTATS_UI="none")  # the default page's port stays free for the test of it
    yield env
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def up(veth, root_env):
    """``connstats up`` on the veth, started as root; SIGKILLed by pid at teardown if still running."""
    log = Path(root_env["CONNSTATS_STATE_DIR"]).parent / "up.err"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [str(CONNSTATS), "up", "--iface", veth, "--interval", "0.5", "--http", "127.0.0.1:0",
             "--docker-socket", "none"], env=root_env, stdout=subprocess.DEVNULL, stderr=err,
            stdin=subprocess.DEVNULL, cwd="/")
    try:
        def watching() -> bool:
            if "connstats up: watching" in log.read_text():
                return True
            if process.poll() is not None:
                pytest.fail(f"up did not start:\n{log.read_text()}")
            return False

        until(watching, 60, "'connstats up: watching'", detail=lambda: f"up did not start:\n{log.read_text()}")
        yield process, log
    finally:
        if process.poll() is None:
            for pid in _children(process.pid) + [process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(10)
        if PinnedInstance.for_state_dir(Path(root_env["CONNSTATS_STATE_DIR"])).path.exists():
            as_root(root_env, "reset")  # a SIGKILLed up leaves its pins; they are not the next test's


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def as_nobody(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", **(env or {})}
    return subprocess.run([RUNUSER, "-u", "nobody", "--", *argv], env=clean, cwd="/",
                          capture_output=True, text=True, timeout=60)


def as_root(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONNSTATS), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_only_root_controls_the_probe_of_up(up, veth, root_env):
    process, log = up
    state = Path(root_env["CONNSTATS_STATE_DIR"])
    url = (state / "nats.url").read_text().strip()
    runs = as_nobody(str(CONNSTATS), "--help")
    assert runs.returncode == 0, f"user nobody cannot run {CONNSTATS}: {runs.stderr}"

    # root: no flag, only the state directory, as every command on the machine
    listed = as_root(root_env, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(d["name"], d["mode"]) for d in json.loads(listed.stdout)] == [(veth, "auto")]

    # the state directory and everything with a secret in it are root's only
    assert mode(state) == 0o700
    for name in ("nats.url", "nats-credentials.json", "nats-embedded.conf", "nats-server.log"):
        assert mode(state / name) == 0o600, name
    assert mode(state / "jetstream") == 0o700

    refused = (f"error: NATS at {url} refused the connection: authorization violation; run as root "
               "(`connstats up` keeps its credentials in its state directory) or pass credentials "
               "(--nats nats://USER:PASSWORD@HOST:PORT or --nats-creds FILE)\n")
    for command in (["detach", veth], ["attach", veth + "p"], ["list"]):
        result = as_nobody(str(CONNSTATS), *command, "--nats", url)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", refused), command
    # pointing at root's state directory does not help: nobody cannot read it (the URL is given,
    # since the default port may be another up's when tests run side by side)
    result = as_nobody(str(CONNSTATS), "detach", veth, env={"CONNSTATS_STATE_DIR": str(state), "CONNSTATS_NATS": url})
    assert (result.returncode, result.stdout, result.stderr) == (1, "", refused)
    # nor does reading flows, with connstats top or with nats-py itself
    top = as_nobody(str(CONNSTATS), "top", "--all-hosts", "--count", "1", "--nats", url)
    assert (top.returncode, top.stdout, top.stderr) == (1, "", refused)  # the same line as every command
    raw = as_nobody(str(PYTHON), "-c", RAW_SUBSCRIBE, url)
    assert (raw.returncode, raw.stdout, raw.stderr) == (1, "refused: nats: 'Authorization Violation'\n", "")

    # nothing changed: the device is still attached
    listed = as_root(root_env, "list", "--format", "json")
    assert [d["name"] for d in json.loads(listed.stdout)] == [veth]

    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    for name in ("nats.url", "nats-credentials.json", "nats-embedded.conf"):
        assert not (state / name).exists(), name
