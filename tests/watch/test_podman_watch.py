"""podman: the Docker-API watcher on podman's socket, ``runtime="podman"``, pods named
after the pod.

The first tests use a fake client (inspect, libpod answers); the last ones run a real
podman service of the test's own (tests/fixtures/podman.py), real namespaces and veths,
and a fake kernel (no BPF: tests/e2e/test_podman.py counts with the real one).
"""
import asyncio
import contextlib
import json
import os

from connstats.probe.contract.record import Owner
from connstats.probe.watch.containers import Container, ContainerIndex, Netns
from connstats.probe.watch.docker_watch import DockerSettings, DockerWatcher
from connstats.probe.watch.podman_watch import PodmanWatcher, pod_container, podman_watcher
from tests.fixtures.podman import IMAGE
from tests.fixtures.wait import until_async
from tests.fixtures.watch import FakeClient, FakeDaemon, FakeResolver

INFRA_ID, POD_ID = "374b" + "1" * 60, "c213" + "2" * 60
APP = {"Id": "62c2" + "3" * 60, "Name": "/web", "Image": "sha256:d98e", "Config": {"Image": "localhost/shop:1"},
       "State": {"Running": True, "Pid": 5001}}
INFRA = {"Id": INFRA_ID, "Name": "/c2132dd0bd0c-infra", "Image": "sha256:d98e",
         "Config": {"Image": "localhost/pause:1"}, "State": {"Running": True, "Pid": 5000}}
LONE = {**APP, "Id": "77aa" + "4" * 60, "Name": "/lone", "State": {"Running": True, "Pid": 6000}}
LISTED = {APP["Id"]: {"Id": APP["Id"], "Pod": POD_ID, "PodName": "shop", "IsInfra": False},
          INFRA_ID: {"Id": INFRA_ID, "Pod": POD_ID, "PodName": "shop", "IsInfra": True},
          LONE["Id"]: {"Id": LONE["Id"], "Pod": "", "PodName": "", "IsInfra": False}}
POD = {"Id": POD_ID, "Name": "shop", "InfraContainerID": INFRA_ID}


def fake_libpod(path: str, **params: str):
    """libpod's containers/json (filtered by id) and pods/{id}/json, from the tables above."""
    if path == "containers/json":
        [wanted] = json.loads(params["filters"])["id"]
        return [LISTED[wanted]]
    assert path == f"pods/{POD_ID}/json", path
    return POD


def podman_with(netns_by_pid: dict, veths: dict) -> PodmanWatcher:
    daemon = FakeDaemon()
    index = ContainerIndex(FakeResolver(netns_by_pid))
    watcher = PodmanWatcher(daemon, DockerSettings("/nonexistent", runtime="podman"), index)
    watcher._client = FakeClient({d["Id"]: d for d in (APP, INFRA, LONE)})
    watcher._libpod = fake_libpod
    watcher.claims.veths = lambda nsid: veths.get(nsid, [])
    for pairs in veths.values():
        for ifindex, name in pairs:
            daemon.kernel.names[ifindex] = name
    return watcher


def test_a_pod_member_is_named_after_the_pod_and_its_infra_container():
    mine = Container(APP["Id"], "web", "localhost/shop:1", 5001, "podman")
    assert pod_container(mine, LISTED[APP["Id"]], POD) == Container(INFRA_ID, "shop", "", 5001, "podman")
    assert pod_container(mine, LISTED[LONE["Id"]], None) == mine  # not in a pod
    assert pod_container(mine, LISTED[APP["Id"]], {**POD, "InfraContainerID": ""}) == mine  # a pod without infra


async def test_a_pod_is_attached_once_named_after_the_pod_and_detached_when_its_last_container_goes():
    netns = Netns(4026532200, 4, 5000, "")
    watcher = podman_with({5000: netns, 5001: netns}, {4: [(31, "vethpod")]})
    daemon = watcher.probe
    await watcher._on_start(INFRA_ID)
    await watcher._on_start(APP["Id"])
    shop = Owner(INFRA_ID, "shop", "", runtime="podman")
    assert daemon.kernel.owners == {31: shop}
    [attached] = daemon.events
    assert (attached["event"], attached["source"], attached["runtime"], attached["container_name"],
            attached["container_id"]) == ("attached", "podman", "podman", "shop", INFRA_ID)
    await watcher._on_stop(APP["Id"])
    assert [d.ifindex for d in daemon.devices()] == [31]  # the pod lives on
    await watcher._on_stop(INFRA_ID)
    assert [(e["event"], e["source"]) for e in daemon.events] == [("attached", "podman"), ("detached", "podman")]
    assert watcher.errors == 0


async def test_a_container_outside_a_pod_is_named_after_itself_and_an_unanswering_libpod_is_no_error():
    netns = Netns(4026532300, 5, 6000, "")
    watcher = podman_with({6000: netns}, {5: [(41, "vethlone")]})
    await watcher._on_start(LONE["Id"])
    assert watcher.probe.kernel.owners == {41: Owner(LONE["Id"], "lone", "localhost/shop:1", runtime="podman")}

    def refuses(path, **params):
        raise ConnectionError("no libpod API")

    watcher._libpod = refuses
    assert await watcher._naming(APP["Id"], Container(APP["Id"], "web", "x", 1, "podman")) == Container(
        APP["Id"], "web", "x", 1, "podman")


