"""ConnectionTotals: counters since attach, eviction, forgetting a device, live views (pure)."""
from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest

from connstats.probe.api.totals import SINCE_SLACK_NS, ConnectionTotals, connection_key, current_view, forget_device
from connstats.probe.contract.record import Envelope, FlowRecord
from connstats.probe.contract.wire import FlowBatch
from tests.fixtures.records import flow_record

SECOND = 1_000_000_000
T0 = 2_000_000_000 * SECOND  # in the future, after any real clock reading of a test


def envelope(seq: int) -> Envelope:
    """Interval ``seq`` covers [T0 + seq s, T0 + (seq + 1) s)."""
    return Envelope(host="n1", boot_id="b", interval_seq=seq, interval_start=T0 + seq * SECOND,
                    interval_end=T0 + (seq + 1) * SECOND)


def rec(seq: int, packets: int, *, ifindex: int = 7, direction: str = "egress", proto: int = 17,
        sport: int = 40001, dport: int = 5353, first: int = 100, last: int = 900,
        live: int = 0, container: str = "", **who) -> FlowRecord:
    """A record of interval ``seq``; ``first``/``last`` are ms into it; 100 bytes a packet.

    ``live`` is the ms into the interval of a live read (0: the published interval); ``who``:
    pod, workload, runtime, process, pid, peer_process, peer_pid.
    """
    start = T0 + seq * SECOND
    end = start + (live * 1_000_000 if live else SECOND)
    return flow_record(interval_start=start, interval_end=end, ifindex=ifindex, ifname=f"veth{ifindex}",
                       direction=direction, family=4, proto=proto, src_ip="10.0.0.1", dst_ip="10.0.0.2",
                       src_port=sport, dst_port=dport, packets=packets, bytes=packets * 100,
                       first_seen=start + first * 1_000_000, last_seen=start + last * 1_000_000, tcp_flags=0,
                       container_name=container, **who)


def batch(envelope: Envelope, records: list[FlowRecord]) -> FlowBatch:
    return FlowBatch.from_records(envelope, records)


def live_batch(records: list[FlowRecord]) -> FlowBatch | None:
    """A live read as the daemon returns it: one batch of the current interval."""
    if not records:
        return None
    first = records[0]
    return FlowBatch.from_records(Envelope("n1", "b", 0, first.interval_start, first.interval_end), records)


def counts(view) -> dict:
    return {(t.ifindex, t.direction, t.src_port): (t.packets, t.bytes) for t in view}


def test_intervals_add_up_per_connection_with_first_and_last_seen():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3, first=200, last=300), rec(0, 5, direction="ingress")]))
    totals(batch(envelope(1), [rec(1, 4, first=10, last=20)]))
    totals(batch(envelope(2), []))
    totals(batch(envelope(3), [rec(3, 1, sport=40002), rec(3, 2, ifindex=8)]))

    view = totals.view()
    assert counts(view) == {(7, "egress", 40001): (7, 700), (7, "ingress", 40001): (5, 500),
                            (7, "egress", 40002): (1, 100), (8, "egress", 40001): (2, 200)}
    first = view[0]
    assert (first.id, first.first_seen, first.last_seen) == (1, T0 + 200_000_000, T0 + SECOND + 20_000_000)
    assert [t.id for t in view] == [1, 2, 3, 4]
    assert (first.ifname, first.family, first.proto, first.src_ip, first.dst_ip, first.dst_port) == (
        "veth7", 4, 17, "10.0.0.1", "10.0.0.2", 5353)
    assert (len(totals), totals.intervals, totals.ingested_until) == (4, 4, T0 + 4 * SECOND)


def test_the_key_is_device_direction_protocol_addresses_and_ports():
    r = rec(0, 1)
    assert connection_key(r) == (7, "egress", 17, "10.0.0.1", "10.0.0.2", 40001, 5353)


def test_beyond_the_cap_the_least_recently_seen_are_evicted_and_counted():
    totals = ConnectionTotals(max_entries=3)
    totals(batch(envelope(0), [rec(0, 1, sport=p, last=900 - p) for p in range(1, 6)]))  # port 1 newest
    assert sorted(t.src_port for t in totals.view()) == [1, 2, 3]
    assert (len(totals), totals.evicted) == (3, 2)
    totals(batch(envelope(1), [rec(1, 1, sport=9, last=1)]))  # newer than every entry from interval 0
    assert sorted(t.src_port for t in totals.view()) == [1, 2, 9]
    assert totals.evicted == 3
    with pytest.raises(ValueError):
        ConnectionTotals(max_entries=0)


