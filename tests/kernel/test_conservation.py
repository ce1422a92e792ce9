"""Poll-and-reset loses nothing: the sum over many short intervals is what was sent."""
import threading

import pytest

pytestmark = pytest.mark.kernel

FLOWS = 4
PACKETS_PER_FLOW = 25_000
PAYLOAD = 64


def test_polling_every_50ms_while_traffic_flows_loses_nothing(probe, test_network):
    a, b = test_network.hosts
    probe.attach(a.host_if)
    probe.attach(b.host_if)
    stop = threading.Event()

    def poll_every_50ms():
        while not stop.wait(0.05):
            probe.poll()

    poller = threading.Thread(target=poll_every_50ms)
    poller.start()
    try:
        senders = [a.popen_traffic("udp-paced", b.ipv4, 9100, 43000 + n, PACKETS_PER_FLOW, PAYLOAD, 3)
                   for n in range(FLOWS)]
        for sender in senders:
            sender.communicate(timeout=60)
            assert sender.returncode == 0
    finally:
        stop.set()
        poller.join()
    probe.poll()

    assert len(probe.intervals) >= 30  # 3 s of traffic, polled every 50 ms plus the poll itself
    size = 14 + 20 + 8 + PAYLOAD
    for n in range(FLOWS):
        for ifname, direction in ((a.host_if, "egress"), (b.host_if, "ingress")):
            assert probe.totals(ifname=ifname, direction=direction, src_port=43000 + n, dst_port=9100) == (
                PACKETS_PER_FLOW, PACKETS_PER_FLOW * size)
    spread = {r.interval_start for r in probe.records() if r.src_port == 43000}  # one start per interval
    assert len(spread) >= 30  # the flow really was split across many intervals
    assert sum(i.packets for i in probe.intervals) == sum(r.packets for r in probe.records())
