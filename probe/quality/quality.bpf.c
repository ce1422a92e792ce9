// How well: RTT and retransmitted segments per TCP socket, and the packets the kernel drops,
// from tracepoints only (nothing runs on the classifier's per-packet path):
//
//   tcp:tcp_probe              (each segment a socket receives) srtt -> rtt min/max/sum/samples
//   tcp:tcp_retransmit_skb     retransmitted segments, as TcpRetransSegs counts them
//   tcp:tcp_retransmit_synack  a retransmitted SYN-ACK: one segment (TcpRetransSegs counts it)
//   skb:kfree_skb              packets and bytes per (device, reason, 5-tuple)
//
// Filters first: sockets of namespaces not in `watched_netns` and drops on devices not in
// `watched_devices` ((netns, 0): drops without a device in that namespace) return before any other map is touched. Struct fields the tracepoints
// do not carry (a socket's namespace, an skb's device, headers and segment counts) are read
// at offsets from the running kernel's BTF, passed as -DOFF_* (offsets.py): the headers BCC
// compiles with may be an older kernel's.
//
// Double buffered like the classifier: `active_buffer[0]` says which of the *_0 / *_1 maps
// the programs write; user space flips it, waits for a grace period, then reads and empties
// the other copy, so every count lands in exactly one interval.
#include <uapi/linux/in.h>
#include <uapi/linux/if_ether.h>
#include "quality.h"
// kfree_skb's `reason` field is an enum skb_drop_reason: declared by the headers' dropreason
// header (its values are not used: the names come from the running kernel's format file)
#if __has_include(<net/dropreason-core.h>)
#include <net/dropreason-core.h>
#elif __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#else
enum skb_drop_reason { SKB_DROP_REASON_PLACEHOLDER_ };
#endif

#ifndef SOCKETS_CAPACITY
#define SOCKETS_CAPACITY 16384
#endif
#ifndef DROPS_CAPACITY
#define DROPS_CAPACITY 8192
#endif
#ifndef WATCH_CAPACITY
#define WATCH_CAPACITY 4096
#endif
#ifndef MIN_REASON
#define MIN_REASON 2  // below: not a drop (SKB_NOT_DROPPED_YET, SKB_CONSUMED); from the format
#endif

#define AF_INET4 2
#define AF_INET6_ 10
#define IPPROTO_SCTP_ 132

BPF_ARRAY(active_buffer, u32, 1);
BPF_HASH(watched_netns, u32, u8, WATCH_CAPACITY);
BPF_HASH(watched_devices, struct device_key, u8, WATCH_CAPACITY);
BPF_HASH(sockets_0, struct sock_key, struct sock_stats, SOCKETS_CAPACITY);
BPF_HASH(sockets_1, struct sock_key, struct sock_stats, SOCKETS_CAPACITY);
BPF_HASH(drops_0, struct drop_key, struct drop_value, DROPS_CAPACITY);
BPF_HASH(drops_1, struct drop_key, struct drop_value, DROPS_CAPACITY);
// events that found their table full, per buffer * 2 + table (0 sockets, 1 drops)
BPF_PERCPU_ARRAY(lost, u64, 4);

static __always_inline u32 net_inum(const void *net)
{
    u32 inum = 0;
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + OFF_NET_NS + OFF_NS_INUM);
    return inum;
}

static __always_inline u32 sk_netns(const void *sk)
{
    void *net = 0;
    if (!sk)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + OFF_SKC_NET);
    return net_inum(net);
}

static __always_inline u32 buffer(void)
{
    u32 zero = 0;
    u32 *active = active_buffer.lookup(&zero);
    return active ? (*active & 1) : 0;
}

static __always_inline void count_lost(u32 buf, u32 table)
{
    u32 index = buf * 2 + table;
    u64 *value = lost.lookup(&index);
    if (value)
        *value += 1;  // per CPU
}

