"""Traffic for the tests, run inside a test network namespace with `ip netns exec`.

    traffic.py udp  DST PORT SPORT COUNT SIZE      N datagrams of SIZE payload bytes
    traffic.py udp-paced DST PORT SPORT COUNT SIZE SECONDS   the same, spread over SECONDS
    traffic.py raw  IFNAME                          frames as hex lines on stdin
    traffic.py tcp-echo-server ADDR PORT            echo one connection, then exit
    traffic.py tcp-client DST PORT SPORT COUNT SIZE send COUNT messages, read echoes

Prints one JSON line with what was sent.
"""
import json
import socket
import sys
import time


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def udp(dst: str, port: str, sport: str, count: str, size: str) -> dict:
    sock = socket.socket(family_of(dst), socket.SOCK_DGRAM)
    sock.bind(("", int(sport)))
    payload = b"x" * int(size)
    for _ in range(int(count)):
        sock.sendto(payload, (dst, int(port)))
    return {"sent": int(count)}


def udp_paced(dst: str, port: str, sport: str, count: str, size: str, seconds: str) -> dict:
    """COUNT datagrams spread evenly over SECONDS, in bursts of 100."""
    sock = socket.socket(family_of(dst), socket.SOCK_DGRAM)
    sock.bind(("", int(sport)))
    payload, total = b"x" * int(size), int(count)
    start, bursts = time.monotonic(), (total + 99) // 100
    for burst in range(bursts):
        for _ in range(min(100, total - burst * 100)):
            sock.sendto(payload, (dst, int(port)))
        delay = start + float(seconds) * (burst + 1) / bursts - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return {"sent": total}


def raw(ifname: str) -> dict:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    sent = 0
    for line in sys.stdin:
        if line.strip():
            sock.send(bytes.fromhex(line.strip()))
            sent += 1
    return {"sent": sent}


def tcp_echo_server(addr: str, port: str) -> dict:
    server = socket.socket(family_of(addr), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, int(port)))
    server.listen(1)
    print(json.dumps({"listening": True}), flush=True)
    conn, _ = server.accept()
    total = 0
    while data := conn.recv(65536):
        conn.sendall(data)
        total += len(data)
    conn.close()
    return {"echoed": total}


def tcp_client(dst: str, port: str, sport: str, count: str, size: str) -> dict:
    sock = socket.socket(family_of(dst), socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("", int(sport)))
    sock.connect((dst, int(port)))
    payload = b"y" * int(size)
    for _ in range(int(count)):
        sock.sendall(payload)
        got = 0
        while got < len(payload):
            got += len(sock.recv(65536))
    sock.close()
    return {"sent": int(count)}


COMMANDS = {"udp": udp, "udp-paced": udp_paced, "raw": raw, "tcp-echo-server": tcp_echo_server, "tcp-client": tcp_client}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])), flush=True)