def test_view_adds_the_live_interval_and_keeps_the_id_it_is_published_with():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    # A device's labels are the same for all its records of one read (they are per device).
    live = [rec(1, 2, live=950, last=400, container="web"), rec(1, 6, sport=40009, live=950, container="web")]

    view = totals.view(live_batch(live))
    assert counts(view) == {(7, "egress", 40001): (5, 500), (7, "egress", 40009): (6, 600)}
    assert [(t.id, t.last_seen, t.container_name) for t in view] == [
        (1, T0 + SECOND + 400_000_000, "web"), (2, T0 + SECOND + 900_000_000, "web")]
    assert counts(totals.view()) == {(7, "egress", 40001): (3, 300)}  # a view changes nothing

    totals(batch(envelope(1), [rec(1, 2), rec(1, 6, sport=40009)]))
    assert [(t.id, t.src_port, t.packets) for t in totals.view()] == [(1, 40001, 5), (2, 40009, 6)]


def test_view_filters_devices_and_connections_older_than_the_attachment():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 1), rec(0, 2, ifindex=8), rec(0, 4, ifindex=9)]))
    assert counts(totals.view(ifindexes={8, 9})) == {(8, "egress", 40001): (2, 200), (9, "egress", 40001): (4, 400)}
    since = {7: T0 + 2 * SECOND, 8: T0}  # 7 was attached again after its last packet
    assert counts(totals.view(ifindexes={7, 8}, since_ns=since)) == {(8, "egress", 40001): (2, 200)}
    within_slack = {7: T0 + 900_000_000 + SINCE_SLACK_NS}
    assert counts(totals.view(ifindexes={7}, since_ns=within_slack)) == {(7, "egress", 40001): (1, 100)}


def test_forget_drops_a_device_and_its_residue_but_counts_a_new_attachment():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 10), rec(0, 1, ifindex=8)]))
    # Detached during interval 1, when the kernel held 4 packets of it; read at T0 + 1.5 s.
    residue = [rec(1, 4, live=500), rec(1, 9, ifindex=8, live=500)]
    assert totals.forget(7, live_batch(residue), until_ns=T0 + 1_500_000_000) == 1
    assert counts(totals.view()) == {(8, "egress", 40001): (1, 100)}
    # Attached again in interval 1: 6 more packets on the old connection, 2 on a new one.
    live = [rec(1, 10, live=950), rec(1, 2, sport=40002, live=950), rec(1, 9, ifindex=8, live=950)]
    assert counts(totals.view(live_batch(live))) == {(7, "egress", 40001): (6, 600), (7, "egress", 40002): (2, 200),
                                         (8, "egress", 40001): (10, 1000)}
    totals(batch(envelope(1), [rec(1, 10), rec(1, 2, sport=40002), rec(1, 9, ifindex=8)]))
    totals(batch(envelope(2), [rec(2, 3)]))
    assert counts(totals.view()) == {(7, "egress", 40001): (9, 900), (7, "egress", 40002): (2, 200),
                                     (8, "egress", 40001): (10, 1000)}


def test_forget_drops_intervals_that_ended_before_the_live_read():
    totals = ConnectionTotals()
    # Interval 0 was polled but not yet added when the device was detached and read.
    totals.forget(7, live_batch([rec(1, 2, live=200)]), until_ns=T0 + 1_200_000_000)
    totals(batch(envelope(0), [rec(0, 5), rec(0, 1, ifindex=8)]))  # ended before the read: dropped
    totals(batch(envelope(1), [rec(1, 2)]))  # the residue and nothing else
    totals(batch(envelope(2), [rec(2, 1)]))
    assert counts(totals.view()) == {(7, "egress", 40001): (1, 100), (8, "egress", 40001): (1, 100)}


def test_forget_with_an_empty_live_read_drops_only_what_ended_before_it():
    totals = ConnectionTotals()
    totals.forget(7, live_batch([]), until_ns=T0 + 1_200_000_000)
    totals(batch(envelope(0), [rec(0, 5)]))
    totals(batch(envelope(1), [rec(1, 3)]))  # ended after the read: the new attachment's packets
    assert counts(totals.view()) == {(7, "egress", 40001): (3, 300)}


