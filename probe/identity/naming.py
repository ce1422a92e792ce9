"""``ProcessNamer``: the socket-owner tracepoints, the namespaces and addresses of the attached
devices, and the join, as the one step ``KernelProbe`` runs on each drained interval.

    start:    BTF offsets ─ tracefs ─ load the tracepoints ─ prefill our namespace from /proc
    attached: a device's end's namespace (a veth's peer, or ours); its addresses; prefill it
    enrich:   snapshot the owners ─ /proc/<pid>/comm per pid ─ join (join.py) ─ with_processes
    sweep:    entries closed an interval ago, UDP ones idle for 10 minutes

Anything missing (no BTF, no tracefs, no tracepoint, no root) turns the naming off with one
log line; the probe counts as before.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..contract.errors import KernelError
from ..contract.flow_batch import FlowBatch
from ..kernel.devices import AttachedDevice
from ..kernel.ownership import own_netns
from ..watch.containers import NetnsResolver
from .addresses import address_map, dump_addresses
from .btf import VMLINUX_BTF, Btf, BtfError, SockOffsets, sock_offsets
from .join import AddressTable, OwnerTable, name_connections
from .prefill import prefill_rows
from .socket_owners import SocketOwners, Tracepoints, tracefs_events

log = logging.getLogger("connstats.probe.identity")

EGRESS = 1  # the kernel's direction index (DIRECTIONS)
ADDRESS_REFRESH_NS = 30 * 10**9  # a peer namespace's addresses are dumped again this often
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class _Peer:
    nsid: int
    addresses: list[bytes]
    dumped_ns: int


@dataclass(frozen=True)
class Support:
    """What this kernel offers the namer."""

    offsets: SockOffsets
    tracepoints: Tracepoints

    def describe(self) -> str:
        o = self.offsets
        udp = ("TCP and UDP" if self.tracepoints.send_recv_length
               else "TCP only: no sock:sock_send_length tracepoint in this kernel, UDP sockets stay unnamed")
        return f"{udp}; struct sock offsets from BTF: net {o.skc_net}, port {o.skc_num}, inum {o.net_ns}+{o.ns_inum}"


def kernel_support(btf_path: Path = VMLINUX_BTF) -> Support:
    """The BTF offsets and tracepoints the namer needs (tracefs mounted if it is nowhere);
    ``KernelError`` saying what is missing."""
    try:
        offsets = sock_offsets(Btf.read(btf_path))
    except (OSError, BtfError) as exc:
        raise KernelError(f"no usable kernel BTF at {btf_path} ({exc}); a kernel built with "
                          "CONFIG_DEBUG_INFO_BTF names processes") from None
    events = tracefs_events()
    if events is None:
        raise KernelError("tracefs is not mounted and mounting it at /sys/kernel/tracing failed; mount it "
                          "(mount -t tracefs nodev /sys/kernel/tracing) as root")
    found = Tracepoints.found(events)
    if not found.set_state:
        raise KernelError("this kernel has no sock:inet_sock_set_state tracepoint")
    return Support(offsets, found)


class ProcessNamer:
    """Fills the process columns of each interval from the socket owners (one of
    KernelProbe's enrichers)."""

    kind = "processes"

    def __init__(self, owners: SocketOwners, interval: float, resolver: NetnsResolver | None = None,
                 proc: Path = Path("/proc")) -> None:
        self.owners = owners
        self.interval_ns = int(interval * 1e9)
        self._resolver = resolver or NetnsResolver()
        self._proc = proc
        self.host_netns = own_netns()
        self._device_netns: dict[int, int] = {}  # ifindex -> the netns of the device's end
        self._peers: dict[int, _Peer] = {}  # peer netns inode -> its nsid and addresses
        self._peer_of: dict[int, int] = {}  # ifindex -> peer netns inode (veths)
        self._comms: dict[tuple[int, int], str] = {}  # (pid, start ticks) -> /proc comm
        self._snapshot: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()  # the device maps: attach (any thread) against name (the poll)
        self.prefill([self.host_netns])

    @classmethod
    def start(cls, interval: float, btf_path: Path = VMLINUX_BTF) -> ProcessNamer | None:
        """The namer, its tracepoints attached; None (and one log line saying why) if this
        kernel cannot name processes."""
        try:
            found = kernel_support(btf_path)
            owners = SocketOwners(found.offsets, udp=found.tracepoints.send_recv_length)
        except KernelError as exc:
            log.warning("processes not named: %s", exc)
            return None
        if found.tracepoints.send_recv_length:  # a refused start stays one line: doctor says the rest
            log.debug("naming processes (%s)", found.describe())
        else:
            log.warning("naming processes: %s", found.describe())
        try:
            return cls(owners, interval)
        except BaseException:
            owners.close()
            raise

    def close(self) -> None:
        self.owners.close()
        self._resolver.close()

    # -- devices ------------------------------------------------------------------------

    def attached(self, device: AttachedDevice) -> None:
        """Learn the namespace of the device's end and the addresses behind it; name the
        sockets that were open in that namespace before (a container older than the probe)."""
        netns = self._resolver.lookup(device.link.peer_nsid) if device.link.peer_nsid is not None else None
        if netns is None:
            with self._lock:
                self._device_netns[device.ifindex] = self.host_netns
            return
        peer = _Peer(netns.nsid, self._dump(netns.nsid), time.monotonic_ns())
        with self._lock:
            self._device_netns[device.ifindex] = netns.inode if device.inverted else self.host_netns
            self._peer_of[device.ifindex] = netns.inode
            self._peers[netns.inode] = peer
        self.prefill([netns.inode])

    def forget(self, ifindex: int) -> None:
        with self._lock:
            self._device_netns.pop(ifindex, None)
            inode = self._peer_of.pop(ifindex, None)
            if inode is not None and inode not in self._peer_of.values():
                self._peers.pop(inode, None)

    def prefill(self, netns: Iterable[int]) -> int:
        added = self.owners.prefill(prefill_rows(netns, self._proc))
        log.debug("prefilled %d socket owners from /proc", added)
        return added

    @staticmethod
    def _dump(nsid: int | None) -> list[bytes]:
        try:
            return dump_addresses(nsid)
        except OSError as exc:
            log.debug("RTM_GETADDR of nsid %s failed: %s", nsid, exc)
            return []

    def addresses(self) -> AddressTable:
        """Our addresses (dumped now) and each peer namespace's (dumped again when old)."""
        now = time.monotonic_ns()
        with self._lock:
            peers = dict(self._peers)
        for peer in peers.values():
            if not peer.addresses or now - peer.dumped_ns > ADDRESS_REFRESH_NS:
                peer.addresses, peer.dumped_ns = self._dump(peer.nsid), now
        by_netns = {inode: peer.addresses for inode, peer in peers.items()}
        by_netns[self.host_netns] = self._dump(None)
        return AddressTable.of(address_map(by_netns))

    # -- each interval ------------------------------------------------------------------

    def flip(self) -> None:
        """The owner table is one map, kept across intervals: nothing flips."""

    def enrich(self, batch: FlowBatch, keys: np.ndarray) -> FlowBatch:
        """``batch`` (made from the drained ``keys``, FLOW_KEY) with its process columns."""
        owner_keys, owners = self._snapshot = self.owners.snapshot()
        if not len(batch):
            return batch
        table = OwnerTable.of(owner_keys["netns"], owner_keys["proto"], owner_keys["port"], owners["pid"],
                              self.process_names(owners))
        named = name_connections(table, self.addresses(), ifindex=keys["ifindex"],
                                 egress=keys["direction"] == EGRESS, family=keys["family"], proto=keys["proto"],
                                 sport=keys["sport"],
                                 dport=keys["dport"], src=keys["src"], dst=keys["dst"],
                                 device_netns=self._device_netns_now(), default_netns=self.host_netns)
        return batch.with_processes(named.process, named.pid, named.peer_process, named.peer_pid)

    def _device_netns_now(self) -> dict[int, int]:
        with self._lock:
            return dict(self._device_netns)

    def sweep(self) -> int:
        """Forget (of the last snapshot) the sockets closed more than an interval ago, and UDP
        sockets idle for 10 minutes: their last packets are in the intervals already named."""
        if self._snapshot is None:
            return 0
        now = time.monotonic_ns()
        gone = self.owners.sweep(*self._snapshot, closed_before_ns=now - self.interval_ns, now_ns=now)
        self._snapshot = None
        return gone

    def process_names(self, owners: np.ndarray) -> np.ndarray:
        """Each entry's process name (see ``choose_names``), from /proc as it is now."""
        living = {pid: found for pid in np.unique(owners["pid"]).tolist() if (found := self._process(pid))}
        return choose_names(owners, living, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns())

    def _process(self, pid: int) -> tuple[int, str] | None:
        """(start time on CLOCK_BOOTTIME in ns, comm) of a living process, cached by start time."""
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
            ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22
            comm = self._comms.get((pid, ticks))
            if comm is None:
                comm = (self._proc / str(pid) / "comm").read_text().rstrip("\n")
                if len(self._comms) > 65_536:
                    self._comms.clear()
                self._comms[(pid, ticks)] = comm
        except (OSError, ValueError, IndexError):
            return None
        return ticks * 10**9 // _TICKS, comm


def choose_names(owners: np.ndarray, living: Mapping[int, tuple[int, str]], boot_minus_mono: int) -> np.ndarray:
    """Each ``OWNER`` entry's process name: the process's own name (``living``: pid -> (start on
    CLOCK_BOOTTIME in ns, /proc comm)) if it was running when the entry was written, else the
    thread name the kernel saw (the process is gone, or its pid now names a newer one)."""
    comms, inverse = np.unique(owners["comm"], return_inverse=True)
    names = np.array([c.decode(errors="replace") for c in comms.tolist()], dtype=object)[inverse.ravel()]
    pids, at = np.unique(owners["pid"], return_inverse=True)
    started = np.full(len(pids), np.iinfo(np.int64).max, dtype=np.int64)  # gone: never "before"
    comm = np.full(len(pids), "", dtype=object)
    for i, pid in enumerate(pids.tolist()):
        if pid in living:
            started[i] = living[pid][0] - boot_minus_mono
            comm[i] = living[pid][1]
    at = at.ravel()
    use = started[at] <= owners["seen_ns"].astype(np.int64)
    names[use] = comm[at][use]
    return names
