"""The containerd watcher against a real containerd of the test's own (tests/fixtures/containerd.py):
pods laid out as kubelet and a CNI lay them out, a fake probe daemon (no BPF: the end-to-end
test with the real classifier is tests/e2e/test_containerd_e2e.py).
"""
import asyncio
import contextlib
import os

from connstats.probe.contract.record import Owner
from connstats.probe.watch.containerd_watch import ContainerdSettings, ContainerdWatcher
from connstats.probe.watch.containers import Container, ContainerIndex
from tests.fixtures.wait import until_async
from tests.fixtures.watch import FakeDaemon

POD = "shop/web-7d9f8c6b5-x2x9z"
POD_OWNER_LABELS = (("app", "web"), ("pod-template-hash", "7d9f8c6b5"))


@contextlib.asynccontextmanager
async def watching(containerd, *networks):
    """A started watcher on ``containerd``'s socket, on a fake daemon that knows ``networks``' veths."""
    daemon = FakeDaemon()
    for net in networks:
        daemon.kernel.names[net.ifindex] = net.host_if
    watcher = ContainerdWatcher(daemon, ContainerdSettings(containerd.socket, reconnect_min=0.05, reconnect_max=0.2))
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 10)
        yield watcher, daemon
    finally:
        await watcher.close()


async def attached(daemon, ifindex: int) -> None:
    await until_async(lambda: ifindex in {d.ifindex for d in daemon.devices()}, 10, f"attach of {ifindex}")


def inode(path: str) -> int:
    return os.stat(path).st_ino


async def test_a_sandbox_names_its_veth_with_its_pod_and_an_app_container_does_not_take_it(containerd):
    net, later = containerd.pod_network(), containerd.pod_network()
    async with watching(containerd, net, later) as (watcher, daemon):
        sandbox_id, pid = await asyncio.to_thread(containerd.run_sandbox, net)
        await attached(daemon, net.ifindex)
        sandbox = Container(sandbox_id, "web-7d9f8c6b5-x2x9z", "", pid, "containerd", POD, "web", POD_OWNER_LABELS)
        assert daemon.kernel.owners == {net.ifindex: sandbox.owner}
        assert sandbox.owner == Owner(sandbox_id, "web-7d9f8c6b5-x2x9z", "", POD, "web", "containerd")
        assert watcher._index.by_netns == {inode(net.path): sandbox}

        app_id, app_pid = await asyncio.to_thread(containerd.run_app, sandbox_id, pid)
        assert inode(f"/proc/{app_pid}/ns/net") == inode(net.path)  # the pod's namespace
        other_id, _ = await asyncio.to_thread(containerd.run_sandbox, later, "api-5c7b9d8f4-q8w7z")
        await attached(daemon, later.ifindex)  # events are handled in order: the app's start is done
        assert watcher._index.by_netns[inode(net.path)] == sandbox  # still the sandbox's
        assert set(watcher.tracked) == {("k8s.io", sandbox_id), ("k8s.io", other_id)}
        event = daemon.events[0]
        assert [e["container_id"] for e in daemon.events] == [sandbox_id, other_id]
        assert {k: event[k] for k in ("event", "ifindex", "source", "pod", "workload", "runtime", "container_id",
                                       "container_name", "container_image", "pid", "netns", "netns_name")} == {
            "event": "attached", "ifindex": net.ifindex, "source": "containerd", "pod": POD, "workload": "web",
            "runtime": "containerd", "container_id": sandbox_id, "container_name": "web-7d9f8c6b5-x2x9z",
            "container_image": "", "pid": pid, "netns": inode(net.path), "netns_name": net.netns}
        assert watcher.errors == 0


async def test_a_veth_that_comes_after_its_pod_started_is_named_by_the_cgroup_of_the_pods_process(containerd):
    """The slow path (ContainerIndex.by_cgroup) on containerd's own cgroup layout: the sandbox
    started in a namespace without a veth, so the watcher could name none; the veth a CNI
    adds afterwards is found to be the pod's from /proc/<pid>/cgroup, as the link watcher
    asks when it sees the new veth."""
    net = containerd.pod_network(veth=False)
    index = ContainerIndex()
    daemon = FakeDaemon()
    watcher = ContainerdWatcher(daemon, ContainerdSettings(containerd.socket, reconnect_min=0.05, reconnect_max=0.2),
                                index)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 10)
        sandbox_id, pid = await asyncio.to_thread(containerd.run_sandbox, net)
        await until_async(lambda: ("k8s.io", sandbox_id) in watcher.tracked, 10, "the sandbox followed")
        assert (daemon.devices(), index.by_netns) == ([], {})  # no veth: nothing attached, nothing named
        await asyncio.to_thread(containerd.add_veth, net)
        nsid = index.resolver.nsid_of_pid(pid)
        netns, owner = await asyncio.to_thread(index.owner, nsid)
        sandbox = Container(sandbox_id, "web-7d9f8c6b5-x2x9z", "", pid, "containerd", POD, "web", POD_OWNER_LABELS)
        assert (netns.inode, netns.pid, owner) == (inode(net.path), pid, sandbox)
        assert index.by_netns == {inode(net.path): sandbox}
    finally:
        await watcher.close()
        await index.close()
