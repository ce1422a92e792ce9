"""The connection record, the envelope of a flow message, and the bounds of every field.

``FlowRecord`` is the one record type for whoever wants one object per connection; the
probe and the stores work on columns instead (``FlowBatch`` in flow_batch.py; the wire
format is in wire.py). Times are integers: nanoseconds since the Unix epoch, UTC.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Annotated, Callable, Iterator, Literal, TypeVar

import msgspec

from .errors import MessageError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA_VERSION = 2  # of the flow messages the probe sends (see wire_schema.py)
DIRECTIONS: tuple[Direction, Direction] = ("ingress", "egress")  # index = the kernel's direction
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}  # the one table of names: every output and --proto
PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}
_T = TypeVar("_T", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One connection's counters on one device, direction and interval."""

    interval_start: int
    interval_end: int
    ifindex: int
    ifname: str
    direction: Direction  # as seen from the container on a veth
    family: Family  # 4, 6, or 0 for non-IP frames
    proto: int  # IP protocol number
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    packets: int
    bytes: int
    first_seen: int
    last_seen: int
    tcp_flags: int
    # Who is behind the device (see probe/watch/containers.py); "" when nobody is known.
    container_id: str = ""
    container_name: str = ""
    container_image: str = ""
    pod: str = ""  # "<k8s namespace>/<pod name>"
    workload: str = ""  # app.kubernetes.io/name, else app, else the pod name without its suffixes
    runtime: Runtime = ""  # who named the owner: docker, containerd, podman, netns
    # The policy's verdict on the connection (probe/policy/): "allow", "deny", or "" when
    # its device is not governed by a policy.
    verdict: Verdict = ""
    # The program on each end (probe/identity/): the owner of the socket at the device's end
    # and, when the other end is a socket on this host too, its owner; "" and 0 when unknown.
    process: str = ""
    pid: int = 0
    peer_process: str = ""
    peer_pid: int = 0
    # How well (probe/quality/): the smoothed RTT samples of the TCP socket that sent the
    # record's packets (microseconds; 0: none in the interval), the segments it
    # retransmitted, and the record's packets the kernel dropped with the most frequent
    # reason (the kernel's skb_drop_reason name, "" when nothing was dropped).
    rtt_min_us: int = 0
    rtt_avg_us: int = 0
    rtt_max_us: int = 0
    retransmits: int = 0
    drop_packets: int = 0
    drop_bytes: int = 0
    drop_reason: str = ""

    @property
    def proto_name(self) -> str:
        return proto_name(self.proto)


def _slot_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A constructor for a frozen, slotted dataclass that sets slots directly: it takes
    every field, in order (none has a default).

    The generated ``__init__`` of a frozen dataclass calls ``object.__setattr__`` per
    field, which costs ~3 us per FlowRecord; writing through the slot descriptors
    does the same work in a third of the time. Used where records are made in bulk.
    """
    names = [f.name for f in fields(cls)]
    namespace = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    namespace["_new"] = object.__new__
    namespace["_cls"] = cls
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    self = _new(_cls)\n{body}    return self\n", namespace)
    make: Callable[..., _T] = namespace["make"]
    return make


make_record = _slot_constructor(FlowRecord)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is behind a device: a container, a pod's sandbox, a named network namespace."""

    container_id: str = ""
    container_name: str = ""  # or the network namespace's name
    container_image: str = ""
    pod: str = ""
    workload: str = ""
    runtime: Runtime = ""


NO_OWNER = Owner()
OWNER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Owner))


@dataclass(frozen=True, slots=True)
class OverflowCount:
    """Packets and bytes that found the flow map full, per device and direction."""

    ifindex: int
    ifname: str
    direction: Direction
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DropCount:
    """Packets the kernel dropped on a device that belong to no record of the interval (no
    socket, an unknown protocol, a connection the flow map had no room for), per reason."""

    ifindex: int
    ifname: str
    reason: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a flow message says about the interval its records belong to."""

    host: str
    boot_id: str
    interval_seq: int
    interval_start: int
    interval_end: int
    chunk: int = 0
    chunks: int = 1
    record_offset: int = 0  # index of this chunk's first record within the interval
    overflow: tuple[OverflowCount, ...] = field(default=())
    schema: int = SCHEMA_VERSION
    drops: tuple[DropCount, ...] = field(default=())  # only chunk 0 carries them, like overflow


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(number, str(number))


def proto_number(name: str) -> int:
    number = PROTO_NUMBERS.get(name)
    if number is not None:
        return number
    if name.isascii() and name.isdigit() and len(name) <= 3 and int(name) < 256:
        return int(name)
    raise MessageError(f"unknown protocol {name!r}; use tcp, udp, icmp, icmpv6 or a number 0-255")


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause the cyclic GC while making many objects that hold no cycles (records, rows):
    the collections 100k new objects trigger would cost more than making them (~30%)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- the bounds of the wire format (the structs are in wire_schema.py) -----------
#
# The wire schema is declared once, as msgspec structs (wire_schema.py): they encode in field
# order and decode with every type, range and key checked in C (an unknown or missing key, a
# float where an integer belongs, a port above 65535 are all errors). Every number is
# bounded by what the kernel can produce and what the stores can hold (SQLite and
# InfluxDB integers are signed 64-bit); the few rules that span fields (family and
# addresses, interval end and start, chunk and chunks) are checked after decoding
# (wire_checks.py).

COUNTER_LIMIT = 2**63  # packets, bytes, tcp_flags: 0 <= x < 2**63
IFINDEX_LIMIT = 2**32
TIME_MIN = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z, ns
TIME_MAX = 7_258_118_400 * 1_000_000_000  # 2200-01-01T00:00:00Z, ns
IFNAME_MAX = 15  # IFNAMSIZ - 1
TEXT_MAX = 1024  # host, container name and image
ID_MAX = 128  # boot id, container id

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Count = Annotated[int, msgspec.Meta(ge=0, le=COUNTER_LIMIT - 1)]
IfIndex = Annotated[int, msgspec.Meta(ge=0, lt=IFINDEX_LIMIT)]
Time = Annotated[int, msgspec.Meta(ge=TIME_MIN, lt=TIME_MAX)]
IfName = Annotated[str, msgspec.Meta(max_length=IFNAME_MAX)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX)]
Ident = Annotated[str, msgspec.Meta(max_length=ID_MAX)]
Address = Annotated[str, msgspec.Meta(max_length=45)]  # the longest IPv6 text
ProtoText = Annotated[str, msgspec.Meta(max_length=8)]
Family = Literal[0, 4, 6]
Verdict = Literal["", "allow", "deny"]
VERDICTS = ("", "allow", "deny")  # index = the kernel's VERDICT_* (probe/kernel/flows_structs.h)
Direction = Literal["ingress", "egress"]
Runtime = Literal["", "docker", "containerd", "podman", "netns"]
RUNTIMES: tuple[Runtime, ...] = ("", "docker", "containerd", "podman", "netns")
COMM_MAX = 15  # TASK_COMM_LEN - 1: a process name, from the kernel or /proc/<pid>/comm
ProcessName = Annotated[str, msgspec.Meta(max_length=COMM_MAX)]
Pid = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
Micros = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]  # an RTT in microseconds (the kernel's u32)
DROP_REASON_MAX = 64
# The kernel's skb_drop_reason names (read from the kfree_skb tracepoint's format): capitals,
# digits and underscores, or a number where the kernel's format names none.
DropReason = Annotated[str, msgspec.Meta(max_length=DROP_REASON_MAX, pattern="^[A-Z0-9_]*$")]
