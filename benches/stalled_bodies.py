#!/usr/bin/env python3
"""Stalled request bodies against a proxy: the peak RSS they cause.

Usage: benches/stalled_bodies.py PROXY [CLIENTS] [SENT_MIB] [BODY_TIMEOUT]   (defaults 20 5 10)

Starts PROXY (`--home` a temp dir, the built-in mock upstream, `server.body_timeout` =
BODY_TIMEOUT, everything else default: `max_body_bytes` 10 MiB, `max_body_memory` 64 MiB
where the build has it) on 127.0.0.1. CLIENTS connections each announce a 10,000,000-byte
chat request body, send SENT_MIB MiB of it and stall. Prints the proxy's RSS before, its
peak (VmHWM) once every client has sent what it could, how the connections ended (each
must be closed by body_timeout) and whether a normal request is then served. Bounded:
every socket has a timeout, the proxy is stopped on exit."""
import os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

PROXY = os.path.realpath(sys.argv[1])
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
SENT = (int(sys.argv[3]) if len(sys.argv) > 3 else 5) << 20
BODY_TIMEOUT = int(sys.argv[4]) if len(sys.argv) > 4 else 10


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def chat(port):
    body = b'{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}'
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    return data.split(b"\r\n", 1)[0].decode()


def stall(port, results, i):
    s = socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 10000000\r\n\r\n")
    piece = b" " * 65536
    sent = 0
    try:
        while sent < SENT:
            sent += s.send(piece)
    except OSError:
        pass
    results[i] = ("sent", sent)
    t0 = time.monotonic()
    data = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        end = "closed"
    except socket.timeout:
        end = "still open"
    except OSError:
        end = "reset"
    results[i] = (end, sent, data.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - t0)


def main():
    home = tempfile.mkdtemp()
    with open(os.path.join(home, "warden.toml"), "w") as f:
        f.write(f"[server]\nbody_timeout = {BODY_TIMEOUT}\n")
    proc = subprocess.Popen([PROXY, "--home", home, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        port = int(proc.stdout.readline().decode().rsplit(":", 1)[1].strip().strip("/"))
        assert chat(port).startswith("HTTP/1.1 200")
        before = status(proc.pid, "VmRSS")
        results = [None] * CLIENTS
        threads = [threading.Thread(target=stall, args=(port, results, i)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        # Every client has sent all it could when none has sent more for 2 s.
        last, still = -1, 0
        while still < 20:
            total = sum(r[1] for r in results if r)
            still = still + 1 if total == last else 0
            last = total
            time.sleep(0.1)
        peak = status(proc.pid, "VmHWM")
        for t in threads:
            t.join(BODY_TIMEOUT + 40)
        ends = {}
        for r in results:
            key = f"{r[0]} {r[2]}" if r and len(r) > 2 else str(r)
            ends[key] = ends.get(key, 0) + 1
        after = chat(port)
        print(f"stalled bodies: {CLIENTS} x {SENT >> 20} MiB of 10 MB, body_timeout {BODY_TIMEOUT} s: "
              f"RSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
              f"(+{(peak - before) / 2**20:.1f}); the clients got {last / 2**20:.0f} MiB sent (proxy and kernel buffers); "
              f"ends: {ends}; then a normal request: {after}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


main()
