"""The one rule that reads a host (or a control verb) back out of a subject: strict, None for a
subject that does not fit (probe/contract/messaging.py)."""
from __future__ import annotations

import pytest

from connstats.probe.contract import (
    alerts_subject,
    control_subject,
    control_verb,
    events_subject,
    flows_subject,
    host_mismatch,
    host_of_subject,
    policy_subject,
)


@pytest.mark.parametrize("host", ["node-1", "web.example.com", "a*b>c", "50%", "ünï", "_2E", "%2E"])
def test_every_subject_with_a_host_gives_its_host_back(host):
    for subject in (flows_subject(host), events_subject(host), alerts_subject(host), policy_subject(host)):
        assert host_of_subject(subject) == host
    assert host_of_subject(flows_subject(host), "flows") == host
    assert host_of_subject(events_subject(host), "events") == host
    assert control_verb(control_subject(host, "policy_apply"), host) == "policy_apply"


@pytest.mark.parametrize("subject", [
    "connstats.v1.flows",  # no host token
    "connstats.v1.flows.",  # an empty one
    "connstats.v1.flows.a.b",  # a token too many (a host's dots are escaped: a%2Eb)
    "connstats.v1.flows.a*",  # a byte host_token escapes
    "connstats.v1.flows.50%",  # '%' alone: host_token writes %25
    "connstats.v1.flows.%2e",  # lower-case hex: host_token writes %2E
    "connstats.v1.flows.%FF",  # an escape that is not UTF-8
    "connstats.v1.flows.n%31",  # '1' escaped: host_token writes it as it is
    "connstats.v1.flows.ünï",  # not ASCII
    "connstats.v2.flows.a",  # another version
    "x.connstats.v1.flows.a",  # another prefix
    "connstats.v1.deadletter",  # a subject without a host
    "connstats.v1.ctl.a.list",  # a control subject: host and verb
    "connstats.v1.other.a",  # a kind without a host
])
def test_a_subject_that_does_not_fit_has_no_host(subject):
    assert host_of_subject(subject) is None
    assert host_of_subject(subject, "flows") is None


def test_a_kind_given_must_be_the_subjects():
    assert host_of_subject("connstats.v1.events.a", "flows") is None
    assert host_of_subject("connstats.v1.flows.a", "events") is None
    assert host_of_subject("connstats.v1.flows.a", "flows") == "a"


def test_a_control_verb_is_read_for_its_own_host_only():
    assert control_verb("connstats.v1.ctl.node-1.list", "node-1") == "list"
    assert control_verb("connstats.v1.ctl.node-2.list", "node-1") is None
    assert control_verb("connstats.v1.ctl.node-1.li%73t", "node-1") is None  # 's' escaped
    assert control_verb("connstats.v1.ctl.node-1", "node-1") is None
    assert control_verb("connstats.v1.ctl.node-1.list.now", "node-1") is None
    assert control_verb("connstats.v1.flows.node-1.list", "node-1") is None


def test_host_mismatch_says_why_in_one_line():
    assert host_mismatch("connstats.v1.flows.A", "A") == ""
    assert host_mismatch("connstats.v1.flows.A", "B") == (
        "host mismatch: the body says host 'B' but subject connstats.v1.flows.A is host 'A'; "
        "a probe publishes only its own host's flows")
    assert host_mismatch("connstats.v1.flows.a.b", "a") == (
        "subject connstats.v1.flows.a.b is not connstats.v1.flows.<host>; "
        "publish flows with connstats.probe.contract.flows_subject")
    assert host_mismatch("connstats.v1.events.A", "A") == host_mismatch("connstats.v1.events.A", "A", "flows") != ""
    assert host_mismatch("connstats.v1.events.A", "A", "events") == ""
