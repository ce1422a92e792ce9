"""deploy/compose.yaml's health checks: each connstats service asks /readyz on the port its
command's --metrics names, and the check itself, run for real against a `connstats sink`
on a real nats-server and SQLite, passes when the sink is ready and fails when NATS is gone.
The NATS nodes' check (busybox wget, as in the nats:2.10-alpine image) runs against a real
nats-server serving cluster.conf's monitoring port."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.deploy import COMPOSE_ENV, DEPLOY, compose_file, docker_compose, needs_compose, option
from tests.fixtures.http import http_request
from tests.fixtures.nats import free_port
from tests.fixtures.runtimes import stop_daemon
from tests.fixtures.wait import until

ROOT = Path(__file__).resolve().parents[2]
CONNSTATS = ROOT / ".venv" / "bin" / "connstats"
CONNSTATS_SERVICES = ("probe", "sink")


def healthcheck(service: str, env: dict | None = None) -> list[str]:
    import yaml
    result = docker_compose("config", env={**COMPOSE_ENV, **(env or {})})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"][service]["healthcheck"]["test"]


def readyz_argv(test: list[str]) -> list[str]:
    """The check's command line (what Docker runs in the container), with the image's
    python3 being this test's interpreter (the script uses the standard library only)."""
    assert test[:3] == ["CMD", "python3", "-c"]
    return [sys.executable, "-c", *test[3:]]


@needs_compose
def test_every_connstats_service_checks_readyz_on_its_metrics_port():
    services = compose_file()["services"]
    connstats = sorted(name for name, s in services.items() if s.get("image") == "connstats:latest")
    assert connstats == sorted(CONNSTATS_SERVICES)
    for name in connstats:
        check = services[name]["healthcheck"]
        script, address = check["test"][3:]
        assert '/readyz"' in script and "urlopen(" in script
        assert address == option(services[name]["command"], "--metrics")  # the port its --metrics names
        assert (check["interval"], check["timeout"], check["retries"]) == ("15s", "5s", 3)
    assert services["probe"]["healthcheck"]["start_period"] == "2m"  # kernel headers, the compile
    assert services["sink"]["healthcheck"]["start_period"] == "30s"
    # a different probe --metrics moves its check along
    moved = {"CONNSTATS_PROBE_METRICS": "127.0.0.7:9999"}
    assert healthcheck("probe", moved)[-1] == "127.0.0.7:9999"


@needs_compose
def test_nats_nodes_check_healthz_on_the_monitoring_port_of_cluster_conf():
    services = compose_file()["services"]
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    (http,) = [line.split()[1] for line in conf.splitlines() if line.startswith("http:")]
    port = http.rpartition(":")[2]
    for node in ("nats-1", "nats-2", "nats-3"):
        assert services[node]["image"] == "nats:2.10-alpine"  # busybox wget; nats:2.10 is FROM scratch
        test = services[node]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "wget"] and test[-1] == f"http://127.0.0.1:{port}/healthz"


@needs_compose
def test_services_wait_for_what_they_need():
    services = compose_file()["services"]
    healthy = {"condition": "service_healthy"}
    nodes = ("nats-1", "nats-2", "nats-3")
    assert services["sink"]["depends_on"] == {**{n: healthy for n in nodes}, "influxdb": healthy}
    assert services["grafana"]["depends_on"] == {"influxdb": healthy, "prometheus": {"condition": "service_started"}}
    # the probe counts from its start (its outbox keeps what NATS cannot take yet)
    assert services["probe"]["depends_on"] == {n: {"condition": "service_started"} for n in nodes}
    influx_port = services["sink"]["environment"]["INFLUXDB_V2_URL"].rpartition(":")[2]
    assert services["influxdb"]["healthcheck"]["test"] == ["CMD", "influx", "ping", "--host",
                                                           f"http://127.0.0.1:{influx_port}"]
    for name, service in services.items():  # every condition names a service with a health check
        for needed, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], (name, needed)


def get(url: str) -> tuple[int, str]:
    try:
        return http_request(url, timeout=5)
    except OSError as exc:  # nothing listens
        return 0, str(exc)


