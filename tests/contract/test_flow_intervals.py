"""The one interval assembler and the one flow subscription (probe/contract/intervals.py,
probe/contract/subscription.py): chunks in any order, twice, late, lost, too many at once;
messages that do not decode or name another host; a real nats-server for ``start``."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from connstats.probe.contract import (
    Envelope,
    FlowBatch,
    FlowSubscription,
    IntervalAssembler,
    NatsOptions,
    connect,
    encode_message,
    flows_subject,
)
from connstats.probe.contract.intervals import Interval
from tests.alert_data import chunked, interval
from tests.fixtures.control import SINCE, record
from tests.fixtures.wait import until_async


def chunk_numbers(intervals: list[Interval]) -> list[list[int]]:
    return [[c.envelope.chunk for c in i.chunks] for i in intervals]


def seqs(intervals: list[Interval]) -> list[int]:
    return [i.key[2] for i in intervals]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- the assembler ---------------------------------------------------------------------------


def test_an_interval_is_handed_out_once_its_last_chunk_arrives_in_chunk_order():
    assembler = IntervalAssembler()
    parts = chunked("node-1", 0, [{"sport": i} for i in range(9)], 3)
    assert assembler.add(parts[2]) == [] and assembler.add(parts[0]) == [] and len(assembler) == 1
    [whole] = assembler.add(parts[1])
    assert chunk_numbers([whole]) == [[0, 1, 2]] and whole.chunks == (parts[0], parts[1], parts[2])
    assert (whole.key, whole.expected, whole.complete, whole.missing) == (("node-1", "boot-1", 0), 3, True, ())
    assert whole.envelope == parts[0].envelope and len(assembler) == 0


def test_a_chunk_seen_twice_counts_once_also_after_its_interval_was_handed_out():
    assembler = IntervalAssembler()
    parts = chunked("node-1", 0, [{"sport": i} for i in range(4)], 2)
    again = replace(parts[0], devices=())  # a copy that differs, to see which one counts
    assert assembler.add(parts[0]) == [] and assembler.add(again) == [] and len(assembler) == 1
    [whole] = assembler.add(parts[1])
    assert whole.chunks == (parts[0], parts[1])  # the first copy
    assert assembler.add(parts[0]) == [] and assembler.add(parts[1]) == [] and len(assembler) == 0
    [single] = interval("node-1", 1, [{}])
    assert seqs(assembler.add(single)) == [1] and assembler.add(single) == [] and len(assembler) == 0


def test_the_key_is_host_boot_id_and_interval_seq():
    assembler = IntervalAssembler()
    [a] = interval("node-1", 5, [{}])
    [b] = interval("node-2", 5, [{}])
    [c] = interval("node-1", 5, [{}], boot="boot-2")
    assert [i.key for batch in (a, b, c, a) for i in assembler.add(batch)] == [
        ("node-1", "boot-1", 5), ("node-2", "boot-1", 5), ("node-1", "boot-2", 5)]


def test_an_incomplete_interval_expires_after_the_timeout_with_what_arrived_oldest_first():
    clock = Clock()
    assembler = IntervalAssembler(timeout=5.0, clock=clock)
    first = chunked("node-1", 2, [{"sport": i} for i in range(6)], 3)
    second = chunked("node-1", 3, [{"sport": i} for i in range(4)], 2)
    assert assembler.add(first[2]) == []
    clock.now = 1.0
    assert assembler.add(second[1]) == [] and assembler.add(first[0]) == []  # first's clock is its first chunk's
    clock.now = 4.9
    assert assembler.expired() == [] and len(assembler) == 2
    clock.now = 5.0
    [late] = assembler.expired()
    assert (seqs([late]), chunk_numbers([late]), late.complete, late.missing) == ([2], [[0, 2]], False, (1,))
    assert late.envelope == first[0].envelope
    clock.now = 6.0
    [later] = assembler.expired()
    assert (seqs([later]), chunk_numbers([later]), later.missing, len(assembler)) == ([3], [[1]], (0,), 0)
    assert later.envelope == second[1].envelope  # chunk 0 never came: the first that did
    assert assembler.add(first[1]) == [] and assembler.expired() == []  # late: its interval was handed out


def test_at_most_max_pending_intervals_wait_and_the_oldest_goes_first_as_it_is():
    assembler = IntervalAssembler(max_pending=2)
    crowd = [chunked("node-1", seq, [{}, {"sport": 2}], 2) for seq in (3, 4, 5, 6)]
    assert [assembler.add(c[0]) for c in crowd[:2]] == [[], []]
    pushed = assembler.add(crowd[2][1])
    assert (seqs(pushed), chunk_numbers(pushed), pushed[0].complete) == ([3], [[0]], False)
    ready = assembler.add(crowd[1][1])  # completes 4
    assert (seqs(ready), ready[0].complete, len(assembler)) == ([4], True, 1)
    assert [assembler.add(c[0]) for c in crowd[3:]] == [[]] and len(assembler) == 2
    complete_then_pushed = assembler.add(crowd[2][0])  # completes 5: no push needed
    assert (seqs(complete_then_pushed), len(assembler)) == ([5], 1)
    assert assembler.add(crowd[0][1]) == []  # 3 was handed out, incomplete: its late chunk is not a new interval


def test_a_single_chunk_interval_is_complete_even_when_the_bound_is_reached():
    assembler = IntervalAssembler(max_pending=1)
    waiting = chunked("node-1", 1, [{}, {}], 2)[0]
    assert assembler.add(waiting) == []
    [single] = interval("node-1", 2, [{}])
    assert [(i.key[2], i.complete) for i in assembler.add(single)] == [(2, True)] and len(assembler) == 1


def test_only_the_last_remember_intervals_handed_out_are_remembered():
    assembler = IntervalAssembler(remember=2)
    singles = [interval("node-1", seq, [{}])[0] for seq in range(3)]
    assert [seqs(assembler.add(s)) for s in singles] == [[0], [1], [2]]
    assert assembler.add(singles[2]) == [] and assembler.add(singles[1]) == []
    assert seqs(assembler.add(singles[0])) == [0]  # forgotten: handed out again


def test_the_chunk_count_is_the_largest_an_envelope_of_the_interval_said():
    env = Envelope("h", "b", 7, SINCE, SINCE + 5, chunk=0, chunks=2)
    first = FlowBatch.from_records(env, [record("veth0", 1, 1, 10)])
    odd = FlowBatch.from_records(replace(env, chunk=4, chunks=5), [record("veth0", 2, 1, 10)])
    for order in ((first, odd), (odd, first)):
        clock = Clock()
        assembler = IntervalAssembler(clock=clock)
        assert [assembler.add(chunk) for chunk in order] == [[], []]  # two chunks, but not chunks 0 and 1 of 2
        clock.now = 5.0
        [late] = assembler.expired()
        assert (late.expected, late.complete, late.missing, chunk_numbers([late])) == (5, False, (1, 2, 3), [[0, 4]])


def test_bad_settings_are_refused():
    for settings in ({"timeout": -1.0}, {"max_pending": 0}, {"remember": -1}):
        with pytest.raises(ValueError):
            IntervalAssembler(**settings)


def test_an_intervals_batch_is_its_chunks_records_in_order_under_chunk_0s_envelope():
    base = Envelope("h", "b", 7, SINCE, SINCE + 5, chunks=2)
    assembler = IntervalAssembler()
    second = FlowBatch.from_records(replace(base, chunk=1, record_offset=2), [record("veth0", 3, 1, 10)])
    first = FlowBatch.from_records(base, [record("veth0", 1, 1, 10), record("eth0", 2, 1, 10)])
    assert assembler.add(second) == []
    [whole] = assembler.add(first)
    batch = whole.batch()
    assert batch.envelope == replace(base, chunks=1) and [r.src_port for r in batch] == [1, 2, 3]
    shown = batch.on_device("veth0")  # what `connstats top --iface veth0` shows
    assert shown.envelope == replace(base, chunks=1) and [r.src_port for r in shown] == [1, 3]


# -- the subscription, fed by the caller -----------------------------------------------------


def messages(host: str, seq: int, rows: int, chunks: int) -> list[bytes]:
    return [encode_message(part) for part in chunked(host, seq, [{"sport": i} for i in range(rows)], chunks)]


def test_take_decodes_checks_the_host_and_hands_out_whole_intervals():
    got: list[Interval] = []
    flows = FlowSubscription(got.append)
    first, second = messages("node-1", 0, 4, 2)
    assert flows.take(flows_subject("node-1"), second) is True and got == []
    assert flows.take(flows_subject("node-1"), b"not json") is False
    assert flows.take(flows_subject("node-2"), first) is False  # node-1's interval on node-2's subject
    assert flows.take("connstats.v1.flows.node-1.x", first) is False  # not a flow subject
    assert (flows.rejected, got) == (3, [])
    assert flows.take(flows_subject("node-1"), first) is True
    assert (chunk_numbers(got), [r.src_port for r in got[0].batch()]) == ([[0, 1]], [0, 1, 2, 3])
    assert flows.take(flows_subject("node-1"), first) is True and len(got) == 1  # redelivered: once


def test_take_with_prepare_holds_what_prepare_made():
    got: list[Interval] = []
    flows = FlowSubscription(got.append, prepare=lambda batch: replace(batch, devices=()))
    [message] = messages("node-1", 0, 3, 1)
    assert flows.take(flows_subject("node-1"), message)
    assert [c.devices for c in got[0].chunks] == [()] and len(got[0].chunks[0]) == 3


def test_expire_hands_out_what_timed_out():
    clock = Clock()
    got: list[Interval] = []
    flows = FlowSubscription(got.append, assembler=IntervalAssembler(timeout=2.0, clock=clock))
    flows.take(flows_subject("node-1"), messages("node-1", 0, 4, 2)[1])
    flows.expire()
    clock.now = 2.0
    assert got == []
    flows.expire()
    assert (chunk_numbers(got), got[0].complete) == ([[1]], False)


def test_an_exception_from_the_callback_is_the_callers_with_take():
    def broken(_interval):
        raise RuntimeError("the subscriber's bug")

    flows = FlowSubscription(broken)
    with pytest.raises(RuntimeError):
        flows.take(flows_subject("node-1"), messages("node-1", 0, 1, 1)[0])


# -- the subscription on a real nats-server ------------------------------------------------------


async def test_start_assembles_what_the_subject_carries_skips_bad_messages_and_expires(nats_server):
    got: list[Interval] = []
    flows = FlowSubscription(got.append, assembler=IntervalAssembler(timeout=0.3))
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        await flows.start(nc, flows_subject("node-1"), tick=0.1)
        whole = messages("node-1", 0, 6, 3)
        for data in (whole[2], b"not json", whole[0], whole[0], whole[1]):
            await nc.publish(flows_subject("node-1"), data)
        await nc.publish(flows_subject("node-2"), messages("node-2", 0, 1, 1)[0])  # not subscribed
        await nc.publish(flows_subject("node-1"), messages("node-1", 1, 4, 2)[0])  # its chunk 1 never comes
        await until_async(lambda: len(got) == 2, 10, "one complete interval and one expired")
        assert [(i.key[2], i.complete, i.missing) for i in got] == [(0, True, ()), (1, False, (1,))]
        assert [r.src_port for r in got[0].batch()] == [0, 1, 2, 3, 4, 5]
        assert (flows.rejected, flows.dropped) == (1, 0)
    finally:
        await flows.close()
        await nc.close()


async def test_start_goes_on_after_a_callback_fails_and_drops_while_not_active(nats_server):
    got: list[int] = []
    active = [False]

    def take(interval: Interval) -> None:
        if interval.key[2] == 0:
            raise RuntimeError("the subscriber's bug")
        got.append(interval.key[2])

    flows = FlowSubscription(take)
    nc = await connect(NatsOptions(servers=(nats_server.url,)))
    try:
        await flows.start(nc, flows_subject("node-1"), active=lambda: active[0])
        await nc.publish(flows_subject("node-1"), messages("node-1", 9, 1, 1)[0])  # nobody wants it
        await nc.flush()
        await asyncio.sleep(0.2)
        active[0] = True
        for seq in (0, 1):
            await nc.publish(flows_subject("node-1"), messages("node-1", seq, 1, 1)[0])
        await until_async(lambda: got, 10, "the interval after the failed one")
        assert (got, len(flows.assembler)) == ([1], 0)
    finally:
        await flows.close()
        await nc.close()
    await flows.close()  # twice: nothing left to close
