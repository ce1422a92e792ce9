// The socket-owner table's schema: socket_owners.py mirrors these structs as numpy dtypes.
#ifndef CONNSTATS_SOCKET_OWNERS_H
#define CONNSTATS_SOCKET_OWNERS_H

#define OWNER_COMM_LEN 16

// A local socket: its network namespace (inode), its local port, its protocol (6, 17).
struct owner_key {
    u32 netns;
    u16 port;
    u8 proto;
    u8 pad;
};

enum owner_kind {
    KIND_CLIENT = 1,          // connect()ed TCP socket: the pid stashed at CLOSE -> SYN_SENT
    KIND_LISTEN = 2,          // listen(): accepted connections share its port
    KIND_UDP = 3,             // the last process that sent or received on the UDP socket
    KIND_PREFILL_LISTEN = 4,  // found in /proc when the probe started (sk unknown: 0)
    KIND_PREFILL = 5,
};

struct owner {
    u32 pid;        // tgid, in the host's pid namespace
    u32 kind;       // enum owner_kind
    u64 sk;         // the struct sock's address: a close tombstones only its own entry
    u64 closed_ns;  // bpf_ktime_get_ns() of the socket's close; 0 while open
    u64 seen_ns;    // when the entry was written (UDP: refreshed at most once a second)
    char comm[OWNER_COMM_LEN];  // the thread's name at that time
};

// connect() in progress: the pid and name of the caller, by socket address
struct pending {
    u32 pid;
    u32 pad;
    char comm[OWNER_COMM_LEN];
};

#endif
