"""Alert states of one rule: pending (``for`` not yet over), firing, resolved.

``RuleStates.update(findings, now)`` turns the kind's findings of one evaluation into the
messages to send:

* a group found for ``pending`` ns fires (one ``firing`` message, ``started_at`` = now);
* a firing group found again is re-sent at most once per ``repeat`` (value updated);
* a firing group no longer found resolves (one ``resolved`` message, ``ended_at`` = now);
* more than ``cap`` groups firing in one evaluation: none of them fires, one summary alert
  (label ``storm="true"``, value = how many) fires instead; it resolves once they are
  ``cap`` or fewer, and they fire one by one then.

The message (``Alert.message``) is the contract's ``AlertMessage``, published on NATS as
JSON; see docs/alerts.md.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import msgspec

from connstats.probe.contract import AlertMessage

from .kinds import Finding
from .rule_keys import AlertRule

AlertState = Literal["firing", "resolved"]  # AlertMessage.state

STORM_LABEL = "storm"


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    """The alert's identity: its rule and group labels (16 hex digits)."""
    text = "\x00".join([rule, *(f"{k}\x01{v}" for k, v in sorted(labels.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Alert:
    rule: AlertRule
    kind: str
    group: dict[str, str]
    fingerprint: str
    host: str
    value: float
    threshold: float | None
    summary: str
    active_since: int
    started_at: int = 0  # 0 while pending
    last_sent: int = 0

    def message(self, state: AlertState, now_ns: int, engine: str) -> AlertMessage:
        return AlertMessage(
            fingerprint=self.fingerprint, state=state, rule=self.rule.name, kind=self.kind,
            severity=self.rule.severity, host=self.host,
            labels={"alertname": self.rule.name, "severity": self.rule.severity, **self.group},
            value=self.value, threshold=self.threshold, summary=self.summary,
            description=self.rule.description, started_at=self.started_at,
            ended_at=now_ns if state == "resolved" else 0, sent_at=now_ns,
            repeat_ns=self.rule.repeat_ns, engine=engine,
        )


class RuleStates:
    def __init__(self, rule: AlertRule, kind: str, engine_host: str, pending_ns: int) -> None:
        self.rule = rule
        self.kind = kind
        self.engine = engine_host
        self.pending_ns = pending_ns
        self.alerts: dict[str, Alert] = {}
        self.storm: Alert | None = None

    def update(self, findings: list[Finding], now_ns: int) -> list[AlertMessage]:
        out: list[AlertMessage] = []
        found: set[str] = set()
        due: list[Alert] = []
        for finding in findings:
            alert = self._track(finding, now_ns)
            found.add(alert.fingerprint)
            if not alert.started_at:
                if now_ns - alert.active_since >= self.pending_ns:
                    due.append(alert)
            elif now_ns - alert.last_sent >= self.rule.repeat_ns:
                out.append(self._send(alert, "firing", now_ns))
        for key in [k for k in self.alerts if k not in found]:
            alert = self.alerts.pop(key)
            if alert.started_at:
                out.append(self._send(alert, "resolved", now_ns))
        out += self._fire(due, now_ns)
        return out

    def firing(self, now_ns: int) -> list[AlertMessage]:
        alerts = [a for a in self.alerts.values() if a.started_at]
        alerts += [self.storm] if self.storm else []
        return [msgspec.structs.replace(a.message("firing", now_ns, self.engine), sent_at=a.last_sent)
                for a in alerts]

    def firing_count(self) -> int:
        return sum(1 for a in self.alerts.values() if a.started_at) + (self.storm is not None)

    def _track(self, finding: Finding, now_ns: int) -> Alert:
        key = fingerprint(self.rule.name, finding.labels)
        alert = self.alerts.get(key)
        if alert is None:
            alert = self.alerts[key] = Alert(self.rule, self.kind, finding.labels, key, self.engine, 0, None, "", now_ns)
        alert.host = finding.host or self.engine
        alert.value, alert.threshold, alert.summary = finding.value, finding.threshold, finding.summary
        return alert

    def _fire(self, due: list[Alert], now_ns: int) -> list[AlertMessage]:
        if len(due) > self.rule.cap:
            return self._storm(due, now_ns)
        out = [self._send(alert, "firing", now_ns, start=True) for alert in due]
        if self.storm is not None:
            out.append(self._send(self.storm, "resolved", now_ns))
            self.storm = None
        return out

    def _storm(self, due: list[Alert], now_ns: int) -> list[AlertMessage]:
        """One summary alert instead of ``len(due)``; they stay pending."""
        examples = "; ".join(a.summary for a in due[:3])
        summary = f"{len(due)} alerts of rule {self.rule.name} at once (cap {self.rule.cap}), e.g. {examples}"
        hosts = {a.host for a in due}
        if self.storm is None:
            labels = {STORM_LABEL: "true"}
            self.storm = Alert(self.rule, self.kind, labels, fingerprint(self.rule.name, labels),
                               self.engine, 0, self.rule.cap, "", now_ns)
        storm = self.storm
        storm.value, storm.summary = len(due), summary
        storm.host = hosts.pop() if len(hosts) == 1 else self.engine
        if not storm.started_at:
            return [self._send(storm, "firing", now_ns, start=True)]
        if now_ns - storm.last_sent >= self.rule.repeat_ns:
            return [self._send(storm, "firing", now_ns)]
        return []

    def _send(self, alert: Alert, state: AlertState, now_ns: int, start: bool = False) -> AlertMessage:
        if start:
            alert.started_at = now_ns
        alert.last_sent = now_ns
        return alert.message(state, now_ns, self.engine)
