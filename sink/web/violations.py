"""The Policy view's recent violations: a subscription on ``connstats.v1.policy.>`` keeping
the last ``KEEP`` events the probes published (probe/policy/violations.py: each denied
connection once per interval). Best effort, like the events themselves: the store's
``verdict`` column is the durable account. A message that is not a violation
(``decode_violation``: not a JSON object of its fields, too big, or nesting too deep) is skipped."""
from __future__ import annotations

import logging
from collections import deque

from connstats.probe.contract import MessageError, ViolationMessage, decode_violation
from connstats.probe.contract.messaging import POLICY_WILDCARD

log = logging.getLogger(__name__)

KEEP = 500


class ViolationLog:
    """``start()`` subscribes, ``recent(host, limit)`` answers, ``close()`` unsubscribes."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.events: deque[ViolationMessage] = deque(maxlen=KEEP)
        self.skipped = 0
        self._subscription = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(POLICY_WILDCARD, cb=self._received)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _received(self, msg) -> None:
        try:
            event = decode_violation(msg.data)
        except MessageError as exc:
            self.skipped += 1
            log.debug("violation on %s skipped: %s", msg.subject, exc)
            return
        self.events.append(event)

    def recent(self, host: str | None, limit: int) -> list[ViolationMessage]:
        """The newest first, of ``host`` (every host's if None)."""
        chosen = [e for e in reversed(self.events) if host is None or e.host == host]
        return chosen[:limit]
