"""The upgrade to the policy layout: the flow entry grew from 40 to 48 bytes (verdict, policy
word). A probe of this version reads the pinned maps of the layout before it, whose
counters are the 40-byte ones, and publishes their counts with an empty verdict."""
from __future__ import annotations

import ctypes
import time

import numpy as np
import pytest

from connstats.probe.contract.flow_batch import FlowBatch
from connstats.probe.contract.record import Envelope
from connstats.probe.kernel.handover import read_old_layout
from connstats.probe.kernel.loader import FLOW_COUNTERS, FLOW_COUNTERS_V1
from connstats.probe.kernel.pins import BPFFS, ensure_bpffs, remove_pins
from tests.fixtures.netns import require_root

pytestmark = pytest.mark.kernel

# The maps of the layout before policies, as that version declared them (flows.bpf.c then).
BEFORE_POLICIES = """
struct flow4_key { u32 ifindex; u8 direction; u8 family; u8 proto; u8 pad; u8 src[4]; u8 dst[4];
                   u16 sport; u16 dport; };
struct flow_counters { u64 packets; u64 bytes; u64 first_seen_ns; u64 last_seen_ns; u64 tcp_flags; };
struct probe_state { u64 instance; u64 next_seq; u64 next_start_ns; u64 pending_seq; u64 pending_start_ns;
                     u64 pending_end_ns; s64 pending_mono_to_wall_ns; u32 pending; u32 pending_buffer;
                     u32 clearing; u32 pad; };
BPF_TABLE_PINNED("hash", struct flow4_key, struct flow_counters, flows4_0, 64, "DIR/flows4_0");
BPF_TABLE_PINNED("array", int, u32, active_buffer, 1, "DIR/active_buffer");
BPF_TABLE_PINNED("array", int, struct probe_state, probe_state, 1, "DIR/probe_state");
int unused(struct __sk_buff *skb) { return 0; }
"""


@pytest.fixture
def old_layout_dir():
    require_root()
    ensure_bpffs()
    path = BPFFS / "connstats-test" / f"policy-handover-{time.monotonic_ns()}"
    path.mkdir(parents=True)
    yield path
    remove_pins(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def test_counters_of_the_layout_before_policies_are_read_with_an_empty_verdict(old_layout_dir):
    from bcc import BPF

    assert (FLOW_COUNTERS_V1.itemsize, FLOW_COUNTERS.itemsize) == (40, 48)
    old = BPF(text=BEFORE_POLICIES.replace("DIR", str(old_layout_dir)).encode())
    try:
        state = old[b"probe_state"][ctypes.c_int(0)]
        state.instance, state.next_seq, state.next_start_ns = 0xC0FFEE, 7, 1_800_000_000 * 10**9
        old[b"probe_state"][ctypes.c_int(0)] = state
        flows = old[b"flows4_0"]
        key = flows.Key(12, 1, 4, 17, 0, (ctypes.c_ubyte * 4)(10, 0, 0, 1), (ctypes.c_ubyte * 4)(10, 0, 0, 2),
                        40000, 53)
        flows[key] = flows.Leaf(250, 250 * 142, 1_000, 2_000, 0)
    finally:
        old.cleanup()  # the pins keep the maps

    wall, mono = time.time_ns(), time.monotonic_ns()
    taken = read_old_layout(old_layout_dir, wall, mono)
    assert (taken.instance, taken.lost_entries) == (f"{0xC0FFEE:016x}", 0)
    [interval] = taken.intervals
    assert interval.values.dtype == FLOW_COUNTERS
    assert interval.seq == 7 and np.array_equal(interval.values["verdict"], [0])
    batch: FlowBatch = interval.batch(Envelope("h", "b", 7, interval.start_ns, interval.end_ns), {12: "veth0"})
    [record] = batch.records()
    assert (record.src_ip, record.dst_ip, record.src_port, record.dst_port, record.packets, record.bytes,
            record.verdict) == ("10.0.0.1", "10.0.0.2", 40000, 53, 250, 250 * 142, "")
