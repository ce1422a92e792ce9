"""deploy/: Docker Compose (docker-compose config), Kubernetes (kubernetes-validate,
offline) and the Dockerfile; the probe's privileges and host paths are taken from the code
and the systemd unit, so the three ways to deploy it grant the same. The dashboards:
tests/deploy/test_deploy_grafana.py."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.deploy import COMPOSE_ENV, DEPLOY, ROOT, compose_file, docker_compose, needs_compose, option

PROVISIONING = DEPLOY / "grafana" / "provisioning"

# -- compose ------------------------------------------------------------------------------------


@needs_compose
def test_compose_config_is_valid():
    result = docker_compose("config", "-q", env=COMPOSE_ENV)
    assert (result.returncode, result.stderr) == (0, "")


@needs_compose
def test_compose_refuses_to_start_without_the_secrets():
    result = docker_compose("config", "-q", env={k: v for k, v in COMPOSE_ENV.items() if k != "NATS_SINK_PASSWORD"})
    assert result.returncode == 1
    assert "set NATS_SINK_PASSWORD in deploy/.env" in result.stderr


def probe_capabilities() -> set[str]:
    """The capabilities the probe runs with under systemd (docs/deployment.md lists them)."""
    unit = (DEPLOY / "systemd" / "connstats-probe.service").read_text()
    (line,) = [line for line in unit.splitlines() if line.startswith("AmbientCapabilities=")]
    return {cap.removeprefix("CAP_") for cap in line.partition("=")[2].split()}


def probe_host_paths() -> set[str]:
    """Host paths the probe uses, from the code: bpffs, its lock directories, the kernel headers."""
    from connstats.probe.kernel import ownership, pins
    return {str(pins.BPFFS), str(pins.LOCK_DIR.parent), str(Path(ownership.DEFAULT_LOCK_DIR).parent),
            "/lib/modules", "/usr/src"}


def http_port() -> int:
    from connstats.probe.api.http import DEFAULT_HTTP_ADDRESS
    return int(DEFAULT_HTTP_ADDRESS.rpartition(":")[2])


def probe_metrics_port() -> int:
    from connstats.probe.runtime.telemetry import DEFAULT_METRICS_PORT, PROBE_METRICS_PORT
    assert PROBE_METRICS_PORT not in (DEFAULT_METRICS_PORT, http_port())  # probe and sink share a host
    return PROBE_METRICS_PORT


def is_loopback(address: str) -> bool:
    """``ADDR:PORT`` names a loopback address (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a variable such as $(POD_IP), a host name, 0.0.0.0 ...


def compose_probe_command(env: dict | None = None) -> list[str]:
    result = docker_compose("config", env={**COMPOSE_ENV, **(env or {})})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]["probe"]["command"]