static __always_inline struct sock_stats *sock_entry(struct sock_key *key)
{
    struct sock_stats fresh = {};
    u32 buf = buffer();
    struct sock_stats *stats;
    if (buf)
        stats = sockets_1.lookup_or_try_init(key, &fresh);
    else
        stats = sockets_0.lookup_or_try_init(key, &fresh);
    if (!stats)
        count_lost(buf, 0);
    return stats;
}

static __always_inline int is_v4_mapped(const u8 *a)
{
    u64 head = 0;
    u32 mid = 0;
    __builtin_memcpy(&head, a, 8);
    __builtin_memcpy(&mid, a + 8, 4);
    return head == 0 && mid == 0xffff0000;  // ::ffff:a.b.c.d (little-endian load)
}

// A socket's addresses as the classifier writes them: IPv4 (also an IPv6 socket's v4-mapped
// peer) in the first 4 bytes.
static __always_inline void set_addresses(struct sock_key *key, u16 family, const u8 *s4, const u8 *d4,
                                          const u8 *s6, const u8 *d6)
{
    if (family == AF_INET6_ && !is_v4_mapped(s6)) {
        key->family = AF_INET6_;
        __builtin_memcpy(key->saddr, s6, 16);
        __builtin_memcpy(key->daddr, d6, 16);
    } else {
        key->family = AF_INET4;
        __builtin_memcpy(key->saddr, family == AF_INET6_ ? s6 + 12 : s4, 4);
        __builtin_memcpy(key->daddr, family == AF_INET6_ ? d6 + 12 : d4, 4);
    }
}

// The retransmit tracepoints' addresses (IPv4 and IPv6 fields), copied off the context.
#define set_addresses_of(key, family, s4, d4, s6, d6) do {                  \
        u8 s4_[4], d4_[4], s6_[16], d6_[16];                                 \
        bpf_probe_read_kernel(s4_, 4, s4);                                   \
        bpf_probe_read_kernel(d4_, 4, d4);                                   \
        bpf_probe_read_kernel(s6_, 16, s6);                                  \
        bpf_probe_read_kernel(d6_, 16, d6);                                  \
        set_addresses(key, family, s4_, d4_, s6_, d6_);                      \
    } while (0)

static __always_inline void add_retransmits(struct sock_key *key, u32 segs)
{
    struct sock_stats *stats = sock_entry(key);
    if (stats)
        __sync_fetch_and_add(&stats->retrans_segs, segs);
}

TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (args->srtt == 0)
        return 0;  // no RTT sample yet
    struct sock_key key = {};
    key.netns = sk_netns(args->skaddr);
    if (!watched_netns.lookup(&key.netns))
        return 0;
    key.sport = args->sport;
    key.dport = args->dport;
    // saddr/daddr are sockaddr_in (address at 4) or sockaddr_in6 (address at 8); copied off
    // the context first (the verifier allows no reads through a moved context pointer)
    u8 s[28], d[28];
    bpf_probe_read_kernel(s, sizeof(s), args->saddr);
    bpf_probe_read_kernel(d, sizeof(d), args->daddr);
    set_addresses(&key, args->family, s + 4, d + 4, s + 8, d + 8);
    struct sock_stats *stats = sock_entry(&key);
    if (!stats)
        return 0;
    // One socket's tcp_probe and retransmits run under its socket lock: no two at once.
    u32 srtt = args->srtt;
    if (stats->rtt_samples == 0 || srtt < stats->rtt_min_us)
        stats->rtt_min_us = srtt;
    if (srtt > stats->rtt_max_us)
        stats->rtt_max_us = srtt;
    __sync_fetch_and_add(&stats->rtt_sum_us, srtt);
    __sync_fetch_and_add(&stats->rtt_samples, 1);
    return 0;
}

