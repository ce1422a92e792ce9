"""End to end: the policy's verdict and drop counters in the self-metrics of a real
``connstats up`` (real BPF on test veths, the embedded NATS, real SQLite), a policy applied
in protect mode with ``connstats policy apply``, then in monitor mode, then removed.

Oracle: the namespace-side veth counters. On the host-side veth of a namespace, what the
namespace sends is ``egress`` and what it gets ``ingress``; a packet dropped in protect mode
left the sender's veth (its tx counter) and never reached the receiver's (its rx counter).
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.fixtures.cli import NO_HTTP_CLASH, UDP_V4_OVERHEAD, connstats
from tests.fixtures.metrics import samples
from tests.fixtures.nats import free_port
from tests.fixtures.policy import Violations, policy_text
from tests.fixtures.wait import steady, until

pytestmark = pytest.mark.kernel

SIZE = 100
ALLOWED, DENIED = 5500, 5501  # policy_text allows udp from a to b on 5500 only
SENT_ALLOWED, SENT_DENIED = 400, 600
PER_PACKET = UDP_V4_OVERHEAD + SIZE


def deltas(hosts, before: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(host_if, direction) -> (packets, bytes) that crossed each host-side veth since ``before``,
    read once they stay still (b's ICMP answers to the test's datagrams are out by then)."""
    out = {}
    counters = steady(lambda: {host.host_if: host.counters() for host in hosts}, what="quiet veths")
    for host in hosts:
        now, then = counters[host.host_if], before[host.host_if]
        out[host.host_if, "egress"] = (now["tx_packets"] - then["tx_packets"], now["tx_bytes"] - then["tx_bytes"])
        out[host.host_if, "ingress"] = (now["rx_packets"] - then["rx_packets"], now["rx_bytes"] - then["rx_bytes"])
    return out


def policy_metric(got: dict, name: str, iface: str, direction: str, verdict: str | None = None) -> tuple[int, int]:
    labels = (("direction", direction), ("iface", iface), *((("verdict", verdict),) if verdict else ()))
    return (int(got.get((f"connstats_policy_{name}packets_total", labels), 0)),
            int(got.get((f"connstats_policy_{name}bytes_total", labels), 0)))


def stored_verdicts(path: Path) -> dict[tuple[str, str, str], tuple[int, int]]:
    with sqlite3.connect(path) as db:
        return {(i, d, v): (p, b) for i, d, v, p, b in db.execute(
            "SELECT ifname, direction, verdict, SUM(packets), SUM(bytes) FROM flows WHERE verdict != '' "
            "GROUP BY 1, 2, 3")}


