"""Hand-built frames for exact parser tests (checksums are not needed: nothing
delivers these frames to a socket, their destination MAC belongs to nobody)."""
import ipaddress
import struct

NOBODY_MAC = "02:00:00:00:c5:99"
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_ARP = 0x0800, 0x86DD, 0x8100, 0x0806


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def eth(src_mac: str, ethertype: int, vlan: int | None = None, dst_mac: str = NOBODY_MAC) -> bytes:
    head = mac(dst_mac) + mac(src_mac)
    if vlan is not None:
        head += struct.pack("!HH", ETH_P_8021Q, vlan)
    return head + struct.pack("!H", ethertype)


def ipv4(src: str, dst: str, proto: int, payload: bytes, options: bytes = b"", frag_offset: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 7, frag_offset // 8, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + options + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes, ext: list[tuple[int, bytes]] = ()) -> bytes:
    """``ext`` is a list of (header type, header body without its first two bytes)."""
    chain = b""
    types = [t for t, _ in ext] + [proto]
    for (kind, body), next_kind in zip(ext, types[1:], strict=False):
        if kind == 44:  # fragment header: fixed 8 bytes
            chain += struct.pack("!BB", next_kind, 0) + body
        else:
            chain += struct.pack("!BB", next_kind, (len(body) + 2) // 8 - 1) + body
    first = types[0]
    header = struct.pack("!IHBB", 0x60000000, len(chain) + len(payload), first, 64)
    header += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return header + chain + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def arp(src_mac: str) -> bytes:
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac(src_mac) + bytes(4) + bytes(6) + bytes(4)
    return eth(src_mac, ETH_P_ARP, dst_mac="ff:ff:ff:ff:ff:ff") + body
