"""``silent_host``: a host that was publishing has published nothing for ``for``.

    [[rule]]
    name = "host-silent"
    kind = "silent_host"
    for = "1m"                    # the silence that raises it (required)
    hosts = ["node-1", "node-2"]  # only these hosts [default: every host seen]

Every interval counts, an empty one too (a probe publishes one per interval even without
traffic). The engine evaluates it on a timer, so it fires while nothing arrives at all. The
hosts and when each was last heard of are persisted: a host that stopped while the engine
was down is still noticed, one ``for`` after the engine started.
"""
from __future__ import annotations

from typing import Any

from ..rule_keys import Invalid, Option
from ..table import Table
from .base import Finding, Kind


def host_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid(f"{value!r} is not a list of host names; write e.g. [\"node-1\"]")
    return tuple(value)


class SilentHost(Kind):
    name = "silent_host"
    options = {"hosts": Option(host_list, ())}

    @classmethod
    def check(cls, values) -> None:
        if not values.get("for"):
            raise Invalid("for: missing or 0; say how long a silence raises it, e.g. \"1m\"")

    def __init__(self, rule, context) -> None:
        super().__init__(rule, context)
        self.only = set(rule.option("hosts"))
        saved = context.saved if isinstance(context.saved, dict) else {}
        # a host known from before a restart gets one full ``for`` from the engine's start
        start = int(context.extra.get("start_ns", 0))
        self.last_ns: dict[str, int] = {h: max(t, start) for h, t in saved.items()
                                         if isinstance(h, str) and isinstance(t, int)}

    def pending_ns(self) -> int:
        return 0  # ``for`` is the silence itself

    def observe(self, table: Table) -> None:
        if self.only and table.host not in self.only:
            return
        if table.end_ns > self.last_ns.get(table.host, 0):
            self.last_ns[table.host] = table.end_ns
            self.changed = True

    def evaluate(self, now_ns: int) -> list[Finding]:
        silence = self.rule.for_ns
        return [Finding({"host": host}, round((now_ns - last) / 1e9, 3), host, silence / 1e9,
                        f"host {host} published nothing for {(now_ns - last) / 1e9:.0f}s")
                for host, last in sorted(self.last_ns.items()) if now_ns - last >= silence]

    def baseline(self) -> Any:
        self.changed = False
        return dict(self.last_ns)
