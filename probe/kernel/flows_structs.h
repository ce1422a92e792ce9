// SPDX-License-Identifier: Apache-2.0
//
// The schema: settings, constants and the structs of every map's keys and values.
// probe/kernel/loader.py mirrors the structs as numpy dtypes; keep both in step.
#ifndef CONNSTATS_FLOWS_STRUCTS_H
#define CONNSTATS_FLOWS_STRUCTS_H

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

#endif  // CONNSTATS_FLOWS_STRUCTS_H
