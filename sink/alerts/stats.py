"""The engine's counters, in one object, for whoever exports them (e.g. Prometheus)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class AlertStats:
    intervals: int = 0  # intervals evaluated (complete, or timed out with chunks missing)
    incomplete_intervals: int = 0  # of those: evaluated without all their chunks
    undecodable: int = 0  # flow messages that failed decode_message (skipped)
    evaluations: int = 0  # evaluations of every rule (per interval, and per tick)
    rule_errors: int = 0  # a kind that raised (logged; the other rules went on)
    firing_by_rule: dict[str, int] = field(default_factory=dict)  # alerts firing now, per rule
    sent: Counter = field(default_factory=Counter)  # notifications delivered, per target
    failed: Counter = field(default_factory=Counter)  # attempts that failed (retried), per target
    dropped: Counter = field(default_factory=Counter)  # notifications given up on, per target
