"""Load the socket-owner tracepoints (socket_owners.bpf.c) and read, fill and sweep their map.

    check: tracefs mounted (mounted here if not), sock:inet_sock_set_state present,
           sock:sock_send_length/sock_recv_length present (else UDP sockets stay unnamed)
    load:  BTF offsets as -D flags; BCC attaches the tracepoints while loading
    then:  prefill from /proc (kernel entries win: BPF_NOEXIST), snapshot at drain, sweep

This module and ``connstats.probe.kernel.loader`` are the ones that import bcc.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..contract.errors import KernelError
from ..kernel.loader import delete_keys, libbpf, read_map
from .btf import SockOffsets
from .prefill import PrefillRow

if TYPE_CHECKING:
    from bcc import BPF

log = logging.getLogger("connstats.probe.identity")

BPF_SOURCE = Path(__file__).with_name("socket_owners.bpf.c")
OWNERS_CAPACITY = 65_536
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
BPF_NOEXIST = 1

OWNER_KEY = np.dtype([("netns", "<u4"), ("port", "<u2"), ("proto", "u1"), ("pad", "u1")])
OWNER = np.dtype([("pid", "<u4"), ("kind", "<u4"), ("sk", "<u8"), ("closed_ns", "<u8"), ("seen_ns", "<u8"),
                  ("comm", "S16")])
assert OWNER_KEY.itemsize == 8 and OWNER.itemsize == 48
KIND_CLIENT, KIND_LISTEN, KIND_UDP, KIND_PREFILL_LISTEN, KIND_PREFILL = 1, 2, 3, 4, 5
UDP_IDLE_NS = 600 * 10**9  # no UDP close tracepoint: an entry unused this long goes


def tracefs_events(mount: bool = True) -> Path | None:
    """The tracefs ``events`` directory; tracefs is mounted at /sys/kernel/tracing if it is
    nowhere (BCC reads the tracepoints' formats there). None if that fails."""
    for path in TRACEFS_DIRS:
        if (path / "events").is_dir():
            return path / "events"
    if not mount:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", os.fsencode(TRACEFS_DIRS[0]), b"tracefs", ctypes.c_ulong(0), None) != 0:
        log.debug("mounting tracefs failed: %s", os.strerror(ctypes.get_errno()))
        return None
    log.info("mounted tracefs at %s (the socket-owner tracepoints' formats are read there)", TRACEFS_DIRS[0])
    return TRACEFS_DIRS[0] / "events" if (TRACEFS_DIRS[0] / "events").is_dir() else None


@dataclass(frozen=True)
class Tracepoints:
    """Which of the program's tracepoints this kernel has."""

    set_state: bool
    send_recv_length: bool

    @classmethod
    def found(cls, events: Path) -> Tracepoints:
        sock = events / "sock"
        return cls((sock / "inet_sock_set_state").is_dir(),
                   (sock / "sock_send_length").is_dir() and (sock / "sock_recv_length").is_dir())


class SocketOwners:
    """The loaded tracepoints and their ``socket_owners`` map (netns, port, proto) -> owner."""

    def __init__(self, offsets: SockOffsets, udp: bool = True, capacity: int = OWNERS_CAPACITY) -> None:
        if os.geteuid() != 0:
            raise KernelError("the socket-owner tracepoints need root; run with sudo or --no-processes")
        try:
            from bcc import BPF
        except ImportError as exc:
            raise KernelError("cannot import bcc; install python3-bpfcc") from exc
        cflags = [*offsets.cflags(), f"-DOWNERS_CAPACITY={capacity}", f"-I{BPF_SOURCE.parent}",
                  "-Wno-unused-function", *(["-DHAVE_SOCK_LENGTH"] if udp else [])]
        try:
            self.bpf: BPF = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception
            raise KernelError(f"loading the socket-owner tracepoints failed: {exc}") from exc
        self.capacity = capacity
        self.udp = udp
        self._fd = self.bpf[b"socket_owners"].map_fd

    def close(self) -> None:
        self.bpf.cleanup()

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Every entry now: (OWNER_KEY array, OWNER array)."""
        return read_map(self._fd, self.capacity, OWNER_KEY, OWNER)

    def prefill(self, rows: Iterable[PrefillRow]) -> int:
        """Insert the owners found in /proc where the kernel has none yet; how many went in."""
        key = np.zeros(1, OWNER_KEY)
        value = np.zeros(1, OWNER)
        added = 0
        now = time.monotonic_ns()
        for row in rows:
            key[0] = (row.netns, row.port, row.proto, 0)
            kind = KIND_PREFILL_LISTEN if row.listening else KIND_PREFILL
            value[0] = (row.pid, kind, 0, 0, now, row.comm.encode()[:15])
            if libbpf().bpf_map_update_elem(self._fd, ctypes.c_void_p(key.ctypes.data),
                                            ctypes.c_void_p(value.ctypes.data), BPF_NOEXIST) == 0:
                added += 1
        return added

    def sweep(self, keys: np.ndarray, values: np.ndarray, closed_before_ns: int, now_ns: int) -> int:
        """Delete (of a snapshot) the entries closed before ``closed_before_ns`` (monotonic) and
        the UDP ones unused for ``UDP_IDLE_NS``; how many."""
        closed = (values["closed_ns"] != 0) & (values["closed_ns"] < closed_before_ns)
        idle = (keys["proto"] == 17) & (values["seen_ns"] + UDP_IDLE_NS < now_ns)
        gone = keys[closed | idle]
        delete_keys(self._fd, gone)
        return len(gone)