async def test_a_pod_started_before_the_watcher_is_found_when_it_lists(containerd):
    net, other = containerd.pod_network(), containerd.pod_network()
    sandbox_id, pid = containerd.run_sandbox(net, labels={"app.kubernetes.io/name": "shop-web", "app": "web"})
    plain_id = "db-1"  # ctr run: no kind, no pod: the container itself names its namespace
    plain_pid = containerd.run(plain_id, other.path, {"nerdctl/name": "db"}, {}, f"{containerd.cgroup_parent}/db")
    async with watching(containerd, net, other) as (watcher, daemon):
        await attached(daemon, net.ifindex)
        await attached(daemon, other.ifindex)
        assert daemon.kernel.owners == {
            net.ifindex: Owner(sandbox_id, "web-7d9f8c6b5-x2x9z", "", POD, "shop-web", "containerd"),
            other.ifindex: Owner(plain_id, "db", "", "", "", "containerd")}
        assert watcher._index.by_netns[inode(other.path)].pid == plain_pid
        assert watcher._index.by_netns[inode(net.path)].pod_labels == (
            ("app", "web"), ("app.kubernetes.io/name", "shop-web"))
        assert [e["event"] for e in daemon.events] == ["attached", "attached"] and watcher.errors == 0


async def test_a_killed_task_is_detached_and_its_owner_stays_for_the_last_interval(containerd):
    net, between, later = containerd.pod_network(), containerd.pod_network(), containerd.pod_network()
    async with watching(containerd, net, between, later) as (watcher, daemon):
        sandbox_id, pid = await asyncio.to_thread(containerd.run_sandbox, net)
        await attached(daemon, net.ifindex)
        owner = daemon.kernel.owners[net.ifindex]
        await asyncio.to_thread(containerd.exec, sandbox_id, "/bin/true")  # an exec'd process's exit: no stop
        between_id, _ = await asyncio.to_thread(containerd.run_sandbox, between, "api-5c7b9d8f4-q8w7z")
        await attached(daemon, between.ifindex)  # in order: the exec's exit is handled
        assert net.ifindex in {d.ifindex for d in daemon.devices()}
        await asyncio.to_thread(containerd.remove, between_id)
        await until_async(lambda: between.ifindex not in {d.ifindex for d in daemon.devices()}, 10, "a detach")
        await asyncio.to_thread(containerd.kill, sandbox_id)
        await until_async(lambda: daemon.devices() == [], 10, "the detach after the task's exit")
        assert [(e["event"], e["ifindex"], e.get("pod")) for e in daemon.events] == [
            ("attached", net.ifindex, POD), ("attached", between.ifindex, "shop/api-5c7b9d8f4-q8w7z"),
            ("detached", between.ifindex, "shop/api-5c7b9d8f4-q8w7z"), ("detached", net.ifindex, POD)]
        assert daemon.kernel.owners[net.ifindex] == owner  # the final drain still names the pod
        assert watcher.tracked == {} and watcher._index.by_netns == {}
        await asyncio.to_thread(containerd.remove, sandbox_id)  # /tasks/delete, /containers/delete: nothing more
        await asyncio.to_thread(containerd.run_sandbox, later, "api-5c7b9d8f4-q8w7z")
        await attached(daemon, later.ifindex)  # in order: the delete events are handled
        assert [(e["event"], e["ifindex"]) for e in daemon.events[4:]] == [("attached", later.ifindex)]
        assert watcher.errors == 0


