"""The chunks of one interval put back together, so that each interval is evaluated once.

An interval too large for one message arrives as ``chunks`` messages (docs/nats.md, "The flow
message"). ``Intervals.add`` keeps them per (host, boot id, interval) and returns the
interval's chunks in order once all are in; ``expired`` returns, in arrival order, the
intervals still missing chunks after ``timeout`` seconds (evaluated with what arrived), and
at most ``max_pending`` intervals wait at once (the oldest goes first). A chunk seen twice
(a redelivery) counts once, also after its interval was evaluated: the last ``remember``
intervals handed out are remembered.
"""
from __future__ import annotations

import time
from typing import Callable

from connstats.probe.contract import FlowBatch

Key = tuple[str, str, int]


class Intervals:
    def __init__(self, timeout: float = 5.0, max_pending: int = 64, remember: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.remember = remember
        self.clock = clock
        self._pending: dict[Key, tuple[float, dict[int, FlowBatch]]] = {}
        self._done: dict[Key, None] = {}  # handed out, oldest first

    def add(self, batch: FlowBatch) -> list[list[FlowBatch]]:
        """Intervals ready now: this one if complete, and any pushed out by the limit."""
        envelope = batch.envelope
        key = (envelope.host, envelope.boot_id, envelope.interval_seq)
        if key in self._done:
            return []  # a redelivered chunk of an interval already evaluated
        since, chunks = self._pending.setdefault(key, (self.clock(), {}))
        chunks[envelope.chunk] = batch
        ready = []
        if len(chunks) >= envelope.chunks:
            ready.append(self._hand_out(key))
        while len(self._pending) > self.max_pending:
            ready.append(self._hand_out(next(iter(self._pending))))
        return ready

    def expired(self) -> list[list[FlowBatch]]:
        deadline = self.clock() - self.timeout
        late = [key for key, (since, _) in self._pending.items() if since <= deadline]
        return [self._hand_out(key) for key in late]

    def _hand_out(self, key: Key) -> list[FlowBatch]:
        chunks = self._pending.pop(key)[1]
        self._done[key] = None
        while len(self._done) > self.remember:
            del self._done[next(iter(self._done))]
        return _ordered(chunks)

    def __len__(self) -> int:
        return len(self._pending)


def _ordered(chunks: dict[int, FlowBatch]) -> list[FlowBatch]:
    return [chunks[index] for index in sorted(chunks)]
