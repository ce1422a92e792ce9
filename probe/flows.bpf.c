// SPDX-License-Identifier: Apache-2.0
//
// connstats TC classifier: counts packets and bytes per connection per device.
//
// The structs below are the schema. probe/kernel.py mirrors them as numpy
// dtypes; keep both in step.
//
// Settings arrive as cflags (-DFLOW_CAPACITY=..., ...). Maps are double-buffered:
// `active_buffer[0]` says which of flows_0/flows_1 the program writes. The
// poller flips it, waits for an RCU grace period, then drains the other one.
//
// With -DPIN_DIR="/sys/fs/bpf/..." every map is pinned there: a probe that starts
// reuses the maps (and the counts in them) of the probe before it.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#ifndef FLOW_CAPACITY
#define FLOW_CAPACITY 131072
#endif
// Devices with ifindex < DEVICE_SLOTS keep their config in an array (an inlined
// lookup); the rare higher ifindexes use the devices_high hash.
#ifndef DEVICE_SLOTS
#define DEVICE_SLOTS 65536
#endif
#ifndef DEVICE_HIGH_CAPACITY
#define DEVICE_HIGH_CAPACITY 16384
#endif
#ifndef OVERFLOW_CAPACITY
#define OVERFLOW_CAPACITY 8192
#endif

#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT_HEADERS 6
// Bytes to make linear when headers straddle the skb's linear part.
#define PULL_LEN 256

// The parser fills a flow6_key for every packet; IPv4 and non-IP packets are then
// counted under the shorter flow4_key, because hashing the key is most of the cost
// of a map lookup (20 bytes instead of 44 saves ~15% per packet).
struct flow6_key {
    __u32 ifindex;
    __u8 direction;   // DIR_*, after the device's direction mode
    __u8 family;      // 4, 6, or 0 for non-IP frames
    __u8 proto;       // IP protocol number
    __u8 pad;         // always 0
    __u8 src[16];     // IPv4 uses the first 4 bytes
    __u8 dst[16];
    __u16 sport;      // host byte order; 0 when the protocol has no ports
    __u16 dport;
};

struct flow4_key {
    __u32 ifindex;
    __u8 direction;
    __u8 family;      // 4, or 0 for non-IP frames
    __u8 proto;
    __u8 pad;
    __u8 src[4];
    __u8 dst[4];
    __u16 sport;
    __u16 dport;
};

struct flow_counters {
    __u64 packets;
    __u64 bytes;          // skb->len at the hook, L2 header included
    __u64 first_seen_ns;  // CLOCK_MONOTONIC
    __u64 last_seen_ns;
    __u64 tcp_flags;      // OR of the TCP flag bytes seen (64 bits for atomic OR)
};

// All zero is the default: normal direction, Ethernet header.
struct device_config {
    __u8 inverted;  // 1: report ingress as egress and vice versa (veth)
    __u8 no_l2;     // 1: packets start at the IP header (tun, wireguard)
    __u8 attached;  // user space only: 1 while a probe has this device attached
    __u8 mode;      // user space only: the direction mode asked for (index in DIRECTION_MODES)
};

// User space only: where the poller is, so that the next probe continues the
// interval sequence and finishes a drain that a crash interrupted.
struct probe_state {
    __u64 instance;        // random, fixed while the pins live: part of every message id
    __u64 next_seq;        // sequence number of the interval being counted now
    __u64 next_start_ns;   // wall clock when it began
    __u64 pending_seq;     // the interval in the inactive buffer, while pending
    __u64 pending_start_ns;
    __u64 pending_end_ns;
    __s64 pending_mono_to_wall_ns;
    __u32 pending;         // 1: an interval was flipped out and is not yet stored
    __u32 pending_buffer;  // the buffer it is in
    __u32 clearing;        // 1: it is stored, and its maps are being emptied
    __u32 pad;
};

struct overflow_key {
    __u32 ifindex;
    __u8 buffer;
    __u8 direction;
    __u16 pad;
};

