#!/usr/bin/env python3
"""Memory per long stream: N concurrent SSE streams through a proxy.

Usage: benches/streams.py PROXY [N] [CHUNKS] [INTERVAL_MS]   (defaults 1000 30 100)
       benches/streams.py nginx [N] [CHUNKS] [INTERVAL_MS]   (nginx as the reverse proxy)

Starts, all on 127.0.0.1: a slow upstream written here (asyncio; every request gets
an SSE answer of CHUNKS chat.completion.chunk events, one every INTERVAL_MS, then
[DONE]), and PROXY (`--home` a temp dir, `[upstream] url` = that upstream,
`server.max_concurrent` = 2N so no stream is refused). After one warm-up stream it
reads the proxy's RSS (VmRSS), then opens N client connections that each POST a
`stream: true` chat request and read the stream to [DONE], sampling RSS every 50 ms.
Prints: RSS idle, the highest RSS while all N streams were open, (high - idle) / N,
stream completion p50/p99, and errors. Bounded: every wait has a timeout and
everything started is stopped on exit.

With `nginx` as PROXY the same streams go through nginx configured as a plain
streaming reverse proxy instead (one process: `master_process off`; `proxy_buffering
off`, keep-alive to the upstream), for the completion p99 to compare against (and its
RSS, for reference). Needs nginx (Debian: nginx-light)."""
import asyncio, os, shutil, signal, socket, subprocess, sys, tempfile, time

PROXY = sys.argv[1] if sys.argv[1] == "nginx" else os.path.realpath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
CHUNKS = int(sys.argv[3]) if len(sys.argv) > 3 else 30
INTERVAL = (int(sys.argv[4]) if len(sys.argv) > 4 else 100) / 1000

CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
         b'"choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}\n\n')
LAST = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":30,"total_tokens":33}}\n\n'
        b'data: [DONE]\n\n')


def chunked(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


async def upstream(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(CHUNKS):
                await asyncio.sleep(INTERVAL)
                writer.write(chunked(CHUNK))
                await writer.drain()
            writer.write(chunked(LAST) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


BODY = b'{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


async def one_stream(port, opened, started):
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    opened.append(1)
    writer.write(REQUEST)
    data = b""
    deadline = CHUNKS * INTERVAL + 60
    while b"[DONE]" not in data:
        piece = await asyncio.wait_for(reader.read(65536), deadline)
        if not piece:
            raise RuntimeError("closed before [DONE]: %r" % data[:200])
        data = data[-64:] + piece
    writer.close()
    return time.perf_counter() - t0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_nginx(home, up_port):
    """nginx in one process as a streaming reverse proxy to the upstream; its port."""
    port = free_port()
    with open(os.path.join(home, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1;
master_process off;
daemon off;
pid {home}/nginx.pid;
worker_rlimit_nofile {4 * N + 256};
events {{ worker_connections {4 * N + 256}; }}
http {{
    access_log off;
    client_body_temp_path {home}/cb; proxy_temp_path {home}/p; fastcgi_temp_path {home}/f;
    uwsgi_temp_path {home}/u; scgi_temp_path {home}/s;
    upstream slow {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://slow;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", os.path.join(home, "nginx.conf"), "-p", home,
                             "-e", os.path.join(home, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("nginx did not start: see its error.log")
            await asyncio.sleep(0.05)


async def main():
    server = await asyncio.start_server(upstream, "127.0.0.1", 0, backlog=4096)
    up_port = server.sockets[0].getsockname()[1]
    home = tempfile.mkdtemp()
    if PROXY == "nginx":
        proc, port = await start_nginx(home, up_port)
    else:
        with open(os.path.join(home, "warden.toml"), "w") as f:
            f.write(f'[server]\nmax_concurrent = {2 * N}\nheader_timeout = 300\n'
                    f'[upstream]\nurl = "http://127.0.0.1:{up_port}/v1"\nattempts = 1\n')
        proc = subprocess.Popen([PROXY, "--home", home, "--port", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        if PROXY != "nginx":
            line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline), 30)
            port = int(line.decode().rsplit(":", 1)[1].strip().strip("/"))
        await one_stream(port, [], None)  # warm-up
        await asyncio.sleep(0.5)
        idle = rss(proc.pid)
        opened, peak, peak_open = [], idle, 0
        tasks = [asyncio.ensure_future(one_stream(port, opened, None)) for _ in range(N)]
        done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
        while not done.done():
            r = rss(proc.pid)
            if r > peak:
                peak, peak_open = r, len(opened)
            await asyncio.sleep(0.05)
        results = done.result()
        times = sorted(t for t in results if isinstance(t, float))
        errors = [r for r in results if not isinstance(r, float)]
        p = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1000 if times else 0
        print(f"{'nginx ' if PROXY == 'nginx' else ''}streams N={N} chunks={CHUNKS}x{int(INTERVAL*1000)}ms: RSS idle {idle/2**20:.1f} MiB, "
              f"peak {peak/2**20:.1f} MiB (with {peak_open} open), "
              f"{(peak-idle)/N/1024:.1f} KiB per stream; completion p50 {p(0.5):.0f} ms "
              f"p99 {p(0.99):.0f} ms; errors {len(errors)}"
              + (f" (first: {errors[0]!r})" if errors else ""))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
