// SPDX-License-Identifier: Apache-2.0
//
// Parsing: Ethernet (VLAN tags), IPv4, IPv6 (extension headers) and the L4 ports into a
// flow6_key and the packet_meta. No maps.
#ifndef CONNSTATS_FLOWS_PARSE_H
#define CONNSTATS_FLOWS_PARSE_H

// Parse result: 0 when done, or the number of header bytes that were not in
// the linear part of the skb.
static __always_inline __u32 parse_l4(void *data, void *end, __u32 off,
                                      struct flow6_key *key, struct packet_meta *meta)
{
    __u8 proto = key->proto;
    if (proto == IPPROTO_ICMPV6 || proto == IPPROTO_ICMP) {
        off &= 0xffff;
        __u8 *icmp = data + off;
        if ((void *)(icmp + 1) > end)
            return off + 1;
        meta->icmp_type = icmp[0];
        return 0;
    }
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP &&
        proto != IPPROTO_SCTP && proto != IPPROTO_UDPLITE)
        return 0;
    off &= 0xffff;
    __u8 *l4 = data + off;
    if ((void *)(l4 + 4) > end)
        return off + (proto == IPPROTO_TCP ? 14 : 4);
    key->sport = ((__u16)l4[0] << 8) | l4[1];
    key->dport = ((__u16)l4[2] << 8) | l4[3];
    if (proto == IPPROTO_TCP) {
        if ((void *)(l4 + 14) > end)
            return off + 14;
        meta->tcp_flags = l4[13];
    }
    return 0;
}

static __always_inline __u32 parse_ipv4(void *data, void *end, __u32 off,
                                        struct flow6_key *key, struct packet_meta *meta)
{
    struct iphdr *ip = data + off;
    if ((void *)(ip + 1) > end)
        return off + sizeof(*ip);
    key->family = 4;
    key->proto = ip->protocol;
    __builtin_memcpy(key->src, &ip->saddr, 4);
    __builtin_memcpy(key->dst, &ip->daddr, 4);
    if (ip->frag_off & bpf_htons(0x1fff)) {
        meta->fragment = 1;
        return 0;  // not the first fragment: no L4 header here
    }
    if (ip->ihl < 5)
        return 0;  // malformed
    return parse_l4(data, end, off + ip->ihl * 4, key, meta);
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
    return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
           nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT ||
           nexthdr == IPPROTO_AH;
}

static __always_inline __u32 parse_ipv6(void *data, void *end, __u32 off,
                                        struct flow6_key *key, struct packet_meta *meta)
{
    struct ipv6hdr *ip6 = data + off;
    if ((void *)(ip6 + 1) > end)
        return off + sizeof(*ip6);
    key->family = 6;
    __builtin_memcpy(key->src, &ip6->saddr, 16);
    __builtin_memcpy(key->dst, &ip6->daddr, 16);
    __u8 nexthdr = ip6->nexthdr;
    off += sizeof(*ip6);
#pragma unroll
    for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
        if (!is_ipv6_ext(nexthdr))
            break;
        off &= 0x3fff;
        struct ipv6_ext *ext = data + off;
        if ((void *)(ext + 1) > end)
            return off + sizeof(*ext);
        if (nexthdr == IPPROTO_FRAGMENT) {
            if (ext->frag_off & bpf_htons(0xfff8)) {
                key->proto = ext->nexthdr;  // not the first fragment
                meta->fragment = 1;
                return 0;
            }
            off += 8;
        } else if (nexthdr == IPPROTO_AH) {
            off += (ext->hdrlen + 2) * 4;
        } else {
            off += (ext->hdrlen + 1) * 8;
        }
        nexthdr = ext->nexthdr;
    }
    key->proto = nexthdr;
    return parse_l4(data, end, off, key, meta);
}

static __always_inline __u32 parse_packet(struct __sk_buff *skb, __be16 ethertype,
                                          __u32 l2_len, struct flow6_key *key,
                                          struct packet_meta *meta)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    __u32 off = 0;
    if (l2_len) {
        struct ethhdr *eth = data;
        if ((void *)(eth + 1) > end)
            return ETH_HLEN;
        ethertype = eth->h_proto;
        off = ETH_HLEN;
#pragma unroll
        for (int i = 0; i < MAX_VLAN_TAGS; i++) {
            if (ethertype != bpf_htons(ETH_P_8021Q) &&
                ethertype != bpf_htons(ETH_P_8021AD))
                break;
            struct vlan_tag *tag = data + off;
            if ((void *)(tag + 1) > end)
                return off + sizeof(*tag);
            ethertype = tag->proto;
            off += sizeof(*tag);
        }
    }
    if (ethertype == bpf_htons(ETH_P_IP))
        return parse_ipv4(data, end, off, key, meta);
    if (ethertype == bpf_htons(ETH_P_IPV6))
        return parse_ipv6(data, end, off, key, meta);
    return 0;  // non-IP: family 0, counted per device and direction
}

#endif  // CONNSTATS_FLOWS_PARSE_H