@pytest.fixture
def sink(nats_server, tmp_path):
    """A real `connstats sink` on ``nats_server`` with a SQLite store; stopped by pid."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNSTATS_", "INFLUXDB_V2_"))}
    env.update(CONNSTATS_STATE_DIR=str(tmp_path / "state"), CONNSTATS_CONFIG=str(config))
    log = (tmp_path / "sink.log").open("w")
    process = subprocess.Popen([str(CONNSTATS), "sink", "--nats", nats_server.url, "--store",
                                f"sqlite:{tmp_path / 'flows.sqlite'}", "--metrics", f"127.0.0.1:{port}"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    yield port
    stop_daemon(process)
    log.close()


@needs_compose
def test_the_readyz_check_passes_when_the_sink_is_ready_and_fails_without_nats(sink, nats_server):
    port = sink
    url = f"http://127.0.0.1:{port}/readyz"
    argv = readyz_argv(healthcheck("sink"))
    argv[-1] = f"0.0.0.0:{port}"  # compose's address with this sink's port; asked on loopback

    def check() -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    until(lambda: get(url) == (200, "ready\n"), 30, "ready sink")
    ready = check()
    assert (ready.returncode, ready.stdout, ready.stderr) == (0, "", "")
    # the probe's check is the same script; with CONNSTATS_PROBE_METRICS set it asks that address
    probe_argv = readyz_argv(healthcheck("probe", {"CONNSTATS_PROBE_METRICS": f"127.0.0.1:{port}"}))
    assert probe_argv[:-1] == argv[:-1] and probe_argv[-1] == f"127.0.0.1:{port}"
    for address in (f"127.0.0.1:{port}", str(port)):  # a bare PORT is loopback, as --metrics reads it
        got = subprocess.run([*argv[:-1], address], capture_output=True, text=True, timeout=30)
        assert (got.returncode, got.stderr) == (0, ""), address
    nats_server.kill()
    until(lambda: get(url) == (503, "sink: NATS is not connected\n"), 30, "sink 503")
    unready = check()
    assert unready.returncode == 1 and "HTTP Error 503" in unready.stderr
    nats_server.start()
    until(lambda: get(url) == (200, "ready\n"), 30, "sink ready again")
    assert check().returncode == 0
    # a sink that does not listen at all fails the check too
    argv[-1] = f"0.0.0.0:{free_port()}"
    refused = check()
    assert refused.returncode == 1 and "Connection refused" in refused.stderr


def nats_server(conf: Path) -> subprocess.Popen:
    return subprocess.Popen([shutil.which("nats-server"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(server: subprocess.Popen) -> None:
    os.kill(server.pid, signal.SIGTERM)
    server.wait(10)


@pytest.mark.skipif(shutil.which("nats-server") is None or shutil.which("busybox") is None,
                    reason="nats-server or busybox is not installed")
@needs_compose
def test_the_nats_check_passes_on_a_jetstream_node_and_fails_before_its_cluster_formed(tmp_path):
    """The nodes' check, busybox wget as in the alpine image, against real nats-servers with
    JetStream and cluster.conf's monitoring port moved to a free one: a standalone node is
    healthy; a cluster node whose peers are not up (no meta leader) answers 503 and fails it;
    a node that is gone fails it."""
    test = healthcheck("nats-1")
    standalone, clustered = free_port(), free_port()
    (tmp_path / "a.conf").write_text(
        f"listen: 127.0.0.1:{free_port()}\nhttp: 127.0.0.1:{standalone}\n"
        f"jetstream {{ store_dir: {tmp_path / 'a'} }}\n")
    (tmp_path / "b.conf").write_text(  # one node of three, its routes lead nowhere yet
        f"server_name: nats-1\nlisten: 127.0.0.1:{free_port()}\nhttp: 127.0.0.1:{clustered}\n"
        f"jetstream {{ store_dir: {tmp_path / 'b'} }}\n"
        f"cluster {{ name: connstats, listen: 127.0.0.1:{free_port()}, routes: "
        f"[nats-route://127.0.0.1:{free_port()}, nats-route://127.0.0.1:{free_port()}] }}\n")

    def check(port: int) -> subprocess.CompletedProcess:
        argv = ["busybox", *test[1:-1], test[-1].replace(":8222/", f":{port}/")]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    servers = [nats_server(tmp_path / "a.conf"), nats_server(tmp_path / "b.conf")]
    try:
        until(lambda: get(f"http://127.0.0.1:{standalone}/healthz") == (200, '{"status":"ok"}'), 30,
                   "a healthy standalone node")
        ok = check(standalone)
        assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
        unavailable = (503, '{"status":"unavailable","error":"JetStream has not established contact with a meta leader"}')
        until(lambda: get(f"http://127.0.0.1:{clustered}/healthz") == unavailable, 30, "503 from the lone node")
        lone = check(clustered)
        assert (lone.returncode, lone.stderr) == (1, "wget: server returned error: HTTP/1.1 503 Service Unavailable\n")
    finally:
        for server in servers:
            stop(server)
    down = check(standalone)
    assert down.returncode == 1 and "Connection refused" in down.stderr
