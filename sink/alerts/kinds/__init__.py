"""The rule kinds, one module each, registered in ``KINDS`` (``kind = "..."`` in a rule).

Adding a kind is one module: a ``Kind`` subclass (``kinds/base.py``) with its ``name``,
its ``options`` (the rule keys it takes, see ``rules.Option``), ``observe`` (one interval's
``Table``: columns, masks, group keys) and ``evaluate`` (the groups in alert now), plus
one line here. Any record field is a column by name (``table.ids``, ``table.mask``), so a
field added to the record later needs no change to the engine. For example, a kind for the
records the policy denied (once the record has a ``verdict`` field) is a threshold with a
fixed condition::

    class PolicyViolation(Threshold):
        name = "policy_violation"
        options = {"metric": Option(one_of(*METRICS), "connections"), "by": Option(field_list(), ()),
                   "where": Option(where, ()), "window": Option(duration, 60 * 10**9),
                   "above": Option(number, 0)}
        DENIED = (("verdict", frozenset({"deny"})),)

        @classmethod
        def check(cls, values): pass

        def grouped(self, table):
            keys, radix = table.group_keys(self.rule.by)
            values = table.metric(self.rule.option("metric"))
            mask = table.mask(tuple(sorted(self.rule.where + self.DENIED)))
            return key_sums(keys[mask], values[mask], radix)
"""
from __future__ import annotations

from .base import Context, Finding, Kind
from .new_peer import NewPeer
from .new_port import NewPort
from .overflow import Overflow
from .silent_host import SilentHost
from .spike import Spike
from .threshold import Threshold

KINDS: dict[str, type[Kind]] = {
    kind.name: kind for kind in (Threshold, NewPeer, NewPort, Spike, Overflow, SilentHost)
}

__all__ = ["KINDS", "Context", "Finding", "Kind"]
