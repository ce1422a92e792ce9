// Who owns each local socket, from tracepoints only (no kprobes or fentry needed):
//
//   sock:inet_sock_set_state  TCP  CLOSE -> SYN_SENT       stash the connecting process by sk
//                                  SYN_SENT -> ESTABLISHED owners[netns, sport, 6] = stash (CLIENT)
//                                  CLOSE -> LISTEN         owners[netns, sport, 6] = current (LISTEN)
//                                  * -> CLOSE              tombstone the entry if it is this sk's
//   sock:sock_send_length,    UDP  owners[netns, port, 17] = current, written only when missing,
//   sock:sock_recv_length          another pid or socket, or older than a second
//
// Transitions driven by packets run in softirq, in whatever process was on the CPU (over a
// veth: the sender's), so only CLOSE -> SYN_SENT, CLOSE -> LISTEN and send/recv calls may
// name the current process. The netns inode and the local port are read from struct sock at
// offsets from the running kernel's BTF (btf.py), passed as -DOFF_*.
#include <uapi/linux/in.h>
#include "socket_owners.h"

#ifndef OWNERS_CAPACITY
#define OWNERS_CAPACITY 65536
#endif
#define CONNECTING_CAPACITY 16384
#define UDP_REFRESH_NS 1000000000ULL

// TCP states (include/net/tcp_states.h)
#define ST_ESTABLISHED 1
#define ST_SYN_SENT 2
#define ST_CLOSE 7
#define ST_LISTEN 10

BPF_TABLE("lru_hash", struct owner_key, struct owner, socket_owners, OWNERS_CAPACITY);
BPF_TABLE("lru_hash", u64, struct pending, connecting, CONNECTING_CAPACITY);

static __always_inline u32 sk_netns(const void *sk)
{
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + OFF_SKC_NET);
    if (!net)
        return 0;
    bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + OFF_NET_NS + OFF_NS_INUM);
    return inum;
}

static __always_inline u16 sk_port(const void *sk)
{
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), (const char *)sk + OFF_SKC_NUM);
    return port;
}

static __always_inline void write_current(struct owner_key *key, u64 sk, u32 kind)
{
    struct owner value = {};
    value.pid = bpf_get_current_pid_tgid() >> 32;
    value.kind = kind;
    value.sk = sk;
    value.seen_ns = bpf_ktime_get_ns();
    bpf_get_current_comm(&value.comm, sizeof(value.comm));
    socket_owners.update(key, &value);
}

static __always_inline void tombstone(struct owner_key *key, u64 sk, int oldstate)
{
    struct owner *value = socket_owners.lookup(key);
    if (!value || value->closed_ns)
        return;
    // an entry from /proc has no sk: a listener's goes with the listener, another's with its port
    int prefilled = value->sk == 0 &&
        ((value->kind == KIND_PREFILL_LISTEN) == (oldstate == ST_LISTEN)) &&
        (value->kind == KIND_PREFILL_LISTEN || value->kind == KIND_PREFILL);
    if (value->sk == sk || prefilled)
        value->closed_ns = bpf_ktime_get_ns();
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    int oldstate = args->oldstate, newstate = args->newstate;
    if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT) {  // in connect(): the caller
        struct pending stash = {};
        stash.pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&stash.comm, sizeof(stash.comm));
        connecting.update(&sk, &stash);
        return 0;
    }
    struct owner_key key = {};
    key.netns = sk_netns(args->skaddr);
    key.port = args->sport;
    key.proto = IPPROTO_TCP;
    if (oldstate == ST_SYN_SENT) {  // the SYN-ACK came (softirq) or the connect failed
        struct pending *stash = connecting.lookup(&sk);
        if (stash && newstate == ST_ESTABLISHED) {
            struct owner value = {};
            value.pid = stash->pid;
            value.kind = KIND_CLIENT;
            value.sk = sk;
            value.seen_ns = bpf_ktime_get_ns();
            __builtin_memcpy(value.comm, stash->comm, sizeof(value.comm));
            socket_owners.update(&key, &value);
        }
        connecting.delete(&sk);
        if (newstate == ST_CLOSE)
            tombstone(&key, sk, oldstate);
        return 0;
    }
    if (oldstate == ST_CLOSE && newstate == ST_LISTEN) {  // in listen(): the caller
        write_current(&key, sk, KIND_LISTEN);
        return 0;
    }
    if (newstate == ST_CLOSE)
        tombstone(&key, sk, oldstate);
    return 0;
}

#ifdef HAVE_SOCK_LENGTH
static __always_inline int udp_used(const void *skp, int ret)
{
    if (ret < 0)
        return 0;
    struct owner_key key = {};
    key.port = sk_port(skp);
    if (key.port == 0)
        return 0;
    key.netns = sk_netns(skp);
    key.proto = IPPROTO_UDP;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct owner *value = socket_owners.lookup(&key);
    if (value && value->pid == pid && value->sk == (u64)skp &&
        bpf_ktime_get_ns() - value->seen_ns < UDP_REFRESH_NS)
        return 0;  // known: no map write per datagram
    write_current(&key, (u64)skp, KIND_UDP);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->protocol != IPPROTO_UDP)
        return 0;
    return udp_used(args->sk, args->ret);
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->protocol != IPPROTO_UDP)
        return 0;
    return udp_used(args->sk, args->ret);
}
#endif
