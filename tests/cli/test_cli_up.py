"""The parts of ``up`` that need no kernel: the embedded nats-server and the shutdown wait."""
from __future__ import annotations

import asyncio
import os
import socket

import nats
import pytest

from connstats.cli.config import Config
from connstats.cli.embedded_nats import EmbeddedNats, pick_port
from connstats.cli.options import NatsFlags
from connstats.cli.settings import ProbeFlags, probe_config
from connstats.probe.compose import HttpConfig, ProbeConfig, http_api, watcher_services
from connstats.probe.contract import NatsOptions
from connstats.probe.contract.errors import ConfigError, DeviceError
from connstats.probe.contract.wire import FlowBatch
from connstats.probe.kernel.devices import check_interfaces, default_interfaces
from connstats.probe.publish.publisher import FlowPublisher, PublisherSettings
from connstats.probe.runtime.private import write_private
from connstats.sink.compose import consume_flows, wait_until_stored
from connstats.sink.consumer import ConsumerSettings
from tests.fixtures.nats import MemoryStore, free_port, sample_envelope, sample_records


def test_pick_port_prefers_the_given_port_and_falls_back_when_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = pick_port(port)
        assert other != port and 0 < other < 65536
    assert pick_port(port) == port


async def test_embedded_server_has_jetstream_on_loopback_and_stops(tmp_path):
    with socket.socket() as taken:  # the preferred port is busy: another one is used
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server = EmbeddedNats(tmp_path, preferred_port=busy)
        url = server.start()
        try:
            assert url == f"nats://127.0.0.1:{server.port}" and server.port != busy
            nc = await nats.connect(url)
            info = await nc.jetstream().account_info()
            await nc.close()
            assert info.limits is not None
            assert (tmp_path / "jetstream").is_dir()
            listening = open("/proc/net/tcp").read()
            assert f"0100007F:{server.port:04X}" in listening  # 127.0.0.1 only
            assert f"00000000:{server.port:04X}" not in listening
        finally:
            pid = server.pid
            server.stop()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


async def test_a_port_taken_between_the_look_and_the_bind_is_left_to_its_owner(tmp_path, monkeypatch):
    """Two `up`s starting at once both find 4222 free; the second server's bind fails.
    It must start again on a free port, and never take the first one's server for its own."""
    first = EmbeddedNats(tmp_path / "first", preferred_port=free_port())
    first.start()
    try:
        monkeypatch.setattr("connstats.cli.embedded_nats.port_is_free", lambda port: True)  # looked too early
        second = EmbeddedNats(tmp_path / "second", preferred_port=first.port)
        url = second.start()
        try:
            assert second.port != first.port and url == f"nats://127.0.0.1:{second.port}"
            log = (tmp_path / "second" / "nats-server.log").read_text()
            assert f"listen tcp 127.0.0.1:{first.port}: bind: address already in use" in log
            nc = await nats.connect(url)
            assert nc.connected_server_version.major == 2 and nc._server_info["server_name"] == second._name
            await nc.close()
        finally:
            second.stop()
    finally:
        first.stop()


async def test_wait_until_stored_follows_the_consumer_ack_floor(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    host = "node-1.example"
    store = MemoryStore()
    stop = asyncio.Event()
    settings = ConsumerSettings(fetch_timeout=0.2)
    sink = asyncio.create_task(consume_flows(options, store, settings, stop=stop))
    async with FlowPublisher(options, PublisherSettings(host=host)) as publisher:
        for seq in range(5):
            envelope = sample_envelope(seq, host=host)
            await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, 100)))
        assert await publisher.flush(10)
    assert await wait_until_stored(options, host, timeout=10) is True
    assert store.record_count() == 500
    stop.set()
    await sink


async def test_wait_until_stored_gives_up_after_the_timeout(nats_server):
    options = NatsOptions(servers=(nats_server.url,))
    host = "node-2"
    store = MemoryStore()
    stop = asyncio.Event()
    stop.set()  # the sink creates its consumer, then stops at once: nothing is acked
    await consume_flows(options, store, ConsumerSettings(fetch_timeout=0.2), stop=stop)
    async with FlowPublisher(options, PublisherSettings(host=host)) as publisher:
        envelope = sample_envelope(0, host=host)
        await publisher.submit(FlowBatch.from_records(envelope, sample_records(envelope, 3)))
        assert await publisher.flush(10)
    assert await wait_until_stored(options, host, timeout=0.3) is False
    assert await wait_until_stored(options, "never-published", timeout=0.3) is True


