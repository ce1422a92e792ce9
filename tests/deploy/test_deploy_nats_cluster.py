"""deploy/nats/cluster.conf, unchanged, forms the 3-node JetStream cluster of compose.yaml.

Each node runs in a network namespace of its own (tests/fixtures/netns.py), so all three
listen on 4222/6222 as in compose; ``ip netns exec`` gives each namespace an /etc/hosts
(/etc/netns/<ns>/hosts) that names the nodes nats-1..3, as compose's network does. Only the
store directory differs: ``NATS_STORE_DIR`` is a directory of the test's. A client in the first
namespace logs in as the compose users, creates the flow stream with 3 replicas the way
connstats does, and publishes through it; the probe's user may not publish another host's
flows. The roles' permissions are those of deploy/nats-server.conf and cli/nats_auth.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from connstats.probe.contract import host_token
from tests.fixtures.deploy import HOST, PASSWORDS, node_env, probe_user_env
from tests.fixtures.netns import _new_network, require_root
from tests.fixtures.secure_nats import deployed_permissions, embedded_permissions

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "nats" / "cluster.conf"
NODES = ("nats-1", "nats-2", "nats-3")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"

needs_nats_server = pytest.mark.skipif(not Path(NATS_SERVER).exists(), reason="nats-server is not installed")


def test_cluster_conf_grants_each_role_what_nats_server_conf_grants():
    """deploy/nats/cluster.conf cannot drift from deploy/nats-server.conf: both are checked
    against cli/nats_auth.py (tests/cli/test_nats_auth.py checks nats-server.conf)."""
    text = CONF.read_text()
    for variable, value in probe_user_env(HOST).items():
        assert f"${variable}" in text
        text = text.replace(f"${variable}", json.dumps(value))
    assert deployed_permissions(text) == embedded_permissions(host_token(HOST))


@pytest.fixture
def three_hosts():
    require_root()
    yield from _new_network(3)


@pytest.fixture
def cluster(three_hosts, tmp_path):
    """nats-1..3 from deploy/nats/cluster.conf, one per namespace; stopped by pid at the end."""
    hosts = three_hosts.hosts
    etc = [Path("/etc/netns") / host.netns for host in hosts]
    processes: list[subprocess.Popen] = []
    try:
        names = "".join(f"{host.ipv4} {name}\n" for host, name in zip(hosts, NODES, strict=False))
        for directory in etc:
            directory.mkdir(parents=True)
            (directory / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
        for host, name in zip(hosts, NODES, strict=False):
            log = (tmp_path / f"{name}.log").open("wb")
            env = node_env(name, tmp_path / name)
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", host.netns, NATS_SERVER, "-c", str(CONF)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
        yield hosts, tmp_path
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        for directory in etc:
            shutil.rmtree(directory, ignore_errors=True)


CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    import nats
    from connstats.probe.contract import StreamSettings, ensure_stream, flow_stream_config, flows_subject
    from tests.fixtures.wait import until_async

    async def connect(user, password):
        servers = [f"nats://{user}:{password}@{name}:4222" for name in ("nats-1", "nats-2", "nats-3")]
        return await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=0)

    async def main(passwords, probe_user):
        async def stream_made():
            nc = await connect("sink", passwords["NATS_SINK_PASSWORD"])
            await ensure_stream(nc.jetstream(), flow_stream_config(StreamSettings(replicas=3)))
            return nc
        # JetStream answers once the cluster elected its meta leader
        nc = await until_async(stream_made, 30, "JetStream cluster", step=0.5, retry_on=(Exception,))
        errors = []
        async def record(exc):
            errors.append(str(exc).lower())
        servers = [f"nats://{probe_user}:{passwords['NATS_PROBE_PASSWORD']}@{n}:4222" for n in ("nats-1", "nats-2", "nats-3")]
        probe = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=0, error_cb=record)
        acks = [await probe.jetstream().publish(flows_subject("web-1"), b"x" * n) for n in (10, 20, 30)]
        await probe.publish(flows_subject("web-2"), b"y" * 40)  # another host's flows: refused
        await probe.flush()
        await until_async(lambda: errors, 10, fail=False)  # the test judges them
        await asyncio.sleep(0.5)  # a second error, if any, arrives too
        info = await nc.jetstream().stream_info("CONNSTATS")
        refused = None
        async def silent(exc):
            pass
        try:  # one server, no reconnects: nats-py would otherwise retry the pool for ever
            await asyncio.wait_for(nats.connect(f"nats://{probe_user}:wrong@nats-2:4222", connect_timeout=2,
                                                allow_reconnect=False, error_cb=silent), 10)
        except Exception as exc:
            refused = str(exc)
        await probe.close()
        await nc.close()
        print(json.dumps({"seqs": [a.seq for a in acks], "messages": info.state.messages,
                          "bytes_stored": info.state.bytes, "replicas": info.config.num_replicas,
                          "leader": info.cluster.leader,
                          "peers": sorted(r.name for r in info.cluster.replicas or []),
                          "refused": refused, "errors": errors}))

    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2]))
""")


@needs_nats_server
def test_cluster_conf_forms_a_jetstream_cluster_with_three_replicas(cluster):
    hosts, tmp_path = cluster
    started = time.monotonic()
    result = subprocess.run(["ip", "netns", "exec", hosts[0].netns, sys.executable, "-c", CLIENT, json.dumps(PASSWORDS),
                             probe_user_env(HOST)["NATS_PROBE_USER"]],
                            capture_output=True, text=True, timeout=120, cwd=REPO)  # CLIENT imports tests.fixtures
    logs = "\n".join((tmp_path / f"{name}.log").read_text(errors="replace")[-2000:] for name in NODES)
    assert result.returncode == 0, result.stderr[-3000:] + logs
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["seqs"] == [1, 2, 3] and got["messages"] == 3  # web-2's message is not in the stream
    assert got["errors"] == ['nats: permissions violation for publish to "connstats.v1.flows.web-2"']
    assert (got["replicas"], got["refused"]) == (3, "nats: 'Authorization Violation'")
    assert sorted([got["leader"], *got["peers"]]) == list(NODES)
    assert time.monotonic() - started < 60
