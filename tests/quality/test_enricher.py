"""QualityEnricher with in-memory tables: what it watches for each attached device, that it
joins only the copy flipped out at a poll, and what a batch gets from it."""
from __future__ import annotations

import logging
import sys
import types

import numpy as np

from connstats.probe.contract.errors import KernelError
from connstats.probe.contract.flow_batch import FlowBatch
from connstats.probe.contract.record import DropCount, Envelope
from connstats.probe.kernel.devices import AttachedDevice, LinkInfo
from connstats.probe.kernel.loader import FLOW_COUNTERS
from connstats.probe.quality.enricher import QualityEnricher, start_quality
from tests.fixtures.quality import FakeResolver, FakeTables, flow_keys, quality_snapshot

HOST, POD = 4026531840, 4026532174
NSID = 3


def device(ifindex: int, name: str, nsid: int | None = None, peer_ifindex: int | None = None) -> AttachedDevice:
    kind = "veth" if nsid is not None else ""
    return AttachedDevice(LinkInfo(ifindex, name, kind, True, peer_nsid=nsid, peer_ifindex=peer_ifindex), "auto",
                          nsid is not None, 1)


def enricher(tables: FakeTables) -> QualityEnricher:
    return QualityEnricher(tables, FakeResolver({NSID: POD}), host_netns=HOST)


def batch_of(keys: np.ndarray) -> FlowBatch:
    values = np.zeros(len(keys), FLOW_COUNTERS)
    values["packets"] = 1
    return FlowBatch.from_arrays(Envelope("h", "b", 1, 0, 10), keys, values, mono_to_wall_ns=0,
                                 ifnames={12: "veth-pod", 2: "eth0"})


def test_each_namespace_and_device_end_is_watched_while_some_attached_device_needs_it():
    tables = FakeTables()
    quality = enricher(tables)
    quality.attached(device(2, "eth0"))
    quality.attached(device(12, "veth-pod", NSID, 2))
    quality.attached(device(13, "veth-pod2", NSID, 3))  # a second veth into the same pod
    assert tables.watching() == [
        ("watch_netns", HOST), ("watch_device", HOST, 2),
        ("watch_netns", POD), ("watch_device", HOST, 12), ("watch_device", POD, 2), ("watch_device", POD, 0),
        ("watch_device", HOST, 13), ("watch_device", POD, 3)]
    tables.calls.clear()
    quality.forget(12)
    assert tables.watching() == [("forget_device", HOST, 12), ("forget_device", POD, 2)]
    tables.calls.clear()
    quality.forget(13)
    quality.forget(13)  # twice: nothing more
    assert tables.watching() == [("forget_device", HOST, 13), ("forget_device", POD, 3), ("forget_device", POD, 0),
                                 ("forget_netns", POD)]
    tables.calls.clear()
    quality.attached(device(2, "eth0"))  # attached again (replaced in place): nothing to do
    assert tables.watching() == []
    quality.attached(device(12, "veth-pod", NSID, 2))
    tables.calls.clear()
    quality.attached(device(12, "veth-pod", None))  # attached again, its other end gone: only its own end
    assert tables.watching() == [("forget_device", HOST, 12), ("forget_device", POD, 2), ("forget_device", POD, 0),
                                 ("forget_netns", POD), ("watch_device", HOST, 12)]
    quality.close()
    assert tables.closed


def test_only_the_copy_flipped_out_at_a_poll_is_joined_and_its_columns_filled():
    keys = flow_keys((12, "egress", 6, "10.0.0.2", 40000, "10.0.1.2", 80), (2, "egress", 6, "192.0.2.1", 5000,
                                                                             "192.0.2.7", 443))
    snapshot = quality_snapshot(
        sockets=[(POD, "10.0.0.2", 40000, "10.0.1.2", 80, (100, 300, 400, 2, 1))],
        drops=[(POD, 2, 12, 6, "10.0.0.2", 40000, "10.0.1.2", 80, 2, 120), (POD, 0, 2, 17, "10.0.1.2", 53, "10.0.0.2",
                                                                            5353, 1, 80)])
    tables = FakeTables([snapshot])
    quality = enricher(tables)
    quality.attached(device(2, "eth0"))
    quality.attached(device(12, "veth-pod", NSID, 2))
    tables.calls.clear()
    batch = batch_of(keys)
    assert quality.enrich(batch, keys) is batch  # a live view: no flip, nothing collected
    quality.flip()
    enriched = quality.enrich(batch, keys)
    assert tables.calls == [("flip",), ("collect",)]
    assert [(r.rtt_min_us, r.rtt_avg_us, r.rtt_max_us, r.retransmits, r.drop_packets, r.drop_bytes, r.drop_reason)
            for r in enriched.records()] == [(100, 200, 300, 1, 2, 120, "NETFILTER_DROP"), (0, 0, 0, 0, 0, 0, "")]
    assert enriched.envelope.drops == (DropCount(12, "veth-pod", "NO_SOCKET", 1, 80),)
    assert quality.enrich(batch, keys) is batch  # collected once per flip


def test_a_flip_never_joined_is_collected_before_the_next_flip_and_counted():
    tables = FakeTables([quality_snapshot(), quality_snapshot()])
    quality = enricher(tables)
    quality.flip()
    quality.flip()  # the poll between failed before its join
    assert tables.calls == [("flip",), ("collect",), ("flip",)]
    assert quality.lost_snapshots == 1


def test_socket_stats_without_a_record_twice_are_counted_as_expired():
    keys = flow_keys()
    tables = FakeTables([quality_snapshot(sockets=[(POD, "10.0.0.2", 40000, "10.0.1.2", 80, (1, 1, 1, 1, 0))])])
    quality = enricher(tables)
    quality.attached(device(12, "veth-pod", NSID, 2))
    for _ in range(2):
        quality.flip()
        quality.enrich(batch_of(keys), keys)
    assert quality.expired_sockets == 1


def test_a_kernel_without_the_tracepoints_is_one_line_and_no_quality(monkeypatch, caplog):
    class QualityTracepoints:
        @classmethod
        def start(cls):
            raise KernelError("this kernel has no skb:kfree_skb tracepoint")

    module = types.ModuleType("connstats.probe.quality.quality")
    module.QualityTracepoints = QualityTracepoints  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "connstats.probe.quality.quality", module)
    with caplog.at_level(logging.WARNING, logger="connstats.probe.quality"):
        assert start_quality() is None
    assert [r.getMessage() for r in caplog.records] == [
        "quality not measured: this kernel has no skb:kfree_skb tracepoint"]


def test_on_this_kernel_the_enrichers_tables_are_the_tracepoints():
    from connstats.probe.quality.quality import QualityTracepoints

    quality = start_quality()
    assert quality is not None
    try:
        assert isinstance(quality.tables, QualityTracepoints)
    finally:
        quality.close()