# -- how the probe is put together ---------------------------------------------------------------


class FakePort:
    """Where the HTTP API's totals would be tracked (a subscription is kept as an attribute)."""

    async def live_records(self) -> list:
        return []

    def on_interval(self, listener) -> None:
        self.interval_listener = listener

    def on_detach(self, listener):
        return lambda: None


def watchers(tmp_path, **flags) -> tuple[list[str], list[str], list[str]]:
    """(ifaces, auto patterns, watcher service names) of a probe plan built from ``flags``."""
    config = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path)}, None)
    iface = flags.pop("iface", None)
    built = probe_config(config, NatsFlags(), iface, None, "h", None, ProbeFlags(**flags))
    names = [type(factory(object())).__name__ for factory in watcher_services(built)]
    return built.ifaces, built.watch.auto, names


def test_watchers_follow_iface_auto_and_docker_flags(tmp_path):
    no_docker = dict(docker_socket="none", podman_socket="none", containerd_socket="none")
    # no --iface: what is up now, and every device that comes up later
    ifaces, auto, names = watchers(tmp_path, **no_docker)
    always = ["LinkWatcher", "FilterGuard"]  # deleted devices released, --iface kept, filters checked
    assert (ifaces, auto, names) == (default_interfaces(), ["*"], always)
    # --iface only: exactly those (kept attached by the link watcher), no pattern
    assert watchers(tmp_path, iface=["lo"], **no_docker) == (["lo"], [], always)
    # --auto: only what matches, as it comes up
    assert watchers(tmp_path, auto=["veth*"], exclude=["vethx*"], **no_docker) == ([], ["veth*"], always)
    # a Docker socket adds the container watcher (it waits quietly while the socket is absent)
    socket_path = str(tmp_path / "docker.sock")
    assert watchers(tmp_path, iface=["lo"], docker_socket=socket_path, podman_socket="none",
                    containerd_socket="none")[2] == [*always, "DockerWatcher"]
    # ... and podman's socket a second one, on by default like Docker's
    assert watchers(tmp_path, iface=["lo"], docker_socket="none", containerd_socket="none")[2] == [
        *always, "PodmanWatcher"]
    assert watchers(tmp_path, iface=["lo"], podman_socket=str(tmp_path / "podman.sock"),
                    containerd_socket="none")[2] == [*always, "DockerWatcher", "PodmanWatcher"]


def test_the_podman_socket_comes_from_flag_env_or_file_and_none_turns_it_off(tmp_path):
    def podman_socket(env: dict, file: dict, flag: str | None = None) -> str | None:
        config = Config(file, {"CONNSTATS_STATE_DIR": str(tmp_path), **env}, tmp_path / "c.toml")
        built = probe_config(config, NatsFlags(), ["lo"], None, "h", "none", ProbeFlags(podman_socket=flag))
        return built.watch.podman_socket

    assert podman_socket({}, {}) == "/run/podman/podman.sock"
    assert podman_socket({}, {"probe": {"podman_socket": "/f.sock"}}) == "/f.sock"
    assert podman_socket({"CONNSTATS_PODMAN_SOCKET": "/e.sock"}, {"probe": {"podman_socket": "/f.sock"}}) == "/e.sock"
    assert podman_socket({"CONNSTATS_PODMAN_SOCKET": "/e.sock"}, {}, "/flag.sock") == "/flag.sock"
    assert podman_socket({"CONNSTATS_PODMAN_SOCKET": "none"}, {}) is None
    assert podman_socket({}, {}, "none") is None


