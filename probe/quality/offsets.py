"""Where the quality tracepoints find what their arguments do not carry, from the running
kernel's BTF: a socket's namespace, an skb's device, its headers and its segment counts.

The headers BCC compiles with may be an older kernel's (Debian's 6.1 on a 6.18 kernel), so
no struct field is read through them; these offsets reach the program as ``-DOFF_*`` flags.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..identity.btf import Btf, BtfError, sock_offsets

_INT, _PTR = 1, 2


@dataclass(frozen=True)
class QualityOffsets:
    """Byte offsets, by the names of their ``-D`` flags (``OFF_<NAME>``)."""

    values: dict[str, int]
    skb_end_is_offset: bool  # sk_buff.end is an offset from head (64-bit kernels), not a pointer

    def cflags(self) -> list[str]:
        flags = [f"-DOFF_{name}={value}" for name, value in sorted(self.values.items())]
        return [*flags, *(["-DSKB_END_IS_OFFSET"] if self.skb_end_is_offset else [])]


def quality_offsets(btf: Btf) -> QualityOffsets:
    """The offsets in this kernel; ``BtfError`` if a struct or member is not where expected."""
    sock = sock_offsets(btf)
    values = {
        "SKC_NET": sock.skc_net, "NET_NS": sock.net_ns, "NS_INUM": sock.ns_inum,
        "SKB_DEV": btf.offset("sk_buff", "dev"), "SKB_SK": btf.offset("sk_buff", "sk"),
        "SKB_CB": btf.offset("sk_buff", "cb"), "SKB_LEN": btf.offset("sk_buff", "len"),
        "SKB_HEAD": btf.offset("sk_buff", "head"), "SKB_DATA": btf.offset("sk_buff", "data"),
        "SKB_END": btf.offset("sk_buff", "end"),
        "SKB_NETWORK_HEADER": btf.offset("sk_buff", "network_header"),
        "DEV_IFINDEX": btf.offset("net_device", "ifindex"),
        "DEV_NET": btf.offset("net_device", "nd_net", "net"),
        "CB_GSO_SEGS": btf.offset("tcp_skb_cb", "tcp_gso_segs"),
        "SHINFO_GSO_SIZE": btf.offset("skb_shared_info", "gso_size"),
    }
    if btf.offset("skb_shared_info", "gso_segs") != values["SHINFO_GSO_SIZE"] + 2:
        raise BtfError("skb_shared_info.gso_segs does not follow gso_size")
    return QualityOffsets(values, _end_is_offset(btf))


def _end_is_offset(btf: Btf) -> bool:
    skb = btf.types[btf.structs["sk_buff"]]
    member = next((m for m in skb.members if m.name == "end"), None)
    if member is None:
        raise BtfError("no member end in sk_buff")
    end = btf.types[btf.resolve(member.type_id)]
    if end.kind == _INT and end.size_or_type == 4:
        return True
    if end.kind == _PTR:
        return False
    raise BtfError("sk_buff.end is neither a 32-bit offset nor a pointer")
