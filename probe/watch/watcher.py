"""Keep the attached devices true as they come and go: a netlink link watcher, as a
daemon service that always runs.

    RTMGRP_LINK socket (non-blocking, on the loop) ─┐
    initial dump, then a dump every resync_seconds ─┴─> latest LinkState per ifindex
        └─> dirty ifindexes ─> one worker: attach (named by --iface, or matches --auto,
                                                   not --exclude, and up)
                                           detach "gone" (deleted, renamed, replaced)
                                           retry a failed attach with backoff

Every attached device is released as "gone" when it is deleted, however it was
attached (``--iface``, the control plane, the HTTP API, Docker). ``--iface NAME``
names are kept: a device made anew under that name is attached again, once. A
device detached by someone else (by hand, or by the filter guard) is not attached
again until it is deleted or renamed.

A device is identified by (netns, ifindex, name): ifindexes repeat across namespaces
and are reused, so a device that comes back under its old name with a new ifindex is
a new device and is attached again. Labels (container or namespace, see
containers.py) stay with the probe after a detach, so the last interval of a device
that went away is drained and published labelled. The watcher sees the probe through
``ProbePort`` (probe/seams.py) and the namespaces through the shared ``ContainerIndex``; the
links through link_monitor.py (the netlink socket, dumps); what it wants is its
``WatchSettings`` (settings.py).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from pyroute2.netlink.rtnl import RTM_DELLINK

from ..contract.record import Owner
from ..kernel.ownership import own_netns
from ..runtime.backoff import Backoff
from ..seams import ProbePort
from .containers import ContainerIndex, attach_owned, detach_quietly, owner_fields, owner_of, report_failed
from .link_monitor import DeviceKey, LinkMonitor, LinkState, dump_links, link_state, still_there
from .settings import DEFAULT_EXCLUDE, LinkPatterns, WatchSettings

__all__ = [
    "DEFAULT_EXCLUDE", "Backoff", "DeviceKey", "LinkMonitor", "LinkPatterns", "LinkState",
    "LinkWatcher", "WatchSettings", "link_watcher",
]

log = logging.getLogger("connstats.probe.watch")


@dataclass
class _Failure:
    key: DeviceKey
    count: int
    retry_at: float


class LinkWatcher:
    """Keeps the daemon attached to exactly the matching devices that exist.

    ``links`` is the latest known state per ifindex, ``attached`` what this watcher
    attached. The netlink handler and the resync only update ``links`` and mark
    ifindexes dirty; one worker task settles each dirty ifindex, so a burst of events
    for one device costs one attach.
    """

    def __init__(self, probe: ProbePort, settings: WatchSettings, index: ContainerIndex | None = None,
                 *, monitor: bool = True) -> None:
        self.probe = probe
        self.settings = settings
        self.netns = own_netns()
        self.links: dict[int, LinkState] = {}
        self.attached: dict[int, LinkState] = {}
        self.stats = {"attached": 0, "gone": 0, "detached": 0, "failed": 0, "vanished": 0,
                      "resyncs": 0, "overflows": 0}
        self._use_monitor = monitor
        self.dump = dump_links  # (netns) -> {ifindex: LinkState}; blocking, run in a thread
        self.exists = still_there  # (DeviceKey) -> bool; blocking, run in a thread
        self._monitor: LinkMonitor | None = None
        self._own_index = index is None  # none given: a private one, closed with the watcher
        self._index = index if index is not None else ContainerIndex()
        self._stop_listening: Callable[[], None] | None = None
        self._failures: dict[int, _Failure] = {}
        self._released: dict[int, DeviceKey] = {}  # detached by someone else: leave alone
        self._vanished: dict[int, DeviceKey] = {}  # deleted since last settled
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._resync_now = asyncio.Event()
        self._touched: set[int] = set()  # ifindexes netlink spoke of while a dump ran
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._stop_listening = self.probe.on_detach(self._on_detached)
        try:
            if self._use_monitor:
                self._monitor = LinkMonitor()  # subscribe before the dump: no gap
                asyncio.get_running_loop().add_reader(self._monitor.fileno(), self._on_readable)
            await self.resync()
        except BaseException:
            await self.close()
            raise
        self._tasks = [asyncio.create_task(self._work_forever(), name="link-worker"),
                       asyncio.create_task(self._resync_forever(), name="link-resync")]
        log.info("watching links: keeping %s attached, auto-attaching %s (excluding %s)",
                 " ".join(self.settings.keep) or "no named device",
                 " ".join(self.settings.patterns.auto) or "nothing",
                 " ".join(self.settings.patterns.exclude) or "nothing")

    async def close(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._own_index:
            await self._index.close()

    async def settled(self, timeout: float | None = None) -> None:
        """Wait until no ifindex is waiting to be handled (for tests and benchmarks)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    # -- what changes the picture --------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._monitor is None:  # closed meanwhile
            return
        try:
            messages, overflowed = self._monitor.read()
        except OSError as exc:
            log.warning("reading link events failed: %s; resyncing", exc)
            messages, overflowed = [], True
        for msg in messages:
            self.apply(link_state(msg, self.netns), gone=msg["header"]["type"] == RTM_DELLINK)
        if overflowed:
            self.stats["overflows"] += 1
            log.warning("link events were dropped by the kernel; resyncing")
            self._resync_now.set()

    def apply(self, link: LinkState, gone: bool = False) -> None:
        """One link message: ``link`` is now the state of its ifindex (or it is gone)."""
        if gone:
            if self.links.get(link.ifindex, link).key == link.key:
                self.links.pop(link.ifindex, None)
            self._vanished[link.ifindex] = link.key
        else:
            self.links[link.ifindex] = link
        self._touched.add(link.ifindex)
        self._mark(link.ifindex)

    async def resync(self) -> None:
        """Replace the picture with a fresh dump, keeping what netlink said meanwhile."""
        self._touched = set()
        dumped = await asyncio.to_thread(self.dump, self.netns)
        for ifindex in set(self.links) - set(dumped) - self._touched:
            del self.links[ifindex]
        for ifindex, link in dumped.items():
            if ifindex not in self._touched:
                self.links[ifindex] = link
        self.stats["resyncs"] += 1
        self._forget_foreign_detaches()
        self._find_vanished()
        for ifindex in {*self.links, *self.attached, *self._failures}:
            self._mark(ifindex)

    def _find_vanished(self) -> None:
        """Attached devices the dump does not have were deleted (their event was lost)."""
        for device in self.probe.devices():
            if device.ifindex not in self.links:
                self._vanished.setdefault(device.ifindex, DeviceKey(self.netns, device.ifindex, device.name))
                self._mark(device.ifindex)

    async def _on_detached(self, device: Any) -> None:
        """Someone detached a device this watcher tracks (by hand, Docker, the filter
        guard): leave it alone from now on. The watcher's own detaches untrack first."""
        mine = self.attached.get(device.ifindex)
        if mine is not None and mine.name == device.name:
            del self.attached[device.ifindex]
            self._released[device.ifindex] = mine.key

    def _forget_foreign_detaches(self) -> None:
        """A device detached by someone else (control plane) is left alone."""
        present = {d.ifindex: d.name for d in self.probe.devices()}
        for ifindex, link in list(self.attached.items()):
            if present.get(ifindex) != link.name:
                del self.attached[ifindex]
                self._released[ifindex] = link.key
                log.info("%s was detached by hand; not attaching it again", link.name)

    def _mark(self, ifindex: int) -> None:
        self._dirty.add(ifindex)
        self._idle.clear()
        self._wake.set()

    # -- the worker ------------------------------------------------------------------------------

    async def _work_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._dirty:
                self._idle.set()
                await self._wake.wait()
            self._wake.clear()
            for ifindex in sorted(self._dirty):
                self._dirty.discard(ifindex)
                try:
                    await self.settle(ifindex, loop.time())
                except Exception:  # never let one device stop the watcher
                    log.exception("handling device %d failed", ifindex)

    async def settle(self, ifindex: int, now: float) -> None:
        """Make ``ifindex`` attached iff its current device is wanted."""
        link, mine = self.links.get(ifindex), self.attached.get(ifindex)
        vanished = self._vanished.pop(ifindex, None)
        if mine is None and vanished is not None:
            await self._release_foreign(vanished, link)
        if mine is not None and (link is None or link.key != mine.key or vanished == mine.key):
            await self._detach(mine, "gone")  # deleted (and maybe made anew under the same key)
        elif mine is not None and link is not None and not self.settings.wants_name(link.name):
            await self._detach(mine, "detached")
        if link is None or not self.settings.wants(link):
            self._failures.pop(ifindex, None)
            if link is None or self._released.get(ifindex) != link.key:
                self._released.pop(ifindex, None)
            return
        if ifindex in self.attached or self._released.get(ifindex) == link.key:
            return
        self._released.pop(ifindex, None)
        failure = self._failures.get(ifindex)
        if failure is not None and failure.key == link.key and now < failure.retry_at:
            return  # a retry is scheduled
        await self._attach(link)

    async def _attach(self, link: LinkState) -> None:
        netns, container = (await asyncio.to_thread(self._index.owner, link.peer_nsid)
                            if link.peer_nsid is not None else (None, None))
        if any(d.ifindex == link.ifindex and d.name == link.name for d in self.probe.devices()):
            self._adopt(link, owner_of(netns, container))
            return
        fields = owner_fields(netns, container)
        try:
            await attach_owned(self.probe, link.ifindex, owner_of(netns, container),
                                  self.settings.source(link.name), **fields)
        except Exception as exc:
            await self._failed(link, exc, fields)
            return
        self._failures.pop(link.ifindex, None)
        self.attached[link.ifindex] = link
        self.stats["attached"] += 1

    def _adopt(self, link: LinkState, owner: Owner) -> None:
        """Already attached (``--iface``, by hand, by Docker): track it, attach nothing twice."""
        self.probe.label(link.ifindex, owner)
        self._failures.pop(link.ifindex, None)
        self.attached[link.ifindex] = link

    async def _failed(self, link: LinkState, exc: Exception, fields: dict[str, Any]) -> None:
        if not await asyncio.to_thread(self.exists, link.key):
            log.debug("%s went away while being attached", link.name)
            self.stats["vanished"] += 1
            if self.links.get(link.ifindex) == link:
                self.links.pop(link.ifindex)
            return
        previous = self._failures.get(link.ifindex)
        count = previous.count + 1 if previous and previous.key == link.key else 1
        delay = self.settings.backoff.delay(count)
        loop = asyncio.get_running_loop()
        self._failures[link.ifindex] = _Failure(link.key, count, loop.time() + delay)
        loop.call_later(delay, self._mark, link.ifindex)
        self.stats["failed"] += 1
        log.warning("attaching %s (ifindex %d) failed: %s; retry %d in %.1f s",
                    link.name, link.ifindex, exc, count, delay)
        await report_failed(self.probe, link.ifindex, link.name, exc, count, delay,
                            self.settings.source(link.name), **fields)

    async def _release_foreign(self, key: DeviceKey, link: LinkState | None) -> None:
        """A device attached by hand or by another watcher was deleted: detach it too."""
        if link is not None and link.key == key:
            return
        if any(d.ifindex == key.ifindex and d.name == key.name for d in self.probe.devices()):
            if await detach_quietly(self.probe, key.ifindex, "gone", source="auto") is not None:
                self.stats["gone"] += 1

    async def _detach(self, link: LinkState, reason: str) -> None:
        del self.attached[link.ifindex]
        device = await detach_quietly(self.probe, link.ifindex, reason, source=self.settings.source(link.name))
        if device is not None:
            self.stats[reason] += 1

    async def _resync_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._resync_now.wait(), self.settings.resync_seconds)
            except asyncio.TimeoutError:
                pass
            self._resync_now.clear()
            try:
                await self.resync()
            except Exception as exc:
                log.warning("link resync failed: %s; trying again in %.0f s", exc,
                            self.settings.resync_seconds)


def link_watcher(auto: Sequence[str] = (), exclude: Iterable[str] = (),
                 resync_seconds: float = 30.0, backoff: Backoff | None = None,
                 keep: Iterable[str] = (), index: ContainerIndex | None = None):
    """A service factory: ``DaemonSettings(services=[link_watcher(["veth*"])])``.

    ``exclude`` globs are added to the default exclusion (``lo``). ``keep`` names
    (``--iface``) are attached whenever a device has that name, whatever the patterns say.
    ``index`` is the probe's shared ``ContainerIndex`` (else the watcher makes its own).
    """
    patterns = LinkPatterns(tuple(auto), (*DEFAULT_EXCLUDE, *exclude))
    settings = WatchSettings(patterns, resync_seconds, backoff or Backoff(), tuple(keep))

    def factory(probe: ProbePort) -> LinkWatcher:
        return LinkWatcher(probe, settings, index)

    return factory