def test_the_containerd_watcher_only_when_its_socket_exists(tmp_path):
    import socket as sockets

    from connstats.probe.watch.containerd_watch import DOCKER_NAMESPACE, ContainerdWatcher

    config = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path)}, None)
    containerd, docker = str(tmp_path / "containerd.sock"), str(tmp_path / "docker.sock")

    def built(**flags) -> list:
        plan = probe_config(config, NatsFlags(), ["lo"], None, "h", None, ProbeFlags(**{"podman_socket": "none", **flags}))
        return [factory(object()) for factory in watcher_services(plan)][2:]

    assert built(docker_socket="none", containerd_socket=containerd) == []  # no socket there
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(containerd)
        [watcher] = built(docker_socket="none", containerd_socket=containerd)
        assert isinstance(watcher, ContainerdWatcher) and watcher.settings.socket_path == containerd
        assert watcher.settings.skip_namespaces == ()
        with sockets.socket(sockets.AF_UNIX) as docker_server:  # Docker watched: its namespace is left to it
            docker_server.bind(docker)
            _, watcher = built(docker_socket=docker, containerd_socket=containerd)
            assert watcher.settings.skip_namespaces == (DOCKER_NAMESPACE,)
        assert built(docker_socket="none", containerd_socket="none") == []
    # the environment and the file, as for the Docker socket
    env = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path), "CONNSTATS_CONTAINERD_SOCKET": "none"}, None)
    assert probe_config(env, NatsFlags(), ["lo"], None, "h", None, ProbeFlags()).watch.containerd_socket is None
    file = Config({"probe": {"containerd_socket": "/x.sock"}}, {"CONNSTATS_STATE_DIR": str(tmp_path)}, None)
    assert probe_config(file, NatsFlags(), ["lo"], None, "h", None, ProbeFlags()).watch.containerd_socket == "/x.sock"
    default = probe_config(config, NatsFlags(), ["lo"], None, "h", None, ProbeFlags())
    assert default.watch.containerd_socket == "/run/containerd/containerd.sock"


def test_the_http_api_only_when_an_address_is_set(tmp_path):
    assert http_api(HttpConfig(None), FakePort()) is None
    port = FakePort()
    parts = http_api(HttpConfig("127.0.0.1:0"), port)
    assert parts.service(port).totals is parts.totals  # the API serves the totals build_probe subscribes
    assert not hasattr(port, "interval_listener")  # ... and making them subscribed nothing
    with pytest.raises(ConfigError):
        http_api(HttpConfig("no-port"), FakePort())


def test_build_probe_makes_the_shared_objects_and_hands_them_to_the_services(tmp_path):
    from connstats.probe.compose import WatchConfig, build_probe
    from connstats.probe.watch.containers import ContainerIndex

    shown: list = []  # the CLI's live summary, say
    config = ProbeConfig(host="h", nats=NatsOptions(), ifaces=["lo"], interval=1.0, state_dir=tmp_path,
                         http=HttpConfig("127.0.0.1:0"),
                         watch=WatchConfig(auto=["veth*"], docker_socket=str(tmp_path / "docker.sock"),
                                           podman_socket=str(tmp_path / "podman.sock")),
                         interval_listeners=[shown.append])
    daemon = build_probe(config)
    services = [factory(daemon) for factory in daemon.settings.services]
    assert [type(s).__name__ for s in services] == [
        "ContainerIndex", "PolicyService", "ControlService", "HttpApi", "LinkWatcher", "FilterGuard", "DockerWatcher",
        "PodmanWatcher"]
    index, policy, control, api, links, guard, docker, podman = services
    assert isinstance(index, ContainerIndex) and links._index is index and docker._index is index
    assert podman._index is index and (docker.source, podman.source) == ("docker", "podman")
    assert policy.containers is index and control._handlers["policy_apply"] == policy.apply_verb
    # every interval to the self-metrics, the API's totals, the violations and the config's
    # listeners, in this order; the API serves the probe's telemetry, where the self-metrics answer /readyz
    metrics = config.telemetry.checks["probe"].__self__
    assert type(metrics).__name__ == "ProbeMetrics" and metrics.policy is policy
    assert daemon.interval_listeners == [metrics.add_interval, api.totals, policy.publish_violations, shown.append]
    assert api.telemetry is config.telemetry and set(config.telemetry.checks) == {"probe"}
    assert len(daemon.detach_listeners) == 1  # ... and the totals forget a detached device
    assert (control.host, daemon.host, daemon.settings.publisher.host) == ("h", "h", "h")
    assert all(s.probe is daemon for s in (policy, control, api, links, guard, docker, podman))


