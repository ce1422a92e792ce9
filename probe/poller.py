"""Poll and reset the kernel's counters without losing or double-counting a packet.

Each poll flips ``active_buffer`` so new packets go to the other map, waits for a
grace period so no program still holds a pointer into the old map, then drains
the old map with batch lookup-and-delete. Nothing writes to a map while it is
drained, and every increment lands in exactly one interval.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .kernel import (
    FLOW4_KEY, FLOW_COUNTERS, FLOW_KEY, ClassifierProgram, drain_map, read_map,
    wait_for_grace_period, widen_ipv4_keys,
)
from .record import DIRECTIONS, FlowRecord, OverflowCount, records_from_arrays


@dataclass(frozen=True)
class DrainedInterval:
    """One interval's counters, still as the kernel's arrays (decoded in bulk)."""

    seq: int
    start_ns: int  # wall clock, UTC
    end_ns: int
    keys: np.ndarray  # FLOW_KEY, in drain order; messages fix the order for replays
    values: np.ndarray  # FLOW_COUNTERS
    overflow: tuple[tuple[int, int, int, int], ...]  # (ifindex, direction, packets, bytes)
    mono_to_wall_ns: int

    def __len__(self) -> int:
        return len(self.keys)

    def records(self, ifnames: Mapping[int, str],
                labels: Mapping[int, tuple[str, str, str]] = {}) -> list[FlowRecord]:
        return records_from_arrays(
            self.keys, self.values, interval_start=self.start_ns, interval_end=self.end_ns,
            mono_to_wall_ns=self.mono_to_wall_ns, ifnames=ifnames, labels=labels,
        )

    def overflow_counts(self, ifnames: Mapping[int, str]) -> tuple[OverflowCount, ...]:
        return tuple(
            OverflowCount(ifindex, ifnames.get(ifindex, ""), DIRECTIONS[direction], packets, nbytes)
            for ifindex, direction, packets, nbytes in self.overflow
        )

    @property
    def packets(self) -> int:
        return int(self.values["packets"].sum()) + sum(o[2] for o in self.overflow)


class MapPoller:
    """Flips, waits and drains the double-buffered flow maps; one per classifier."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._program = program
        self._active = 0
        self._set_active(0)
        self._seq = 0
        self._last_flip_ns = time.time_ns()

    def poll(self) -> DrainedInterval:
        """End the current interval and return its counters."""
        drained = self._active
        self._set_active(1 - drained)
        flip_wall, flip_mono = time.time_ns(), time.monotonic_ns()
        wait_for_grace_period()
        keys, values = self._drain_flows(drained)
        overflow = self._drain_overflow(drained)
        interval = DrainedInterval(
            seq=self._seq, start_ns=self._last_flip_ns, end_ns=flip_wall, keys=keys,
            values=values, overflow=overflow, mono_to_wall_ns=flip_wall - flip_mono,
        )
        self._active = 1 - drained
        self._seq += 1
        self._last_flip_ns = flip_wall
        return interval

    def peek(self) -> DrainedInterval:
        """The current interval so far, read without resetting it (for live views)."""
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        keys, values = self._drain_flows(self._active, read_map)
        return DrainedInterval(
            seq=self._seq, start_ns=self._last_flip_ns, end_ns=now_wall, keys=keys, values=values,
            overflow=(), mono_to_wall_ns=now_wall - now_mono,
        )

    def _drain_flows(self, buffer: int, read=drain_map) -> tuple[np.ndarray, np.ndarray]:
        capacity = self._program.capacity
        keys4, values4 = read(self._program.flow_map_fd(4, buffer), capacity, FLOW4_KEY, FLOW_COUNTERS)
        keys6, values6 = read(self._program.flow_map_fd(6, buffer), capacity, FLOW_KEY, FLOW_COUNTERS)
        if not len(keys6):
            return widen_ipv4_keys(keys4), values4
        return np.concatenate([widen_ipv4_keys(keys4), keys6]), np.concatenate([values4, values6])

    def _set_active(self, buffer: int) -> None:
        table = self._program.active_buffer
        table[ctypes.c_int(0)] = ctypes.c_uint32(buffer)

    def _drain_overflow(self, buffer: int) -> tuple[tuple[int, int, int, int], ...]:
        """Per device and direction; ifindex 0 for what not even the overflow map could hold."""
        table = self._program.overflow
        drained = []
        for key in [k for k in table.keys() if k.buffer == buffer]:
            drained.append((key.ifindex, key.direction, *_sum_per_cpu(table.getvalue(key))))
            del table[key]
        last_resort = self._program.overflow_unattributed
        for direction in (0, 1):
            slot = ctypes.c_int(buffer * 2 + direction)
            packets, nbytes = _sum_per_cpu(last_resort.getvalue(slot))
            if packets:
                drained.append((0, direction, packets, nbytes))
                last_resort.clearitem(slot)
        return tuple(sorted(drained))


def _sum_per_cpu(values) -> tuple[int, int]:
    return sum(v.packets for v in values), sum(v.bytes for v in values)