def test_podman_says_remove_where_docker_says_destroy_and_is_asked_for_every_container_event():
    assert {"start", "die", "destroy", "remove"} == set(DockerWatcher.EVENTS)
    docker = DockerWatcher(FakeDaemon(), DockerSettings("/nonexistent"))
    podman = podman_watcher("/nonexistent")(FakeDaemon())
    assert docker.event_filters() == {"type": "container", "event": ["start", "die", "destroy", "remove"]}
    assert podman.event_filters() == {"type": "container"}  # podman 4.3 filters "die" as "died"


async def test_no_podman_socket_means_one_line_and_no_watching(tmp_path, caplog):
    watcher = podman_watcher(str(tmp_path / "podman.sock"))(FakeDaemon())
    with caplog.at_level("INFO", logger="connstats.probe"):
        await watcher.start()
    assert watcher._tasks == [] and watcher.source == "podman"
    assert [r.getMessage() for r in caplog.records] == [
        f"no podman socket at {tmp_path / 'podman.sock'}; not watching podman containers"]
    await watcher.close()


# -- a real podman service (root): real namespaces and veths, a fake kernel ---------------------------


@contextlib.asynccontextmanager
async def watching(podman_host, daemon: FakeDaemon):
    index = ContainerIndex()
    watcher = podman_watcher(podman_host.socket, index=index, reconnect_min=0.05)(daemon)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 10)
        yield watcher
    finally:
        await watcher.close()
        await index.close()


def mine(daemon: FakeDaemon, ifindex: int) -> list[tuple]:
    return [(e["event"], e["source"], e.get("runtime"), e.get("container_name"))
            for e in daemon.events if e["ifindex"] == ifindex]


async def test_a_podman_container_is_attached_as_podmans_and_released_on_die_and_on_remove(podman_host):
    web_ns, db_ns = podman_host.netns(), podman_host.netns()
    daemon = FakeDaemon()
    for ns in (web_ns, db_ns):
        daemon.kernel.names[ns.host_ifindex] = ns.host_if
    async with watching(podman_host, daemon) as watcher:
        web = await asyncio.to_thread(podman_host.run, "csp-web", web_ns, "sleep", "600")
        await until_async(lambda: web_ns.host_ifindex in daemon.kernel.attached, 10, "attach of the container's veth")
        assert daemon.kernel.owners[web_ns.host_ifindex] == Owner(web["Id"], "csp-web", IMAGE, runtime="podman")
        [attached] = daemon.events
        assert attached == {
            "event": "attached", "ifname": web_ns.host_if, "ifindex": web_ns.host_ifindex, "direction_mode": "auto",
            "inverted": True, "source": "podman", "netns": os.stat(f"/var/run/netns/{web_ns.netns}").st_ino,
            "netns_name": web_ns.netns, "pid": web["State"]["Pid"], "container_id": web["Id"],
            "container_name": "csp-web", "container_image": IMAGE, "runtime": "podman"}

        db = await asyncio.to_thread(podman_host.run, "csp-db", db_ns, "sleep", "600")
        await until_async(lambda: db_ns.host_ifindex in daemon.kernel.attached, 10, "attach of the second veth")

        await asyncio.to_thread(podman_host.api.kill, web["Id"])  # die
        await until_async(lambda: web_ns.host_ifindex not in daemon.kernel.attached, 10, "release after die")
        await asyncio.to_thread(podman_host.api.remove_container, db["Id"], force=True)  # die, remove
        await until_async(lambda: db_ns.host_ifindex not in daemon.kernel.attached, 10, "release after remove")
        assert watcher.errors == 0 and watcher.tracked == {}
    assert mine(daemon, web_ns.host_ifindex) == [("attached", "podman", "podman", "csp-web"),
                                                 ("detached", "podman", "podman", "csp-web")]
    assert mine(daemon, db_ns.host_ifindex) == [("attached", "podman", "podman", "csp-db"),
                                                ("detached", "podman", "podman", "csp-db")]


async def test_a_podman_pod_is_named_after_the_pod_and_released_when_the_pod_goes(podman_host):
    infra = await asyncio.to_thread(podman_host.pod, "csp-shop")
    pod_ns = podman_host.veth_into(infra["State"]["Pid"])  # as CNI would, before the probe starts
    veth = pod_ns.host_ifindex  # (the veth goes with the pod's namespace)
    daemon = FakeDaemon()
    daemon.kernel.names[veth] = pod_ns.host_if
    shop = Owner(infra["Id"], "csp-shop", "", runtime="podman")
    async with watching(podman_host, daemon) as watcher:
        await until_async(lambda: veth in daemon.kernel.attached, 10, "attach of the pod's veth")
        app = await asyncio.to_thread(podman_host.run_in_pod, "csp-shop-web", "csp-shop", "sleep", "600")
        await until_async(lambda: app["Id"] in watcher.tracked, 10, "the pod's app container")
        assert os.stat(f"/proc/{app['State']['Pid']}/ns/net").st_ino == os.stat(
            f"/proc/{infra['State']['Pid']}/ns/net").st_ino
        await asyncio.to_thread(podman_host.cli, "rm", "--force", "--time", "0", app["Id"])
        await until_async(lambda: app["Id"] not in watcher.tracked, 10, "the app container's remove")
        assert veth in daemon.kernel.attached  # the pod lives on
        await asyncio.to_thread(podman_host.cli, "pod", "rm", "--force", "--time", "0", "csp-shop")
        await until_async(lambda: veth not in daemon.kernel.attached, 10, "release of the pod's veth")
        assert watcher.errors == 0
    assert daemon.kernel.owners == {veth: shop}
    assert mine(daemon, veth) == [("attached", "podman", "podman", "csp-shop"),
                                                 ("detached", "podman", "podman", "csp-shop")]
