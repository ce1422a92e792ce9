"""The probe as the CLI builds it (``build_probe``) with the quality enricher: the tracepoint
class imported lazily (here one of the test's, in memory, in place of quality.py), its
drops published on the right device's records or in the envelope, counted in the
Prometheus metrics; ``quality=False`` (``--no-quality``) never loads it. Real BPF, real
veths into namespaces the test made, a real nats-server."""
from __future__ import annotations

import asyncio
import os
import sys
import types

import pytest

from connstats.probe.compose import ProbeConfig, build_probe
from connstats.probe.contract import NatsOptions
from connstats.probe.runtime.telemetry import Telemetry
from tests.fixtures.quality import FakeTables, quality_snapshot
from tests.fixtures.wait import until_async

pytestmark = pytest.mark.kernel

UDP = 17


def inside(host) -> tuple[int, int]:
    """The netns inode of a test host and the ifindex of its eth0 there."""
    return os.stat(f"/run/netns/{host.netns}").st_ino, int(host.run("cat", "/sys/class/net/eth0/ifindex").stdout)


@pytest.mark.parametrize("quality", [True, False], ids=["quality", "no-quality"])
async def test_published_intervals_carry_the_drops_of_the_quality_tables_unless_turned_off(
        nats_server, test_network, tmp_path, monkeypatch, quality):
    a, b = test_network.hosts
    (netns_a, eth_a), (netns_b, eth_b) = inside(a), inside(b)
    made: list[FakeTables] = []

    class QualityTracepoints(FakeTables):
        @classmethod
        def start(cls):
            made.append(cls())
            return made[-1]

    module = types.ModuleType("connstats.probe.quality.quality")
    module.QualityTracepoints = QualityTracepoints  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "connstats.probe.quality.quality", module)
    published, telemetry = [], Telemetry(process_metrics=False)
    config = ProbeConfig(host="quality-e2e", nats=NatsOptions(servers=(nats_server.url,)),
                         ifaces=[a.host_if, b.host_if], interval=0.3, state_dir=tmp_path, processes=False,
                         quality=quality, interval_listeners=[published.append], telemetry=telemetry)
    (tmp_path / "outbox").mkdir(exist_ok=True)
    daemon = build_probe(config)
    daemon.settings.probe.device_locks = str(tmp_path / "locks")
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))

    def drops(ifname: str, reason: str) -> int:
        on_records = sum(r.drop_packets for batch in published for r in batch.records()
                         if r.ifname == ifname and r.drop_reason == reason)
        return on_records + sum(d.packets for batch in published for d in batch.envelope.drops
                                if d.ifname == ifname and d.reason == reason)

    try:
        await until_async(lambda: daemon.ready.is_set() or task.done(), 60, "the probe ready")
        assert not task.done(), task.result()
        await asyncio.to_thread(a.traffic, "udp", b.ipv4, 9300, 44000, 70, 30)
        if quality:
            made[0].snapshots.append(quality_snapshot(drops=[
                (netns_b, eth_b, 12, UDP, a.ipv4, 44000, b.ipv4, 9300, 5, 290),  # in b: b's veth
                (netns_a, eth_a, 2, UDP, "10.1.2.3", 1, a.ipv4, 2, 1, 60)]))  # in a, to no socket: a's veth
            await until_async(lambda: (drops(b.host_if, "NETFILTER_DROP"), drops(a.host_if, "NO_SOCKET")), 10,
                              "the drops published", accept=lambda got: got == (5, 1))
        await until_async(lambda: sum(r.packets for batch in published for r in batch.records()
                                      if r.ifname == b.host_if and r.src_port == 44000), 10,
                          "the datagrams published", accept=lambda got: got == 70)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    status = daemon.status()
    if quality:
        assert (drops(b.host_if, "NETFILTER_DROP"), drops(a.host_if, "NO_SOCKET")) == (5, 1)
        assert made[0].closed and len(made) == 1
        assert (status.measuring_quality, status.quality_failures) == (True, 0)
        text = telemetry.exposition().decode()
        assert f'connstats_drops_total{{ifname="{b.host_if}",reason="NETFILTER_DROP"}} 5.0' in text
        assert f'connstats_drop_bytes_total{{ifname="{a.host_if}",reason="NO_SOCKET"}} 60.0' in text
    else:
        assert made == [] and status.measuring_quality is False
        assert not any(batch.filled("drop_packets") or batch.envelope.drops for batch in published)
