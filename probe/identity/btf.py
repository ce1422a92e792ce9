"""Member offsets of the running kernel's structs, read from its BTF (``/sys/kernel/btf/vmlinux``).

The socket-owner program reads three things from a ``struct sock`` (its namespace's inode and
its local port); where they sit depends on the kernel build, and the installed headers may be
an older kernel's (6.1 headers on a 6.18 kernel put ``ns_common.inum`` 8 bytes off). So the
offsets come from the kernel's own type information, parsed here in pure Python (no libbpf
CO-RE in BCC), and reach the program as ``-D`` flags.

    header ─ type section (one ``btf_type`` + its kind's trailing data per type id)
           └ string section (names by offset)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
# bytes that follow a btf_type of each kind: fixed, or per vlen entry
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_QUALIFIERS = {8, 9, 10, 11, 18}  # TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: size_type is a type


class BtfError(ValueError):
    """The BTF blob is not one this reader understands, or lacks a struct or member."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True, slots=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int
    members: tuple[Member, ...] = ()


class Btf:
    """The types of one BTF blob, by id; structs and unions also by name (the first of a name)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF too short for its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}, or another byte order)")
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[BtfType] = [BtfType(0, "void", 0)]  # id 0 is void
        self._parse(data, hdr_len + type_off, hdr_len + type_off + type_len)
        self.structs: dict[str, int] = {}
        for type_id, t in enumerate(self.types):
            if t.kind in (_STRUCT, _UNION) and t.name:
                self.structs.setdefault(t.name, type_id)

    @classmethod
    def read(cls, path: Path = VMLINUX_BTF) -> Btf:
        return cls(path.read_bytes())

    def _name(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode()

    def _parse(self, data: bytes, pos: int, end: int) -> None:
        while pos < end:
            name_off, info, size_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: tuple[Member, ...] = ()
            if kind in (_STRUCT, _UNION):
                members = tuple(self._member(data, pos + 12 * i, kflag) for i in range(vlen))
            if kind in _PER_ENTRY:
                pos += _PER_ENTRY[kind] * vlen
            else:
                pos += _FIXED.get(kind, 0)
            self.types.append(BtfType(kind, self._name(name_off), size_type, members))

    def _member(self, data: bytes, pos: int, kflag: int) -> Member:
        name_off, type_id, offset = struct.unpack_from("<III", data, pos)
        return Member(self._name(name_off), type_id, offset & 0xFFFFFF if kflag else offset)

    def resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type itself."""
        while self.types[type_id].kind in _QUALIFIERS:
            type_id = self.types[type_id].size_or_type
        return type_id

    def offset(self, struct_name: str, *path: str) -> int:
        """Byte offset of ``struct_name.path[0].path[1]...``; a step may be inside anonymous
        unions and structs. ``BtfError`` if the struct or a member is missing."""
        type_id = self.structs.get(struct_name)
        if type_id is None:
            raise BtfError(f"no struct {struct_name} in BTF")
        total = 0
        for step in path:
            found = self._find(type_id, step)
            if found is None:
                raise BtfError(f"no member {step} in {self.types[type_id].name or 'an anonymous struct'}")
            bits, type_id = found
            total += bits
            type_id = self.resolve(type_id)
        if total % 8:
            raise BtfError(f"{struct_name}.{'.'.join(path)} is a bit field")
        return total // 8

    def _find(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member ``name``, looking into anonymous members."""
        for member in self.types[type_id].members:
            if member.name == name:
                return member.bit_offset, member.type_id
            if not member.name:
                inner = self.resolve(member.type_id)
                if self.types[inner].kind in (_STRUCT, _UNION):
                    found = self._find(inner, name)
                    if found is not None:
                        return member.bit_offset + found[0], found[1]
        return None


@dataclass(frozen=True)
class SockOffsets:
    """Where the socket-owner program finds a socket's namespace and local port."""

    skc_net: int  # sock -> struct net * (possible_net_t.net)
    skc_num: int  # sock -> local port, host order
    net_ns: int  # struct net -> ns (struct ns_common)
    ns_inum: int  # ns_common -> inum (the namespace's inode)

    def cflags(self) -> list[str]:
        return [f"-DOFF_SKC_NET={self.skc_net}", f"-DOFF_SKC_NUM={self.skc_num}",
                f"-DOFF_NET_NS={self.net_ns}", f"-DOFF_NS_INUM={self.ns_inum}"]


def sock_offsets(btf: Btf) -> SockOffsets:
    """The offsets of ``SockOffsets`` in this kernel; ``BtfError`` if a struct differs."""
    common = btf.offset("sock", "__sk_common")
    return SockOffsets(
        skc_net=common + btf.offset("sock_common", "skc_net", "net"),
        skc_num=common + btf.offset("sock_common", "skc_num"),
        net_ns=btf.offset("net", "ns"),
        ns_inum=btf.offset("ns_common", "inum"),
    )
