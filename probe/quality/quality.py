"""Load the quality tracepoints (quality.bpf.c), fill their filters, flip and drain their tables.

    check:   root, BTF, tracefs (mounted here if it is nowhere), the three tracepoints
    load:    BTF offsets and what the format files say as -D flags; BCC attaches while loading
    watch:   watched_netns (inode -> 1), watched_devices ((inode, ifindex) -> 1)
    flip:    active_buffer = 1 - active          (at the classifier's flip)
             ... the caller waits for a grace period (loader.wait_for_grace_period) ...
    collect: read the flipped-out copy, delete exactly what was read -> QualitySnapshot

This module, ``identity.socket_owners`` and ``kernel.loader`` are the ones that import bcc.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from ..contract.errors import KernelError
from ..identity.btf import VMLINUX_BTF, Btf, BtfError
from ..identity.socket_owners import tracefs_events
from ..kernel.loader import delete_keys, read_map
from .offsets import quality_offsets
from .tables import DROP_KEY, DROP_VALUE, SOCK_KEY, SOCK_STATS, QualitySnapshot

if TYPE_CHECKING:
    from bcc import BPF

log = logging.getLogger("connstats.probe.quality")

BPF_SOURCE = Path(__file__).with_name("quality.bpf.c")
SOCKETS_CAPACITY = 16_384
DROPS_CAPACITY = 8_192
REQUIRED = ("tcp/tcp_probe", "tcp/tcp_retransmit_skb", "skb/kfree_skb")
NOT_DROPS = ("NOT_DROPPED_YET", "CONSUMED")  # kfree_skb reasons that are no drop

_SYMBOL = re.compile(r'\{\s*(-?\w+)\s*,\s*"([^"]*)"\s*\}')


def drop_reasons(format_text: str) -> dict[int, str]:
    """The drop-reason names of a kfree_skb ``format`` file: its
    ``__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)``; {} if it has none."""
    start = format_text.find("__print_symbolic(REC->reason")
    if start < 0:
        return {}
    names: dict[int, str] = {}
    for code, name in _SYMBOL.findall(format_text[start:]):
        try:
            names[int(code, 0)] = name
        except ValueError:  # a symbol the kernel did not resolve to a number: not this list
            continue
    return names


def first_drop_reason(reasons: Mapping[int, str]) -> int:
    """The lowest code that is a drop (0 and 1 are not: NOT_DROPPED_YET, CONSUMED)."""
    drops = [code for code, name in reasons.items() if name not in NOT_DROPS]
    return min(drops, default=2)


@dataclass(frozen=True)
class QualitySupport:
    """What this host offers the quality tracepoints; ``problem`` is None when all is there."""

    root: bool
    btf: bool
    events: Path | None  # tracefs's events directory; None: tracefs is not mounted
    missing: tuple[str, ...]  # required tracepoints this kernel lacks (category/name)

    @property
    def problem(self) -> str | None:
        """One line: what is missing and what to do."""
        if not self.root:
            return "the quality tracepoints need root; run with sudo"
        if not self.btf:
            return f"no {VMLINUX_BTF}: a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed for RTT, retransmits and drops"
        if self.events is None:
            return "tracefs is not mounted and could not be; mount -t tracefs nodev /sys/kernel/tracing"
        if self.missing:
            return f"this kernel has no tracepoint {', '.join(self.missing)} (or no drop reasons); RTT, retransmits and drops stay empty"
        return None


def kernel_support(mount: bool = True) -> QualitySupport:
    """Whether the quality tracepoints can load here (tracefs is mounted if ``mount``)."""
    root = os.geteuid() == 0
    events = tracefs_events(mount=mount and root)
    missing: tuple[str, ...] = ()
    if events is not None:
        missing = tuple(name for name in REQUIRED if not (events / name / "format").is_file())
        if "skb/kfree_skb" not in missing and not drop_reasons(_read(events / "skb/kfree_skb/format")):
            missing = (*missing, "skb/kfree_skb with reasons")
    return QualitySupport(root, VMLINUX_BTF.is_file(), events, missing)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class QualityTracepoints:
    """The loaded tracepoints and their double-buffered tables (sockets, drops)."""

    def __init__(self, bpf: BPF, reasons: Mapping[int, str], sockets_capacity: int, drops_capacity: int) -> None:
        self.bpf = bpf
        self.reasons = dict(reasons)
        self.sockets_capacity = sockets_capacity
        self.drops_capacity = drops_capacity
        self.lost = 0  # events that found their table full, since start
        self._active = 0

    @classmethod
    def start(cls, sockets_capacity: int = SOCKETS_CAPACITY,
              drops_capacity: int = DROPS_CAPACITY) -> QualityTracepoints:
        """Check, compile and attach; ``KernelError`` with a one-line reason if this host cannot."""
        support = kernel_support()
        if support.problem is not None or support.events is None:
            raise KernelError(support.problem or "tracefs is not mounted")
        try:
            offsets = quality_offsets(Btf.read())
        except (OSError, BtfError) as exc:
            raise KernelError(f"reading the kernel's BTF for the quality tracepoints failed: {exc}") from exc
        try:
            from bcc import BPF
        except ImportError as exc:
            raise KernelError("cannot import bcc; install python3-bpfcc") from exc
        reasons = drop_reasons(_read(support.events / "skb/kfree_skb/format"))
        cflags = [*offsets.cflags(), *_format_flags(support.events), f"-DMIN_REASON={first_drop_reason(reasons)}",
                  f"-DSOCKETS_CAPACITY={sockets_capacity}", f"-DDROPS_CAPACITY={drops_capacity}",
                  f"-I{BPF_SOURCE.parent}", "-Wno-unused-function"]
        try:
            bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception
            text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KernelError(f"loading the quality tracepoints failed: {text}; run `connstats doctor`") from exc
        return cls(bpf, reasons, sockets_capacity, drops_capacity)

    def close(self) -> None:
        """Detach the tracepoints and release the maps."""
        self.bpf.cleanup()

    # -- the filters ----------------------------------------------------------------------

    def watch_netns(self, inode: int) -> None:
        """Count RTT and retransmits of the sockets in this namespace."""
        table = self.bpf[b"watched_netns"]
        table[table.Key(inode)] = table.Leaf(1)

    def forget_netns(self, inode: int) -> None:
        _delete(self.bpf[b"watched_netns"], self.bpf[b"watched_netns"].Key(inode))

    def watch_device(self, netns: int, ifindex: int) -> None:
        """Count the drops of packets on this device (ifindex in the namespace of that inode);
        ifindex 0: the drops of packets without a device, by their socket's namespace."""
        table = self.bpf[b"watched_devices"]
        table[table.Key(netns, ifindex)] = table.Leaf(1)

    def forget_device(self, netns: int, ifindex: int) -> None:
        _delete(self.bpf[b"watched_devices"], self.bpf[b"watched_devices"].Key(netns, ifindex))

    # -- the interval ---------------------------------------------------------------------

    def flip(self) -> None:
        """New events go to the other copy; call ``collect()`` after a grace period."""
        self._active = 1 - self._active
        table = self.bpf[b"active_buffer"]
        table[table.Key(0)] = table.Leaf(self._active)

    def collect(self) -> QualitySnapshot:
        """Read and empty the copy ``flip()`` turned away from (nothing writes to it after the
        caller's grace period): every count is in exactly one snapshot."""
        idle = 1 - self._active
        sockets_fd = self.bpf[f"sockets_{idle}".encode()].map_fd
        drops_fd = self.bpf[f"drops_{idle}".encode()].map_fd
        socket_keys, socket_stats = read_map(sockets_fd, self.sockets_capacity, SOCK_KEY, SOCK_STATS)
        drop_keys, drop_values = read_map(drops_fd, self.drops_capacity, DROP_KEY, DROP_VALUE)
        delete_keys(sockets_fd, socket_keys)
        delete_keys(drops_fd, drop_keys)
        self._count_lost(idle)
        return QualitySnapshot(np.array(socket_keys), np.array(socket_stats), np.array(drop_keys),
                               np.array(drop_values), self.reasons)

    def _count_lost(self, idle: int) -> None:
        table = self.bpf[b"lost"]
        lost = 0
        for which in (0, 1):
            key = table.Key(idle * 2 + which)
            lost += sum(int(v) for v in table.getvalue(key))
            table.clearitem(key)
        if lost:
            self.lost += lost
            log.warning("%d quality events found their table full (sockets %d, drops %d entries); "
                        "their counts are missing", lost, self.sockets_capacity, self.drops_capacity)


def _format_flags(events: Path) -> list[str]:
    """What the running kernel's tracepoint formats have, as -D flags."""
    flags = []
    if "field:int err;" in _read(events / "tcp/tcp_retransmit_skb/format"):
        flags.append("-DHAVE_RETRANS_ERR")
    if (events / "tcp/tcp_retransmit_synack/format").is_file():
        flags.append("-DHAVE_SYNACK")
    if " rx_sk;" in _read(events / "skb/kfree_skb/format"):
        flags.append("-DHAVE_RX_SK")
    return flags


def _delete(table, key) -> None:
    try:
        del table[key]
    except KeyError:
        pass
