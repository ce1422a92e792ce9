"""The rule kinds, one module each, registered in ``KINDS`` (``kind = "..."`` in a rule).

Adding a kind is one module: a ``Kind`` subclass (``kinds/base.py``) with its ``name``,
its ``options`` (the rule keys it takes, see ``rule_keys.Option``), ``observe`` (one interval's
``Table``: columns, masks, group keys) and ``evaluate`` (the groups in alert now), plus
one line here. Any record field is a column by name (``table.ids``, ``table.mask``), so a
field added to the record later needs no change to the engine: ``policy_violation`` (the
records the policy denied) is a threshold with a fixed ``verdict = "deny"`` condition.
"""
from __future__ import annotations

from .base import Context, Finding, Kind
from .drops import Drops
from .new_peer import NewPeer
from .new_port import NewPort
from .overflow import Overflow
from .policy_violation import PolicyViolation
from .retransmit_ratio import RetransmitRatio
from .rtt import Rtt
from .silent_host import SilentHost
from .spike import Spike
from .threshold import Threshold

KINDS: dict[str, type[Kind]] = {
    kind.name: kind for kind in (Threshold, NewPeer, NewPort, Spike, Overflow, SilentHost, PolicyViolation, Rtt,
                                 RetransmitRatio, Drops)
}

__all__ = ["KINDS", "Context", "Finding", "Kind"]
