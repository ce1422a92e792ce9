"""The one retry delay of connstats: doubling from ``first`` up to ``ceiling``.

Used by the sink's consumer (a failing store), the link and Docker watchers (a failed
attach, a lost Docker socket) and the publisher's resend loop. ``delay(n)`` is the pure
rule; ``next()``/``reset()`` keep the count for a loop that retries one thing.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    first: float = 0.5
    factor: float = 2.0
    ceiling: float = 30.0
    failures: int = field(default=0, compare=False)  # in a row, for next()/reset()

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
        return min(self.ceiling, self.first * self.factor ** max(0, failures - 1))

    def next(self) -> float:
        """One more failure: the delay to wait before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.failures = 0
