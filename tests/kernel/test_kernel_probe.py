"""KernelProbe: the last partial interval survives shutdown; the live view reads without resetting."""
import asyncio

import pytest

from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings, poll_forever

pytestmark = pytest.mark.kernel


def udp_totals(records, ifname, sport):
    return (sum(r.packets for r in records if r.ifname == ifname and r.src_port == sport),
            sum(r.bytes for r in records if r.ifname == ifname and r.src_port == sport))


def test_close_detaches_then_drains_the_last_partial_interval(test_network):
    a, b = test_network.hosts
    probe = KernelProbe(ProbeSettings(capacity=1024, host="test"))
    try:
        probe.attach(a.host_if)
        a.traffic("udp", b.ipv4, 9300, 44000, 70, 30)
        live = probe.peek()
        assert udp_totals(live, a.host_if, 44000) == (70, 70 * 72)
        assert udp_totals(probe.peek(), a.host_if, 44000) == (70, 70 * 72)  # peek resets nothing
    finally:
        batch = probe.finish()
        envelope, records = batch.envelope, batch.records()
        probe.commit()
        probe.close()
    assert udp_totals(records, a.host_if, 44000) == (70, 70 * 72)
    assert envelope.host == "test" and envelope.interval_seq == 0
    assert all(r.interval_start == envelope.interval_start for r in records)


def test_poll_forever_publishes_every_interval_and_the_final_one(test_network):
    a, b = test_network.hosts
    probe = KernelProbe(ProbeSettings(capacity=1024, interval=0.1, host="test"))
    probe.attach(a.host_if)
    published = []

    async def publish(batch):
        published.append((batch.envelope, batch.records()))

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(poll_forever(probe, publish, stop))
        await asyncio.sleep(0.35)
        await asyncio.to_thread(a.traffic, "udp", b.ipv4, 9300, 44001, 500, 10)
        stop.set()
        await task

    asyncio.run(scenario())
    probe.close()
    seqs = [e.interval_seq for e, _ in published]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 4
    assert all(e1.interval_end == e2.interval_start for (e1, _), (e2, _) in zip(published, published[1:], strict=False))
    everything = [r for _, records in published for r in records]
    assert udp_totals(everything, a.host_if, 44001) == (500, 500 * 52)
    assert probe.devices.devices() == []
