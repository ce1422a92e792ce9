"""The shapes the quality tracepoints fill and the join reads: one place for both.

    sockets  SOCK_KEY -> SOCK_STATS   per TCP socket (its own end first), from
                                      tcp:tcp_probe (srtt samples) and
                                      tcp:tcp_retransmit_skb (segments, as TcpRetransSegs)
    drops    DROP_KEY -> DROP_VALUE   per packet the kernel dropped (skb:kfree_skb), by the
                                      namespace and ifindex of the device it was on, its
                                      reason code and its 5-tuple

Addresses are laid out as the classifier's (probe/kernel/flows_structs.h): 16 bytes, an
IPv4 address in the first 4, the rest zero; ports in host byte order. ``reasons`` maps the
running kernel's drop-reason codes to their names, read from the kfree_skb tracepoint's
format file (the enum differs between kernel versions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

SOCK_KEY = np.dtype([("netns", "<u4"), ("family", "u1"), ("pad", "u1"), ("sport", "<u2"), ("dport", "<u2"),
                     ("pad2", "<u2"), ("saddr", "V16"), ("daddr", "V16")])
SOCK_STATS = np.dtype([("rtt_min_us", "<u4"), ("rtt_max_us", "<u4"), ("rtt_sum_us", "<u8"),
                       ("rtt_samples", "<u4"), ("retrans_segs", "<u4")])
DROP_KEY = np.dtype([("netns", "<u4"), ("ifindex", "<u4"), ("reason", "<u4"), ("family", "u1"), ("proto", "u1"),
                     ("sport", "<u2"), ("dport", "<u2"), ("pad", "<u2"), ("src", "V16"), ("dst", "V16")])
DROP_VALUE = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
assert (SOCK_KEY.itemsize, SOCK_STATS.itemsize, DROP_KEY.itemsize, DROP_VALUE.itemsize) == (44, 24, 52, 16)


@dataclass(frozen=True)
class QualitySnapshot:
    """One interval of the quality tables, flipped out at the classifier's flip."""

    socket_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, SOCK_KEY))
    socket_stats: np.ndarray = field(default_factory=lambda: np.zeros(0, SOCK_STATS))
    drop_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, DROP_KEY))
    drop_values: np.ndarray = field(default_factory=lambda: np.zeros(0, DROP_VALUE))
    reasons: Mapping[int, str] = field(default_factory=dict)  # drop-reason code -> name

    def reason_name(self, code: int) -> str:
        """The kernel's name of a drop-reason code; the number where the format names none."""
        return self.reasons.get(code, str(code))
