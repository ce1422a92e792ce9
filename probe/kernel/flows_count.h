// SPDX-License-Identifier: Apache-2.0
//
// Counting: one packet into the active buffer's flow map, or into the overflow counters
// when the map is full. The maps through the accessors of flows.bpf.c, as in flows_policy.h.
#ifndef CONNSTATS_FLOWS_COUNT_H
#define CONNSTATS_FLOWS_COUNT_H

static __always_inline void count_overflow(__u32 ifindex, __u8 direction,
                                           __u32 buffer, __u32 len)
{
    struct overflow_key okey = {.ifindex = ifindex, .buffer = buffer, .direction = direction};
    struct overflow_counters *o = overflow_lookup(&okey);
    if (o) {
        // Per-CPU value: no other writer.
        o->packets += 1;
        o->bytes += len;
        return;
    }
    struct overflow_counters first = {.packets = 1, .bytes = len};
    if (overflow_update(&okey, &first) == 0)
        return;
    __u32 slot = buffer * 2 + direction;
    o = overflow_unattributed_lookup(&slot);
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

// Count one packet under `key` in the active buffer. A new connection is inserted
// with BPF_NOEXIST already holding this packet; losing that race to another CPU
// means looking up again. A full map counts the packet as overflow. Returns the
// TC action: the connection's verdict under the policy now in force.
static __always_inline int count(int v6, void *key, struct flow6_key *key6, __u32 len,
                                 struct packet_meta *meta)
{
    __u32 zero = 0;
    __u32 *active = active_buffer_lookup(&zero);
    __u32 buffer = active ? *active : 0;
    __u32 *policy = policy_state_lookup(&zero);
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

#endif  // CONNSTATS_FLOWS_COUNT_H