// Since the tracepoint carries `err` (6.17), it fires for failed attempts too. TcpRetransSegs
// is added before the transmit, after the checks that fail with -EBUSY (still in a host queue),
// -EAGAIN (no window), -ENOMEM (trim, fragment, unclone) and -EHOSTUNREACH (no route), and
// -EINVAL (a sequence bug, WARN_ON_ONCE); a failed transmit after it (-ENOBUFS, -EPERM, ...)
// was counted. -EINVAL is taken as counted (a neighbour that cannot be made fails after it).
static __always_inline int retrans_counted(int err)
{
    return err != -16 && err != -11 && err != -12 && err != -113;  // EBUSY EAGAIN ENOMEM EHOSTUNREACH
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
#ifdef HAVE_RETRANS_ERR
    if (!retrans_counted(args->err))
        return 0;
#endif
    struct sock_key key = {};
    key.netns = sk_netns(args->skaddr);
    if (!watched_netns.lookup(&key.netns))
        return 0;
    key.sport = args->sport;
    key.dport = args->dport;
    set_addresses_of(&key, args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
    u16 segs = 0;  // tcp_skb_pcount(skb): TCP_SKB_CB(skb)->tcp_gso_segs
    bpf_probe_read_kernel(&segs, sizeof(segs), (const char *)args->skbaddr + OFF_SKB_CB + OFF_CB_GSO_SEGS);
    add_retransmits(&key, segs ? segs : 1);
    return 0;
}

#ifdef HAVE_SYNACK
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    struct sock_key key = {};
    key.netns = sk_netns(args->skaddr);
    if (!watched_netns.lookup(&key.netns))
        return 0;
    key.sport = args->sport;
    key.dport = args->dport;
    set_addresses_of(&key, args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
    add_retransmits(&key, 1);
    return 0;
}
#endif

// -- drops --------------------------------------------------------------------------------

static __always_inline int drop_place(const void *skb, const void *rx_sk, struct drop_key *key)
{
    void *dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (const char *)skb + OFF_SKB_DEV);
    if (dev) {
        void *net = 0;
        struct device_key where = {};
        bpf_probe_read_kernel(&where.ifindex, sizeof(where.ifindex), (const char *)dev + OFF_DEV_IFINDEX);
        bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + OFF_DEV_NET);
        where.netns = net_inum(net);
        if (!watched_devices.lookup(&where))
            return 0;
        key->netns = where.netns;
        key->ifindex = where.ifindex;
        return 1;
    }
    // no device (yet, or any more): the namespace of its socket, watched as (netns, 0)
    void *sk = 0;
    struct device_key where = {};
    bpf_probe_read_kernel(&sk, sizeof(sk), (const char *)skb + OFF_SKB_SK);
    where.netns = sk_netns(sk ? sk : rx_sk);
    if (!where.netns || !watched_devices.lookup(&where))
        return 0;
    key->netns = where.netns;
    return 1;
}

static __always_inline void read_ports(struct drop_key *key, const u8 *l4)
{
    u16 ports[2] = {};
    if (key->proto != IPPROTO_TCP && key->proto != IPPROTO_UDP && key->proto != IPPROTO_SCTP_)
        return;
    bpf_probe_read_kernel(ports, sizeof(ports), l4);
    key->sport = bpf_ntohs(ports[0]);
    key->dport = bpf_ntohs(ports[1]);
}

