"""What the sink needs from a store. ``SqliteStore`` and ``InfluxStore`` implement it."""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from connstats.probe.contract import Envelope, FlowBatch, MessageError


class Store(Protocol):
    async def ping(self) -> None:
        """Raise ``StoreError`` (or ``StoreUnavailable``) unless the store can take writes."""

    async def write(self, batch: FlowBatch) -> None:
        """Store one message's records (columns), its overflow and its drops durably; return only once they are stored.

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


def drop_totals(envelope: Envelope) -> list[tuple[int, str, str, int, int]]:
    """(ifindex, ifname, reason, packets, bytes) per device and reason of the envelope's drops
    (those that belong to no record), in order of appearance; repeats summed, as ``overflow_totals``."""
    totals: dict[tuple[int, str], list] = {}
    for d in envelope.drops:
        total = totals.setdefault((d.ifindex, d.reason), [d.ifname, 0, 0])
        total[1] += d.packets
        total[2] += d.bytes
    return [(ifindex, ifname, reason, packets, nbytes)
            for (ifindex, reason), (ifname, packets, nbytes) in totals.items()]


# -- the service port: one rule for every store and for history -------------------------------

OTHER_PORT = "other"
_PORT_TEXT = tuple(str(port) for port in range(65536))


@lru_cache(maxsize=8)
def known_ports(service_ports: frozenset[int] = frozenset()) -> bytes:
    """A 65536-byte table: 1 where the port is a service port (1-1023 or configured), else 0."""
    table = bytearray(65536)
    table[1:1024] = b"\x01" * 1023
    for port in service_ports:
        if 0 < port < 65536:
            table[port] = 1
    return bytes(table)


def server_port(src_port: int, dst_port: int, known: bytes) -> tuple[int, bool]:
    """(the server's port, whether it is a service port): the one rule for the server side
    of a connection, used by InfluxDB's ``service_port`` tag (``service_port_tags``) and by
    ``history --group-by port``. The service port (see ``known_ports``) of the two, the
    lower one when both are, and True; when neither is, the lower of the two, and False.
    Port 0 means "no ports" (ICMP)."""
    if known[src_port]:
        return (min(src_port, dst_port) if known[dst_port] else src_port), True
    if known[dst_port]:
        return dst_port, True
    return min(src_port, dst_port), False


def server_side(src_port: int, dst_port: int, known: bytes) -> str:
    """Which end of a record is the server by ``server_port``'s rule: ``"dst"`` or ``"src"``;
    ``""`` when both ports are the same (ICMP's 0 and 0, NTP's 123 and 123): the ports
    cannot tell who opened the connection."""
    if src_port == dst_port:
        return ""
    return "dst" if server_port(src_port, dst_port, known)[0] == dst_port else "src"


def service_port_tags(src_ports, dst_ports, service_ports: frozenset[int] = frozenset()) -> list[str]:
    """``service_port`` per record as tag text; ``other`` where neither port is a service port
    (ephemeral ports would make a series per connection)."""
    known = known_ports(service_ports)
    texts: dict[tuple[int, int], str] = {}
    try:
        for pair in set(zip(src_ports, dst_ports, strict=True)):
            port, is_service = server_port(*pair, known)
            texts[pair] = _PORT_TEXT[port] if is_service else OTHER_PORT
    except IndexError:
        raise MessageError("a record has a port above 65535; fix the producer of the message") from None
    return list(map(texts.__getitem__, zip(src_ports, dst_ports, strict=True)))
