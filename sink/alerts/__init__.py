"""connstats alerts: rules evaluated on the live flow stream, alerts on NATS and webhooks.

    rule_keys.py  what a rule is (``AlertRule``) and how its keys are read (common and each kind's)
    rules.py      the rules file (TOML): ``load_rules``, ``RuleError``
    kinds/        one module per rule kind, registered in ``kinds.KINDS``
    table.py      one interval's columns: codes, masks, group keys (vectorised)
    groups.py     group-bys over packed integer keys
    windows.py    per-interval partial sums over a time window
    states.py     pending / firing / resolved, fingerprints, re-sends, the storm cap
    engine.py     ``AlertEngine``: kinds + states, per interval and per tick
    baseline.py   the persisted baselines (new_peer, new_port, silent_host)
    notify.py     the bounded, retrying notification queue; NATS and webhook targets
    service.py    the running engine: consumer, timer, publisher, request/reply
    query.py      ``firing_alerts(nc)``: the alerts firing now, for the CLI and the web page
    compose.py    ``build_alerts``: the composition root
"""
from __future__ import annotations

from .engine import AlertEngine
from .kinds import KINDS
from .query import firing_alerts
from .rule_keys import AlertRule
from .rules import RuleError, load_rules

__all__ = ["KINDS", "AlertEngine", "AlertRule", "RuleError", "firing_alerts", "load_rules"]
