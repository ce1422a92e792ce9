"""Who is behind a device: netns and pid resolution, Docker labels and events.

Unit tests use a fake /proc tree and a fake Docker client; the last tests use real
namespaces (root), without BPF.
"""
import asyncio
import os
import subprocess

import pytest

from connstats.probe.contract.errors import DeviceError
from connstats.probe.contract.record import NO_OWNER, Owner
from connstats.probe.watch.containers import (
    Container,
    ContainerIndex,
    Netns,
    NetnsResolver,
    owner_fields,
    owner_of,
    peer_veths,
)
from connstats.probe.watch.docker_watch import DockerSettings, DockerWatcher, container_from_inspect
from tests.fixtures.netns import require_root, sh
from tests.fixtures.watch import FakeClient, FakeDaemon, FakeResolver

INSPECT = {
    "Id": "4f1c" + "0" * 60, "Name": "/web-1", "Image": "sha256:abc",
    "Config": {"Image": "nginx:1.25"}, "State": {"Running": True, "Pid": 4242},
}


def test_container_from_inspect_takes_id_name_image_and_pid():
    assert container_from_inspect(INSPECT) == Container("4f1c" + "0" * 60, "web-1", "nginx:1.25", 4242)
    bare = {"Id": "x", "Image": "sha256:abc", "State": {}}
    assert container_from_inspect(bare) == Container("x", "", "sha256:abc", 0)


@pytest.mark.parametrize("netns, container, owner", [
    (None, None, NO_OWNER),
    (Netns(4026532100, 3, 0, "blue"), None, Owner(container_name="blue", runtime="netns")),
    (Netns(4026532100, 3, 812, ""), None, Owner(container_name="netns:4026532100", runtime="netns")),
    (Netns(4026532100, 3, 812, ""), Container("abc", "web-1", "nginx:1.25", 812),
     Owner("abc", "web-1", "nginx:1.25", runtime="docker")),
    (None, Container("ff91", "web-7d9f8c6b5-x2x9z", "", 9, "containerd", "shop/web-7d9f8c6b5-x2x9z", "web"),
     Owner("ff91", "web-7d9f8c6b5-x2x9z", "", "shop/web-7d9f8c6b5-x2x9z", "web", "containerd")),
])
def test_owner_is_the_container_then_the_netns_name_then_its_inode(netns, container, owner):
    assert owner_of(netns, container) == owner


def test_event_fields_say_netns_pid_and_container():
    netns = Netns(4026532100, 3, 812, "")
    assert owner_fields(netns, None) == {"netns": 4026532100, "netns_name": "", "pid": 812}
    assert owner_fields(netns, Container("abc", "web-1", "nginx:1.25", 812)) == {
        "netns": 4026532100, "netns_name": "", "pid": 812, "container_id": "abc",
        "container_name": "web-1", "container_image": "nginx:1.25", "runtime": "docker"}


class FakeProc:
    """/proc/<pid>/ns/net and /var/run/netns/<name> as plain files; inodes stand for namespaces."""

    def __init__(self, root) -> None:
        self.proc, self.names = root / "proc", root / "netns"
        self.proc.mkdir()
        self.names.mkdir()
        self.nsids: dict[int, int] = {}  # inode -> nsid
        self.asked = 0

    def add_pid(self, pid: int, like: int | None = None) -> int:
        (self.proc / str(pid) / "ns").mkdir(parents=True)
        path = self.proc / str(pid) / "ns/net"
        if like is None:
            path.write_text("")
        else:
            os.link(self.proc / str(like) / "ns/net", path)  # same inode: same namespace
        return path.stat().st_ino

    def resolver(self) -> NetnsResolver:
        resolver = NetnsResolver(proc=str(self.proc), netns_dir=str(self.names))

        def ask(path):
            self.asked += 1
            return self.nsids.get(os.stat(path).st_ino)

        resolver._ask_path = ask
        return resolver


def test_resolver_finds_the_lowest_pid_and_caches(tmp_path):
    fake = FakeProc(tmp_path)
    fake.add_pid(1)  # the probe's own namespace: no nsid
    inode = fake.add_pid(812)
    fake.add_pid(900, like=812)
    fake.nsids[inode] = 3
    resolver = fake.resolver()
    assert resolver.lookup(3) == Netns(inode, 3, 812, "")
    asked = fake.asked
    assert resolver.lookup(3) == Netns(inode, 3, 812, "")
    assert (resolver.rescans, fake.asked) == (1, asked)  # a hit costs one stat, no rescan
    assert resolver.lookup(None) is None and resolver.lookup(0xFFFFFFFF) is None


