// SPDX-License-Identifier: Apache-2.0
//
// Policy (microsegmentation): the verdict for a connection under the policy word, and
// the TC action it asks for. BCC rewrites map access (`map.lookup()`) only in the main
// file: the maps are reached through the accessors flows.bpf.c defines before it
// includes this file.
#ifndef CONNSTATS_FLOWS_POLICY_H
#define CONNSTATS_FLOWS_POLICY_H

// -- policy --------------------------------------------------------------------

// ARP and other non-IP frames, IPv6 neighbour discovery (ICMPv6 133-137), multicast
// membership (IGMP, MLD), ICMP errors (they belong to a connection of their own), DHCP
// (v4 67/68, v6 546/547) and fragments after the first (the first one carries the ports
// and is judged) are never blocked.
static __always_inline int always_allowed(struct flow6_key *key, struct packet_meta *meta)
{
    if (key->family == 0 || meta->fragment)  // a fragment is useless without its first one
        return 1;
    __u32 type = meta->icmp_type;
    if (key->proto == IPPROTO_ICMPV6)  // errors (1-4), MLD (130-132, 143), neighbour discovery
        return (type >= 1 && type <= 4) || (type >= 130 && type <= 137) || type == 143;
    if (key->proto == IPPROTO_IGMP)  // multicast membership: what bridges snoop
        return 1;
    if (key->proto == IPPROTO_ICMP)  // errors: unreachable, time exceeded, parameter problem
        return type == 3 || type == 11 || type == 12;
    if (key->proto == IPPROTO_UDP) {
        __u16 s = key->sport, d = key->dport;
        return s == 67 || s == 68 || d == 67 || d == 68 ||
               s == 546 || s == 547 || d == 546 || d == 547;
    }
    return 0;
}

static __always_inline __u64 address_groups(__u32 set, __u8 family, __u8 *addr)
{
    struct policy_addr_key k = {.prefixlen = 16 + (family == 6 ? 128 : 32),
                                .set = set, .family = family};
    __builtin_memcpy(k.addr, addr, 16);
    __u64 *groups = policy_addrs_lookup(&k);
    return groups ? *groups : 0;
}

// May a member of `from` open a `proto` connection to a member of `to` on `port`?
static __always_inline int allowed(__u32 set, __u8 proto, __u16 port, __u64 from, __u64 to)
{
    struct policy_port_key k = {.prefixlen = 32, .set = set, .proto = proto,
                                .port = {port >> 8, port & 0xff}};
    struct policy_port_rules *rules = policy_ports_lookup(&k);
    if (!rules || !from || !to)
        return 0;
    for (int i = 0; i < POLICY_GROUPS; i++) {
        if (((from >> i) & 1) && (rules->allowed_to[i] & to))
            return 1;
    }
    return 0;
}

static __always_inline void conn_key(struct flow6_key *out, struct flow6_key *key, int reverse)
{
    out->ifindex = key->ifindex;
    out->family = key->family;
    out->proto = key->proto;
    if (reverse) {
        __builtin_memcpy(out->src, key->dst, 16);
        __builtin_memcpy(out->dst, key->src, 16);
        out->sport = key->dport;
        out->dport = key->sport;
    } else {
        __builtin_memcpy(out->src, key->src, 16);
        __builtin_memcpy(out->dst, key->dst, 16);
        out->sport = key->sport;
        out->dport = key->dport;
    }
}

static __always_inline int is_echo(struct flow6_key *key, struct packet_meta *meta, int reply)
{
    if (key->proto == IPPROTO_ICMP)
        return meta->icmp_type == (reply ? 0 : 8);
    return key->proto == IPPROTO_ICMPV6 && meta->icmp_type == (reply ? 129 : 128);
}

// Who opened the connection of this packet: 1 this packet's source, 0 its destination,
// 2 unknown (TCP seen mid-stream: either way may allow it). TCP: the side that sent the
// SYN; ICMP: the side that sent the echo request; other protocols: the side whose packet
// was seen first.
static __always_inline int opened_by_source(struct flow6_key *key, struct packet_meta *meta)
{
    struct flow6_key forward = {}, backward = {};
    conn_key(&forward, key, 0);
    conn_key(&backward, key, 1);
    __u8 one = 1;
    if (is_echo(key, meta, 1))
        return 0;
    if ((key->proto == IPPROTO_TCP && (meta->tcp_flags & 0x12) == 0x02) ||  // SYN, no ACK
        is_echo(key, meta, 0)) {
        policy_conns_delete(&backward);
        policy_conns_update(&forward, &one);
        return 1;
    }
    if (policy_conns_lookup(&backward))
        return 0;
    if (policy_conns_lookup(&forward))
        return 1;
    if (key->proto == IPPROTO_TCP)
        return 2;
    policy_conns_update(&forward, &one);
    return 1;
}

// The verdict for the connection of `key` under the policy word `word`.
static __always_inline __u32 judge(__u32 word, struct flow6_key *key, struct packet_meta *meta)
{
    if (!(word & POLICY_MODE_MASK))
        return VERDICT_NONE;
    __u32 set = (word >> POLICY_SET_SHIFT) & 1;
    struct policy_device_key dk = {.ifindex = key->ifindex, .set = set};
    struct policy_device *device = policy_devices_lookup(&dk);
    if (!device)
        return VERDICT_NONE;
    if (always_allowed(key, meta))
        return VERDICT_ALLOW;
    __u64 src = address_groups(set, key->family, key->src);
    __u64 dst = address_groups(set, key->family, key->dst);
    if (key->direction == DIR_EGRESS)  // leaving the device's own end
        src |= device->groups;
    else
        dst |= device->groups;
    int opener = opened_by_source(key, meta);
    int ok = 0;
    if (opener != 0)
        ok = allowed(set, key->proto, key->dport, src, dst);
    if (!ok && opener != 1)
        ok = allowed(set, key->proto, key->sport, dst, src);
    return ok ? VERDICT_ALLOW : VERDICT_DENY;
}

static __always_inline int action(__u32 word, __u32 verdict)
{
    if (verdict == VERDICT_DENY && (word & POLICY_MODE_MASK) == POLICY_MODE_PROTECT)
        return TC_ACT_SHOT;  // counted all the same: counted = delivered + dropped
    return TC_ACT_UNSPEC;
}

#endif  // CONNSTATS_FLOWS_POLICY_H
