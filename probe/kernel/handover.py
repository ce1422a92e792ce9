"""Taking over from a probe whose maps have another layout (an upgrade, another --capacity).

    new maps ─ adopt the old layout's devices (tc replace: never a moment without a filter)
             ─ grace period: no program writes the old maps any more
             ─ read the old maps (both buffers, overflow) as the OLD instance's intervals
             ─ publish until durable ─ unpin the old layout

The old intervals keep the old instance's boot id and sequence numbers, so a crash during
the handover publishes them again under the same message ids. Where the old maps' shapes
are not ones this version can read, nothing is guessed: the entries given up are counted,
logged and published as a ``handover_lost`` event.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract.errors import KernelError
from .loader import (
    FLOW4_KEY,
    FLOW_COUNTERS,
    FLOW_COUNTERS_V1,
    FLOW_KEY,
    PinnedMap,
    open_pinned_map,
    read_map,
    widen_ipv4_keys,
)
from .poller import DrainedInterval

log = logging.getLogger("connstats.probe")

PROBE_STATE = np.dtype([
    ("instance", "<u8"), ("next_seq", "<u8"), ("next_start_ns", "<u8"), ("pending_seq", "<u8"),
    ("pending_start_ns", "<u8"), ("pending_end_ns", "<u8"), ("pending_mono_to_wall_ns", "<i8"),
    ("pending", "<u4"), ("pending_buffer", "<u4"), ("clearing", "<u4"), ("pad", "<u4"),
])
OVERFLOW_KEY = np.dtype([("ifindex", "<u4"), ("buffer", "u1"), ("direction", "u1"), ("pad", "<u2")])
OVERFLOW_COUNTERS = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
_INT = np.dtype("<i4")
_U32 = np.dtype("<u4")


@dataclass
class OldLayout:
    """What one old layout directory held."""

    path: Path
    instance: str = ""  # boot id of the old intervals
    intervals: list[DrainedInterval] = field(default_factory=list)
    lost_entries: int = 0  # map entries of shapes this version cannot read
    lost_packets: int = 0
    lost_bytes: int = 0


def read_old_layout(path: Path, now_wall: int, now_mono: int) -> OldLayout:
    """Read every count in the maps pinned at ``path`` (nothing writes them any more)."""
    old = OldLayout(path)
    state = _single_value(path / "probe_state", PROBE_STATE)
    active = _single_value(path / "active_buffer", _U32)
    flows = {buffer: _flows(path, buffer, old) for buffer in (0, 1)}
    overflow = _overflow(path, old)
    if state is None or active is None:
        for keys, values in flows.values():
            old.lost_entries += len(keys)
            old.lost_packets += int(values["packets"].sum())
            old.lost_bytes += int(values["bytes"].sum())
        return old
    old.instance = f"{int(state['instance']):016x}"
    active = int(active)
    if state["pending"] and not state["clearing"]:
        buffer = int(state["pending_buffer"])
        old.intervals.append(DrainedInterval(
            int(state["pending_seq"]), int(state["pending_start_ns"]), int(state["pending_end_ns"]),
            *flows[buffer], overflow.get(buffer, ()), int(state["pending_mono_to_wall_ns"])))
    old.intervals.append(DrainedInterval(
        int(state["next_seq"]), int(state["next_start_ns"]), now_wall, *flows[active],
        overflow.get(active, ()), now_wall - now_mono))
    return old


def _open(path: Path) -> PinnedMap | None:
    try:
        return open_pinned_map(path)
    except KernelError:
        return None


def _single_value(path: Path, dtype: np.dtype):
    table = _open(path)
    if table is None:
        return None
    try:
        if table.key_size != _INT.itemsize or table.value_size != dtype.itemsize:
            return None
        _, values = read_map(table.fd, table.max_entries, _INT, dtype)
        return values[0] if len(values) else None
    finally:
        table.close()


def _flows(path: Path, buffer: int, old: OldLayout) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for family, key_dtype in ((4, FLOW4_KEY), (6, FLOW_KEY)):
        table = _open(path / f"flows{family}_{buffer}")
        if table is None:
            continue
        try:
            value_dtype = _COUNTERS_BY_SIZE.get(table.value_size)
            if table.key_size == key_dtype.itemsize and value_dtype is not None:
                keys, values = read_map(table.fd, table.max_entries, key_dtype, value_dtype)
                parts.append((widen_ipv4_keys(keys) if family == 4 else keys, _current_counters(values)))
            else:
                raw_key, raw_value = np.dtype(f"V{table.key_size}"), np.dtype(f"V{table.value_size}")
                old.lost_entries += len(read_map(table.fd, table.max_entries, raw_key, raw_value)[0])
        finally:
            table.close()
    if not parts:
        return np.empty(0, FLOW_KEY), np.empty(0, FLOW_COUNTERS)
    return np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts])


# Counters of this layout and of the one before the policy fields (their verdict: "").
_COUNTERS_BY_SIZE = {FLOW_COUNTERS.itemsize: FLOW_COUNTERS, FLOW_COUNTERS_V1.itemsize: FLOW_COUNTERS_V1}


def _current_counters(values: np.ndarray) -> np.ndarray:
    if values.dtype == FLOW_COUNTERS:
        return values
    current = np.zeros(len(values), FLOW_COUNTERS)
    for name in values.dtype.names or ():
        current[name] = values[name]
    return current


def _overflow(path: Path, old: OldLayout) -> dict[int, tuple[tuple[int, int, int, int], ...]]:
    """Per buffer: (ifindex, direction, packets, bytes), summed over the CPUs."""
    from bcc.utils import get_possible_cpus

    table = _open(path / "overflow")
    if table is None:
        return {}
    try:
        if table.key_size != OVERFLOW_KEY.itemsize or table.value_size != OVERFLOW_COUNTERS.itemsize:
            return {}
        per_cpu = np.dtype((OVERFLOW_COUNTERS, (len(get_possible_cpus()),)))
        keys, values = read_map(table.fd, table.max_entries, OVERFLOW_KEY, per_cpu)
    finally:
        table.close()
    found: dict[int, list] = {0: [], 1: []}
    for key, value in zip(keys.tolist(), values, strict=True):
        ifindex, buffer, direction, _ = key
        found.setdefault(buffer, []).append(
            (ifindex, direction, int(value["packets"].sum()), int(value["bytes"].sum())))
    return {buffer: tuple(sorted(rows)) for buffer, rows in found.items()}


def now() -> tuple[int, int]:
    return time.time_ns(), time.monotonic_ns()
