"""Policy violations, one type, published as JSON on ``connstats.v1.policy.<host>``.

    {"host", "interval_seq", "interval_start", "interval_end", "mode": "monitor"|"protect",
     "ifname", "container", "pod", "proto", "src_ip", "src_port", "dst_ip", "dst_port",
     "packets", "bytes", "from_groups": [...], "to_groups": [...]}

One ``ViolationMessage`` is one denied connection on one device in one interval (the probe's
``probe/policy/violations.py`` makes them): both directions summed, ``src`` the side seen
first. Every field is always there (``container`` and ``pod`` are ``""`` when nobody is known), in this
order. ``encode_violation`` is the one encoder, ``decode_violation`` reads one back with
every type and bound checked, or raises a one-line ``MessageError``.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .bounded import check_json
from .errors import MessageError, one_line
from .record import Address, Count, IfName, Port, ProtoText, Text, Time
from .wire_schema import Host

MAX_GROUPS = 64  # policy_file.MAX_GROUPS: a mask of the kernel's has one bit per group
GroupName = Annotated[str, msgspec.Meta(max_length=63)]  # policy_file's group names
Groups = Annotated[list[GroupName], msgspec.Meta(max_length=MAX_GROUPS)]
# The longest real message: 2 x 64 group names of 63 characters (~8.4 KB), a host and a
# container name of 1,024 characters each (up to 4 bytes per character), and ~400 bytes of
# the rest: about 17 KB. Four times that is room enough and still small.
MAX_VIOLATION_BYTES = 64 * 1024


class ViolationMessage(msgspec.Struct, kw_only=True):
    """One denied connection of one interval on one device (``mode``: the policy's then)."""

    host: Host
    interval_seq: Count
    interval_start: Time
    interval_end: Time
    mode: Literal["monitor", "protect"]
    ifname: IfName
    container: Text  # "" when nobody is known behind the device
    pod: Text = ""  # "<k8s namespace>/<name>" when the device is a pod's; "" (and absent before pods)
    proto: ProtoText  # its name (tcp, udp, icmp, icmpv6) or its number as text
    src_ip: Address
    src_port: Port
    dst_ip: Address
    dst_port: Port
    packets: Count
    bytes: Count
    from_groups: Groups
    to_groups: Groups


def encode_violation(violation: ViolationMessage) -> bytes:
    """The JSON of ``violation``, its fields in the order above."""
    return msgspec.json.encode(violation)


_DECODER = msgspec.json.Decoder(ViolationMessage)


def decode_violation(data: bytes) -> ViolationMessage:
    """One message from ``connstats.v1.policy.<host>``; raises ``MessageError`` saying why not."""
    check_json(data, MAX_VIOLATION_BYTES)
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not a policy violation: {one_line(exc)}") from None