def test_resolver_rescans_when_the_anchor_pid_is_gone_and_names_win(tmp_path):
    fake = FakeProc(tmp_path)
    inode = fake.add_pid(812)
    fake.add_pid(900, like=812)
    fake.nsids[inode] = 3
    resolver = fake.resolver()
    assert resolver.lookup(3).pid == 812
    for name in ("ns/net", "ns"):
        p = fake.proc / "812" / name
        p.unlink() if p.is_file() else p.rmdir()
    (fake.proc / "812").rmdir()
    assert resolver.lookup(3) == Netns(inode, 3, 900, "")
    os.link(fake.proc / "900/ns/net", fake.names / "blue")
    for name in ("ns/net", "ns", ""):
        p = fake.proc / "900" / name
        p.unlink() if p.is_file() else p.rmdir()
    assert resolver.lookup(3) == Netns(inode, 3, 0, "blue")
    assert resolver.lookup(4) is None  # unknown nsid: a rescan, no answer
    assert resolver.rescans == 4


def test_a_namespace_no_watcher_registered_is_named_by_the_cgroup_of_its_lowest_pid(tmp_path):
    """The slow path: a veth that came after its container's start (the runtime's watcher
    found no veth then) is named by /proc/<pid>/cgroup -> a container id a watcher follows."""
    fake = FakeProc(tmp_path)
    inode = fake.add_pid(812)
    fake.add_pid(900, like=812)
    fake.nsids[inode] = 3
    sandbox_id = "ff91d738e71a" + "0" * 52
    (fake.proc / "812/cgroup").write_text(
        "4:memory:/kubepods/besteffort/pod8712f785-1a3e-41ec-a00b-e2dcc77431cb/" + sandbox_id + "\n0::/\n")
    sandbox = Container(sandbox_id, "web-7d9f8c6b5-x2x9z", "", 812, "containerd", "shop/web-7d9f8c6b5-x2x9z", "web")
    index = ContainerIndex(fake.resolver(), proc=str(fake.proc))
    assert index.owner(3) == (Netns(inode, 3, 812, ""), None)  # no watcher follows it yet
    index.by_id["0523533b9a53" + "0" * 52] = Container("0523533b9a53" + "0" * 52, "app", "img", 900, "containerd")
    assert index.owner(3) == (Netns(inode, 3, 812, ""), None)  # another container's id: not this one
    index.by_id[sandbox_id] = sandbox
    assert index.owner(3) == (Netns(inode, 3, 812, ""), sandbox)
    assert index.by_netns == {inode: sandbox}  # registered: the next lookup reads nothing
    (fake.proc / "812/cgroup").unlink()
    assert index.owner(3) == (Netns(inode, 3, 812, ""), sandbox)


# -- the Docker watcher, with a fake Engine client -----------------------------------------------


def docker_watcher_with(docs: dict, netns_by_pid: dict, veths: dict) -> DockerWatcher:
    daemon = FakeDaemon()
    index = ContainerIndex(FakeResolver(netns_by_pid))
    watcher = DockerWatcher(daemon, DockerSettings("/nonexistent", reconnect_min=0.01, reconnect_max=0.02), index)
    watcher._client = FakeClient(docs)
    watcher.claims.veths = lambda nsid: veths.get(nsid, [])
    for pairs in veths.values():
        for ifindex, name in pairs:
            daemon.kernel.names[ifindex] = name
    return watcher


async def test_start_attaches_every_veth_of_the_container_labelled_and_die_detaches():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT}, {4242: netns}, {3: [(17, "veth1a"), (19, "veth1b")]})
    daemon = watcher.probe
    await watcher._on_start(INSPECT["Id"])
    assert [d.ifindex for d in daemon.devices()] == [17, 19]
    assert daemon.kernel.owners == {17: Owner(INSPECT["Id"], "web-1", "nginx:1.25", runtime="docker"), 19: Owner(INSPECT["Id"], "web-1", "nginx:1.25", runtime="docker")}
    assert watcher._index.by_netns == {4026532100: Container(INSPECT["Id"], "web-1", "nginx:1.25", 4242)}
    assert watcher._index.by_id == {INSPECT["Id"]: Container(INSPECT["Id"], "web-1", "nginx:1.25", 4242)}
    await watcher._on_start(INSPECT["Id"])  # the same start again (a resync): nothing new
    assert [e["event"] for e in daemon.events] == ["attached", "attached"]
    assert daemon.events[0] == {
        "event": "attached", "ifname": "veth1a", "ifindex": 17, "direction_mode": "auto", "inverted": True,
        "source": "docker", "netns": 4026532100,
        "netns_name": "", "pid": 4242, "container_id": INSPECT["Id"], "container_name": "web-1",
        "container_image": "nginx:1.25", "runtime": "docker"}
    await watcher._on_stop(INSPECT["Id"])
    assert daemon.devices() == [] and watcher.tracked == {} and watcher._index.by_netns == {}
    assert watcher._index.by_id == {}  # followed no more: the slow path cannot find it
    assert [(e["event"], e["ifindex"]) for e in daemon.events[2:]] == [("detached", 17), ("detached", 19)]
    assert daemon.kernel.owners[17] == Owner(INSPECT["Id"], "web-1", "nginx:1.25", runtime="docker")  # for the final drain
    await watcher._on_stop(INSPECT["Id"])  # destroy after die: nothing left to do
    assert len(daemon.events) == 4 and watcher.errors == 0