class FakeLive:
    """``daemon.live_records`` that returns a scripted sequence of reads."""

    def __init__(self, *reads) -> None:
        self.reads = list(reads)
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        return live_batch(self.reads.pop(0) if len(self.reads) > 1 else self.reads[0])


async def test_current_view_reads_again_when_the_live_interval_was_already_added():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    totals(batch(envelope(1), [rec(1, 2)]))
    stale = [rec(1, 2, live=950)]  # read before the poll that published interval 1
    fresh = [rec(2, 1, live=950)]
    live = FakeLive(stale, fresh)
    assert counts(await current_view(totals, live)) == {(7, "egress", 40001): (6, 600)}
    assert live.calls == 2


async def test_current_view_waits_for_an_interval_the_listener_has_not_seen():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    live = FakeLive([rec(2, 1, live=950)])  # interval 1 polled but not yet added

    async def add_interval_1():
        await asyncio.sleep(0.03)
        totals(batch(envelope(1), [rec(1, 2)]))

    task = asyncio.create_task(add_interval_1())
    assert counts(await current_view(totals, live)) == {(7, "egress", 40001): (6, 600)}
    await task
    assert live.calls > 1


async def test_current_view_waits_for_an_interval_as_long_as_its_publishing_takes():
    """Publishing a polled interval took longer than 0.2 s on a loaded host: the view then
    served the totals alone, without that interval's packets."""
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    live = FakeLive([rec(2, 1, live=950)])

    async def add_interval_1():
        await asyncio.sleep(0.6)
        totals(batch(envelope(1), [rec(1, 2)]))

    task = asyncio.create_task(add_interval_1())
    assert counts(await current_view(totals, live)) == {(7, "egress", 40001): (6, 600)}
    await task


async def test_current_view_serves_the_totals_alone_when_the_live_read_never_fits():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    live = FakeLive([rec(5, 1, live=950)])
    assert counts(await current_view(totals, live, deadline=0.1)) == {(7, "egress", 40001): (3, 300)}


async def test_forget_device_reads_the_live_interval_after_the_detach():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3)]))
    await forget_device(totals, FakeLive([rec(1, 2, live=950)]), 7)
    totals(batch(envelope(1), [rec(1, 2)]))
    totals(batch(envelope(2), [rec(2, 5)]))
    assert counts(totals.view()) == {(7, "egress", 40001): (5, 500)}


# -- overflow: packets that found the flow map full ---------------------------------------------


def with_overflow(seq: int, *counts: tuple[int, str, int]) -> Envelope:
    """Interval ``seq`` reporting (ifindex, direction, packets) of overflow, 100 bytes a packet."""
    from dataclasses import replace

    from connstats.probe.contract.record import OverflowCount

    return replace(envelope(seq), overflow=tuple(
        OverflowCount(ifindex, f"veth{ifindex}" if ifindex else "", direction, packets, packets * 100)
        for ifindex, direction, packets in counts))


def overflow_counts(totals, ifindexes=None) -> dict:
    return {(o.ifindex, o.direction): (o.packets, o.bytes, o.last_interval_end)
            for o in totals.overflow_view(ifindexes)}


def test_overflow_adds_up_per_device_and_direction():
    totals = ConnectionTotals()
    totals(batch(with_overflow(0, (7, "egress", 3), (7, "ingress", 1), (0, "egress", 2)), [rec(0, 5)]))
    totals(batch(with_overflow(1, (7, "egress", 4), (8, "egress", 9)), [rec(1, 2, ifindex=8)]))
    totals(batch(envelope(2), [rec(2, 1)]))
    assert overflow_counts(totals) == {
        (0, "egress"): (2, 200, T0 + SECOND), (7, "egress"): (7, 700, T0 + 2 * SECOND),
        (7, "ingress"): (1, 100, T0 + SECOND), (8, "egress"): (9, 900, T0 + 2 * SECOND)}
    assert overflow_counts(totals, {8}) == {(8, "egress"): (9, 900, T0 + 2 * SECOND)}
    # a device's connections plus its overflow: every packet it saw, exactly
    for ifindex, packets in ((7, 6 + 7 + 1), (8, 2 + 9)):
        connections = sum(t.packets for t in totals.view(None, {ifindex}))
        overflowed = sum(o.packets for o in totals.overflow_view({ifindex}))
        assert connections + overflowed == packets
    # the view hands out copies
    totals.overflow_view()[0].packets = 10**9
    assert overflow_counts(totals, {0}) == {(0, "egress"): (2, 200, T0 + SECOND)}


