"""One apply of a policy: it takes effect before its deadline and while it is the newest, or never.

    CLI: {"deadline_ms": unix ms, "within_ms": N} ─> ApplyJob(deadline on the probe's clock)
    tables.install: job.check() between batches ─ job.commit(switch) at the one-word switch
    a newer apply (or `policy off`) ─> older.supersede()

``commit`` checks and switches under the job's lock and ``supersede`` takes the same lock,
so the reply always says what happened: switched (applied) or ``NotApplied`` (nothing
changed), never "perhaps later".
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from ..contract.errors import NotApplied


class ApplyJob:
    """A deadline (``time.monotonic``; None: none) and whether a newer apply superseded it."""

    def __init__(self, deadline: float | None = None, seconds: float | None = None) -> None:
        self.deadline = deadline
        self.seconds = seconds  # the time the request gave, for the message
        self._lock = threading.Lock()
        self._superseded = False
        self._committed = False

    @classmethod
    def within(cls, seconds: float | None) -> ApplyJob:
        return cls(None if seconds is None else time.monotonic() + seconds, seconds)

    def supersede(self) -> None:
        with self._lock:
            self._superseded = not self._committed

    def check(self) -> None:
        """Raise ``NotApplied`` if the job must stop."""
        with self._lock:
            self._check()

    def commit(self, switch: Callable[[], int]) -> int:
        """Run ``switch`` (the one store that makes a policy take effect) unless stopped."""
        with self._lock:
            self._check()
            value = switch()
            self._committed = True
            return value

    def _check(self) -> None:
        if self._superseded:
            raise NotApplied("the policy was not applied: a newer apply or `policy off` came before it took "
                             "effect; the newest request decides, see `connstats policy show`")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise NotApplied(f"the policy was not applied: it did not compile within the {self.seconds:.1f} s "
                             "the request gave, so the previous policy stays in force; use a longer --timeout "
                             "or fewer prefixes")
