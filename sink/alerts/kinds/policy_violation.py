"""``policy_violation``: what the probe's policy denied (records whose ``verdict`` is ``deny``;
see docs/policy.md), per group, over a window.

    [[rule]]
    name = "segmentation"
    kind = "policy_violation"
    by = ["host", "container_name", "dst_ip", "dst_port"]
                                  # [default: host, ifname, proto, src_ip, dst_ip, dst_port]
    where = { direction = "egress" }   # more conditions; verdict = "deny" always
    metric = "packets"            # packets | bytes | connections [default: packets]
    window = "1m"                 # [default: 1m]
    above = 0                     # [default: 0: any denied packet]

In monitor mode the denied traffic passed, in protect mode it was dropped; either way the
records carry it, so the alert says the same. (The probe's violation events on
``connstats.v1.policy.<host>`` are the live, per-connection view of the same.)
"""
from __future__ import annotations

from dataclasses import replace

from ..rule_keys import METRICS, Option, field_list, number, one_of, positive_duration, where
from .threshold import Threshold

DENIED = (("verdict", frozenset({"deny"})),)
DEFAULT_BY = ("host", "ifname", "proto", "src_ip", "dst_ip", "dst_port")


class PolicyViolation(Threshold):
    name = "policy_violation"
    options = {
        "metric": Option(one_of(*METRICS), "packets"),
        "by": Option(field_list(), DEFAULT_BY),
        "where": Option(where, ()),
        "window": Option(positive_duration, 60 * 10**9),
        "above": Option(number, 0),
    }

    @classmethod
    def check(cls, values) -> None:
        pass  # above has a default; below makes no sense for violations

    def __init__(self, rule, context) -> None:
        """A threshold whose condition always includes ``verdict = "deny"``."""
        super().__init__(replace(rule, where=tuple(sorted((*rule.where, *DENIED)))), context)