async def test_a_restarted_containerd_is_reconnected_without_a_second_attach(containerd):
    net, later = containerd.pod_network(), containerd.pod_network()
    async with watching(containerd, net, later) as (watcher, daemon):
        sandbox_id, _ = await asyncio.to_thread(containerd.run_sandbox, net)
        await attached(daemon, net.ifindex)
        await asyncio.to_thread(containerd.stop)
        await until_async(lambda: not watcher.connected.is_set(), 10, "the watcher seeing containerd go")
        await asyncio.to_thread(containerd.start)  # the task lived on in its shim
        await asyncio.wait_for(watcher.connected.wait(), 10)
        other_id, _ = await asyncio.to_thread(containerd.run_sandbox, later, "api-5c7b9d8f4-q8w7z", "shop",
                                              {"pod-template-hash": "5c7b9d8f4"})
        await attached(daemon, later.ifindex)  # events flow again, after the listed tasks (in order)
        assert daemon.kernel.owners[later.ifindex] == Owner(other_id, "api-5c7b9d8f4-q8w7z", "",
                                                            "shop/api-5c7b9d8f4-q8w7z", "api", "containerd")
        # the pod that lived through the restart: listed again, not attached again
        assert [(e["event"], e["ifindex"]) for e in daemon.events] == [
            ("attached", net.ifindex), ("attached", later.ifindex)]
        assert set(watcher.tracked) == {("k8s.io", sandbox_id), ("k8s.io", other_id)}
        assert watcher.errors >= 1  # the lost stream, counted


async def test_dockers_own_namespace_is_left_to_the_docker_watcher(containerd):
    before, after, pod = containerd.pod_network(), containerd.pod_network(), containerd.pod_network()
    cgroup = f"{containerd.cgroup_parent}/moby"
    containerd.run("listed", before.path, {}, {}, f"{cgroup}/listed", namespace="moby")
    daemon = FakeDaemon()
    for net in (before, after, pod):
        daemon.kernel.names[net.ifindex] = net.host_if
    settings = ContainerdSettings(containerd.socket, skip_namespaces=("moby",))
    watcher = ContainerdWatcher(daemon, settings)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 10)
        await asyncio.to_thread(containerd.run, "started", after.path, {}, {}, f"{cgroup}/started", "moby")
        sandbox_id, _ = await asyncio.to_thread(containerd.run_sandbox, pod)
        await attached(daemon, pod.ifindex)  # in order: moby's start event came first
        assert [(e["event"], e["ifindex"]) for e in daemon.events] == [("attached", pod.ifindex)]
        assert set(watcher.tracked) == {("k8s.io", sandbox_id)}
    finally:
        await watcher.close()


async def test_no_socket_means_no_watching(tmp_path, caplog):
    watcher = ContainerdWatcher(FakeDaemon(), ContainerdSettings(str(tmp_path / "containerd.sock")))
    with caplog.at_level("INFO", "connstats.probe.containerd"):
        await watcher.start()
    assert watcher._tasks == []
    assert caplog.messages == [f"no containerd socket at {tmp_path / 'containerd.sock'}; "
                               "not watching containerd containers"]
    await watcher.close()


async def test_a_socket_without_grpcio_is_one_warning(tmp_path, caplog, monkeypatch):
    import socket as sockets
    import sys

    path = str(tmp_path / "containerd.sock")
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(path)
        monkeypatch.setitem(sys.modules, "grpc", None)  # import grpc raises ImportError
        watcher = ContainerdWatcher(FakeDaemon(), ContainerdSettings(path))
        with caplog.at_level("INFO", "connstats.probe.containerd"):
            await watcher.start()
        assert watcher._tasks == []
        assert caplog.messages == [f"a containerd socket is at {path} but the `grpcio` package is missing; "
                                   "pods are not watched (pip install grpcio protobuf)"]
        await watcher.close()


async def test_stubs_that_do_not_load_are_one_warning(tmp_path, caplog, monkeypatch):
    import socket as sockets

    from connstats.probe.watch import containerd_client

    def old_protobuf():
        raise ImportError("cannot import name 'runtime_version' from 'google.protobuf'")

    path = str(tmp_path / "containerd.sock")
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(path)
        monkeypatch.setattr(containerd_client, "load_api", old_protobuf)
        watcher = ContainerdWatcher(FakeDaemon(), ContainerdSettings(path))
        with caplog.at_level("INFO", "connstats.probe.containerd"):
            await watcher.start()
        assert watcher._tasks == []
        assert caplog.messages == [
            f"a containerd socket is at {path} but containerd's API does not load (cannot import name "
            "'runtime_version' from 'google.protobuf'); pods are not watched (pip install 'grpcio>=1.85.4' "
            "'protobuf>=7.35.1,<8')"]
        await watcher.close()