struct overflow_counters {
    __u64 packets;
    __u64 bytes;
};

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct ipv6_ext {
    __u8 nexthdr;
    __u8 hdrlen;
    __be16 frag_off;  // meaningful for the fragment header only
};

#ifdef PIN_DIR
#define TABLE(type, key, value, name, size) \
    BPF_TABLE_PINNED(type, key, value, name, size, PIN_DIR "/" #name)
#else
#define TABLE(type, key, value, name, size) BPF_TABLE(type, key, value, name, size)
#endif

TABLE("hash", struct flow4_key, struct flow_counters, flows4_0, FLOW_CAPACITY);
TABLE("hash", struct flow4_key, struct flow_counters, flows4_1, FLOW_CAPACITY);
TABLE("hash", struct flow6_key, struct flow_counters, flows6_0, FLOW_CAPACITY);
TABLE("hash", struct flow6_key, struct flow_counters, flows6_1, FLOW_CAPACITY);
TABLE("array", int, __u32, active_buffer, 1);
TABLE("array", int, struct device_config, devices, DEVICE_SLOTS);
TABLE("hash", __u32, struct device_config, devices_high, DEVICE_HIGH_CAPACITY);
TABLE("percpu_hash", struct overflow_key, struct overflow_counters, overflow, OVERFLOW_CAPACITY);
// Last resort when even the overflow map is full: per buffer and direction, no device
// (index buffer * 2 + direction). Counted + overflow + this = what passed, always.
TABLE("percpu_array", int, struct overflow_counters, overflow_unattributed, 4);
TABLE("array", int, struct probe_state, probe_state, 1);

// Parse result: 0 when done, or the number of header bytes that were not in
// the linear part of the skb.
static __always_inline __u32 parse_l4(void *data, void *end, __u32 off,
                                      struct flow6_key *key, __u32 *tcp_flags)
{
    __u8 proto = key->proto;
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
        *tcp_flags = l4[13];
    }
    return 0;
}

static __always_inline __u32 parse_ipv4(void *data, void *end, __u32 off,
                                        struct flow6_key *key, __u32 *tcp_flags)
{
    struct iphdr *ip = data + off;
    if ((void *)(ip + 1) > end)
        return off + sizeof(*ip);
    key->family = 4;
    key->proto = ip->protocol;
    __builtin_memcpy(key->src, &ip->saddr, 4);
    __builtin_memcpy(key->dst, &ip->daddr, 4);
    if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x1fff)))
        return 0;  // malformed, or not the first fragment: no L4 header here
    return parse_l4(data, end, off + ip->ihl * 4, key, tcp_flags);
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
    return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
           nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT ||
           nexthdr == IPPROTO_AH;
}

static __always_inline __u32 parse_ipv6(void *data, void *end, __u32 off,
                                        struct flow6_key *key, __u32 *tcp_flags)
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
    return parse_l4(data, end, off, key, tcp_flags);
}

static __always_inline __u32 parse_packet(struct __sk_buff *skb, __be16 ethertype,
                                          __u32 l2_len, struct flow6_key *key,
                                          __u32 *tcp_flags)
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
        return parse_ipv4(data, end, off, key, tcp_flags);
    if (ethertype == bpf_htons(ETH_P_IPV6))
        return parse_ipv6(data, end, off, key, tcp_flags);
    return 0;  // non-IP: family 0, counted per device and direction
}

static __always_inline void count_overflow(__u32 ifindex, __u8 direction,
                                           __u32 buffer, __u32 len)
{
    struct overflow_key okey = {.ifindex = ifindex, .buffer = buffer, .direction = direction};
    struct overflow_counters *o = overflow.lookup(&okey);
    if (o) {
        // Per-CPU value: no other writer.
        o->packets += 1;
        o->bytes += len;
        return;
    }
    struct overflow_counters first = {.packets = 1, .bytes = len};
    if (overflow.update(&okey, &first) == 0)
        return;
    __u32 slot = buffer * 2 + direction;
    o = overflow_unattributed.lookup(&slot);
    if (o) {
        o->packets += 1;
        o->bytes += len;
    }
}

static __always_inline void add_to(struct flow_counters *c, __u32 len,
                                   __u64 tcp_flags, __u64 now)
{
    __sync_fetch_and_add(&c->packets, 1);
    __sync_fetch_and_add(&c->bytes, len);
    if (now > c->last_seen_ns)
        c->last_seen_ns = now;
    if ((c->tcp_flags | tcp_flags) != c->tcp_flags)
        __sync_fetch_and_or(&c->tcp_flags, tcp_flags);
}

static __always_inline struct flow_counters *lookup_flow(__u32 buffer, int v6, void *key)
{
    if (v6)
        return buffer ? flows6_1.lookup(key) : flows6_0.lookup(key);
    return buffer ? flows4_1.lookup(key) : flows4_0.lookup(key);
}

static __always_inline int insert_flow(__u32 buffer, int v6, void *key,
                                       struct flow_counters *first)
{
    if (v6)
        return buffer ? flows6_1.insert(key, first) : flows6_0.insert(key, first);
    return buffer ? flows4_1.insert(key, first) : flows4_0.insert(key, first);
}

// Count one packet under `key` in the active buffer. A new connection is inserted
// with BPF_NOEXIST already holding this packet; losing that race to another CPU
// means looking up again. A full map counts the packet as overflow.
static __always_inline void count(int v6, void *key, __u32 ifindex, __u8 direction,
                                  __u32 len, __u64 tcp_flags)
{
    __u32 zero = 0;
    __u32 *active = active_buffer.lookup(&zero);
    __u32 buffer = active ? *active : 0;
    __u64 now = bpf_ktime_get_coarse_ns();
    struct flow_counters *c = lookup_flow(buffer, v6, key);
    if (c) {
        add_to(c, len, tcp_flags, now);
        return;
    }
    struct flow_counters first = {.packets = 1, .bytes = len,
                                  .first_seen_ns = now, .last_seen_ns = now,
                                  .tcp_flags = tcp_flags};
    int err = insert_flow(buffer, v6, key, &first);
    if (err == 0)
        return;
    if (err == -EEXIST) {
        c = lookup_flow(buffer, v6, key);
        if (c) {
            add_to(c, len, tcp_flags, now);
            return;
        }
    }
    count_overflow(ifindex, direction, buffer, len);
}

static __always_inline int classify(struct __sk_buff *skb, __u8 hook_direction)
{
    __u32 ifindex = skb->ifindex;
    struct device_config *dev = ifindex < DEVICE_SLOTS ? devices.lookup(&ifindex)
                                                       : devices_high.lookup(&ifindex);
    __u32 l2_len = dev && dev->no_l2 ? 0 : ETH_HLEN;
    struct flow6_key key = {};
    key.ifindex = ifindex;
    key.direction = hook_direction ^ (dev ? dev->inverted : 0);
    __u32 len = skb->len;
    __be16 ethertype = skb->protocol;  // used when the device has no L2 header
    __u32 tcp_flags = 0;
    __u32 need = parse_packet(skb, ethertype, l2_len, &key, &tcp_flags);
    if (need && need <= len && bpf_skb_pull_data(skb, len < PULL_LEN ? len : PULL_LEN) == 0)
        parse_packet(skb, ethertype, l2_len, &key, &tcp_flags);
    if (key.family == 6) {
        count(1, &key, ifindex, key.direction, len, tcp_flags);
        return TC_ACT_UNSPEC;
    }
    struct flow4_key key4 = {.ifindex = ifindex, .direction = key.direction,
                             .family = key.family, .proto = key.proto,
                             .sport = key.sport, .dport = key.dport};
    __builtin_memcpy(key4.src, key.src, 4);
    __builtin_memcpy(key4.dst, key.dst, 4);
    count(0, &key4, ifindex, key.direction, len, tcp_flags);
    return TC_ACT_UNSPEC;
}

int connstats_ingress(struct __sk_buff *skb)
{
    return classify(skb, DIR_INGRESS);
}

int connstats_egress(struct __sk_buff *skb)
{
    return classify(skb, DIR_EGRESS);
}
