"""Poll and reset the kernel's counters without losing or double-counting a packet.

Each poll flips ``active_buffer`` so new packets go to the other map, waits for a
grace period so no program still holds a pointer into the old map, then reads the
old map in batches. Nothing writes to a map while it is read, and every increment
lands in exactly one interval.

The old map is emptied only by ``commit()``, once the caller has made the interval
durable (acknowledged by JetStream, or in the outbox spool on disk). Where the poller
is lives in the ``probe_state`` map, pinned with the others: a probe killed at any
moment leaves either one ``pending`` interval (flipped out, maybe not stored) or
nothing to do, and the next probe's ``recover()`` reads that interval again with the
same sequence number, times and record order (the stores' key order, ``store_order``: a
pure function of the interval's contents), so its messages get the same ids and contents
and JetStream drops the copies it already has.

    poll:    state.pending = (buffer b, seq N, start, end); next = N + 1; active = 1 - b
             on_flip() (side tables flip with the classifier: the quality tables)
             grace period; read buffer b                         -> DrainedInterval N
    commit:  state.clearing = 1; empty buffer b; state.pending = state.clearing = 0
"""
from __future__ import annotations

import ctypes
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..contract.errors import KernelError
from ..contract.flow_batch import FlowBatch, store_order
from ..contract.record import DIRECTIONS, Envelope, OverflowCount, Owner
from .loader import (
    FLOW4_KEY,
    FLOW_COUNTERS,
    FLOW_KEY,
    ClassifierProgram,
    delete_keys,
    read_map,
    wait_for_grace_period,
    widen_ipv4_keys,
)

_ZERO = ctypes.c_int(0)


@dataclass(frozen=True)
class DrainedInterval:
    """One interval's counters, still as the kernel's arrays (decoded in bulk)."""

    seq: int
    start_ns: int  # wall clock, UTC
    end_ns: int
    keys: np.ndarray  # FLOW_KEY, in the stores' key order (store_order; a live view's: read order)
    values: np.ndarray  # FLOW_COUNTERS
    overflow: tuple[tuple[int, int, int, int], ...]  # (ifindex, direction, packets, bytes)
    mono_to_wall_ns: int

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, envelope: Envelope, ifnames: Mapping[int, str],
              owners: Mapping[int, Owner] = {}) -> FlowBatch:
        """The interval's columns, made from the arrays without an object per record."""
        return FlowBatch.from_arrays(envelope, self.keys, self.values, mono_to_wall_ns=self.mono_to_wall_ns,
                                     ifnames=ifnames, owners=owners)

    def overflow_counts(self, ifnames: Mapping[int, str]) -> tuple[OverflowCount, ...]:
        return tuple(
            OverflowCount(ifindex, ifnames.get(ifindex, ""), DIRECTIONS[direction], packets, nbytes)
            for ifindex, direction, packets, nbytes in self.overflow
        )

    @property
    def packets(self) -> int:
        return int(self.values["packets"].sum()) + sum(o[2] for o in self.overflow)


@dataclass(frozen=True)
class MapRead:
    """One read of a pending buffer: its interval, how long it took, the entries per map."""

    seq: int = -1
    seconds: float = 0.0
    entries4: int = 0
    entries6: int = 0


@dataclass
class _BufferContents:
    """What a read of one buffer found, kept so that ``commit`` deletes exactly that."""

    keys4: np.ndarray
    keys6: np.ndarray
    overflow_keys: list = field(default_factory=list)


