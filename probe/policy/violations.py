"""Violation events: each denied connection once per interval, on ``connstats.v1.policy.<host>``,
each a ``ViolationMessage`` of the contract (probe/contract/violations.py: its fields and JSON).

A connection is its device, protocol and the unordered pair of endpoints: both directions
of it (a request and its replies) make one event whose counts are their sum, and whose
``src`` is the side seen first (the one that opened it). The deny rows are picked out of
the interval's columns with numpy; only they become Python objects. Events go out on core
NATS (best effort, not in the CONNSTATS stream): the records' ``verdict`` column is the
durable account, the events are for whoever watches (the alert engine's policy_violation).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Literal

import nats.errors
import numpy as np
from nats.aio.client import Client

from ..contract.flow_batch import FlowBatch
from ..contract.messaging import NatsOptions, connect, policy_subject
from ..contract.record import Envelope, proto_name
from ..contract.violations import ViolationMessage, encode_violation
from ..contract.wire_schema import Device
from .resolve import Resolved

log = logging.getLogger("connstats.probe.policy")

_FIELDS = ("ifindex", "direction", "proto", "src_ip", "src_port", "dst_ip", "dst_port", "packets", "bytes",
           "first_seen")


EnforcingMode = Literal["monitor", "protect"]  # a policy's mode when it has violations (ViolationMessage.mode)
# (ifindex, proto, {(src, sport), (dst, dport)}): a connection whichever side it is seen from
ConnectionSides = tuple[int, int, frozenset[tuple[str, int]]]


def violations(batch: FlowBatch, resolved: Resolved, mode: EnforcingMode) -> list[ViolationMessage]:
    """The violation events of one interval's batch (pure)."""
    verdicts = np.asarray(batch.columns.verdict, dtype=object)
    rows = np.flatnonzero(verdicts == "deny")
    if not len(rows):
        return []
    part = batch.take(rows.tolist())
    devices = {d.ifindex: d for d in part.devices}
    found: dict[ConnectionSides, ViolationMessage] = {}
    first_seen: dict[ConnectionSides, int] = {}  # of each connection's side seen first: its src
    for ifindex, direction, proto, src, sport, dst, dport, packets, nbytes, first in zip(
            *(part.column(name) for name in _FIELDS), strict=True):
        key = (ifindex, proto, frozenset(((src, sport), (dst, dport))))
        event = found.get(key)
        if event is None or first < first_seen[key]:
            totals = (event.packets, event.bytes) if event else (0, 0)
            event = found[key] = _event(batch.envelope, mode, devices[ifindex], direction, proto, src, sport,
                                        dst, dport, resolved)
            event.packets, event.bytes = totals
            first_seen[key] = first
        event.packets += packets
        event.bytes += nbytes
    return list(found.values())


def _event(envelope: Envelope, mode: EnforcingMode, device: Device, direction: str, proto: int, src: str, sport: int,
           dst: str, dport: int, resolved: Resolved) -> ViolationMessage:
    own = resolved.devices.get(device.ifindex, 0)
    from_groups, to_groups = resolved.groups_of(src), resolved.groups_of(dst)
    if direction == "egress":  # leaving the device's own end: the source is behind it
        from_groups |= own
    else:
        to_groups |= own
    return ViolationMessage(
        host=envelope.host, interval_seq=envelope.interval_seq, interval_start=envelope.interval_start,
        interval_end=envelope.interval_end, mode=mode, ifname=device.ifname, container=device.container_name,
        pod=device.pod,
        proto=proto_name(proto), src_ip=src, src_port=sport, dst_ip=dst, dst_port=dport, packets=0, bytes=0,
        from_groups=resolved.names(from_groups), to_groups=resolved.names(to_groups))


class ViolationPublisher:
    """Publishes each interval's violation events; its own NATS connection."""

    def __init__(self, options: NatsOptions, host: str) -> None:
        self.options = options
        self.subject = policy_subject(host)
        self.published = 0
        self.failed = 0  # events of batches whose publish or flush failed
        self._nc: Client | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._nc = await connect(self.options, name="connstats-policy")

    def interval(self, batch: FlowBatch, resolved: Resolved, mode: EnforcingMode) -> None:
        """Called with every interval before it is published (ProbePort.on_interval)."""
        events = violations(batch, resolved, mode)
        if events:
            task = asyncio.get_running_loop().create_task(self._publish(events))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _publish(self, events: list[ViolationMessage]) -> None:
        nc = self._nc
        if nc is None:
            raise RuntimeError("violation events before ViolationPublisher.start connected to NATS")
        sent = 0
        try:
            for event in events:
                await nc.publish(self.subject, encode_violation(event))
                sent += 1
            await nc.flush(timeout=5)
            self.published += sent
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            self.failed += len(events)
            log.warning("%d policy violation events not published: %r", len(events), exc)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
