"""The Policy view's recent violations: a subscription on ``connstats.v1.policy.>`` keeping
the last ``KEEP`` events the probes published (probe/policy/violations.py: each denied
connection once per interval). Best effort, like the events themselves: the store's
``verdict`` column is the durable account. A message that is not a JSON object (or nests too deep) is skipped."""
from __future__ import annotations

import logging
from collections import deque
from typing import Any

import msgspec

from connstats.probe.contract import MessageError, check_json
from connstats.probe.contract.messaging import POLICY_WILDCARD

log = logging.getLogger(__name__)

KEEP = 500
MAX_EVENT_BYTES = 16 * 1024


class ViolationLog:
    """``start()`` subscribes, ``recent(host, limit)`` answers, ``close()`` unsubscribes."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.events: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.skipped = 0
        self._subscription = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(POLICY_WILDCARD, cb=self._received)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _received(self, msg) -> None:
        try:
            check_json(msg.data, MAX_EVENT_BYTES)
            event = msgspec.json.decode(msg.data)
        except (MessageError, msgspec.DecodeError):
            event = None
        if not isinstance(event, dict):
            self.skipped += 1
            return
        self.events.append(event)

    def recent(self, host: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest first, of ``host`` (every host's if None)."""
        chosen = [e for e in reversed(self.events) if host is None or e.get("host") == host]
        return chosen[:limit]