@needs_compose
def test_compose_probe_has_the_host_namespaces_capabilities_and_mounts_it_needs():
    probe = compose_file()["services"]["probe"]
    assert (probe["network_mode"], probe["pid"]) == ("host", "host")
    assert set(probe["cap_add"]) == probe_capabilities() == {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"}
    assert "privileged" not in probe
    mounts = {volume.split(":")[1]: volume for volume in probe["volumes"]}
    assert probe_host_paths() <= set(mounts)
    assert mounts["/lib/modules"].endswith(":ro") and mounts["/usr/src"].endswith(":ro")
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock:/var/run/docker.sock:ro"
    command = probe["command"]
    assert command[command.index("--docker-socket") + 1] == "/var/run/docker.sock"
    assert option(command, "--http") == f"127.0.0.1:{http_port()}"
    assert option(command, "--metrics") == f"0.0.0.0:{probe_metrics_port()}"
    nats = probe["environment"]["CONNSTATS_NATS"].split(",")
    assert nats == [f"nats://probe-web-1:p@127.0.0.1:{port}" for port in (4222, 4223, 4224)]


@needs_compose
def test_compose_nats_is_a_three_node_jetstream_cluster():
    services = compose_file()["services"]
    nodes = sorted(name for name, service in services.items() if service["image"].startswith("nats:"))
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    assert re.findall(r"nats-route://([\w-]+):6222", conf) == nodes
    assert [services[n]["ports"] for n in nodes] == [
        [f"127.0.0.1:{port}:4222/tcp"] for port in (4222, 4223, 4224)]
    assert {services[n]["environment"]["NATS_SERVER_NAME"] for n in nodes} == set(nodes)
    for name in ("probe", "sink"):  # whichever starts first creates the streams, replicated on every node
        assert services[name]["environment"]["CONNSTATS_STREAM_REPLICAS"] == str(len(nodes))


@needs_compose
def test_compose_gives_the_nats_nodes_this_hosts_probe_user():
    """cluster.conf's probe user and subjects are the ones of the probe's role for CONNSTATS_HOST
    (as tests/deploy/test_deploy_nats_cluster.py runs them), and the probe logs in as that user."""
    from tests.fixtures.deploy import PASSWORDS, probe_user_env
    services = compose_file()["services"]
    wanted = {**probe_user_env("web-1"), **{k: COMPOSE_ENV[k] for k in PASSWORDS}}
    for node in ("nats-1", "nats-2", "nats-3"):
        env = services[node]["environment"]
        assert {k: env[k] for k in wanted} == wanted
    user = probe_user_env("web-1")["NATS_PROBE_USER"]
    assert all(url.startswith(f"nats://{user}:") for url in services["probe"]["environment"]["CONNSTATS_NATS"].split(","))
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    variables = set(re.findall(r"\$(NATS_\w+)", re.sub(r"#[^\n]*", "", conf)))
    assert variables == set(services["nats-1"]["environment"])  # every one it reads is set, no more


@needs_compose
def test_compose_refuses_to_start_without_the_alert_password():
    result = docker_compose("config", "-q", env={k: v for k, v in COMPOSE_ENV.items() if k != "NATS_ALERT_PASSWORD"})
    assert result.returncode == 1
    assert "set NATS_ALERT_PASSWORD in deploy/.env" in result.stderr


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")
def test_nats_cluster_config_is_valid_for_nats_server():
    """nats-server 2.9 (Debian's) accepts the file the nats:2.10-alpine image runs."""
    from tests.fixtures.deploy import node_env
    env = {**node_env("nats-1", Path("/tmp")), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([shutil.which("nats-server"), "-c", str(DEPLOY / "nats" / "cluster.conf"), "-t"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_compose
def test_compose_sink_grafana_and_prometheus_agree():
    services = compose_file()["services"]
    sink, influx, grafana = services["sink"], services["influxdb"], services["grafana"]
    assert sink["command"][:3] == ["sink", "--store", "influxdb"]
    metrics_port = int(sink["command"][sink["command"].index("--metrics") + 1].rpartition(":")[2])
    init = influx["environment"]
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert (sink["environment"]["INFLUXDB_V2_ORG"], sink["environment"]["CONNSTATS_INFLUX_BUCKET"]) == (
        init["DOCKER_INFLUXDB_INIT_ORG"], init["DOCKER_INFLUXDB_INIT_BUCKET"])
    assert sink["environment"]["INFLUXDB_V2_TOKEN"] == init["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == "t"
    sources = yaml.safe_load((PROVISIONING / "datasources" / "connstats.yaml").read_text())
    assert set(re.findall(r"\$\{(\w+)\}", json.dumps(sources))) <= set(grafana["environment"])
    assert grafana["environment"]["CONNSTATS_GRAFANA_INFLUX_ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape}
    assert targets == {"connstats-sink": [f"sink:{metrics_port}"],
                       "connstats-probe": [f"host.docker.internal:{probe_metrics_port()}"]}


# -- Kubernetes ---------------------------------------------------------------------------------

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37 bundles (pyproject: >=1.37)


def k8s_documents() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s(kind: str, name: str) -> dict:
    (doc,) = [d for _, d in k8s_documents() if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    return doc


@pytest.mark.parametrize("name, doc", k8s_documents(), ids=[n for n, _ in k8s_documents()])
def test_k8s_manifest_is_valid_against_the_kubernetes_schema(name, doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_k8s_validation_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = json.loads(json.dumps(k8s("DaemonSet", "connstats-probe")))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_probe_daemonset_has_the_host_access_and_health_checks():
    pod = k8s("DaemonSet", "connstats-probe")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (pod["hostNetwork"], pod["hostPID"]) == (True, True)
    assert set(container["securityContext"]["capabilities"]["add"]) == probe_capabilities()
    assert container["securityContext"]["privileged"] is False
    # allowPrivilegeEscalation is always true with CAP_SYS_ADMIN; the API server's pod
    # validation (beyond the JSON schemas) refuses false next to it.
    assert "allowPrivilegeEscalation" not in container["securityContext"]
    host_paths = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert probe_host_paths() <= set(host_paths)
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert all(mounted[name] == path for path, name in host_paths.items())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": probe_metrics_port()}  # the HTTP API's port is not the pod's
    assert option(container["args"], "--http") == f"127.0.0.1:{http_port()}"
    assert option(container["args"], "--metrics") == f"$(POD_IP):{probe_metrics_port()}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    annotations = k8s("DaemonSet", "connstats-probe")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(probe_metrics_port())


def test_k8s_probe_names_pods_through_the_nodes_containerd_socket():
    from connstats.probe.compose import DEFAULT_CONTAINERD_SOCKET

    pod = k8s("DaemonSet", "connstats-probe")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert option(container["args"], "--containerd-socket") == DEFAULT_CONTAINERD_SOCKET
    [volume] = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == DEFAULT_CONTAINERD_SOCKET]
    assert volume["hostPath"]["type"] == "Socket"
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == (DEFAULT_CONTAINERD_SOCKET, True)


def test_is_loopback():
    assert [is_loopback(a) for a in ("127.0.0.1:9102", "127.0.0.2:1", "[::1]:9102", "localhost:9102")] == [True] * 4
    assert [is_loopback(a) for a in ("0.0.0.0:9102", "$(POD_IP):9102", "[::]:9102", "10.0.0.5:9102",
                                     "web-1:9102", "9102")] == [False] * 6


@needs_compose
def test_the_probe_http_api_stays_on_loopback_in_compose_and_k8s():
    """The HTTP API (attach/detach) trusts uids on this host only: every deployment binds it to loopback,
    and serves scrapes and health checks on --metrics instead."""
    commands = {"compose": compose_probe_command(),
                "compose, CONNSTATS_PROBE_METRICS set": compose_probe_command({"CONNSTATS_PROBE_METRICS": "0.0.0.0:9"}),
                "k8s": k8s("DaemonSet", "connstats-probe")["spec"]["template"]["spec"]["containers"][0]["args"]}
    for where, command in commands.items():
        assert is_loopback(option(command, "--http")), (where, command)
        assert "--metrics" in command, where


def test_k8s_sink_deployment_serves_metrics_and_health_checks():
    (container,) = k8s("Deployment", "connstats-sink")["spec"]["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert container["args"][container["args"].index("--metrics") + 1] == f"0.0.0.0:{port}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_k8s_settings_are_connstats_settings_and_exist():
    from connstats.cli.config import SETTINGS
    known = {s.env for s in SETTINGS.values()} | {s.env_fallback for s in SETTINGS.values()} | {"POD_IP"}
    stores = {("Secret", "connstats-nats"): k8s("Secret", "connstats-nats")["stringData"],
              ("ConfigMap", "connstats-settings"): k8s("ConfigMap", "connstats-settings")["data"]}
    for kind, name in (("DaemonSet", "connstats-probe"), ("Deployment", "connstats-sink")):
        for env in k8s(kind, name)["spec"]["template"]["spec"]["containers"][0]["env"]:
            assert env["name"] in known
            source = env.get("valueFrom", {})
            for ref_kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in source:
                    assert source[key]["key"] in stores[(ref_kind, source[key]["name"])]


# -- Dockerfile ---------------------------------------------------------------------------------

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        continued = line.rstrip().endswith("\\")
        current += (line.rstrip()[:-1] if continued else line).strip() + " "
        if not continued:
            logical.append(current.strip())
            current = ""
    assert current == "", "the last instruction ends with a continuation"
    return [(word.upper(), rest.strip()) for word, _, rest in (line.strip().partition(" ") for line in logical)]


def test_dockerfile_parses_and_copies_only_files_that_exist():
    instructions = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    assert {word for word, _ in instructions} <= INSTRUCTIONS
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    (run_apt,) = [args for word, args in instructions if word == "RUN" and "apt-get install" in args]
    assert "python3-bpfcc" in run_apt.split()
    copied = [args.split()[:-1] for word, args in instructions if word == "COPY"]
    sources = [source for group in copied for source in group]
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert all((ROOT / source).exists() and source not in ignored for source in sources)
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())  # sink/alerts is in sink
    assert {d for d in package_dirs if not any(d == s or d.startswith(s + "/") for s in sources)} == set()
    assert {"pyproject.toml", "README.md"} <= set(sources)
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entrypoint == list(project["project"]["scripts"])
    assert {str(probe_metrics_port()), "9465"} <= set(dict(instructions)["EXPOSE"].split())


def test_dockerfile_parser_joins_continuations():
    assert dockerfile_instructions("# c\nFROM x\nRUN a \\\n  # note\n  b\nCMD [\"y\"]\n") == [
        ("FROM", "x"), ("RUN", "a b"), ("CMD", '["y"]')]


def test_compose_mounts_the_dashboards_where_the_provider_reads_them():
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "connstats.yaml").read_text())
    (provider,) = providers["providers"]
    grafana = compose_file()["services"]["grafana"]
    mounts = dict(reversed(volume.split(":")[:2]) for volume in grafana["volumes"])
    assert mounts[provider["options"]["path"]] == str(DEPLOY / "grafana" / "dashboards")
    assert mounts["/etc/grafana/provisioning"] == str(PROVISIONING)


def test_docker_parses_the_dockerfile_and_runs_its_steps_in_order(dockerd):
    """Docker's own builder (the legacy one of Debian's docker.io 20.10) reads the Dockerfile
    with the context .dockerignore leaves. Nothing is pulled: the test's busybox image is
    tagged debian:bookworm-slim, so FROM resolves locally and the build stops at the first
    RUN, where busybox has no apt-get (no registry is reachable here to build it for real)."""
    instructions = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    dockerd.api.tag(dockerd.image, "debian", "bookworm-slim")
    output = list(dockerd.api.build(path=str(ROOT), dockerfile="deploy/Dockerfile", tag="connstats:deploy-test",
                                    rm=True, forcerm=True, decode=True, pull=False))
    steps = [" ".join(line["stream"].split()) for line in output if line.get("stream", "").startswith("Step ")]
    assert steps == [f"Step 1/{len(instructions)} : FROM debian:bookworm-slim",
                     f"Step 2/{len(instructions)} : RUN {instructions[1][1]}"]
    (error,) = [line["error"] for line in output if "error" in line]
    assert error.endswith("returned a non-zero code: 127")  # sh: apt-get: not found
    assert dockerd.api.containers(all=True) == []  # forcerm: the step's container is gone


def cli_options(command: str) -> set[str]:
    import typer

    from connstats.cli.main import app
    group = typer.main.get_command(app)
    return {opt for param in group.get_command(None, command).params for opt in param.opts}


def flags(args: list[str]) -> set[str]:
    return {arg for arg in args if arg.startswith("-")}


@needs_compose
def test_compose_and_k8s_commands_use_only_options_connstats_has():
    services = compose_file()["services"]
    commands = [services["probe"]["command"], services["sink"]["command"]]
    commands += [k8s(kind, name)["spec"]["template"]["spec"]["containers"][0]["args"]
                 for kind, name in (("DaemonSet", "connstats-probe"), ("Deployment", "connstats-sink"))]
    for command in commands:
        assert flags(command[1:]) <= cli_options(command[0]), command
    assert [command[0] for command in commands] == ["probe", "sink", "probe", "sink"]
