"""Where a probe's maps live between runs, and who owns them.

    /sys/fs/bpf/connstats/<instance>/<layout>/   flows4_0 ... probe_state (see flows.bpf.c)
    /run/connstats/probes/<instance>.lock         flock held by the running probe: "pid state_dir"

``<instance>`` names a state directory (a hash of its real path): the probe that starts
with the same state directory adopts the maps, and with them the counts made while no
probe ran. Probes with other state directories never share maps. ``<layout>`` names
the maps' shapes (struct sizes and capacities): a probe whose layout differs (an upgrade
that changed a struct, another ``--capacity``) makes new maps and drains the old
layout's maps once (see ``KernelProbe``).

The lock makes a second probe on the same state directory refuse to start, and lets
``doctor`` and ``reset`` tell pinned state that no running probe owns.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import ConfigError, KernelError

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "connstats"
LOCK_DIR = Path("/run/connstats/probes")


def ensure_bpffs(bpffs: Path = BPFFS) -> None:
    """Mount bpffs at ``bpffs`` unless it is mounted; raise ``KernelError`` if that fails."""
    if _is_bpffs(bpffs):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", os.fsencode(bpffs), b"bpf", 0, None) != 0:
        reason = os.strerror(ctypes.get_errno())
        raise KernelError(f"cannot mount bpffs on {bpffs} ({reason}); run "
                          f"`mount -t bpf bpf {bpffs}` as root, or start without pinning")


def _is_bpffs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1:3] == [str(path), "bpf"] for line in mounts)
    except OSError:
        return False


def instance_name(state_dir: Path) -> str:
    """The pin directory name for a state directory."""
    return hashlib.sha256(os.fsencode(Path(state_dir).resolve())).hexdigest()[:16]


def layout_name(*shapes: object) -> str:
    """A short name for the maps' shapes; equal shapes, equal name."""
    return "l" + hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PinnedInstance:
    """One state directory's pins: ``root / name / <layout>``."""

    name: str
    root: Path = PIN_ROOT
    lock_dir: Path = LOCK_DIR

    @classmethod
    def for_state_dir(cls, state_dir: Path, root: Path = PIN_ROOT, lock_dir: Path = LOCK_DIR) -> PinnedInstance:
        return cls(instance_name(state_dir), root, lock_dir)

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def lock_path(self) -> Path:
        return self.lock_dir / f"{self.name}.lock"

    def layout_dir(self, layout: str) -> Path:
        return self.path / layout

    def layouts(self) -> list[Path]:
        """Every layout directory pinned for this instance."""
        try:
            return sorted(p for p in self.path.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def owner(self) -> int | None:
        """The pid of the running probe that holds this instance, or None."""
        return lock_owner(self.lock_path)

    def remove(self) -> None:
        """Unpin every map of every layout (the maps die with their last user)."""
        for layout in self.layouts():
            remove_pins(layout)
        self.lock_path.unlink(missing_ok=True)  # it only names the last owner of these pins
        for directory in (self.path, self.root):  # the root too, once no instance is left
            try:
                directory.rmdir()
            except OSError:
                pass


def remove_pins(directory: Path) -> None:
    """Unpin the maps in ``directory`` and remove it (bpffs removes pins with unlink)."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        entry.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass


def pinned_instances(root: Path = PIN_ROOT, lock_dir: Path = LOCK_DIR) -> list[PinnedInstance]:
    try:
        return [PinnedInstance(p.name, root, lock_dir) for p in sorted(root.iterdir()) if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


class ProbeLock:
    """An flock that says "a probe runs on this instance"; released by the kernel on exit,
    SIGKILL included. The file keeps the last owner's pid and state directory."""

    def __init__(self, instance: PinnedInstance, state_dir: Path) -> None:
        self.instance = instance
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        path = self.instance.lock_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the probe lock {path}: {exc.strerror}; run as root") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise ConfigError(
                f"another connstats probe (pid {owner or '?'}) runs with state directory "
                f"{self.state_dir}; stop it first, or give this one another --state-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.state_dir}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_owner(path: Path) -> int | None:
    """The pid written in a held lock file; None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def last_state_dir(instance: PinnedInstance) -> str | None:
    """The state directory the last owner wrote into the lock file (for doctor)."""
    try:
        text = instance.lock_path.read_text().split(maxsplit=1)
    except OSError:
        return None
    return text[1].strip() if len(text) == 2 else None


def _read_owner(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None