class MapPoller:
    """Flips, waits, reads and (on commit) empties the double-buffered flow maps."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._program = program
        self._state_table = program.probe_state
        state = self._state()
        if state.instance == 0:  # new maps: start the sequence
            state.instance = secrets.randbits(63) | 1
            state.next_start_ns = time.time_ns()
            self._save(state)
        self._active = int(program.active_buffer[_ZERO].value)
        self.last_read = MapRead()  # the last pending interval's read: for the self-metrics
        self._read: _BufferContents | None = None

    @property
    def instance(self) -> str:
        """Fixed for as long as the maps live: with the sequence number, names an interval."""
        return f"{self._state().instance:016x}"

    @property
    def pending(self) -> bool:
        return bool(self._state().pending)

    def recover(self) -> DrainedInterval | None:
        """The interval a probe before this one flipped out but did not commit, read again.

        The caller publishes it and calls ``commit()``, as after ``poll()``.
        """
        state = self._state()
        if not state.pending:
            return None
        if state.clearing:  # it was stored; finish emptying it
            self._read = self._read_buffer(state.pending_buffer)[2]
            self.commit()
            return None
        if state.pending_buffer == self._active:  # killed before the flip itself
            state.next_seq, state.next_start_ns = state.pending_seq, state.pending_start_ns
            state.pending = 0
            self._save(state)
            return None
        return self._pending_interval(state)

    def poll(self, on_flip: Callable[[], None] | None = None) -> DrainedInterval:
        """End the current interval and return its counters; ``commit()`` when it is durable.

        ``on_flip`` flips the tables that are joined to the interval (quality/), one grace
        period after the classifier's flip, and the read waits for a second: a packet the
        classifier counted before its flip is dropped in the stack after it (a veth hands it
        to the other namespace's queue), and its drop then still lands in this interval, with
        its record (flipped together, 1 drop in ~10 runs was reported without its record)."""
        state = self._state()
        if state.pending:
            raise KernelError("the previous interval was not committed; this is a bug in connstats")
        buffer = self._active
        flip_wall, flip_mono = time.time_ns(), time.monotonic_ns()
        state.pending, state.pending_buffer, state.clearing = 1, buffer, 0
        state.pending_seq, state.pending_start_ns = state.next_seq, state.next_start_ns
        state.pending_end_ns, state.pending_mono_to_wall_ns = flip_wall, flip_wall - flip_mono
        state.next_seq, state.next_start_ns = state.next_seq + 1, flip_wall
        self._save(state)
        self._set_active(1 - buffer)
        wait_for_grace_period()
        if on_flip is not None:
            on_flip()
            wait_for_grace_period()
        return self._pending_interval(state)

    def commit(self) -> None:
        """Empty the buffer of the pending interval: it is stored (or given up on)."""
        state = self._state()
        if not state.pending:
            return
        state.clearing = 1
        self._save(state)
        contents = self._read or self._read_buffer(state.pending_buffer)[2]
        self._empty(state.pending_buffer, contents)
        self._read = None
        state.pending = state.clearing = 0
        self._save(state)

    def peek(self) -> DrainedInterval:
        """The current interval so far, read without resetting it (for live views)."""
        state = self._state()
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        keys, values, _ = self._read_buffer(self._active, with_overflow=False)
        return DrainedInterval(
            seq=state.next_seq, start_ns=state.next_start_ns, end_ns=now_wall, keys=keys,
            values=values, overflow=(), mono_to_wall_ns=now_wall - now_mono,
        )

    # -- the maps --------------------------------------------------------------------------

    def _pending_interval(self, state) -> DrainedInterval:
        started = time.perf_counter()
        keys, values, contents = self._read_buffer(state.pending_buffer)
        order = store_order(keys)  # a pure function of the contents: a replay gives the same messages
        keys, values = keys[order], values[order]
        self.last_read = MapRead(state.pending_seq, time.perf_counter() - started,
                                 len(contents.keys4), len(contents.keys6))
        self._read = contents
        return DrainedInterval(
            seq=state.pending_seq, start_ns=state.pending_start_ns, end_ns=state.pending_end_ns,
            keys=keys, values=values, overflow=self._overflow(state.pending_buffer, contents),
            mono_to_wall_ns=state.pending_mono_to_wall_ns,
        )

    def _read_buffer(self, buffer: int, with_overflow: bool = True):
        capacity = self._program.capacity
        keys4, values4 = read_map(self._program.flow_map_fd(4, buffer), capacity, FLOW4_KEY, FLOW_COUNTERS)
        keys6, values6 = read_map(self._program.flow_map_fd(6, buffer), capacity, FLOW_KEY, FLOW_COUNTERS)
        contents = _BufferContents(keys4, keys6)
        if with_overflow:
            contents.overflow_keys = [k for k in self._program.overflow.keys() if k.buffer == buffer]
        if not len(keys6):
            return widen_ipv4_keys(keys4), values4, contents
        keys = np.concatenate([widen_ipv4_keys(keys4), keys6])
        return keys, np.concatenate([values4, values6]), contents

    def _overflow(self, buffer: int, contents: _BufferContents) -> tuple[tuple[int, int, int, int], ...]:
        """Per device and direction; ifindex 0 for what not even the overflow map could hold."""
        table = self._program.overflow
        counted = [(key.ifindex, key.direction, *_sum_per_cpu(table.getvalue(key)))
                   for key in contents.overflow_keys]
        last_resort = self._program.overflow_unattributed
        for direction in (0, 1):
            packets, nbytes = _sum_per_cpu(last_resort.getvalue(ctypes.c_int(buffer * 2 + direction)))
            if packets:
                counted.append((0, direction, packets, nbytes))
        return tuple(sorted(counted))

    def _empty(self, buffer: int, contents: _BufferContents) -> None:
        delete_keys(self._program.flow_map_fd(4, buffer), contents.keys4)
        delete_keys(self._program.flow_map_fd(6, buffer), contents.keys6)
        table = self._program.overflow
        for key in contents.overflow_keys:
            try:
                del table[key]
            except KeyError:
                pass
        for direction in (0, 1):
            self._program.overflow_unattributed.clearitem(ctypes.c_int(buffer * 2 + direction))

    def _set_active(self, buffer: int) -> None:
        self._program.active_buffer[_ZERO] = ctypes.c_uint32(buffer)
        self._active = buffer

    def _state(self):
        return self._state_table[_ZERO]

    def _save(self, state) -> None:
        self._state_table[_ZERO] = state


def _sum_per_cpu(values) -> tuple[int, int]:
    return sum(v.packets for v in values), sum(v.bytes for v in values)