def test_forget_drops_a_device_s_overflow_and_its_intervals_before_the_detach():
    totals = ConnectionTotals()
    totals(batch(with_overflow(0, (7, "egress", 3), (8, "egress", 1)), []))
    totals.forget(7, live=live_batch([rec(1, 2, live=500)]), until_ns=T0 + SECOND + 500_000_000)
    assert overflow_counts(totals) == {(8, "egress"): (1, 100, T0 + SECOND)}
    totals(batch(with_overflow(0, (7, "egress", 5)), []))  # ended before the detach: not counted again
    totals(batch(with_overflow(2, (7, "egress", 4)), []))  # after it: the new attachment's
    assert overflow_counts(totals, {7}) == {(7, "egress"): (4, 400, T0 + 3 * SECOND)}


# -- the column-wise table: slots, hash index, compaction ---------------------------------------


def test_a_connection_twice_in_one_interval_adds_up_and_takes_its_fields_from_the_first():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3, first=300, last=400), rec(0, 1, sport=40002),
                               rec(0, 2, first=100, last=800)]))
    totals(batch(envelope(1), [rec(1, 1, sport=40002), rec(1, 1, sport=40002, last=950)]))
    view = totals.view()
    assert [(t.id, t.src_port, t.packets, t.bytes, t.first_seen, t.last_seen) for t in view] == [
        (1, 40001, 5, 500, T0 + 100_000_000, T0 + 800_000_000),
        (2, 40002, 3, 300, T0 + 100_000_000, T0 + SECOND + 950_000_000)]


def test_ids_stay_with_their_connections_when_others_are_evicted_or_forgotten():
    totals = ConnectionTotals(max_entries=4)
    totals(batch(envelope(0), [rec(0, 1, sport=p, last=900 - p) for p in range(1, 5)]
                 + [rec(0, 1, ifindex=8)]))
    assert [(t.id, t.ifindex, t.src_port) for t in totals.view()] == [
        (1, 7, 1), (2, 7, 2), (3, 7, 3), (5, 8, 40001)]
    assert totals.forget(8, None, until_ns=T0 + SECOND) == 1
    totals(batch(envelope(1), [rec(1, 2, sport=3), rec(1, 1, sport=6)]))
    assert [(t.id, t.src_port, t.packets) for t in totals.view()] == [(1, 1, 1), (2, 2, 1), (3, 3, 3), (6, 6, 1)]


def test_keys_that_share_a_hash_are_kept_apart(monkeypatch):
    """Every key hashed alike: lookups fall back to the packed keys, with the same results."""
    def scenario() -> list:
        totals = ConnectionTotals(max_entries=3)
        totals(batch(envelope(0), [rec(0, 1, sport=p, last=900 - p) for p in range(1, 5)]
                     + [rec(0, 2, sport=2, last=1)]))
        live = live_batch([rec(1, 4, sport=9, live=500), rec(1, 1, sport=2, live=500)])
        viewed = [(t.id, t.src_port, t.packets) for t in totals.view(live)]
        totals(batch(envelope(1), [rec(1, 4, sport=9), rec(1, 1, sport=2), rec(1, 7, sport=1)]))
        totals.forget(7, live_batch([rec(2, 1, sport=1, live=100)]), until_ns=T0 + 2 * SECOND + 10)
        totals(batch(envelope(2), [rec(2, 3, sport=1), rec(2, 1, ifindex=8)]))
        return [viewed, [(t.id, t.ifindex, t.src_port, t.packets) for t in totals.view()], totals.evicted]

    expected = scenario()
    assert expected == [[(1, 1, 1), (2, 2, 4), (3, 3, 1), (5, 9, 4)],
                        [(6, 7, 1, 2), (7, 8, 40001, 1)], 2]
    import connstats.probe.api.totals as module
    monkeypatch.setattr(module, "key_hashes", lambda words, used: np.zeros(words.shape[1], dtype=np.uint64))
    assert scenario() == expected


