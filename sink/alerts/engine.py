"""The alert engine: rules evaluated on each interval of each host, and on a timer.

    on_interval(chunks)  one interval of one host (its chunks, in order): every rule's kind
                         observes it, then every rule is evaluated
    tick()               every rule is evaluated (time passes: windows slide, silent hosts)
    firing()             the alerts firing now, as the messages published

Each returns the messages to send (``states.Alert.message``: the contract's ``AlertMessage``).
The clock is the wall clock (``clock``, ns); windows are measured against the intervals'
``interval_end``. A rule whose kind raises is logged and counted, and the others go on.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Sequence, TypeVar

from connstats.probe.contract import AlertMessage, FlowBatch

from .baseline import BaselineFile
from .kinds import KINDS, Context, Kind
from .rule_keys import AlertRule
from .states import RuleStates
from .stats import AlertStats
from .table import FlowTable, Vocabulary

_A = TypeVar("_A")
_R = TypeVar("_R")

log = logging.getLogger(__name__)

SAVE_EVERY_NS = 5 * 10**9


class AlertEngine:
    def __init__(self, rules: Sequence[AlertRule], host: str, baseline: BaselineFile | None = None, *,
                 clock: Callable[[], int] = time.time_ns, stats: AlertStats | None = None) -> None:
        self.rules = list(rules)
        self.host = host
        self.clock = clock
        self.stats = stats or AlertStats()
        self.baseline = baseline
        self.vocabulary = Vocabulary()
        saved = baseline.load() if baseline else {}
        self._saved: dict[str, Any] = dict(saved)
        self._last_save = 0
        start = clock()
        self.kinds: list[Kind] = [KINDS[r.kind](r, Context(self.vocabulary, host, saved.get(r.name),
                                                           {"start_ns": start})) for r in self.rules]
        self.states = [RuleStates(r, r.kind, host, k.pending_ns()) for r, k in zip(self.rules, self.kinds, strict=True)]

    def on_interval(self, chunks: Sequence[FlowBatch], now_ns: int | None = None) -> list[AlertMessage]:
        table = FlowTable(chunks, self.vocabulary)
        self.stats.intervals += 1
        for rule, kind in zip(self.rules, self.kinds, strict=True):
            self._guarded(rule, kind.observe, table)
        return self.evaluate(now_ns)

    def tick(self, now_ns: int | None = None) -> list[AlertMessage]:
        return self.evaluate(now_ns)

    def evaluate(self, now_ns: int | None = None) -> list[AlertMessage]:
        now = self.clock() if now_ns is None else now_ns
        self.stats.evaluations += 1
        out: list[AlertMessage] = []
        for rule, kind, states in zip(self.rules, self.kinds, self.states, strict=True):
            findings = self._guarded(rule, kind.evaluate, now)
            if findings is not None:
                out += self._guarded(rule, functools.partial(states.update, now_ns=now), findings) or []
        self.stats.firing_by_rule = {s.rule.name: s.firing_count() for s in self.states}
        self.save(now)
        return out

    def firing(self, now_ns: int | None = None) -> list[AlertMessage]:
        now = self.clock() if now_ns is None else now_ns
        alerts = [message for states in self.states for message in states.firing(now)]
        return sorted(alerts, key=lambda m: (m.started_at, m.rule, m.fingerprint))

    def save(self, now_ns: int | None = None, force: bool = False) -> None:
        """Write the baselines that changed (at most every 5 s unless ``force``)."""
        now = self.clock() if now_ns is None else now_ns
        if self.baseline is None or (not force and now - self._last_save < SAVE_EVERY_NS):
            return
        changed = [(r, k) for r, k in zip(self.rules, self.kinds, strict=True) if k.changed]
        if not changed:
            return
        for rule, kind in changed:
            self._saved[rule.name] = kind.baseline()
        self._saved = {r.name: self._saved[r.name] for r in self.rules if r.name in self._saved}
        if self.baseline.save(self._saved):
            self._last_save = now

    def _guarded(self, rule: AlertRule, call: Callable[[_A], _R], argument: _A) -> _R | None:
        try:
            return call(argument)
        except Exception as exc:  # a kind's bug or odd data must not stop the other rules
            self.stats.rule_errors += 1
            log.warning("alert rule %s: %s: %s", rule.name, type(exc).__name__, exc)
            log.debug("alert rule %s failed", rule.name, exc_info=True)
            return None