async def test_a_container_without_a_veth_or_not_running_is_left_alone():
    stopped = {**INSPECT, "State": {"Running": False, "Pid": 0}}
    watcher = docker_watcher_with({INSPECT["Id"]: stopped, "host": {**INSPECT, "Id": "host"}}, {}, {})
    await watcher._on_start(INSPECT["Id"])
    await watcher._on_start("host")  # --network host: its netns is ours, no nsid
    await watcher._on_start("vanished")  # inspect fails: gone already
    assert watcher.probe.events == [] and watcher.probe.devices() == []


async def test_a_failed_container_attach_is_reported_and_retried():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT}, {4242: netns}, {3: [(17, "veth1a")]})
    watcher.probe.kernel.fail[17] = DeviceError("device 17 is gone")
    await watcher._on_start(INSPECT["Id"])
    [failed] = watcher.probe.events
    assert (failed["event"], failed["ifindex"], failed["reason"], failed["attempt"]) == (
        "failed", 17, "device 17 is gone", 1)
    del watcher.probe.kernel.fail[17]
    assert await asyncio.wait_for(watcher._queue.get(), 1) == ("start", INSPECT["Id"])
    await watcher._on_start(INSPECT["Id"])
    assert [d.ifindex for d in watcher.probe.devices()] == [17]


async def test_no_docker_socket_means_no_watching(tmp_path):
    watcher = DockerWatcher(FakeDaemon(), DockerSettings(str(tmp_path / "docker.sock")))
    await watcher.start()
    assert watcher._tasks == []
    await watcher.close()


async def test_an_unanswering_socket_is_retried_without_stopping(tmp_path):
    import socket as sockets
    path = str(tmp_path / "docker.sock")
    server = sockets.socket(sockets.AF_UNIX)
    server.bind(path)  # exists, but nobody listens: connect is refused
    watcher = DockerWatcher(FakeDaemon(), DockerSettings(path, reconnect_min=0.01, reconnect_max=0.02))
    await watcher.start()
    for _ in range(500):  # the first try imports docker-py: allow it a few seconds
        if watcher.errors >= 3:
            break
        await asyncio.sleep(0.01)
    assert not watcher.connected.is_set()
    assert [t.done() for t in watcher._tasks] == [False, False]  # failing, retrying, not crashed
    assert watcher.errors >= 3
    await watcher.close()
    server.close()


# -- real namespaces ------------------------------------------------------------------------------


@pytest.fixture
def named_netns():
    require_root()
    tag = f"cwn{os.getpid() % 10000}"
    sh("ip", "netns", "add", tag)
    sh("ip", "link", "add", f"{tag}h", "type", "veth", "peer", "name", "eth0", "netns", tag)
    sleeper = None
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", tag, "sleep", "60"])
        yield tag, sleeper
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        sh("ip", "link", "del", f"{tag}h", check=False)
        sh("ip", "netns", "del", tag, check=False)


def test_a_real_veth_leads_to_its_named_netns_and_the_pid_inside(named_netns):
    from pyroute2 import IPRoute

    name, sleeper = named_netns
    inode = os.stat(f"/var/run/netns/{name}").st_ino
    with IPRoute() as ipr:
        [msg] = ipr.get_links(ipr.link_lookup(ifname=f"{name}h")[0])
        nsid = msg.get_attr("IFLA_LINK_NETNSID")
        assert peer_veths(ipr, nsid) == [(msg["index"], f"{name}h")]
    resolver = NetnsResolver()
    try:
        for _ in range(100):  # `ip netns exec` has exec'd sleep once its ns/net is the netns
            if os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino == inode:
                break
            subprocess.run(["sleep", "0.01"])
        found = resolver.lookup(nsid)
        assert (found.inode, found.nsid, found.name) == (inode, nsid, name)
        assert found.pid == min(int(p) for p in os.listdir("/proc") if p.isdigit()
                                and _inode(f"/proc/{p}/ns/net") == inode)
        assert resolver.netns_of_pid(sleeper.pid) == found
        assert resolver.nsid_of_pid(os.getpid()) is None  # our own namespace has no nsid
    finally:
        resolver.close()


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


