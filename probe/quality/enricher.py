"""``QualityEnricher``: the quality tables, the namespaces of the attached devices' ends, and
the join, as one of the enrichers ``KernelProbe`` runs on each drained interval.

    attached: the device's own end (the host's namespace) and, for a veth, its other end's
              namespace (IFLA_LINK_NETNSID) and ifindex (IFLA_LINK) ─ watched in the tables
    flip:     a grace period after the classifier's flip, the tables flip to their other copy
    enrich:   after the grace period: collect the flipped-out copy ─ join (join.py) ─
              with_columns (the seven quality columns) ─ with_drops (drops of no record)
    forget:   a detached device's last interval is drained: unwatched

The tables are anything with ``QualityTables``' methods: the tracepoints (quality.py), or a
fake in tests. ``start_quality`` loads the tracepoints; without them (a kernel that lacks
one, tracefs that cannot be mounted, a build without them) it logs one line and the probe
runs without the quality columns.
"""
from __future__ import annotations

import logging
import threading
from typing import Hashable, Protocol, TypeVar

import numpy as np

from ..contract.errors import KernelError
from ..contract.flow_batch import FlowBatch
from ..kernel.devices import AttachedDevice
from ..kernel.ownership import own_netns
from ..watch.containers import Netns, NetnsResolver
from .join import DeviceEnds, SocketCarry, join_quality
from .tables import QualitySnapshot

log = logging.getLogger("connstats.probe.quality")
K = TypeVar("K", bound=Hashable)


class QualityTables(Protocol):
    """The quality tracepoints' tables as the enricher drives them (quality.py)."""

    def watch_netns(self, inode: int) -> None: ...

    def forget_netns(self, inode: int) -> None: ...

    def watch_device(self, netns: int, ifindex: int) -> None: ...

    def forget_device(self, netns: int, ifindex: int) -> None: ...

    def flip(self) -> None: ...

    def collect(self) -> QualitySnapshot: ...

    def close(self) -> None: ...


class Resolver(Protocol):
    """nsid -> namespace (``NetnsResolver``)."""

    def lookup(self, nsid: int | None) -> Netns | None: ...

    def close(self) -> None: ...


