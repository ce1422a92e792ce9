"""Who is behind a device: the peer namespace of a host-side veth, its pid, its container.

    host veth ─ IFLA_LINK_NETNSID ─> nsid ─(RTM_GETNSID of each /proc/*/ns/net and
                                              /var/run/netns/*)─> Netns(inode, pid, name)
    Docker "start" ─ inspect ─> pid ─ RTM_GETNSID(pid) ─> nsid ─> host veths whose peer
                                     is in that namespace ─> attach, labelled (id, name, image)
    Docker "die"/"destroy" ───────────────────────────────> detach, forget

``NetnsResolver`` caches nsid -> netns and only rescans ``/proc`` on a miss; a cached
entry is checked with one ``stat`` of the pid (or name) that anchors it. The link
watcher (watch.py) and ``DockerWatcher`` share one ``ContainerIndex`` per daemon, so a
veth attached by either gets the Docker labels when Docker knows its namespace.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETNSID, RTM_NEWNSID
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

from .devices import AttachedDevice
from .errors import ConnstatsError

log = logging.getLogger("connstats.probe.containers")

NSID_NOT_ASSIGNED = 0xFFFFFFFF
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
NO_LABELS = ("", "", "")


@dataclass(frozen=True, slots=True)
class Netns:
    """A network namespace as seen from the probe's: its inode, id, an owner pid, a name."""

    inode: int
    nsid: int
    pid: int = 0  # lowest pid living in it; 0 when none does (an `ip netns add` namespace)
    name: str = ""  # its name under /var/run/netns, if it has one

    @property
    def label_name(self) -> str:
        return self.name or f"netns:{self.inode}"


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    image: str
    pid: int

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.id, self.name, self.image)


def owner_labels(netns: Netns | None, container: Container | None) -> tuple[str, str, str]:
    """Record labels: Docker's (id, name, image), else ("", netns name or netns:<inode>, "")."""
    if container is not None:
        return container.labels
    if netns is not None:
        return ("", netns.label_name, "")
    return NO_LABELS


def owner_fields(netns: Netns | None, container: Container | None) -> dict[str, Any]:
    """What attach events say about who is behind a device."""
    out: dict[str, Any] = {}
    if netns is not None:
        out.update(netns=netns.inode, netns_name=netns.name, pid=netns.pid)
    if container is not None:
        out.update(pid=container.pid, container_id=container.id,
                   container_name=container.name, container_image=container.image)
    return out


# -- namespaces and pids -----------------------------------------------------------------