async def test_a_reconnect_settles_containers_that_died_while_away():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT}, {4242: netns}, {3: [(17, "veth1a")]})
    await watcher._on_start(INSPECT["Id"])
    watcher._open_stream = lambda: None
    watcher._running = lambda: [{"Id": "other"}]
    watcher._pump = lambda loop: watcher._closing.wait()  # a quiet stream until close()
    watcher._index.by_netns = {}
    watcher._tasks = [asyncio.create_task(watcher._connect_forever(asyncio.get_running_loop()))]
    await asyncio.wait_for(watcher.connected.wait(), 2)
    assert [await watcher._queue.get(), await watcher._queue.get()] == [("die", INSPECT["Id"]), ("start", "other")]
    watcher._closing.set()
    await asyncio.wait_for(watcher._tasks[0], 2)


# -- containers sharing one network namespace (--network container:X, a podman pod) ---------------

SIDECAR = {**INSPECT, "Id": "5e2d" + "0" * 60, "Name": "/web-1-sidecar", "State": {"Running": True, "Pid": 4300}}


async def test_a_second_container_in_the_namespace_neither_attaches_again_nor_detaches_it():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT, SIDECAR["Id"]: SIDECAR}, {4242: netns, 4300: netns},
                                  {3: [(17, "veth1a")]})
    daemon = watcher.probe
    await watcher._on_start(INSPECT["Id"])
    await watcher._on_start(SIDECAR["Id"])  # joined the first one's namespace
    web = Owner(INSPECT["Id"], "web-1", "nginx:1.25", runtime="docker")
    assert [e["event"] for e in daemon.events] == ["attached"] and daemon.kernel.owners == {17: web}
    assert watcher._index.by_netns[netns.inode].name == "web-1"  # the first one names it
    await watcher._on_stop(INSPECT["Id"])  # the first goes, the sidecar keeps the namespace alive
    assert [d.ifindex for d in daemon.devices()] == [17] and len(daemon.events) == 1
    assert watcher.tracked[SIDECAR["Id"]].ifindexes == [17]
    await watcher._on_stop(SIDECAR["Id"])  # the last one: detached
    assert [(e["event"], e["ifindex"]) for e in daemon.events] == [("attached", 17), ("detached", 17)]
    assert daemon.devices() == [] and watcher._index.by_netns == {} and watcher.errors == 0


async def test_a_container_whose_veth_came_after_its_start_is_attached_at_the_next_resync():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT, SIDECAR["Id"]: SIDECAR}, {}, {3: [(17, "veth1a")]})
    await watcher._on_start(INSPECT["Id"])  # no veth into its namespace yet: no nsid
    assert watcher.probe.events == [] and watcher.tracked[INSPECT["Id"]].netns is None
    watcher._index.resolver.by_pid.update({4242: netns, 4300: netns})
    await watcher._on_start(INSPECT["Id"])  # a resync, same pid
    await watcher._on_start(SIDECAR["Id"])
    assert [(e["event"], e["netns"]) for e in watcher.probe.events] == [("attached", netns.inode)]
    await watcher._on_stop(SIDECAR["Id"])
    assert [d.ifindex for d in watcher.probe.devices()] == [17]


async def test_a_container_that_leaves_a_shared_namespace_first_keeps_the_veth_attached():
    netns = Netns(4026532100, 3, 4242, "")
    watcher = docker_watcher_with({INSPECT["Id"]: INSPECT, SIDECAR["Id"]: SIDECAR}, {4242: netns, 4300: netns},
                                  {3: [(17, "veth1a")]})
    await watcher._on_start(INSPECT["Id"])
    await watcher._on_start(SIDECAR["Id"])
    await watcher._on_stop(SIDECAR["Id"])
    await watcher._on_start(INSPECT["Id"])  # a resync: still attached, nothing new
    assert [e["event"] for e in watcher.probe.events] == ["attached"]
    await watcher._on_stop(INSPECT["Id"])
    assert [e["event"] for e in watcher.probe.events] == ["attached", "detached"]