class QualityEnricher:
    """Fills the quality columns and the unmatched drops of each polled interval."""

    kind = "quality"

    def __init__(self, tables: QualityTables, resolver: Resolver | None = None, host_netns: int | None = None) -> None:
        self.tables = tables
        self._resolver = resolver or NetnsResolver()
        self.host_netns = own_netns() if host_netns is None else host_netns
        self._devices: dict[int, DeviceEnds] = {}
        self._names: dict[int, str] = {}
        self._netns_users: dict[int, set[int]] = {}  # netns inode -> the devices that need it watched
        self._end_users: dict[tuple[int, int], set[int]] = {}  # (netns, ifindex) -> the same
        self._lock = threading.Lock()  # the device maps: attach (any thread) against the poll
        self._flipped = False  # flipped at the last poll, not collected yet
        self._carry = SocketCarry()
        self.expired_sockets = 0  # socket stats carried once and still without a record: given up
        self.lost_snapshots = 0  # flipped-out copies never joined (a poll that failed midway)

    def close(self) -> None:
        try:
            self.tables.close()
        finally:
            self._resolver.close()

    # -- devices ------------------------------------------------------------------------

    def attached(self, device: AttachedDevice) -> None:
        """Watch the namespaces and devices whose sockets and drops belong to ``device``."""
        peer = self._resolver.lookup(device.link.peer_nsid) if device.link.peer_nsid is not None else None
        if peer is None:
            ends = DeviceEnds(device.ifindex, self.host_netns)
        else:
            ends = DeviceEnds(device.ifindex, self.host_netns, peer.inode, device.link.peer_ifindex or 0)
        with self._lock:
            same = self._devices.get(device.ifindex) == ends
            self._names[device.ifindex] = device.name
        if same:  # attached again (replaced in place): watched already
            return
        self.forget(device.ifindex)  # attached again, its other end elsewhere now
        with self._lock:
            self._devices[device.ifindex], self._names[device.ifindex] = ends, device.name
            netns, pairs = self._claim(ends)
        for inode in netns:
            self.tables.watch_netns(inode)
        for inode, ifindex in pairs:
            self.tables.watch_device(inode, ifindex)

    def forget(self, ifindex: int) -> None:
        with self._lock:
            ends = self._devices.pop(ifindex, None)
            self._names.pop(ifindex, None)
            if ends is None:
                return
            netns, pairs = self._release(ends)
        for inode, index in pairs:
            self.tables.forget_device(inode, index)
        for inode in netns:
            self.tables.forget_netns(inode)

    @staticmethod
    def _needs(ends: DeviceEnds) -> tuple[list[int], list[tuple[int, int]]]:
        """The namespaces whose sockets, and the (netns, ifindex) whose drops, it needs: its own
        end; for a veth also its other end, and that namespace's drops without a device."""
        if not ends.peer_netns:
            return [ends.netns], [(ends.netns, ends.ifindex)]
        return ([ends.netns, ends.peer_netns],
                [(ends.netns, ends.ifindex), (ends.peer_netns, ends.peer_ifindex), (ends.peer_netns, 0)])

    def _claim(self, ends: DeviceEnds) -> tuple[list[int], list[tuple[int, int]]]:
        """What ``ends`` needs that nobody watched yet (under the lock)."""
        netns, pairs = self._needs(ends)
        return _add_user(self._netns_users, netns, ends.ifindex), _add_user(self._end_users, pairs, ends.ifindex)

    def _release(self, ends: DeviceEnds) -> tuple[list[int], list[tuple[int, int]]]:
        """What nobody needs any more once ``ends`` is gone (under the lock)."""
        netns, pairs = self._needs(ends)
        return (_remove_user(self._netns_users, netns, ends.ifindex),
                _remove_user(self._end_users, pairs, ends.ifindex))

    # -- each interval ------------------------------------------------------------------

    def flip(self) -> None:
        """A grace period after the classifier's flip (see ``MapPoller.poll``)."""
        if self._flipped:  # the copy flipped out at the poll before was never joined
            self.tables.collect()
            self.lost_snapshots += 1
        self.tables.flip()
        self._flipped = True

    def enrich(self, batch: FlowBatch, keys: np.ndarray) -> FlowBatch:
        """The polled ``batch`` (made from ``keys``, FLOW_KEY) with its quality columns and the
        drops of no record; a batch of no flip (a live view, a recovered interval) as it is."""
        if not self._flipped:
            return batch
        self._flipped = False
        snapshot = self.tables.collect()
        with self._lock:
            devices, names = list(self._devices.values()), dict(self._names)
        joined = join_quality(keys, snapshot, devices, self.host_netns, names, self._carry)
        self._carry = joined.carry
        self.expired_sockets += joined.expired
        return batch.with_columns(**joined.columns).with_drops(joined.drops)

    def sweep(self) -> int:
        """Nothing to sweep: each collect empties the tables' flipped-out copy."""
        return 0


def _add_user(users: dict[K, set[int]], keys: list[K], ifindex: int) -> list[K]:
    """Add ``ifindex`` as a user of each key; the keys that had none before."""
    first = [key for key in dict.fromkeys(keys) if not users.get(key)]
    for key in keys:
        users.setdefault(key, set()).add(ifindex)
    return first


def _remove_user(users: dict[K, set[int]], keys: list[K], ifindex: int) -> list[K]:
    """Remove ``ifindex`` as a user of each key; the keys that have none left."""
    last = []
    for key in dict.fromkeys(keys):
        left = users.get(key)
        if left is None:
            continue
        left.discard(ifindex)
        if not left:
            del users[key]
            last.append(key)
    return last


def start_quality() -> QualityEnricher | None:
    """The enricher on the quality tracepoints; None (and one log line saying why) if this
    kernel cannot measure quality. Imported here: the loader imports bcc."""
    from .quality import QualityTracepoints

    try:
        tables: QualityTables = QualityTracepoints.start()
    except KernelError as exc:
        log.warning("quality not measured: %s", exc)
        return None
    try:
        return QualityEnricher(tables)
    except BaseException:
        tables.close()
        raise