def test_the_daemon_offers_every_method_of_the_service_port():
    import inspect

    from connstats.probe.daemon import ProbeDaemon
    from connstats.probe.seams import ProbePort

    wanted = {name for name in vars(ProbePort) if not name.startswith("_")}
    assert wanted == {"interval", "attach", "detach", "check_filters", "devices", "label", "publish_event",
                      "live_records", "on_detach", "on_interval", "policy_tables", "status"}
    for name in wanted:
        port, daemon = inspect.getattr_static(ProbePort, name), inspect.getattr_static(ProbeDaemon, name)
        if callable(port):
            shape = lambda f: [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
            assert shape(port) == shape(daemon), name


def test_one_config_holds_the_host_and_the_parts_derive_it(tmp_path):
    config = ProbeConfig(host="h", nats=NatsOptions(), ifaces=["lo"], interval=1.0, state_dir=tmp_path)
    assert (config.kernel_settings().host, config.publisher_settings().host) == ("h", "h")
    assert config.publisher_settings().state_dir == tmp_path / "outbox"


def test_interfaces(tmp_path):
    names = default_interfaces()
    assert "lo" not in names
    assert all(int(open(f"/sys/class/net/{n}/flags").read(), 16) & 1 for n in names)
    check_interfaces(["lo"])
    with pytest.raises(DeviceError) as caught:
        check_interfaces(["lo", "nope0"])
    assert str(caught.value) == "no network interface 'nope0'; see `ip link`"


def test_the_url_file_is_private(tmp_path):
    write_private(tmp_path / "nats.url", "nats://u:p@h:4222\n")
    assert (tmp_path / "nats.url").stat().st_mode & 0o777 == 0o600


def test_http_none_turns_the_http_api_and_its_totals_off(tmp_path):
    config = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path)}, None)
    off = probe_config(config, NatsFlags(), ["lo"], None, "h", "none", ProbeFlags(docker_socket="none"))
    assert (off.http.address, off.http.required) == (None, False)
    assert http_api(off.http, FakePort()) is None
    default = probe_config(config, NatsFlags(), ["lo"], None, "h", None, ProbeFlags(docker_socket="none"))
    assert (default.http.address, default.http.required) == ("127.0.0.1:9102", False)


@pytest.mark.parametrize("file, env, flag, named", [
    ({}, {}, None, True),  # on by default
    ({"probe": {"processes": False}}, {}, None, False),
    ({"probe": {"processes": False}}, {"CONNSTATS_PROCESSES": "yes"}, None, True),
    ({}, {"CONNSTATS_PROCESSES": "off"}, None, False),
    ({}, {"CONNSTATS_PROCESSES": "on"}, False, False),  # the flag wins
])
def test_processes_follow_flag_env_and_file(tmp_path, file, env, flag, named):
    config = Config(file, {"CONNSTATS_STATE_DIR": str(tmp_path), **env}, None)
    built = probe_config(config, NatsFlags(), ["lo"], None, "h", "none",
                         ProbeFlags(docker_socket="none", processes=flag))
    assert built.processes is named


@pytest.mark.parametrize("file, env, flag, measured", [
    ({}, {}, None, True),  # on by default
    ({"probe": {"quality": False}}, {}, None, False),
    ({"probe": {"quality": False}}, {"CONNSTATS_QUALITY": "yes"}, None, True),
    ({}, {"CONNSTATS_QUALITY": "off"}, None, False),
    ({}, {"CONNSTATS_QUALITY": "on"}, False, False),  # the flag wins
])
def test_quality_follows_flag_env_and_file(tmp_path, file, env, flag, measured):
    config = Config(file, {"CONNSTATS_STATE_DIR": str(tmp_path), **env}, None)
    built = probe_config(config, NatsFlags(), ["lo"], None, "h", "none",
                         ProbeFlags(docker_socket="none", quality=flag))
    assert (built.quality, built.processes) == (measured, True)


def test_a_processes_setting_that_is_not_a_yes_or_no_is_refused(tmp_path):
    config = Config({}, {"CONNSTATS_STATE_DIR": str(tmp_path), "CONNSTATS_PROCESSES": "maybe"}, None)
    with pytest.raises(ConfigError, match="CONNSTATS_PROCESSES: 'maybe' is not true or false"):
        probe_config(config, NatsFlags(), ["lo"], None, "h", "none", ProbeFlags(docker_socket="none"))