def test_a_residue_comes_off_a_copy_not_off_the_published_batch():
    totals = ConnectionTotals()
    totals.forget(7, live_batch([rec(1, 2, live=200)]), until_ns=T0 + 1_200_000_000)
    published = batch(envelope(1), [rec(1, 5)])
    published = FlowBatch(published.envelope, msgspec.structs.replace(published.columns, packets=np.array([5], dtype=np.uint64)),
                          published.devices)
    totals(published)
    assert published.columns.packets.tolist() == [5]  # the residue came off a copy
    assert counts(totals.view()) == {(7, "egress", 40001): (3, 300)}


def test_addresses_that_differ_only_far_into_their_text_are_two_connections():
    from dataclasses import replace as with_fields

    def v6(seq: int, packets: int, src: str) -> FlowRecord:
        return with_fields(rec(seq, packets), family=6, src_ip=src, dst_ip="2001:db8:aaaa:bbbb:cccc:dddd:eeee:1")

    totals = ConnectionTotals()
    totals(batch(envelope(0), [v6(0, 1, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:2"), rec(0, 2)]))
    totals(batch(envelope(1), [rec(1, 4)]))  # IPv4 only: the table's long words still compared
    totals(batch(envelope(2), [v6(2, 3, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:3"),
                               v6(2, 5, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:2")]))
    assert [(t.id, t.family, t.src_ip, t.packets) for t in totals.view()] == [
        (1, 6, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:2", 6), (2, 4, "10.0.0.1", 6),
        (3, 6, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:3", 3)]


def test_a_connection_carries_the_verdict_of_its_latest_interval_live_included():
    import dataclasses

    totals = ConnectionTotals()
    totals(batch(envelope(0), [dataclasses.replace(rec(0, 3), verdict="deny"), rec(0, 1, sport=40002)]))
    assert {t.src_port: (t.packets, t.verdict) for t in totals.view()} == {40001: (3, "deny"), 40002: (1, "")}
    totals(batch(envelope(1), [dataclasses.replace(rec(1, 2), verdict="allow")]))
    assert {t.src_port: t.verdict for t in totals.view()} == {40001: "allow", 40002: ""}
    live = live_batch([dataclasses.replace(rec(2, 4, live=500), verdict="deny"),
                       dataclasses.replace(rec(2, 1, sport=40003, live=500), verdict="deny")])
    assert {t.src_port: (t.packets, t.verdict) for t in totals.view(live)} == {
        40001: (9, "deny"), 40002: (1, ""), 40003: (1, "deny")}


WEB = dict(pod="shop/web-1", workload="web", runtime="containerd")


def test_a_connection_keeps_the_latest_known_pod_and_processes_live_included():
    totals = ConnectionTotals()
    totals(batch(envelope(0), [rec(0, 3, **WEB, process="nginx", pid=42), rec(0, 1, ifindex=8, sport=40002)]))
    assert {t.src_port: (t.packets, t.pod, t.workload, t.runtime, t.process, t.pid, t.peer_process, t.peer_pid)
            for t in totals.view()} == {40001: (3, "shop/web-1", "web", "containerd", "nginx", 42, "", 0),
                                        40002: (1, "", "", "", "", 0, "", 0)}
    # a later interval that does not know the process keeps the known one; one that knows more adds it
    totals(batch(envelope(1), [rec(1, 2, **WEB), rec(1, 5, ifindex=8, sport=40002, process="curl", pid=7,
                                                     peer_process="nginx", peer_pid=42)]))
    assert {t.src_port: (t.packets, t.pod, t.process, t.pid, t.peer_process, t.peer_pid) for t in totals.view()} == {
        40001: (5, "shop/web-1", "nginx", 42, "", 0), 40002: (6, "", "curl", 7, "nginx", 42)}
    live = live_batch([rec(2, 4, live=500, **WEB, process="nginx", pid=43, peer_process="curl", peer_pid=7),
                       rec(2, 1, sport=40003, live=500, **WEB, process="sh", pid=99)])
    assert {t.src_port: (t.packets, t.pod, t.process, t.pid, t.peer_process, t.peer_pid)
            for t in totals.view(live)} == {40001: (9, "shop/web-1", "nginx", 43, "curl", 7),
                                            40002: (6, "", "curl", 7, "nginx", 42),
                                            40003: (1, "shop/web-1", "sh", 99, "", 0)}
    assert {t.src_port: t.pid for t in totals.view()} == {40001: 42, 40002: 7}  # the live read changed no total
