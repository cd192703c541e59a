#!/usr/bin/env python3
"""RSS and /health/live p99 of a running proxy while N connections are held
open: `idle` (connected, nothing sent), `slow-header` (900 bytes of a request
head, never finished) or `keepalive` (one request answered, then idle).
Usage: hostile.py PORT PID N idle|slow-header|keepalive
RSS is read SETTLE seconds after the last connection is open (environment
HOSTILE_SETTLE, default 3: freed memory may take a moment to leave the RSS).
Loopback only; bounded in count and time."""
import socket, sys, time, os, statistics
port, pid, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
def probe(k=500):
    times = []
    for _ in range(k):
        t = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            c = s.recv(4096)
            if not c: break
            data += c
        s.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:40]
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times)//2], times[int(len(times)*0.99)-1]
base = rss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if mode == "slow-header":
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 900)
    elif mode == "keepalive":
        # One request answered, then the connection stays open, idle.
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not (b"\r\n\r\n" in reply and reply.endswith(b"}")):
            reply += s.recv(4096)
    conns.append(s)
time.sleep(float(os.environ.get("HOSTILE_SETTLE", "3")))
held = rss()
p50, p99 = probe()
alive = 0
for s in conns:
    s.setblocking(False)
    try:
        alive += 0 if s.recv(1) == b"" else 1
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print(f"{mode} n={n}: RSS before {base/2**20:.1f} MiB, with connections {held/2**20:.1f} MiB; /health/live p50 {p50:.2f} ms p99 {p99:.2f} ms; still open {alive}")
for s in conns: s.close()
