// SPDX-License-Identifier: Apache-2.0
//
// connstats TC classifier: counts packets and bytes per connection per device.
//
// The structs (flows_structs.h) are the schema. probe/kernel/loader.py mirrors them as
// numpy dtypes; keep both in step. One header per concern: flows_parse.h (headers into a
// key), flows_policy.h (verdicts), flows_count.h (counting); this file declares the maps,
// the accessors through which the headers reach them, and the entry points.
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

#include "flows_structs.h"

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

// -- map access for the headers ------------------------------------------------
// BCC rewrites `map.lookup()` (and every other use of a map) only in this file; the
// headers reach the maps through these one-line accessors, inlined like the rest.

static __always_inline __u32 *active_buffer_lookup(__u32 *zero)
{
    return active_buffer.lookup(zero);
}

static __always_inline __u32 *policy_state_lookup(__u32 *zero)
{
    return policy_state.lookup(zero);
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

static __always_inline struct overflow_counters *overflow_lookup(struct overflow_key *key)
{
    return overflow.lookup(key);
}

static __always_inline int overflow_update(struct overflow_key *key, struct overflow_counters *value)
{
    return overflow.update(key, value);
}

static __always_inline struct overflow_counters *overflow_unattributed_lookup(__u32 *slot)
{
    return overflow_unattributed.lookup(slot);
}

static __always_inline struct policy_device *policy_devices_lookup(struct policy_device_key *key)
{
    return policy_devices.lookup(key);
}

static __always_inline __u64 *policy_addrs_lookup(struct policy_addr_key *key)
{
    return policy_addrs.lookup(key);
}

static __always_inline struct policy_port_rules *policy_ports_lookup(struct policy_port_key *key)
{
    return policy_ports.lookup(key);
}

static __always_inline __u8 *policy_conns_lookup(struct flow6_key *key)
{
    return policy_conns.lookup(key);
}

static __always_inline void policy_conns_update(struct flow6_key *key, __u8 *value)
{
    policy_conns.update(key, value);
}

static __always_inline void policy_conns_delete(struct flow6_key *key)
{
    policy_conns.delete(key);
}


#include "flows_parse.h"
#include "flows_policy.h"
#include "flows_count.h"

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
