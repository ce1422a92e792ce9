"""The veths of the network namespaces that containers hold, claimed for their owner: what
every runtime watcher (Docker, containerd) does once its runtime names a container and its pid.

    claim(key, container)  pid ─ RTM_GETNSID ─> netns ─> host veths whose peer is in it
                           ─> attach, labelled; the netns registered in the shared ContainerIndex
                           (its first owner keeps it: a container joining another's namespace
                           does not take it over); a failed attach retried with backoff
    release(key)           detach its veths (their owner stays for the final drain), unregister;
                           unless another claimed container still lives in the namespace
                           (``--network container:X``, a podman pod): the veths pass to it

``key`` is the watcher's name for a container (Docker: its id; containerd: namespace and id).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Hashable

from pyroute2 import IPRoute

from ..contract.errors import ConnstatsError
from ..runtime.backoff import Backoff
from ..seams import ProbePort
from .containers import (
    Container,
    ContainerIndex,
    Netns,
    attach_owned,
    detach_quietly,
    owner_fields,
    peer_veths,
    report_failed,
)

log = logging.getLogger("connstats.probe.containers")


@dataclass
class Tracked:
    """A claimed container: its namespace and the veths attached for it."""

    container: Container
    netns: Netns | None
    ifindexes: list[int] = field(default_factory=list)
    failures: int = 0


def host_veths(nsid: int) -> list[tuple[int, str]]:
    """(ifindex, name) of our veths whose peer is in namespace ``nsid``; blocking."""
    with IPRoute() as ipr:
        return peer_veths(ipr, nsid)


class VethClaims:
    """The containers one runtime watcher claimed, by the watcher's key; runs on the loop."""

    def __init__(self, probe: ProbePort, index: ContainerIndex, source: str, retry: Backoff,
                 again: Callable[[Hashable], None]) -> None:
        self.probe = probe
        self.index = index
        self.source = source  # the events' "source": docker, containerd
        self.tracked: dict[Hashable, Tracked] = {}
        self.errors = 0  # failed attaches
        self.veths: Callable[[int], list[tuple[int, str]]] = host_veths  # blocking, run in a thread
        self._retry = retry
        self._again = again  # claim ``key`` again (the watcher looks it up anew), after a failed attach

    async def claim(self, key: Hashable, container: Container) -> None:
        """Attach the veths into ``container``'s namespace, labelled with it; again after a
        restart (a new pid), and only what is missing for the same pid (a resync)."""
        netns = await asyncio.to_thread(self.index.resolver.netns_of_pid, container.pid)
        tracked = self.tracked.get(key)
        if tracked is not None and tracked.container.pid == container.pid:
            wanted = set(tracked.ifindexes)
            tracked.netns = tracked.netns or netns  # it had no veth at its start; now it has
        else:
            tracked = self.tracked[key] = Tracked(container, netns)
            wanted = set()
        self.index.by_id[container.id] = container  # for a veth that comes later (ContainerIndex.by_cgroup)
        if netns is None:
            log.info("%s container %s (%s) has no veth into this namespace", self.source, container.name,
                     container.id[:12])
            return
        if self._holders(key, netns):
            log.debug("%s container %s shares a network namespace whose veths are attached already",
                      self.source, container.name)
            return
        held = self.index.by_netns.setdefault(netns.inode, container)
        if held.id != container.id:
            log.info("%s container %s joined the namespace of %s: its veths stay %s's", self.source,
                     container.name, held.name, held.name)
            return
        self.index.by_netns[netns.inode] = container  # the same container: its newest pid
        for ifindex, ifname in await asyncio.to_thread(self.veths, netns.nsid):
            if ifindex in wanted and any(d.ifindex == ifindex for d in self.probe.devices()):
                continue
            await self._attach(key, tracked, ifindex, ifname)

    async def _attach(self, key: Hashable, tracked: Tracked, ifindex: int, ifname: str) -> None:
        container, netns = tracked.container, tracked.netns
        try:
            await attach_owned(self.probe, ifindex, container.owner, self.source, **owner_fields(netns, container))
        except ConnstatsError as exc:
            self.errors += 1
            tracked.failures += 1
            delay = self._retry.delay(tracked.failures)
            log.warning("container %s: attach to %s failed: %s; retry in %.1f s", container.name, ifname, exc, delay)
            await report_failed(self.probe, ifindex, ifname, exc, tracked.failures, delay, self.source,
                                **owner_fields(netns, container))
            asyncio.get_running_loop().call_later(delay, self._again, key)
            return
        tracked.failures = 0
        if ifindex not in tracked.ifindexes:
            tracked.ifindexes.append(ifindex)

    async def release(self, key: Hashable) -> None:
        """Detach ``key``'s veths (their owner stays for the final drain) and forget it."""
        tracked = self.tracked.pop(key, None)
        if tracked is None:
            return
        if not any(t.container.id == tracked.container.id for t in self.tracked.values()):
            self.index.by_id.pop(tracked.container.id, None)
        heirs = self._neighbours(key, tracked.netns)
        if heirs and tracked.netns is not None:  # the namespace lives on: its veths stay
            heir = self.tracked[heirs[0]]
            heir.ifindexes.extend(i for i in tracked.ifindexes if i not in heir.ifindexes)
            if tracked.ifindexes:
                self.index.by_netns[tracked.netns.inode] = heir.container
            return
        fields = owner_fields(tracked.netns, tracked.container)
        for ifindex in tracked.ifindexes:
            await detach_quietly(self.probe, ifindex, "detached", source=self.source, **fields)
        if tracked.netns is not None:
            held = self.index.by_netns.get(tracked.netns.inode)
            if held is not None and held.id == tracked.container.id:
                del self.index.by_netns[tracked.netns.inode]

    def _neighbours(self, key: Hashable, netns: Netns | None) -> list[Hashable]:
        """The other claimed containers in ``netns``, those holding its veths first."""
        if netns is None:
            return []
        others = [(not (t.ifindexes or t.failures), i, other) for i, (other, t) in enumerate(self.tracked.items())
                  if other != key and t.netns is not None and t.netns.inode == netns.inode]
        return [other for _, _, other in sorted(others, key=lambda o: o[:2])]

    def _holders(self, key: Hashable, netns: Netns) -> list[Hashable]:
        """The other claimed containers in ``netns`` that hold (or are attaching) its veths."""
        return [other for other in self._neighbours(key, netns)
                if self.tracked[other].ifindexes or self.tracked[other].failures]
