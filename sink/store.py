"""What the sink needs from a store. ``SqliteStore`` and ``InfluxStore`` implement it."""
from __future__ import annotations

from typing import Protocol, Sequence

from connstats.probe.record import Envelope, FlowRecord


class Store(Protocol):
    async def ping(self) -> None:
        """Raise ``StoreError`` (or ``StoreUnavailable``) unless the store can take writes."""

    async def write(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        """Store one message's records and its overflow durably; return only once they are stored.

        Idempotent: writing the same message again changes nothing. Records of one message
        that share a key are summed, never dropped. Raise ``StoreUnavailable`` for failures
        worth retrying, ``StoreError`` for what this message can never be (it becomes a
        dead letter).
        """

    async def close(self) -> None:
        """Release connections and files."""


def overflow_totals(envelope: Envelope) -> list[tuple[int, str, str, int, int]]:
    """(ifindex, ifname, direction, packets, bytes) per device and direction of the
    envelope's overflow, in order of appearance; entries repeating a device and direction
    are summed (the probe never sends repeats)."""
    totals: dict[tuple[int, str], list] = {}
    for o in envelope.overflow:
        total = totals.setdefault((o.ifindex, o.direction), [o.ifname, 0, 0])
        total[1] += o.packets
        total[2] += o.bytes
    return [(ifindex, ifname, direction, packets, nbytes)
            for (ifindex, direction), (ifname, packets, nbytes) in totals.items()]
