"""What every rule kind is: a class with its rule keys, ``observe`` and ``evaluate``.

A kind sees each interval of each host once (``observe``, with the interval's ``Table``) and
says which groups are in alert now (``evaluate``, a list of ``Finding``). Everything about
alert states (``for``, firing, resolved, re-sends, the cap) is the engine's, not the kind's.
A kind that keeps a baseline across restarts returns it from ``baseline()`` (JSON-able) and
gets it back in ``Context.saved``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..rule_keys import AlertRule, Invalid, Option
from ..table import Table, Vocabulary, label_text


@dataclass(frozen=True)
class Finding:
    """One group in alert: its labels (without alertname and severity), its value, the host
    whose data raised it (None: several, or the engine's own rule), a one-line summary."""

    labels: dict[str, str]
    value: float
    host: str | None = None
    threshold: float | None = None
    summary: str = ""


@dataclass
class Context:
    vocabulary: Vocabulary
    engine_host: str
    saved: Any = None  # this rule's persisted baseline, if any
    extra: dict = field(default_factory=dict)


class Kind:
    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    changed = False  # the baseline changed since ``baseline()`` was last called

    def __init__(self, rule: AlertRule, context: Context) -> None:
        self.rule = rule
        self.vocabulary = context.vocabulary
        self.context = context

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        """Checks across keys; raise ``Invalid("key: problem; fix")``."""

    def pending_ns(self) -> int:
        """How long a group must be in alert before it fires (the rule's ``for``)."""
        return self.rule.for_ns

    def observe(self, table: Table) -> None:
        """Take in one interval of one host."""

    def evaluate(self, now_ns: int) -> list[Finding]:
        raise NotImplementedError

    def baseline(self) -> Any:
        """What to persist across restarts (None: nothing)."""
        return None

    # -- shared by the kinds ------------------------------------------------------------------

    def host_id(self, host: str) -> int:
        return int(self.vocabulary.ids("host", [host])[0])

    def labels(self, fields: tuple[str, ...], row: np.ndarray) -> dict[str, str]:
        return {f: label_text(f, self.vocabulary.value(f, int(i))) for f, i in zip(fields, row.tolist(), strict=True)}

    def sender(self, host_id: int) -> str | None:
        return None if host_id < 0 else self.vocabulary.value("host", host_id)


def above_or_below(values: dict[str, Any]) -> None:
    if (values.get("above") is None) == (values.get("below") is None):
        raise Invalid("above: give exactly one of above and below")
