"""Microsegmentation: a policy file of groups and allow rules, judged per connection in the
classifier (see README "Policy: microsegmentation").

    the file     TOML -> Policy, errors naming line and key: connstats.probe.contract.policy_file
    resolve.py   groups -> governed devices and address prefixes (Resolved)
    tables.py    Resolved -> the kernel's policy maps; the one-word atomic switch
    service.py   the probe service: apply/show/off verbs, kept in the state directory,
                 re-resolved as devices come and go, violation events
"""
from ..contract.policy_file import Policy, parse_policy
from .resolve import Endpoint, Resolved, resolve

__all__ = ["Endpoint", "Policy", "Resolved", "parse_policy", "resolve"]
