"""What the sink needs from a store. ``SqliteStore`` and ``InfluxStore`` implement it."""
from __future__ import annotations

from typing import Protocol, Sequence

from connstats.probe.record import Envelope, FlowRecord


class Store(Protocol):
    async def ping(self) -> None:
        """Raise ``StoreError`` (or ``StoreUnavailable``) unless the store can take writes."""

    async def write(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        """Store one message's records durably; return only once they are stored.

        Idempotent: writing the same message again changes nothing. Raise
        ``StoreUnavailable`` for failures worth retrying, ``StoreError`` otherwise.
        """

    async def close(self) -> None:
        """Release connections and files."""
