/* New UDP connections on demand, for bench_sustained.py: raw frames by sendmmsg on a packet
 * socket (no UDP/IP stack and no route lookup per datagram on the sending side; the frames
 * still pass the device's tc egress hook, where the classifier counts them).
 *
 *   udp_flood IFNAME SRC_MAC DST_MAC SRC_IP SRC_PORT_BASE PAYLOAD DST_IP [DST_IP ...]
 *
 * Reads one number per line on stdin: send that many datagrams, each a connection never
 * used before in this run (source port x destination address x destination port), and
 * answer one line "sent PACKETS SECONDS". Connection g: destination port 1024 + g % 64512,
 * destination address g / 64512 % ndst, source port SRC_PORT_BASE + g / (64512 * ndst).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PORTS 64512
#define BATCH 1024
#define MAX_DST 64
#define HEADERS (sizeof(struct ether_header) + sizeof(struct iphdr) + sizeof(struct udphdr))

static uint32_t dst[MAX_DST];
static int ndst;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void mac(const char *text, uint8_t *out) {
    if (sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4], &out[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", text);
        exit(2);
    }
}

static uint16_t ip_checksum(const void *header) {
    const uint16_t *word = header;
    uint32_t sum = 0;
    for (size_t i = 0; i < sizeof(struct iphdr) / 2; i++) sum += word[i];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* one frame: connection g's headers and the payload (zeros) */
static void frame(uint8_t *buf, const uint8_t *smac, const uint8_t *dmac, uint32_t src, int sport, uint32_t daddr,
                  int dport, int payload) {
    struct ether_header *eth = (struct ether_header *)buf;
    memcpy(eth->ether_dhost, dmac, 6);
    memcpy(eth->ether_shost, smac, 6);
    eth->ether_type = htons(ETHERTYPE_IP);
    struct iphdr *ip = (struct iphdr *)(eth + 1);
    *ip = (struct iphdr){.version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_UDP,
                         .tot_len = htons(sizeof(struct iphdr) + sizeof(struct udphdr) + payload),
                         .saddr = src, .daddr = daddr};
    ip->check = ip_checksum(ip);
    struct udphdr *udp = (struct udphdr *)(ip + 1);
    *udp = (struct udphdr){.source = htons(sport), .dest = htons(dport),
                           .len = htons(sizeof(struct udphdr) + payload)};  /* checksum 0: none */
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: udp_flood IFNAME SRC_MAC DST_MAC SRC_IP SRC_PORT_BASE PAYLOAD DST_IP...\n");
        return 2;
    }
    uint8_t smac[6], dmac[6];
    mac(argv[2], smac);
    mac(argv[3], dmac);
    uint32_t src;
    inet_pton(AF_INET, argv[4], &src);
    int port_base = atoi(argv[5]);
    int payload = atoi(argv[6]);
    if (payload < 0 || payload > 1400) { fprintf(stderr, "payload must be 0..1400\n"); return 2; }
    for (int i = 7; i < argc && ndst < MAX_DST; i++) inet_pton(AF_INET, argv[i], &dst[ndst++]);
    int fd = socket(AF_PACKET, SOCK_RAW, 0);  /* protocol 0: sends only, receives nothing */
    if (fd < 0) { perror("socket"); return 1; }
    /* frames are charged to the socket until the peer's softirq frees them: with the default
     * buffer the sender waits for a busy machine's ksoftirqd instead of sending */
    int sndbuf = 64 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0) perror("SO_SNDBUFFORCE");
    struct sockaddr_ll where = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1])};
    if (!where.sll_ifindex) { perror(argv[1]); return 1; }
    static uint8_t bufs[BATCH][HEADERS + 1400];
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    long long next = 0;  /* the next connection's number */
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        long long want = atoll(line), sent = 0;
        double started = now();
        while (sent < want) {
            int n = 0;
            while (n < BATCH && n < want - sent) {
                long long g = next + n;
                long long block = g / ((long long)PORTS * ndst);
                if (port_base + block > 65535) { fprintf(stderr, "out of source ports\n"); return 1; }
                frame(bufs[n], smac, dmac, src, (int)(port_base + block), dst[(g / PORTS) % ndst],
                      (int)(1024 + g % PORTS), payload);
                iov[n] = (struct iovec){.iov_base = bufs[n], .iov_len = HEADERS + payload};
                msgs[n].msg_hdr = (struct msghdr){.msg_name = &where, .msg_namelen = sizeof where,
                                                  .msg_iov = &iov[n], .msg_iovlen = 1};
                n++;
            }
            int done = sendmmsg(fd, msgs, n, 0);
            if (done < 0) {
                if (errno == EINTR || errno == ENOBUFS || errno == EAGAIN) continue;
                perror("sendmmsg");
                return 1;
            }
            next += done;
            sent += done;
        }
        printf("sent %lld %.6f\n", sent, now() - started);
        fflush(stdout);
    }
    return 0;
}
