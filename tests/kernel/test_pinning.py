"""Pinned maps: a probe killed between poll and commit leaves an interval that the next
probe reads again identically (same sequence number, times and record order, hence the
same message ids); counts made while no probe ran are published by the next one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from connstats.probe.contract.errors import ConfigError
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
from connstats.probe.kernel.pins import PinnedInstance
from tests.fixtures.traffic import SEND_FROM_MANY_PORTS

pytestmark = pytest.mark.kernel

CHILD = textwrap.dedent("""
    import json, os, signal, subprocess, sys
    from pathlib import Path
    from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
    state_dir, iface, locks, command = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    probe = KernelProbe(ProbeSettings(capacity=1024, host="pin-test", state_dir=Path(state_dir),
                                      device_locks=locks, on_exit="keep"))
    probe.attach(iface)
    subprocess.run(command, check=True, capture_output=True)
    batch = probe.poll()
    envelope, records = batch.envelope, batch.records()
    print(json.dumps([envelope.boot_id, envelope.interval_seq, envelope.interval_start,
                      envelope.interval_end, [[r.src_port, r.packets, r.bytes, r.ifindex, r.direction, r.proto,
                                               r.src_ip, r.dst_ip, r.dst_port] for r in records]]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before commit: the interval is pending
""")


def udp_command(host, peer, sport: int, count: int) -> list[str]:
    from tests.fixtures.netns import TRAFFIC
    return ["ip", "netns", "exec", host.netns, sys.executable, str(TRAFFIC), "udp", peer.ipv4, "5500",
            str(sport), str(count), "100"]


def test_an_interval_polled_and_not_committed_is_recovered_identically(test_network, tmp_path):
    a, b = test_network.hosts
    state_dir, locks = tmp_path / "state", str(tmp_path / "locks")
    state_dir.mkdir()
    instance = PinnedInstance.for_state_dir(state_dir)
    child = subprocess.run([sys.executable, "-c", CHILD, str(state_dir), a.host_if, locks,
                            json.dumps(udp_command(a, b, 42000, 400))], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    boot_id, seq, start, end, rows = json.loads(child.stdout)
    assert [row[:3] for row in rows if row[0] == 42000] == [[42000, 400, 400 * 142]]

    probe = KernelProbe(ProbeSettings(capacity=1024, host="pin-test", state_dir=state_dir,
                                      device_locks=locks, on_exit="detach"))
    try:
        assert [d.name for d in probe.adopt()] == [a.host_if]
        a.traffic("udp", b.ipv4, 5500, 42001, 300, 100)  # counted while the crash is recovered
        batch = probe.recover()
        envelope, records = batch.envelope, batch.records()
        assert (envelope.boot_id, envelope.interval_seq, envelope.interval_start, envelope.interval_end) == (
            boot_id, seq, start, end)
        assert [[r.src_port, r.packets, r.bytes] for r in records] == [row[:3] for row in rows]
        probe.commit()
        assert probe.recover() is None
        batch = probe.finish()
        envelope, records = batch.envelope, batch.records()
        probe.commit()
        assert envelope.interval_seq == seq + 1 and envelope.interval_start == end
        assert [(r.src_port, r.packets, r.bytes) for r in records if r.src_port in (42000, 42001)] == [
            (42001, 300, 300 * 142)]
    finally:
        probe.close()
    assert not instance.path.exists()


def test_an_interval_goes_out_in_the_stores_key_order_and_comes_back_in_the_same(test_network, tmp_path):
    """Many connections (the map's read order is its hash order): polled, and read again after a
    crash, in the order of the SQLite table's key, so the messages of a replay are the same."""
    a, b = test_network.hosts
    state_dir, locks = tmp_path / "state", str(tmp_path / "locks")
    state_dir.mkdir()
    many_ports = ["ip", "netns", "exec", a.netns, sys.executable, "-c", SEND_FROM_MANY_PORTS, b.ipv4, "41000",
                  "300", "20"]
    child = subprocess.run([sys.executable, "-c", CHILD, str(state_dir), a.host_if, locks, json.dumps(many_ports)],
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    rows = json.loads(child.stdout)[4]
    sent = [row for row in rows if 41000 <= row[0] < 41300]
    assert [row[:3] for row in sent] == [[port, 1, 20 + 28 + 14] for port in range(41000, 41300)]
    key = [(ifindex, direction.encode(), proto, src.encode(), dst.encode(), sport, dport)
           for sport, _, _, ifindex, direction, proto, src, dst, dport in rows]
    assert key == sorted(key)

    probe = KernelProbe(ProbeSettings(capacity=1024, host="pin-test", state_dir=state_dir,
                                      device_locks=locks, on_exit="detach"))
    try:
        probe.adopt()
        records = probe.recover().records()
        assert [[r.src_port, r.packets, r.bytes, r.ifindex, r.direction, r.proto, r.src_ip, r.dst_ip, r.dst_port]
                for r in records] == rows
        probe.commit()
    finally:
        probe.close()


def test_a_second_probe_on_the_same_state_directory_is_refused(tmp_path):
    settings = ProbeSettings(capacity=64, state_dir=tmp_path, device_locks=str(tmp_path / "locks"))
    first = KernelProbe(settings)
    try:
        with pytest.raises(ConfigError) as refused:
            KernelProbe(settings)
        assert str(refused.value) == (f"another connstats probe (pid {os.getpid()}) runs with state "
                                      f"directory {tmp_path}; stop it first, or give this one another --state-dir")
    finally:
        first.close()
    assert not PinnedInstance.for_state_dir(tmp_path).path.exists()


def test_another_layout_adopts_the_devices_and_publishes_the_old_maps_counts(test_network, tmp_path):
    """An upgrade (here: another capacity, so other maps): the filter is replaced in place,
    the old maps' counts come out as the old instance's intervals, then they are unpinned."""
    import asyncio

    from connstats.probe.kernel.kernel_probe import publish_recovered

    a, b = test_network.hosts
    settings = dict(host="pin-test", state_dir=tmp_path, device_locks=str(tmp_path / "locks"))
    old = KernelProbe(ProbeSettings(capacity=1024, on_exit="keep", **settings))
    old.attach(a.host_if)
    old_boot_id = old.boot_id
    old.close()  # keep: the filter goes on counting into the old layout's maps
    a.traffic("udp", b.ipv4, 5500, 42010, 250, 100)
    instance = PinnedInstance.for_state_dir(tmp_path)
    [old_layout] = instance.layouts()

    new = KernelProbe(ProbeSettings(capacity=2048, on_exit="detach", **settings))
    published = []

    async def publish(batch):
        published.append((batch.envelope, batch.records()))

    try:
        asyncio.run(publish_recovered(new, publish))
        assert [d.name for d in new.devices.devices()] == [a.host_if]
        assert [layout.name for layout in instance.layouts()] == [new.program.pin_dir.name] != [old_layout.name]
        a.traffic("udp", b.ipv4, 5500, 42011, 40, 100)
        batch = new.finish()
        records = batch.records()
        new.commit()
    finally:
        new.close()
    assert {e.boot_id for e, _ in published} == {old_boot_id}
    old_counts = [(r.src_port, r.packets, r.bytes) for _, rs in published for r in rs if r.src_port == 42010]
    assert old_counts == [(42010, 250, 250 * 142)]
    assert [(r.src_port, r.packets) for r in records if r.src_port in (42010, 42011)] == [(42011, 40)]
    assert not instance.path.exists()


def test_a_capacity_beyond_what_the_kernel_allows_is_one_line():
    from connstats.probe.contract.errors import KernelError
    from connstats.probe.kernel.loader import MAX_CAPACITY, _explain_bcc_failure, load_classifier

    with pytest.raises(KernelError) as refused:
        load_classifier(MAX_CAPACITY + 1)
    assert str(refused.value) == (f"capacity {MAX_CAPACITY + 1} is not between 1 and {MAX_CAPACITY}; "
                                  "choose another --capacity")
    # what libbcc prints when the kernel cannot allocate the maps (seen with 2**26 here)
    said = ["could not open bpf map: flows4_1, error: Cannot allocate memory\n"]
    assert _explain_bcc_failure(Exception("Failed to compile BPF module b'flows.bpf.c'"), 1 << 26, said) == (
        "the kernel refused the flow maps for capacity 67108864 (could not open bpf map: flows4_1, "
        "error: Cannot allocate memory); choose a smaller --capacity or free memory")
