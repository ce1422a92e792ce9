"""Pinned state that no running probe owns: find it (``doctor``) and remove it (``reset``).

A probe stopped with ``--on-exit keep``, or killed, leaves its filters counting into its
pinned maps until the next probe with the same state directory adopts them. When no
probe will come back, ``reset`` removes the filters (only on devices that no running
probe owns) and unpins the maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import ConfigError, KernelError
from .devices import DEVICE_CONFIG, IFINDEX, attached_entries
from .loader import open_pinned_map, read_map
from .ownership import DEFAULT_LOCK_DIR, DeviceLocks
from .pins import PinnedInstance, last_state_dir, pinned_instances
from .tc import TcAttacher


@dataclass(frozen=True)
class Leftover:
    """One state directory's pins and whether a running probe owns them."""

    instance: PinnedInstance
    owner: int | None  # pid
    state_dir: str | None  # as the last owner wrote it

    def describe(self) -> str:
        where = f"state directory {self.state_dir}" if self.state_dir else "an unknown state directory"
        if self.owner:
            return f"{self.instance.path} ({where}) is owned by the probe with pid {self.owner}"
        return f"{self.instance.path} ({where}) is owned by no running probe"


def leftovers() -> list[Leftover]:
    return [Leftover(i, i.owner(), last_state_dir(i)) for i in pinned_instances()]


def attached_in_pins(layout_dir: Path) -> dict[int, str]:
    """ifindex -> direction mode of what a probe marked attached in the pinned device maps
    of ``layout_dir`` (empty when their shape is not the one this version knows)."""
    found: dict[int, str] = {}
    for name in ("devices", "devices_high"):
        try:
            table = open_pinned_map(layout_dir / name)
        except KernelError:
            continue
        try:
            if (table.key_size, table.value_size) == (IFINDEX.itemsize, DEVICE_CONFIG.itemsize):
                found.update(attached_entries(read_map(table.fd, table.max_entries, IFINDEX, DEVICE_CONFIG)))
        finally:
            table.close()
    return found


def reset(instance: PinnedInstance, device_locks: str = DEFAULT_LOCK_DIR) -> list[int]:
    """Remove the filters of ``instance``'s devices and unpin its maps; return the ifindexes
    whose filters were removed. Refuses while a probe owns the instance."""
    owner = instance.owner()
    if owner:
        raise ConfigError(f"the connstats probe with pid {owner} owns {instance.path}; stop it first")
    locks = DeviceLocks(device_locks)
    detached: list[int] = []
    tc = TcAttacher()
    try:
        for layout in instance.layouts():
            for ifindex in attached_in_pins(layout):
                if locks.owner_of(ifindex):  # a running probe has the device now
                    continue
                hooks = [hook for hook, found in tc.filters(ifindex).items()
                         if found.prog_name.startswith("connstats_")]
                tc.detach(ifindex, hooks)
                if hooks:
                    detached.append(ifindex)
    finally:
        tc.close()
    instance.remove()
    return detached