class NetnsResolver:
    """Maps a peer nsid to its namespace; thread-safe, cached, rescans only on a miss."""

    def __init__(self, proc: str = "/proc", netns_dir: str = "/var/run/netns") -> None:
        self._proc = Path(proc)
        self._netns_dir = Path(netns_dir)
        self._rtnl = NsidQuery()
        self._lock = threading.Lock()
        self._by_nsid: dict[int, Netns] = {}
        self._nsid_of_inode: dict[int, int] = {}  # inodes already asked about
        self.rescans = 0

    def close(self) -> None:
        with self._lock:
            self._rtnl.close()

    def lookup(self, nsid: int | None) -> Netns | None:
        """The namespace with this peer nsid, or None (same netns, unknown, or gone)."""
        if nsid is None or nsid < 0 or nsid == NSID_NOT_ASSIGNED:
            return None
        with self._lock:
            cached = self._by_nsid.get(nsid)
            if cached is not None and self._anchored(cached):
                return cached
            self._rescan()
            return self._by_nsid.get(nsid)

    def nsid_of_pid(self, pid: int) -> int | None:
        """The nsid of ``pid``'s network namespace as seen from ours; None if it has none."""
        with self._lock:
            return self._ask(pid=pid)

    def netns_of_pid(self, pid: int) -> Netns | None:
        nsid = self.nsid_of_pid(pid)
        return self.lookup(nsid) if nsid is not None else None

    def _anchored(self, netns: Netns) -> bool:
        anchor = self._netns_dir / netns.name if netns.name else self._proc / str(netns.pid) / "ns/net"
        return _inode(anchor) == netns.inode

    def _rescan(self) -> None:
        self.rescans += 1
        found: dict[int, Netns] = {}
        for inode, pid, name, path in self._candidates():
            nsid = self._nsid_of_inode.get(inode)
            if nsid is None:
                nsid = self._ask_path(path)
                if nsid is None:
                    continue  # no id yet: nothing of ours links there
                self._nsid_of_inode[inode] = nsid
            known = found.get(nsid)
            found[nsid] = Netns(inode, nsid, pid or (known.pid if known else 0),
                                name or (known.name if known else ""))
        live = {n.inode for n in found.values()}
        self._nsid_of_inode = {i: n for i, n in self._nsid_of_inode.items() if i in live}
        self._by_nsid = found

    def _candidates(self) -> Iterable[tuple[int, int, str, Path]]:
        """(inode, pid, name, path) for named namespaces, then for pids lowest first."""
        try:
            names = sorted(os.listdir(self._netns_dir))
        except OSError:
            names = []
        for name in names:
            path = self._netns_dir / name
            if (inode := _inode(path)) is not None:
                yield inode, 0, name, path
        seen: set[int] = set()
        for pid in sorted(int(p) for p in os.listdir(self._proc) if p.isdigit()):
            path = self._proc / str(pid) / "ns/net"
            inode = _inode(path)
            if inode is not None and inode not in seen:
                seen.add(inode)
                yield inode, pid, "", path

    def _ask_path(self, path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return self._ask(fd=fd)
        finally:
            os.close(fd)

    def _ask(self, **which: int) -> int | None:
        try:
            nsid = self._rtnl.nsid(**which)
        except OSError as exc:  # the pid or namespace went away
            log.debug("RTM_GETNSID %s failed: %s", which, exc)
            return None
        return None if nsid is None or nsid == NSID_NOT_ASSIGNED else nsid


class NsidQuery:
    """RTM_GETNSID on a plain rtnetlink socket (pyroute2 0.9's ``get_netnsid`` leaks a task)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(2.0)
        self._marshal = MarshalRtnl()
        self._seq = 0

    def nsid(self, *, pid: int | None = None, fd: int | None = None) -> int | None:
        """The id our namespace gives ``pid``'s or ``fd``'s namespace; raises OSError."""
        self._seq += 1
        msg = nsidmsg()
        msg["header"]["type"] = RTM_GETNSID
        msg["header"]["flags"] = NLM_F_REQUEST
        msg["header"]["sequence_number"] = self._seq
        msg["attrs"] = [("NETNSA_PID", pid)] if pid is not None else [("NETNSA_FD", fd)]
        msg.encode()
        self._sock.send(msg.data)
        while True:
            for answer in self._marshal.parse(self._sock.recv(65536)):
                if answer["header"]["sequence_number"] != self._seq:
                    continue  # a late answer to a request that timed out
                if answer["header"]["type"] == RTM_NEWNSID:
                    return answer.get_attr("NETNSA_NSID")
                code = -(answer.get("error") or 0)
                raise OSError(code, os.strerror(code))

    def close(self) -> None:
        self._sock.close()


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def peer_veths(ipr: IPRoute, nsid: int) -> list[tuple[int, str]]:
    """(ifindex, name) of this namespace's veths whose peer lives in namespace ``nsid``."""
    out = []
    for msg in ipr.get_links():
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
        if kind == "veth" and msg.get_attr("IFLA_LINK_NETNSID") == nsid:
            out.append((msg["index"], msg.get_attr("IFLA_IFNAME")))
    return sorted(out)


# -- what both watchers share --------------------------------------------------------------


class ContainerIndex:
    """Per daemon: the netns resolver and what Docker said about each namespace."""

    def __init__(self) -> None:
        self.resolver = NetnsResolver()
        self.by_netns: dict[int, Container] = {}  # netns inode -> container
        self.users = 0

    def owner(self, peer_nsid: int | None) -> tuple[Netns | None, Container | None]:
        netns = self.resolver.lookup(peer_nsid)
        return netns, (self.by_netns.get(netns.inode) if netns else None)


_indexes: "weakref.WeakKeyDictionary[Any, ContainerIndex]" = weakref.WeakKeyDictionary()


def index_for(daemon: Any) -> ContainerIndex:
    """The one ``ContainerIndex`` of ``daemon`` (made on first use)."""
    index = _indexes.get(daemon)
    if index is None:
        index = _indexes[daemon] = ContainerIndex()
    return index


def acquire_index(daemon: Any) -> ContainerIndex:
    index = index_for(daemon)
    index.users += 1
    return index


async def release_index(daemon: Any) -> None:
    index = _indexes.get(daemon)
    if index is not None:
        index.users -= 1
        if index.users <= 0:
            del _indexes[daemon]
            await asyncio.to_thread(index.resolver.close)


async def attach_labelled(daemon: Any, ifindex: int, labels: tuple[str, str, str],
                          source: str, **fields: Any) -> AttachedDevice:
    """Attach ``ifindex`` with its labels and publish one "attached" event saying who is
    behind the device (``fields``). The labels apply from the first drained interval on."""
    device = await daemon.attach(ifindex, None, labels, source=source, **fields)
    if labels != NO_LABELS:
        log.info("%s (ifindex %d) is %s's%s", device.name, ifindex, labels[1],
                 f" (pid {fields['pid']})" if fields.get("pid") else "")
    return device


async def detach_quietly(daemon: Any, ifindex: int, reason: str, **fields: Any) -> AttachedDevice | None:
    """Detach ``ifindex`` if it is attached (its labels stay for the final drain)."""
    if not any(d.ifindex == ifindex for d in daemon.devices()):
        return None
    try:
        device = await daemon.detach(ifindex, reason, **fields)
    except ConnstatsError as exc:  # somebody else detached it in the meantime
        log.debug("detach of %d: %s", ifindex, exc)
        return None
    if reason != "detached":
        log.info("%s (ifindex %d) is %s", device.name, ifindex, reason)
    return device


async def publish_event(daemon: Any, body: dict[str, Any]) -> None:
    """An event with no attached device behind it (a failed attach)."""
    if daemon.publisher is not None:
        await daemon.publisher.publish_event(body)


# -- Docker ------------------------------------------------------------------------------------


@dataclass
class DockerSettings:
    socket_path: str = DEFAULT_DOCKER_SOCKET
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0


def container_from_inspect(doc: dict[str, Any]) -> Container:
    """A ``Container`` from the Engine API's ``GET /containers/{id}/json`` answer."""
    return Container(
        id=doc["Id"], name=doc.get("Name", "").lstrip("/"),
        image=(doc.get("Config") or {}).get("Image") or doc.get("Image", ""),
        pid=int((doc.get("State") or {}).get("Pid") or 0),
    )


@dataclass
class _Tracked:
    container: Container
    netns: Netns | None
    ifindexes: list[int] = field(default_factory=list)
    failures: int = 0


class DockerWatcher:
    """Attaches to each running container's host-side veths, labelled; detaches on die.

    The Engine's event stream is read with docker-py in a thread and handed to the
    loop. Every (re)connect lists running containers first, so a missed event heals;
    a lost connection is retried with backoff and never stops the probe.
    """

    EVENTS = ("start", "die", "destroy")

    def __init__(self, daemon: Any, settings: DockerSettings) -> None:
        self.daemon = daemon
        self.settings = settings
        self.tracked: dict[str, _Tracked] = {}
        self.errors = 0
        self._index: ContainerIndex | None = None
        self._client: Any = None
        self._stream: Any = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._closing = threading.Event()
        self.connected = asyncio.Event()

    async def start(self) -> None:
        if not os.path.exists(self.settings.socket_path):
            log.info("no Docker socket at %s; not watching containers", self.settings.socket_path)
            return
        try:
            import docker  # noqa: F401  docker-py, needed only when there is a socket
        except ImportError:
            log.warning("a Docker socket is at %s but the `docker` package is missing; "
                        "containers are not watched (pip install docker)", self.settings.socket_path)
            return
        self._index = acquire_index(self.daemon)
        loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._connect_forever(loop), name="docker-events"),
                       asyncio.create_task(self._handle_forever(), name="docker-handler")]
        log.info("watching Docker containers on %s", self.settings.socket_path)

    async def close(self) -> None:
        self._closing.set()
        self._close_stream()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._client is not None:
            self._client.close()
        if self._index is not None:
            await release_index(self.daemon)
            self._index = None

    # -- the stream, in a thread -----------------------------------------------------------

    async def _connect_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self.settings.reconnect_min
        while not self._closing.is_set():
            try:
                await asyncio.to_thread(self._open_stream)
                running = {doc["Id"] for doc in await asyncio.to_thread(self._running)}
                for container_id in set(self.tracked) - running:  # died while we were away
                    await self._queue.put(("die", container_id))
                for container_id in sorted(running):
                    await self._queue.put(("start", container_id))
                self.connected.set()
                delay = self.settings.reconnect_min
                await asyncio.to_thread(self._pump, loop)
            except Exception as exc:
                if self._closing.is_set():
                    return
                self.errors += 1
                log.warning("Docker at %s: %s; retrying in %.1f s", self.settings.socket_path,
                            _reason(exc), delay)
            self.connected.clear()
            self._close_stream()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)

    def _open_stream(self) -> None:
        import docker

        if self._client is None:
            self._client = docker.APIClient(base_url=f"unix://{self.settings.socket_path}", timeout=10)
        self._client.ping()
        self._stream = self._client.events(
            decode=True, filters={"type": "container", "event": list(self.EVENTS)})

    def _running(self) -> list[dict[str, Any]]:
        return self._client.containers(filters={"status": "running"})

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        for event in self._stream:
            if self._closing.is_set():
                return
            action = event.get("Action") or event.get("status")
            if action in self.EVENTS:
                loop.call_soon_threadsafe(self._queue.put_nowait, (action, event["id"]))
        if not self._closing.is_set():
            raise ConnectionError("the event stream ended")

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    # -- on the loop --------------------------------------------------------------------------

    async def _handle_forever(self) -> None:
        while True:
            action, container_id = await self._queue.get()
            try:
                if action == "start":
                    await self._on_start(container_id)
                else:
                    await self._on_stop(container_id)
            except Exception as exc:
                self.errors += 1
                log.warning("container %s %s: %s", container_id[:12], action, _reason(exc))

    async def _on_start(self, container_id: str) -> None:
        try:
            doc = await asyncio.to_thread(self._client.inspect_container, container_id)
        except Exception as exc:
            log.debug("inspect %s: %r", container_id[:12], exc)
            return  # gone already: its die event follows
        container = container_from_inspect(doc)
        if not (doc.get("State") or {}).get("Running") or container.pid <= 0:
            return
        index = self._index
        netns = await asyncio.to_thread(index.resolver.netns_of_pid, container.pid)
        tracked = self.tracked.get(container_id)
        if tracked is not None and tracked.container.pid == container.pid:
            wanted = set(tracked.ifindexes)
        else:
            tracked = self.tracked[container_id] = _Tracked(container, netns)
            wanted = set()
        if netns is None:
            log.info("container %s (%s) has no veth into this namespace", container.name, container.id[:12])
            return
        index.by_netns[netns.inode] = container
        veths = await asyncio.to_thread(self._veths, netns.nsid)
        for ifindex, ifname in veths:
            if ifindex in wanted and any(d.ifindex == ifindex for d in self.daemon.devices()):
                continue
            await self._attach(tracked, ifindex, ifname)

    def _veths(self, nsid: int) -> list[tuple[int, str]]:
        with IPRoute() as ipr:
            return peer_veths(ipr, nsid)

    async def _attach(self, tracked: _Tracked, ifindex: int, ifname: str) -> None:
        container, netns = tracked.container, tracked.netns
        try:
            await attach_labelled(self.daemon, ifindex, container.labels, "docker",
                                  **owner_fields(netns, container))
        except ConnstatsError as exc:
            self.errors += 1
            tracked.failures += 1
            delay = min(self.settings.reconnect_max, self.settings.reconnect_min * 2 ** tracked.failures)
            log.warning("container %s: attach to %s failed: %s; retry in %.1f s",
                        container.name, ifname, exc, delay)
            await publish_event(self.daemon, {
                "event": "failed", "ifname": ifname, "ifindex": ifindex, "reason": str(exc),
                "attempt": tracked.failures, "retry_in": delay, "source": "docker",
                **owner_fields(netns, container)})
            asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, ("start", container.id))
            return
        tracked.failures = 0
        if ifindex not in tracked.ifindexes:
            tracked.ifindexes.append(ifindex)

    async def _on_stop(self, container_id: str) -> None:
        """die (or destroy): detach its veths (their labels stay for the final drain), forget it."""
        tracked = self.tracked.pop(container_id, None)
        if tracked is None:
            return
        fields = owner_fields(tracked.netns, tracked.container)
        for ifindex in tracked.ifindexes:
            await detach_quietly(self.daemon, ifindex, "detached", source="docker", **fields)
        if tracked.netns is not None and self._index is not None:
            self._index.by_netns.pop(tracked.netns.inode, None)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return "socket is gone"
    return text.splitlines()[0][:200]


def docker_watcher(socket_path: str = DEFAULT_DOCKER_SOCKET, **settings: Any):
    """A daemon service factory: ``DaemonSettings(services=[docker_watcher(path)])``.

    Does nothing (one log line) when no socket is at ``socket_path``.
    """
    def factory(daemon: Any) -> DockerWatcher:
        return DockerWatcher(daemon, DockerSettings(socket_path, **settings))

    return factory
