"""Notice, once per interval, when somebody else replaced or removed one of our filters.

    every interval: for each attached device and hook, one filter dump
        our place (pref 3159) runs our program ─> nothing to do
        anything else (another program, another filter, nothing)
            ─> release the device (its last interval is still drained and labelled),
               publish "replaced" or "lost" with what is there now, warn once;
               the filter that is there now is left alone

A device released this way is not attached again by the watchers (like a device
detached by hand) until it is deleted and made anew, or attached by hand.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..kernel.devices import FilterLoss
from ..seams import ProbePort

log = logging.getLogger("connstats.probe.guard")


class FilterGuard:
    """A probe service: checks our filters every ``every`` seconds (default: the interval)."""

    def __init__(self, probe: ProbePort, every: float | None = None) -> None:
        self.probe = probe
        self.every = every
        self.lost = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._guard_forever(), name="filter-guard")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check(self) -> list[FilterLoss]:
        """One round: release and report every device whose filter is not ours any more."""
        lost = await self.probe.check_filters()
        for loss in lost:
            self.lost += 1
            device = loss.device
            log.warning("%s (ifindex %d) is no longer counted: %s; the filter there now is left "
                        "alone (`connstats attach %s` takes the device back)",
                        device.name, device.ifindex, loss.describe(), device.name)
        return lost

    async def _guard_forever(self) -> None:
        every = self.every or self.probe.interval
        while True:
            await asyncio.sleep(every)
            try:
                await self.check()
            except Exception as exc:  # a failed round is retried next interval
                log.warning("checking our tc filters failed: %s; trying again in %g s", exc, every)


def filter_guard(every: float | None = None) -> Callable[[ProbePort], FilterGuard]:
    """A ``ServiceFactory``: ``DaemonSettings(services=[filter_guard()])``."""
    return lambda probe: FilterGuard(probe, every)