// The 5-tuple from the IP header at skb->head + network_header; the IP length as its header
// says (for a GSO skb: all its segments), the skb's bytes from the network header on where
// the header says 0 (BIG TCP, jumbograms) or the packet is not IP.
static __always_inline u64 parse_packet(const void *skb, u16 protocol, struct drop_key *key)
{
    u8 *head = 0, *data = 0;
    u16 nh = 0;
    u32 len = 0;
    bpf_probe_read_kernel(&head, sizeof(head), (const char *)skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&data, sizeof(data), (const char *)skb + OFF_SKB_DATA);
    bpf_probe_read_kernel(&nh, sizeof(nh), (const char *)skb + OFF_SKB_NETWORK_HEADER);
    bpf_probe_read_kernel(&len, sizeof(len), (const char *)skb + OFF_SKB_LEN);
    // data may be behind the network header (pulled on receive) or before it (an L2 header
    // pushed on transmit): the bytes from the network header on are len + (data - head) - nh
    s64 from_nh = (s64)len + (s64)(data - head) - (s64)nh;
    if (nh == 0xffff || !head || from_nh <= 0)
        return len;
    u8 *ip = head + nh;
    if (protocol == ETH_P_IP) {
        u8 hdr[20] = {};
        bpf_probe_read_kernel(hdr, sizeof(hdr), ip);
        if ((hdr[0] >> 4) != 4)
            return from_nh;
        key->family = AF_INET4;
        key->proto = hdr[9];
        __builtin_memcpy(key->src, hdr + 12, 4);
        __builtin_memcpy(key->dst, hdr + 16, 4);
        if (((hdr[6] & 0x1f) | hdr[7]) == 0)  // the first fragment (or none) has the ports
            read_ports(key, ip + (hdr[0] & 0xf) * 4);
        u16 total = ((u16)hdr[2] << 8) | hdr[3];
        return total ? total : from_nh;
    }
    if (protocol == ETH_P_IPV6) {
        u8 hdr[40] = {};
        bpf_probe_read_kernel(hdr, sizeof(hdr), ip);
        if ((hdr[0] >> 4) != 6)
            return from_nh;
        key->family = AF_INET6_;
        key->proto = hdr[6];  // the next header: extension headers are not walked
        __builtin_memcpy(key->src, hdr + 8, 16);
        __builtin_memcpy(key->dst, hdr + 24, 16);
        read_ports(key, ip + 40);
        u16 payload = ((u16)hdr[4] << 8) | hdr[5];
        return payload ? 40 + (u64)payload : from_nh;
    }
    return from_nh;
}

// A GSO skb is gso_segs packets on the wire (skb_shinfo(skb) at skb->head + skb->end).
static __always_inline u64 segments(const void *skb)
{
    u8 *head = 0;
    u64 end = 0;
    u16 gso[2] = {};  // gso_size, gso_segs: adjacent (checked in offsets.py)
    bpf_probe_read_kernel(&head, sizeof(head), (const char *)skb + OFF_SKB_HEAD);
#ifdef SKB_END_IS_OFFSET
    u32 end32 = 0;
    bpf_probe_read_kernel(&end32, sizeof(end32), (const char *)skb + OFF_SKB_END);
    end = (u64)head + end32;
#else
    bpf_probe_read_kernel(&end, sizeof(end), (const char *)skb + OFF_SKB_END);
#endif
    if (!end)
        return 1;
    bpf_probe_read_kernel(gso, sizeof(gso), (const char *)end + OFF_SHINFO_GSO_SIZE);
    return gso[0] && gso[1] > 1 ? gso[1] : 1;
}

TRACEPOINT_PROBE(skb, kfree_skb)
{
    u32 reason = args->reason;
    if (reason < MIN_REASON)
        return 0;
    const void *skb = args->skbaddr;
    struct drop_key key = {};
#ifdef HAVE_RX_SK
    const void *rx_sk = args->rx_sk;
#else
    const void *rx_sk = 0;
#endif
    if (!drop_place(skb, rx_sk, &key))
        return 0;
    key.reason = reason;
    u64 bytes = parse_packet(skb, args->protocol, &key);
    u64 packets = segments(skb);
    struct drop_value fresh = {};
    u32 buf = buffer();
    struct drop_value *value;
    if (buf)
        value = drops_1.lookup_or_try_init(&key, &fresh);
    else
        value = drops_0.lookup_or_try_init(&key, &fresh);
    if (!value) {
        count_lost(buf, 1);
        return 0;
    }
    __sync_fetch_and_add(&value->packets, packets);
    __sync_fetch_and_add(&value->bytes, bytes);
    return 0;
}
