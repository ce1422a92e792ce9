"""One interval's chunks put back together: the one assembler of every flow subscriber (the
alert engine, ``connstats top``, the web page's live view, and any new one).

An interval too large for one message arrives as ``chunks`` messages, ``chunk`` 0 to
``chunks - 1`` (docs/nats.md, "The flow message"), in any order, possibly twice (JetStream
redelivers what was not acknowledged in time). ``IntervalAssembler.add`` keeps the chunks
per (host, boot id, interval seq) and hands out an ``Interval`` once every chunk is in:

- **complete**: the interval, its chunks in chunk order, as soon as its last chunk arrives;
- **expired**: ``expired()`` hands out, oldest first, the intervals still missing chunks
  ``timeout`` seconds after their first chunk arrived, with the chunks that did
  (``Interval.complete`` False, ``Interval.missing`` says which);
- **bounded**: at most ``max_pending`` intervals wait; one more and the oldest is handed
  out at once, as it is (incomplete);
- **once**: a chunk seen twice counts once, also after its interval was handed out (the last
  ``remember`` intervals handed out are remembered): an interval is handed out once.

What the caller does with an incomplete interval is its own choice (the alert engine
evaluates it, the live views show only complete ones). The assembler holds any chunk type
with an ``envelope`` (``FlowBatch``, or what a subscriber made of one, see
``FlowSubscription``'s ``prepare``); ``Interval.batch()`` makes one ``FlowBatch`` of
``FlowBatch`` chunks. Pure code: no clock but the one given, no I/O, no thread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Generic, Protocol, TypeVar

from .flow_batch import FlowBatch
from .record import Envelope

__all__ = ["CHUNK_TIMEOUT", "MAX_PENDING_INTERVALS", "REMEMBERED_INTERVALS", "Chunk", "Interval",
           "IntervalAssembler", "IntervalKey"]

CHUNK_TIMEOUT = 5.0  # seconds an interval waits for its missing chunks
MAX_PENDING_INTERVALS = 64  # intervals waiting for chunks at once (all hosts together)
REMEMBERED_INTERVALS = 4096  # intervals handed out whose late or redelivered chunks are ignored

IntervalKey = tuple[str, str, int]  # (host, boot id, interval seq)


class Chunk(Protocol):
    """What the assembler holds: anything with the envelope of the message it came from."""

    @property
    def envelope(self) -> Envelope: ...


C = TypeVar("C", bound=Chunk)


@dataclass(frozen=True)
class Interval(Generic[C]):
    """One interval as handed out: the chunks that arrived, in chunk order."""

    key: IntervalKey
    chunks: tuple[C, ...]  # at least one; each chunk number once, in ascending order
    expected: int  # how many chunks the interval has (its envelopes' ``chunks``, the largest seen)

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.expected

    @property
    def missing(self) -> tuple[int, ...]:
        """The chunk numbers that did not arrive (empty if complete)."""
        arrived = {chunk.envelope.chunk for chunk in self.chunks}
        return tuple(number for number in range(self.expected) if number not in arrived)

    @property
    def envelope(self) -> Envelope:
        """The envelope of the first chunk that arrived in chunk order (chunk 0's if it did:
        only chunk 0 carries the interval's overflow counts)."""
        return self.chunks[0].envelope

    def batch(self: Interval[FlowBatch]) -> FlowBatch:
        """The interval's records as one batch, in chunk order, under chunk 0's envelope as
        one message (``chunk`` 0, ``chunks`` 1, ``record_offset`` 0)."""
        envelope = replace(self.envelope, chunk=0, chunks=1, record_offset=0)
        return FlowBatch.concat(envelope, list(self.chunks))


@dataclass
class _Pending(Generic[C]):
    since: float  # when its first chunk arrived (the assembler's clock)
    expected: int
    chunks: dict[int, C] = field(default_factory=dict)


class IntervalAssembler(Generic[C]):
    """The chunks of each interval put back together (see the module's text)."""

    def __init__(self, timeout: float = CHUNK_TIMEOUT, max_pending: int = MAX_PENDING_INTERVALS,
                 remember: int = REMEMBERED_INTERVALS, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout < 0 or max_pending < 1 or remember < 0:
            raise ValueError(f"timeout {timeout} must be >= 0, max_pending {max_pending} >= 1 and "
                             f"remember {remember} >= 0")
        self.timeout = timeout
        self.max_pending = max_pending
        self.remember = remember
        self.clock = clock
        self._pending: dict[IntervalKey, _Pending[C]] = {}  # oldest first
        self._done: dict[IntervalKey, None] = {}  # handed out, oldest first

    def add(self, chunk: C) -> list[Interval[C]]:
        """The intervals ready now: this chunk's if it was the last one missing, then any
        the bound pushed out (oldest first). Empty for a chunk seen before."""
        envelope = chunk.envelope
        key = (envelope.host, envelope.boot_id, envelope.interval_seq)
        if key in self._done:
            return []  # a late or redelivered chunk of an interval handed out
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(self.clock(), envelope.chunks)
        elif envelope.chunk in pending.chunks:
            return []  # redelivered: the first copy counts
        pending.chunks[envelope.chunk] = chunk
        pending.expected = max(pending.expected, envelope.chunks)
        ready = []
        if len(pending.chunks) == pending.expected:
            ready.append(self._hand_out(key))
        while len(self._pending) > self.max_pending:
            ready.append(self._hand_out(next(iter(self._pending))))
        return ready

    def expired(self) -> list[Interval[C]]:
        """The intervals whose first chunk arrived ``timeout`` seconds ago or more, oldest first."""
        deadline = self.clock() - self.timeout
        late = [key for key, pending in self._pending.items() if pending.since <= deadline]
        return [self._hand_out(key) for key in late]

    def __len__(self) -> int:
        """How many intervals wait for chunks."""
        return len(self._pending)

    def _hand_out(self, key: IntervalKey) -> Interval[C]:
        pending = self._pending.pop(key)
        if self.remember:
            self._done[key] = None
            while len(self._done) > self.remember:
                del self._done[next(iter(self._done))]
        chunks = tuple(pending.chunks[number] for number in sorted(pending.chunks))
        return Interval(key, chunks, pending.expected)
