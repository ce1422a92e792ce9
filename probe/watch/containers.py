"""Who is behind a device: the peer namespace of a host-side veth, its pid, its container
(the runtimes' side is docker_watch.py, podman_watch.py).

    host veth ─ IFLA_LINK_NETNSID ─> nsid ─(RTM_GETNSID of each /proc/*/ns/net and
                                              /var/run/netns/*)─> Netns(inode, pid, name)
    Docker "start" ─ inspect ─> pid ─ RTM_GETNSID(pid) ─> nsid ─> host veths whose peer
                                     is in that namespace ─> attach, labelled (id, name, image)
    Docker "die"/"destroy" ───────────────────────────────> detach, forget

``NetnsResolver`` caches nsid -> netns and only rescans ``/proc`` on a miss; a cached
entry is checked with one ``stat`` of the pid (or name) that anchors it. The link
watcher (watcher.py) and ``DockerWatcher`` share one ``ContainerIndex``, made by
``build_probe`` (probe/compose.py) and passed to both, so a veth attached by either gets the
Docker labels when Docker knows its namespace. Both see the probe through ``ProbePort``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETNSID, RTM_NEWNSID
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

from ..contract.errors import ConnstatsError
from ..contract.events import Failed
from ..contract.record import NO_OWNER, Owner, Runtime
from ..kernel.devices import AttachedDevice, link_info
from ..seams import ProbePort
from .cgroups import candidate_ids

log = logging.getLogger("connstats.probe.containers")

NSID_NOT_ASSIGNED = 0xFFFFFFFF
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_PODMAN_SOCKET = "/run/podman/podman.sock"  # rootful; systemd's podman.socket serves it


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
    """A container (or a pod's sandbox) that a runtime knows, with the pid of its first process."""

    id: str
    name: str
    image: str
    pid: int
    runtime: Runtime = "docker"
    pod: str = ""  # "<k8s namespace>/<pod name>" where the runtime knows the pod
    workload: str = ""
    # The pod's labels (a pod's sandbox: kubelet's copy of the pod's metadata labels), for
    # the policy's label selectors; a sorted tuple of pairs, so the container stays hashable.
    pod_labels: tuple[tuple[str, str], ...] = ()

    @property
    def owner(self) -> Owner:
        return Owner(self.id, self.name, self.image, self.pod, self.workload, self.runtime)


def owner_of(netns: Netns | None, container: Container | None) -> Owner:
    """Who the records say is behind a device: the container, else the network namespace
    (its name, or netns:<inode>), else nobody."""
    if container is not None:
        return container.owner
    if netns is not None:
        return Owner(container_name=netns.label_name, runtime="netns")
    return NO_OWNER


def owner_fields(netns: Netns | None, container: Container | None) -> dict[str, Any]:
    """What attach events say about who is behind a device."""
    out: dict[str, Any] = {}
    if netns is not None:
        out.update(netns=netns.inode, netns_name=netns.name, pid=netns.pid)
    if container is not None:
        out.update(pid=container.pid, container_id=container.id,
                   container_name=container.name, container_image=container.image,
                   runtime=container.runtime)
        if container.pod:
            out.update(pod=container.pod, workload=container.workload)
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
        """Ask each namespace's nsid afresh: the kernel reuses both namespace inodes and
        nsids, so an inode's nsid from an earlier scan may belong to a namespace that died
        (a container gone, another made in its inode under a new nsid)."""
        self.rescans += 1
        found: dict[int, Netns] = {}
        for inode, pid, name, path in self._candidates():
            nsid = self._ask_path(path)
            if nsid is None:
                continue  # no id yet: nothing of ours links there
            known = found.get(nsid)
            found[nsid] = Netns(inode, nsid, pid or (known.pid if known else 0),
                                name or (known.name if known else ""))
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
    links = (link_info(msg) for msg in ipr.get_links())
    return sorted((link.ifindex, link.name) for link in links if link.kind == "veth" and link.peer_nsid == nsid)


# -- what both watchers share --------------------------------------------------------------


class ContainerIndex:
    """The netns resolver and what the runtimes said about each namespace; one per probe,
    made where the probe is composed and shared by the link watcher and the runtimes'
    watchers. A service: ``close()`` releases the resolver's netlink socket (``start()``
    does nothing)."""

    def __init__(self, resolver: NetnsResolver | None = None, proc: str = "/proc") -> None:
        self._resolver = resolver
        self._proc = Path(proc)
        self.by_netns: dict[int, Container] = {}  # netns inode -> the container that names it
        self.by_id: dict[str, Container] = {}  # every container a runtime's watcher follows

    @property
    def resolver(self) -> NetnsResolver:
        if self._resolver is None:  # opened on first use: a probe without veths needs none
            self._resolver = NetnsResolver()
        return self._resolver

    def owner(self, peer_nsid: int | None) -> tuple[Netns | None, Container | None]:
        """The namespace behind a peer nsid and the container that names it: the one a
        runtime's watcher registered for it, else the one the cgroup of a process in it
        belongs to (``by_cgroup``). Blocking (reads /proc)."""
        netns = self.resolver.lookup(peer_nsid)
        if netns is None:
            return None, None
        return netns, self.by_netns.get(netns.inode) or self.by_cgroup(netns)

    def by_cgroup(self, netns: Netns) -> Container | None:
        """The slow path, for a veth that came before its runtime's watcher knew the
        namespace (a network made after the container started): the namespace's lowest
        pid -> its /proc/<pid>/cgroup -> a container id a watcher follows. Registered for
        the namespace when found."""
        if not netns.pid or not self.by_id:
            return None
        try:
            text = (self._proc / str(netns.pid) / "cgroup").read_text()
        except OSError:  # the process is gone
            return None
        for container_id in candidate_ids(text):
            container = self.by_id.get(container_id)
            if container is not None:
                return self.by_netns.setdefault(netns.inode, container)
        return None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await asyncio.to_thread(resolver.close)


async def attach_owned(probe: ProbePort, ifindex: int, owner: Owner,
                       source: str, **fields: Any) -> AttachedDevice:
    """Attach ``ifindex`` with its owner and publish one "attached" event saying who is
    behind the device (``fields``). The owner names records from the first drained interval on."""
    device = await probe.attach(ifindex, None, owner, source=source, **fields)
    if owner != NO_OWNER:
        log.info("%s (ifindex %d) is %s's%s", device.name, ifindex, owner.pod or owner.container_name,
                 f" (pid {fields['pid']})" if fields.get("pid") else "")
    return device


async def detach_quietly(probe: ProbePort, ifindex: int, reason: str, **fields: Any) -> AttachedDevice | None:
    """Detach ``ifindex`` if it is attached (its owner stays for the final drain)."""
    if not any(d.ifindex == ifindex for d in probe.devices()):
        return None
    try:
        device = await probe.detach(ifindex, reason, **fields)
    except ConnstatsError as exc:  # somebody else detached it in the meantime
        log.debug("detach of %d: %s", ifindex, exc)
        return None
    if reason != "detached":
        log.info("%s (ifindex %d) is %s", device.name, ifindex, reason)
    return device


async def report_failed(probe: ProbePort, ifindex: int, ifname: str, exc: Exception, attempt: int,
                        retry_in: float, source: str, **fields: Any) -> None:
    """A ``failed`` event: an attach that will be retried in ``retry_in`` seconds."""
    await probe.publish_event(Failed(ifname=ifname, ifindex=ifindex, reason=str(exc), attempt=attempt,
                                     retry_in=retry_in, source=source, **fields))
