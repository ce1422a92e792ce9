// SPDX-License-Identifier: Apache-2.0
//
// connstats TC classifier: counts packets and bytes per connection per device.
//
// The structs below are the schema. probe/kernel/loader.py mirrors them as numpy
// dtypes; keep both in step.
//
// Settings arrive as cflags (-DFLOW_CAPACITY=..., ...). Maps are double-buffered:
// `active_buffer[0]` says which of flows_0/flows_1 the program writes. The
// poller flips it, waits for an RCU grace period, then drains the other one.
//
// With -DPIN_DIR="/sys/fs/bpf/..." every map is pinned there: a probe that starts
// reuses the maps (and the counts in them) of the probe before it.
//
// Policy (microsegmentation, probe/policy/): the policy tables are double-buffered
// too. `policy_state[0]` is one 32-bit word: mode (off, monitor, protect), the table
// set in use (0 or 1) and a generation. A flow entry keeps the verdict it was judged
// with and the word it was judged under; a known connection costs one compare per
// packet, and is judged again (rules, address groups, who opened it) only when it is
// new in the interval or the word changed.
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

#ifndef POLICY_DEVICES
#define POLICY_DEVICES 16384
#endif
#ifndef POLICY_PREFIXES
#define POLICY_PREFIXES 65536
#endif
#ifndef POLICY_PORT_ENTRIES
#define POLICY_PORT_ENTRIES 65536
#endif
#ifndef POLICY_CONNS
#define POLICY_CONNS 262144
#endif
// Groups per policy, built-ins included: one bit each in a __u64.
#define POLICY_GROUPS 64

#define POLICY_MODE_MASK 3
#define POLICY_MODE_PROTECT 2
#define POLICY_SET_SHIFT 2

#define VERDICT_NONE 0   // the device is not governed (or no policy)
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

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
    __u32 verdict;        // VERDICT_*, as judged under `policy`
    __u32 policy;         // the policy word the verdict was judged under
};

// What the parser saw besides the key.
struct packet_meta {
    __u32 tcp_flags;
    __u32 icmp_type;      // ICMP and ICMPv6 type (neighbour discovery and errors are never blocked)
    __u32 fragment;       // 1: not the first fragment (no L4 header; its first one was judged)
};

// -- policy tables (every key starts with the table set it belongs to) -----------

struct policy_device_key {
    __u32 ifindex;
    __u32 set;
};

struct policy_device {
    __u64 groups;         // the groups the device's own end (its container) is in
};

// Address -> the groups whose prefixes hold it. prefixlen counts the 16 bits of
// set and family, then the address bits. The catch-all entry (prefixlen 16) is `world`.
struct policy_addr_key {
    __u32 prefixlen;
    __u8 set;
    __u8 family;
    __u8 addr[16];
};

// (protocol, server port) -> which groups may open connections to which.
struct policy_port_key {
    __u32 prefixlen;      // 16 (set, proto) + port prefix bits
    __u8 set;
    __u8 proto;
    __u8 port[2];         // network byte order
};

struct policy_port_rules {
    __u64 allowed_to[POLICY_GROUPS];  // [from group] -> mask of `to` groups
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
#define TABLE_F(type, key, value, name, size, flags) \
    BPF_TABLE_PINNED(type, key, value, name, size, PIN_DIR "/" #name, flags)
#else
#define TABLE(type, key, value, name, size) BPF_TABLE(type, key, value, name, size)
#define TABLE_F(type, key, value, name, size, flags) BPF_F_TABLE(type, key, value, name, size, flags)
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
TABLE("array", int, __u32, policy_state, 1);
TABLE("hash", struct policy_device_key, struct policy_device, policy_devices, POLICY_DEVICES);
TABLE_F("lpm_trie", struct policy_addr_key, __u64, policy_addrs, POLICY_PREFIXES, BPF_F_NO_PREALLOC);
TABLE_F("lpm_trie", struct policy_port_key, struct policy_port_rules, policy_ports,
        POLICY_PORT_ENTRIES, BPF_F_NO_PREALLOC);
// Who opened a connection on a governed device: its first packet's key (direction 0).
TABLE("lru_hash", struct flow6_key, __u8, policy_conns, POLICY_CONNS);

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
    __u64 *groups = policy_addrs.lookup(&k);
    return groups ? *groups : 0;
}

// May a member of `from` open a `proto` connection to a member of `to` on `port`?
static __always_inline int allowed(__u32 set, __u8 proto, __u16 port, __u64 from, __u64 to)
{
    struct policy_port_key k = {.prefixlen = 32, .set = set, .proto = proto,
                                .port = {port >> 8, port & 0xff}};
    struct policy_port_rules *rules = policy_ports.lookup(&k);
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
        policy_conns.delete(&backward);
        policy_conns.update(&forward, &one);
        return 1;
    }
    if (policy_conns.lookup(&backward))
        return 0;
    if (policy_conns.lookup(&forward))
        return 1;
    if (key->proto == IPPROTO_TCP)
        return 2;
    policy_conns.update(&forward, &one);
    return 1;
}