def test_protect_mode_verdict_and_drop_counters_equal_the_store_and_the_veths(quiet_network, cs_env, start,
                                                                              tmp_path):
    a, b = quiet_network
    metrics = f"127.0.0.1:{free_port()}"
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", *NO_HTTP_CLASH,
               "--metrics", metrics)
    up.wait_for("connstats up: watching")
    endpoint = f"http://{metrics}"
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(a, b))
    off = samples(endpoint)
    assert [off[f"connstats_policy_{n}", ()] for n in ("mode", "rules", "groups", "governed_devices")] == [0] * 4

    before = {h.host_if: h.counters() for h in (a, b)}  # quiet: nothing crosses until the traffic below
    applied = connstats(cs_env, "policy", "apply", str(path), "--mode", "protect")
    assert applied.returncode == 0, applied.stderr

    def traffic():
        a.traffic("udp", b.ipv4, ALLOWED, 42000, SENT_ALLOWED, SIZE)  # b answers ICMP port unreachable (allowed)
        a.traffic("udp-paced", b.ipv4, DENIED, 42001, SENT_DENIED, SIZE, 1.5)  # over several intervals

    events = asyncio.run(Violations(state).collect(traffic, settle=2.0))  # the last interval's events are out
    kernel = deltas((a, b), before)
    denied = (SENT_DENIED, SENT_DENIED * PER_PACKET)
    assert kernel[b.host_if, "ingress"] == (SENT_ALLOWED, SENT_ALLOWED * PER_PACKET)  # nothing denied arrived
    assert kernel[a.host_if, "egress"] == (SENT_ALLOWED + SENT_DENIED, (SENT_ALLOWED + SENT_DENIED) * PER_PACKET)
    # every packet after the apply is judged: allowed is what crossed the veth, less the denied
    allowed = dict(kernel)
    allowed[a.host_if, "egress"] = (kernel[a.host_if, "egress"][0] - denied[0], kernel[a.host_if, "egress"][1] - denied[1])
    database = state / "flows.sqlite"

    def settled():
        got = samples(endpoint)
        done = (all(policy_metric(got, "", *key, "allow") == counts for key, counts in allowed.items())
                and policy_metric(got, "", a.host_if, "egress", "deny") == denied
                and got[("connstats_outbox_messages", ())] == 0
                and got[("connstats_sink_messages_total", ())] == got[("connstats_published_messages_total", ())])
        return got if done else None

    got = until(settled, 30, "verdict counters equal to the veths', published and stored")
    for key, counts in allowed.items():
        assert policy_metric(got, "", *key, "allow") == counts, key
        if key != (a.host_if, "egress"):
            assert policy_metric(got, "", *key, "deny") == (0, 0), key
            assert policy_metric(got, "dropped_", *key) == (0, 0), key
    assert policy_metric(got, "", a.host_if, "egress", "deny") == denied  # exactly the packets sent to 5501
    assert policy_metric(got, "dropped_", a.host_if, "egress") == denied  # ... all of them dropped
    expected_store = {(*key, verdict): counts for key in allowed
                      for verdict, counts in (("allow", allowed[key]), ("deny", denied if key == (a.host_if, "egress")
                                                                          else (0, 0)))
                      if counts != (0, 0)}
    assert stored_verdicts(database) == expected_store  # the store's verdict totals are the counters'
    assert [got[f"connstats_policy_{n}", ()] for n in ("mode", "rules", "groups", "governed_devices")] == [2, 1, 2, 2]
    assert got[("connstats_policy_apply_failures_total", ())] == 0
    # one event per denied connection per device and interval, each one counted when published
    mine = [e for e in events if e.dst_port == DENIED]
    assert len(mine) == len(events) and sum(e.packets for e in mine) == SENT_DENIED
    assert got[("connstats_policy_violation_events_total", ())] == len(events)
    assert got[("connstats_policy_violation_events_failed_total", ())] == 0

    # monitor: denied traffic passes; counted as deny on both veths, the dropped counters stay
    monitored = connstats(cs_env, "policy", "apply", str(path), "--mode", "monitor")
    assert monitored.returncode == 0, monitored.stderr
    before = {h.host_if: h.counters() for h in (a, b)}
    a.traffic("udp", b.ipv4, DENIED + 1, 42002, SENT_ALLOWED, SIZE)  # b answers ICMP port unreachable
    passed = deltas((a, b), before)
    assert passed[b.host_if, "ingress"] == passed[a.host_if, "egress"] == (SENT_ALLOWED, SENT_ALLOWED * PER_PACKET)
    deny_now = {(a.host_if, "egress"): (SENT_DENIED + SENT_ALLOWED, (SENT_DENIED + SENT_ALLOWED) * PER_PACKET),
                (b.host_if, "ingress"): (SENT_ALLOWED, SENT_ALLOWED * PER_PACKET)}
    allow_now = {key: (allowed[key][0] + passed[key][0], allowed[key][1] + passed[key][1]) for key in allowed}
    for key in deny_now:  # the requests are denied, the ICMP answers allowed
        allow_now[key] = allowed[key]

    def monitored_settled():
        got = samples(endpoint)
        return got if (all(policy_metric(got, "", *k, "deny") == v for k, v in deny_now.items())
                       and all(policy_metric(got, "", *k, "allow") == v for k, v in allow_now.items())
                       and got[("connstats_policy_mode", ())] == 1) else None

    got = until(monitored_settled, 30, "the monitored traffic counted")
    assert policy_metric(got, "dropped_", a.host_if, "egress") == denied  # unchanged
    assert policy_metric(got, "dropped_", b.host_if, "ingress") == (0, 0)
    assert connstats(cs_env, "policy", "off").returncode == 0
    got = samples(endpoint)
    assert [got[f"connstats_policy_{n}", ()] for n in ("mode", "rules", "groups", "governed_devices")] == [0] * 4
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr
