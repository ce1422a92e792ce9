"""The owners of sockets that existed before the probe: ``/proc/*/fd`` joined with
``/proc/<pid>/net/{tcp,tcp6,udp,udp6}`` of each network namespace asked about.

    /proc/<pid>/fd/* ─ readlink "socket:[inode]" ─> inode -> (tgid, comm)
    /proc/<pid>/net/tcp... (a pid in the namespace) ─ local port, state, inode ─┘─> PrefillRow

Nothing here enters a namespace: a process's ``net/`` files show its own namespace's sockets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

TCP, UDP = 6, 17
LISTEN_STATE = "0A"
_FILES = ((TCP, "tcp"), (TCP, "tcp6"), (UDP, "udp"), (UDP, "udp6"))


@dataclass(frozen=True, slots=True)
class PrefillRow:
    netns: int
    proto: int
    port: int
    listening: bool
    pid: int
    comm: str


def socket_inodes(proc: Path = Path("/proc")) -> tuple[dict[int, tuple[int, str]], dict[int, int]]:
    """(socket inode -> (tgid, comm) of the lowest pid holding it, netns inode -> one pid in it)."""
    owners: dict[int, tuple[int, str]] = {}
    netns_pid: dict[int, int] = {}
    for pid in sorted(int(p) for p in os.listdir(proc) if p.isdigit()):
        base = proc / str(pid)
        try:
            netns_pid.setdefault(os.stat(base / "ns/net").st_ino, pid)
            comm = (base / "comm").read_text().strip()
            fds = os.listdir(base / "fd")
        except OSError:
            continue  # gone, or a kernel thread without a netns link
        for fd in fds:
            try:
                link = os.readlink(base / "fd" / fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owners.setdefault(int(link[8:-1]), (pid, comm))
    return owners, netns_pid


def socket_rows(net_dir: Path) -> Iterator[tuple[int, int, str, int]]:
    """(proto, local port, state, inode) of each row of ``net_dir``'s tcp, tcp6, udp, udp6."""
    for proto, name in _FILES:
        try:
            lines = (net_dir / name).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel, or the pid went away
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                yield proto, int(fields[1].rsplit(":", 1)[1], 16), fields[3], int(fields[9])


def prefill_rows(netns: Iterable[int], proc: Path = Path("/proc")) -> list[PrefillRow]:
    """The owned sockets of each namespace in ``netns`` (inodes) that has a process in it,
    one row per (netns, proto, port): a TCP port's LISTEN row wins over its connections."""
    owners, netns_pid = socket_inodes(proc)
    found: dict[tuple[int, int, int], PrefillRow] = {}
    for inode in netns:
        pid = netns_pid.get(inode)
        if pid is None:
            continue
        for proto, port, state, sock_inode in socket_rows(proc / str(pid) / "net"):
            owner = owners.get(sock_inode)
            if owner is None or port == 0:
                continue
            row = PrefillRow(inode, proto, port, proto == TCP and state == LISTEN_STATE, *owner)
            known = found.get((inode, proto, port))
            if known is None or (row.listening and not known.listening):
                found[(inode, proto, port)] = row
    return list(found.values())