// The verdict for the connection of `key` under the policy word `word`.
static __always_inline __u32 judge(__u32 word, struct flow6_key *key, struct packet_meta *meta)
{
    if (!(word & POLICY_MODE_MASK))
        return VERDICT_NONE;
    __u32 set = (word >> POLICY_SET_SHIFT) & 1;
    struct policy_device_key dk = {.ifindex = key->ifindex, .set = set};
    struct policy_device *device = policy_devices.lookup(&dk);
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

// Count one packet under `key` in the active buffer. A new connection is inserted
// with BPF_NOEXIST already holding this packet; losing that race to another CPU
// means looking up again. A full map counts the packet as overflow. Returns the
// TC action: the connection's verdict under the policy now in force.
static __always_inline int count(int v6, void *key, struct flow6_key *key6, __u32 len,
                                 struct packet_meta *meta)
{
    __u32 zero = 0;
    __u32 *active = active_buffer.lookup(&zero);
    __u32 buffer = active ? *active : 0;
    __u32 *policy = policy_state.lookup(&zero);
    __u32 word = policy ? *policy : 0;
    __u64 now = bpf_ktime_get_coarse_ns();
    __u64 tcp_flags = meta->tcp_flags;
    struct flow_counters *c = lookup_flow(buffer, v6, key);
    if (c) {
        __u32 verdict = c->verdict;
        if (key6->proto == IPPROTO_ICMP || key6->proto == IPPROTO_ICMPV6) {
            // Echo requests and replies of both sides share one key (no ports): judged
            // per packet; the record keeps the strictest verdict it saw.
            verdict = judge(word, key6, meta);
            if (c->policy != word || verdict > c->verdict)
                c->verdict = verdict;
            c->policy = word;
        } else if (c->policy != word) {
            verdict = c->verdict = judge(word, key6, meta);
            c->policy = word;
        }
        add_to(c, len, tcp_flags, now);
        return action(word, verdict);
    }
    __u32 verdict = judge(word, key6, meta);
    struct flow_counters first = {.packets = 1, .bytes = len,
                                  .first_seen_ns = now, .last_seen_ns = now,
                                  .tcp_flags = tcp_flags, .verdict = verdict, .policy = word};
    int err = insert_flow(buffer, v6, key, &first);
    if (err == 0)
        return action(word, verdict);
    if (err == -EEXIST) {
        c = lookup_flow(buffer, v6, key);
        if (c) {
            add_to(c, len, tcp_flags, now);
            return action(word, verdict);
        }
    }
    count_overflow(key6->ifindex, key6->direction, buffer, len);
    return action(word, verdict);
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
    struct packet_meta meta = {};
    __u32 need = parse_packet(skb, ethertype, l2_len, &key, &meta);
    if (need && need <= len && bpf_skb_pull_data(skb, len < PULL_LEN ? len : PULL_LEN) == 0)
        parse_packet(skb, ethertype, l2_len, &key, &meta);
    if (key.family == 6)
        return count(1, &key, &key, len, &meta);
    struct flow4_key key4 = {.ifindex = ifindex, .direction = key.direction,
                             .family = key.family, .proto = key.proto,
                             .sport = key.sport, .dport = key.dport};
    __builtin_memcpy(key4.src, key.src, 4);
    __builtin_memcpy(key4.dst, key.dst, 4);
    return count(0, &key4, &key, len, &meta);
}

int connstats_ingress(struct __sk_buff *skb)
{
    return classify(skb, DIR_INGRESS);
}

int connstats_egress(struct __sk_buff *skb)
{
    return classify(skb, DIR_EGRESS);
}
