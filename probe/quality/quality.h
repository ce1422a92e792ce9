// The quality tables' schema: tables.py mirrors these structs as numpy dtypes, field for field.
#ifndef CONNSTATS_QUALITY_H
#define CONNSTATS_QUALITY_H

// One TCP socket, its own end first: tcp:tcp_probe's and tcp:tcp_retransmit_skb's 4-tuple.
// Addresses as the classifier's: 16 bytes, IPv4 in the first 4; ports in host order.
struct sock_key {
    u32 netns;   // inode of the socket's network namespace
    u8 family;   // 2 or 10 (a v4-mapped IPv6 socket is written as 2)
    u8 pad;
    u16 sport;
    u16 dport;
    u16 pad2;
    u8 saddr[16];
    u8 daddr[16];
};

struct sock_stats {
    u32 rtt_min_us;    // smoothed RTT (srtt) at each received segment: min, max, sum, count
    u32 rtt_max_us;
    u64 rtt_sum_us;
    u32 rtt_samples;
    u32 retrans_segs;  // as TcpRetransSegs counts them: a GSO skb of n segments is n
};

// One kind of dropped packet: where (the namespace and ifindex of skb->dev; ifindex 0: no
// device, the namespace of the packet's socket), why (the kernel's reason code) and what.
struct drop_key {
    u32 netns;
    u32 ifindex;
    u32 reason;
    u8 family;  // 2, 10; 0: not IP (ARP, ...), no addresses or ports
    u8 proto;
    u16 sport;  // TCP, UDP, SCTP; 0 for other protocols and later fragments
    u16 dport;
    u16 pad;
    u8 src[16];
    u8 dst[16];
};

struct drop_value {
    u64 packets;  // segments: a GSO skb of n segments is n
    u64 bytes;    // the IP packet's length from its header (the skb's length when not IP)
};

struct device_key {
    u32 netns;
    u32 ifindex;
};

#endif
