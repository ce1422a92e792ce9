"""Which probe owns a device: one flock per attached device, held while it is attached.

    /run/connstats/devices/            directory, mode 0700
        <netns inode>-<ifindex>        the owner's pid; flock(LOCK_EX) held by the owner

A probe takes the lock (``LOCK_EX | LOCK_NB``) before it attaches and gives it up
(unlink, then close) when it detaches. The kernel drops the lock when the owner dies,
even by SIGKILL, so a device whose probe is gone can be taken over at once; the file
it leaves behind is reused, or swept when a probe first takes a lock. Another probe's
attach is refused with the owner's pid.
The descriptors are close-on-exec: a child process never inherits a device.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ..contract.errors import ConfigError, DeviceError

DEFAULT_LOCK_DIR = "/run/connstats/devices"
_ATTEMPTS = 20  # the lock changed hands while we looked: try again (10 ms apart)


def own_netns() -> int:
    """The inode of this thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class DeviceOwned(DeviceError):
    """Another running probe holds the device's lock."""

    def __init__(self, name: str, ifindex: int, pid: int) -> None:
        self.name, self.ifindex, self.pid = name, ifindex, pid
        who = f"the connstats probe with pid {pid}" if pid else "another connstats probe"
        super().__init__(f"{name} is attached by {who}; detach it there first")


class DeviceLocks:
    """The locks of the devices this probe is attached to, in one network namespace."""

    def __init__(self, directory: str | Path = DEFAULT_LOCK_DIR, netns: int | None = None) -> None:
        self.directory = Path(directory)
        self.netns = own_netns() if netns is None else netns
        self._held: dict[int, int] = {}  # ifindex -> locked fd
        self._swept = False

    def path(self, ifindex: int) -> Path:
        return self.directory / f"{self.netns}-{ifindex}"

    def held(self) -> set[int]:
        return set(self._held)

    def acquire(self, ifindex: int, name: str) -> None:
        """Take ``ifindex``'s lock; raise ``DeviceOwned`` if a live probe holds it."""
        if ifindex in self._held:
            return
        self._make_directory()
        if not self._swept:
            self.sweep()
        path, pid = self.path(ifindex), 0
        for _ in range(_ATTEMPTS):
            fd = _open(path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd) or _flock_owner(os.fstat(fd)) or 0
                os.close(fd)
                if pid:
                    raise DeviceOwned(name, ifindex, pid) from None
                time.sleep(0.01)  # locked, pid not written yet
                continue
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._held[ifindex] = fd
                return
            os.close(fd)  # its owner removed it while we waited: take the new file
        raise DeviceOwned(name, ifindex, pid)

    def release(self, ifindex: int) -> None:
        """Give ``ifindex`` up: remove the file while still holding the lock, then unlock."""
        fd = self._held.pop(ifindex, None)
        if fd is None:
            return
        try:
            self.path(ifindex).unlink(missing_ok=True)
        finally:
            os.close(fd)

    def release_all(self) -> None:
        for ifindex in list(self._held):
            self.release(ifindex)

    def sweep(self) -> int:
        """Remove the files of owners that died (no lock on them) in our namespace; how many.

        The same steps as taking and giving up a lock, so a probe taking one meanwhile
        just takes a fresh file."""
        self._swept, removed = True, 0
        for path in self.directory.glob(f"{self.netns}-*"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    path.unlink()
                    removed += 1
            except OSError:  # locked: its owner lives
                pass
            finally:
                os.close(fd)
        return removed

    def owner_of(self, ifindex: int) -> int | None:
        """The pid of the live probe holding ``ifindex`` (this one's included), or None.

        Reads the kernel's lock table (``/proc/locks``) instead of trying the lock, so
        asking never gets in the way of a probe that is taking it.
        """
        if ifindex in self._held:
            return os.getpid()
        try:
            status = os.stat(self.path(ifindex))
        except OSError:
            return None
        return _flock_owner(status)

    def _make_directory(self) -> None:
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the device lock directory {self.directory}: "
                              f"{exc.strerror}; run the probe as root") from exc


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the device lock {path}: {exc.strerror}; "
                          "run the probe as root") from exc


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _flock_owner(status: os.stat_result) -> int | None:
    """The pid the kernel lists for a flock on this file (``/proc/locks``), or None."""
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    with open("/proc/locks") as table:
        for line in table:
            fields = line.split()
            if "->" in fields:  # a waiter, not a holder
                continue
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
                return int(fields[4])
    return None
